"""Nothing finished is lost and no checkpoint is kept bad: finished runs and evaluations are never replaced
without --overwrite, --resume on a finished run does nothing, damaged checkpoints are refused in one line,
non-finite weights stop a run with the last finite checkpoint kept and valid JSON logs, and every shipped
tiny config resumes after its first phase to the weights of an uninterrupted run."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from methods.engine.checkpoint import load_checkpoint
from methods.registry import typed
from utils.cli.main import main
from utils.config import load_config
from utils.experiment.run import run_unlearning

from ..conftest import REPO
from ..experiment.test_run import RUN_OVERRIDES, assert_same_tensors, files_of, run_args

pytestmark = pytest.mark.usefixtures("one_thread")


def strict_json_lines(path: Path) -> list[dict]:
    """Every line parsed as strict JSON: NaN or Infinity (not JSON) fail."""
    def refuse(constant):
        raise ValueError(f"{path} holds {constant}, which is not JSON")

    return [json.loads(line, parse_constant=refuse) for line in path.read_text().splitlines()]


def expect_one_line_error(argv: list[str], capsys) -> str:
    capsys.readouterr()
    assert main(argv) == 2
    captured = capsys.readouterr()
    lines = captured.err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), captured.err
    return lines[0]


@pytest.fixture(scope="module")
def finished_run(small_world, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("finished") / "run"
    assert main(run_args(small_world, out)) == 0
    return out


def test_score_never_replaces_a_finished_run(finished_run, tmp_path, capsys):
    before = files_of(finished_run)
    line = expect_one_line_error(["score", str(finished_run)], capsys)
    assert "holds a finished evaluation" in line and "--out" in line and "--overwrite" not in line
    assert files_of(finished_run) == before
    # The re-score goes where it is asked to, and a second re-score may replace the first.
    out = tmp_path / "rescored.json"
    assert main(["score", str(finished_run), "--out", str(out)]) == 0
    assert main(["score", str(finished_run), "--out", str(out)]) == 0
    rescored, original = json.loads(out.read_text()), json.loads((finished_run / "results.json").read_text())
    assert rescored["terms"] == original["terms"]
    # An --out that holds a finished evaluation is refused too.
    line = expect_one_line_error(["score", str(finished_run), "--out", str(finished_run / "results.json")], capsys)
    assert "already holds finished results" in line
    assert files_of(finished_run) == before


def test_score_without_mia_file_keeps_the_finished_results(finished_run, tmp_path, capsys):
    folder = tmp_path / "copy"
    folder.mkdir()
    for name in ("forget_generations.jsonl", "retain_generations.jsonl", "results.json"):
        (folder / name).write_bytes((finished_run / name).read_bytes())
    before = files_of(folder)
    expect_one_line_error(["score", str(folder)], capsys)
    assert files_of(folder) == before
    assert main(["score", str(folder), "--overwrite"]) == 0  # said explicitly: replaced
    assert json.loads((folder / "results.json").read_text())["evaluated"]["source"] == "generations"


def test_resume_of_a_finished_run_does_nothing(small_world, finished_run, capsys):
    before = files_of(finished_run)
    capsys.readouterr()
    assert main(run_args(small_world, finished_run, flags=("--resume",))) == 0
    assert "already finished" in capsys.readouterr().out
    assert files_of(finished_run) == before


def test_overwrite_replaces_a_finished_run_and_says_so(small_world, finished_run, tmp_path, capsys):
    copy = tmp_path / "run"
    copy.mkdir()
    for path in finished_run.rglob("*"):
        target = copy / path.relative_to(finished_run)
        if path.is_dir():
            target.mkdir(parents=True, exist_ok=True)
        else:
            target.write_bytes(path.read_bytes())
    (copy / "stray.txt").write_text("from the old run")
    capsys.readouterr()
    assert main(run_args(small_world, copy, "evaluation.max_new_tokens=8", flags=("--overwrite",))) == 0
    assert "replacing the run" in capsys.readouterr().out
    assert not (copy / "stray.txt").exists()
    assert json.loads((copy / "results.json").read_text())["evaluated"]["max_new_tokens"] == 8


@pytest.mark.parametrize("damage", ["truncated_state", "state_missing_keys", "truncated_weights"])
def test_a_damaged_checkpoint_is_refused_in_one_line(small_world, tmp_path, capsys, damage):
    out = tmp_path / "run"
    config = small_world.config(*RUN_OVERRIDES)
    run_unlearning(config, out, evaluate=False, progress=False, stop_after_phases=1, log=lambda _: None)
    state_path, weights_path = out / "checkpoint" / "state.json", out / "checkpoint" / "trainable.safetensors"
    if damage == "truncated_state":
        state_path.write_bytes(state_path.read_bytes()[:20])
    elif damage == "state_missing_keys":
        state_path.write_text('{"phases_done": 1}')
    else:
        weights_path.write_bytes(weights_path.read_bytes()[:100])
    before = files_of(out)
    line = expect_one_line_error(run_args(small_world, out, flags=("--resume",)), capsys)
    assert "cannot be resumed" in line
    assert files_of(out) == before  # config.yaml included: nothing was rewritten
    if damage != "truncated_weights":
        # A plain run into that folder says the same in one line, not a traceback.
        assert "cannot be resumed" in expect_one_line_error(run_args(small_world, out), capsys)
        assert files_of(out) == before


def test_a_huge_learning_rate_keeps_only_finite_checkpoints_and_valid_logs(small_world, tmp_path, capsys):
    out = tmp_path / "run"
    line = expect_one_line_error(run_args(small_world, out, "training.learning_rate=1e30"), capsys)
    assert "non-finite" in line or "loss became" in line
    state = load_checkpoint(out)
    if state is not None:
        weights = load_file(out / "checkpoint" / "trainable.safetensors")
        assert all(torch.isfinite(t).all() for t in weights.values())
    records = strict_json_lines(out / "log.jsonl")
    assert records and all(math.isfinite(r["lr"]) for r in records)
    assert not (out / "results.json").exists() and not (out / "model").exists()


def test_weights_that_turn_non_finite_stop_the_run_at_that_step(small_world, tmp_path, monkeypatch, capsys):
    """A step that leaves a non-finite weight (the loss before it was fine) stops the run there: the
    checkpoint of the last finished phase stays, the log ends with that step, all valid JSON."""
    real_step = torch.optim.AdamW.step
    steps = 0

    def poisoned_step(self, *args, **kwargs):
        nonlocal steps
        result = real_step(self, *args, **kwargs)
        steps += 1
        if steps == 2 * 4 + 3:  # the 3rd step of the 3rd chunk (4 steps per chunk under RUN_OVERRIDES)
            with torch.no_grad():
                self.param_groups[0]["params"][0].view(-1)[0] = float("inf")
        return result

    monkeypatch.setattr(torch.optim.AdamW, "step", poisoned_step)
    out = tmp_path / "run"
    line = expect_one_line_error(run_args(small_world, out), capsys)
    assert "weights became non-finite in phase 'sugd-chunk2' at step 3" in line
    assert load_checkpoint(out)["phases_done"] == 2
    weights = load_file(out / "checkpoint" / "trainable.safetensors")
    assert all(torch.isfinite(t).all() for t in weights.values())
    assert len(strict_json_lines(out / "log.jsonl")) == 2 * 4 + 2  # the non-finite step is not logged


SHIPPED_TINY_CONFIGS = sorted(path.name for path in (REPO / "configs").glob("*.yaml"))
# Small enough for the test world (20 forget items): several chunks for the chunked methods, one epoch.
KILL_OVERRIDES = ["training.epochs=1", "training.warmup_steps=0", "method.chunk_size=8",
                  "evaluation.per_phase_subset=0"]


@pytest.mark.parametrize("name", SHIPPED_TINY_CONFIGS)
def test_every_shipped_config_resumes_after_its_first_phase_to_the_same_weights(small_world, tmp_path, name):
    config_path = REPO / "configs" / name
    overrides = [*small_world.overrides, f"workdir={small_world.root}", *KILL_OVERRIDES]
    # method.chunk_size only for the chunked methods: each method takes only its own settings.
    method = typed(load_config(config_path)).method
    overrides = [o for o in overrides if o != "method.chunk_size=8" or hasattr(method, "chunk_size")]
    if hasattr(method, "steering_coeff"):  # RMU: the test world has 2 layers
        overrides += ["method.layer=0", "adapter.layers=[0]"]
    config = load_config(config_path, overrides)
    whole, killed = tmp_path / "whole", tmp_path / "killed"
    run_unlearning(config, whole, evaluate=False, progress=False, log=lambda _: None)
    run_unlearning(config, killed, evaluate=False, progress=False, log=lambda _: None, stop_after_phases=1)
    assert load_checkpoint(killed)["phases_done"] == 1
    assert not (killed / "model").exists()
    # The resume reads the YAML again, as a user's second command does.
    argv = ["run", str(config_path), "--out", str(killed), "--resume", "--no-eval", "--quiet"]
    assert main([*argv, *[x for item in overrides for x in ("--set", item)]]) == 0
    assert_same_tensors(load_file(killed / "model" / "model.safetensors"),
                        load_file(whole / "model" / "model.safetensors"), atol=1e-6)
    resumed, reference = strict_json_lines(killed / "log.jsonl"), strict_json_lines(whole / "log.jsonl")
    assert [r["global_step"] for r in resumed] == [r["global_step"] for r in reference]
    assert [r["loss"] for r in resumed] == pytest.approx([r["loss"] for r in reference], abs=1e-6)


def test_evaluate_never_replaces_earlier_results_without_overwrite(small_world, tmp_path, capsys):
    out = tmp_path / "evaluation"
    argv = ["evaluate", "--model", str(small_world.target), "--out", str(out), "--set", f"workdir={small_world.root}",
            "--max-new-tokens", "8", "--subset", "1", "--quiet"]
    assert main(argv) == 0
    before = files_of(out)
    line = expect_one_line_error([*argv[:-1], "--max-new-tokens", "9", "--quiet"], capsys)
    assert "already holds finished results" in line and "--overwrite" not in line
    assert files_of(out) == before
    assert main([*argv, "--overwrite"]) == 0


def test_run_out_that_is_a_file_is_refused_before_loading(small_world, tmp_path, capsys):
    taken = tmp_path / "taken.txt"
    taken.write_text("not a run folder")
    line = expect_one_line_error(run_args(small_world, taken), capsys)
    assert "exists and is not a folder" in line
    assert taken.read_text() == "not a run folder"


def test_a_resume_whose_training_examples_changed_is_refused(small_world, tmp_path, capsys):
    """The config is the same, but the refusals file it names was edited after the first phase: resuming would
    train the rest of the run on other examples, so it is refused in one line and nothing is touched."""
    refusals = tmp_path / "refusals.txt"
    refusals.write_text("I cannot say.\nThat is not something I know.\n")
    config_path = REPO / "configs" / "idk_nll.yaml"
    overrides = [*small_world.overrides, f"workdir={small_world.root}", "training.epochs=1",
                 f"method.refusals={refusals}"]
    out = tmp_path / "run"
    run_unlearning(load_config(config_path, overrides), out, evaluate=False, progress=False, stop_after_phases=1,
                   log=lambda _: None)
    assert len(load_checkpoint(out)["phases_sha256"]) == 64
    refusals.write_text("Sorry, no.\n")
    before = files_of(out)
    args = ["run", str(config_path), "--out", str(out), "--quiet", "--resume"]
    for override in overrides:
        args += ["--set", override]
    line = expect_one_line_error(args, capsys)
    assert "was trained on other examples" in line and "method.refusals" in line
    assert files_of(out) == before


def test_the_examples_hash_does_not_depend_on_how_a_number_was_written():
    """epochs 3 (a config without a training section) and 3.0 (one with any training key) train the same."""
    from methods.engine.checkpoint import phases_fingerprint
    from methods.engine.trainer import Phase
    from utils.data.tokenization import Example

    def phases(epochs, weight):
        return [Phase("chunk 1", [Example([1, 2, 3], [-100, 2, 3], "F1", "forget", weight=weight)], epochs=epochs)]

    assert phases_fingerprint(phases(3, 1)) == phases_fingerprint(phases(3.0, 1.0))
    assert phases_fingerprint(phases(3, 1)) != phases_fingerprint(phases(2, 1))
    assert phases_fingerprint(phases(3, 1)) != phases_fingerprint(phases(3, 0.5))
