"""`unlearn run` on the small world: a SUGD run end to end, a run killed mid-way and resumed to the very
same weights, a 2-process DDP run equal to a 1-process one, and bad input or a diverging loss that stop
with one line and leave the last good state in place."""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from methods import sugd
from methods.engine.checkpoint import load_checkpoint
from methods.engine.trainer import LossOutput, nll_per_example
from utils.cli.main import main
from utils.data.lume import load_lume
from utils.data.tokenization import collate, encode_item
from utils.models.loading import load_model_and_tokenizer

from ..conftest import REPO

pytestmark = pytest.mark.usefixtures("one_thread")

CONFIG = REPO / "configs" / "sugd.yaml"
# 20 forget items in chunks of 4: 5 phases of 4 forget + 4 retain examples, 4 steps each at batch size 2.
RUN_OVERRIDES = ["method.name=sugd", "method.chunk_size=4", "method.positive_ratio=1", "training.epochs=1",
                 "training.batch_size=2", "training.learning_rate=1e-2", "adapter.kind=lora",
                 "adapter.lora_rank=4", "evaluation.subset=1"]
PHASES, STEPS = 5, 20
# Subprocesses get one thread each, like this process (see conftest.torch_threads).
ENV = {**os.environ, "OMP_NUM_THREADS": "1", "TOKENIZERS_PARALLELISM": "false"}


def run_args(world, out: Path, *extra_overrides: str, flags: tuple[str, ...] = ()) -> list[str]:
    args = ["run", str(CONFIG), "--out", str(out), "--quiet", *flags]
    for override in [*world.overrides, f"workdir={world.root}", *RUN_OVERRIDES, *extra_overrides]:
        args += ["--set", override]
    return args


def read_jsonl(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()]


def files_of(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def assert_same_tensors(a: dict, b: dict, atol: float) -> None:
    assert set(a) == set(b)
    for name, tensor in a.items():
        assert torch.allclose(tensor, b[name], atol=atol, rtol=0), (name, (tensor - b[name]).abs().max())


def main_expecting_user_error(argv: list[str], capsys) -> str:
    capsys.readouterr()
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert len(err.splitlines()) == 1 and err.startswith("error: "), err
    return err


def mean_nll(model_dir: Path, data_dir: Path) -> dict[str, float]:
    model, tokenizer = load_model_and_tokenizer(str(model_dir))
    model.eval()
    lume = load_lume(data_dir)
    out = {}
    with torch.no_grad():
        for split in ("forget", "retain"):
            examples = [encode_item(tokenizer, i, "output", 512, role=split) for i in lume.split_items(split)]
            out[split] = float(nll_per_example(model, collate(examples, tokenizer.pad_token_id)).mean())
    return out


@pytest.fixture(scope="module")
def reference_run(small_world, tmp_path_factory) -> Path:
    """One uninterrupted run, evaluated: the end-to-end subject and what resumed runs must reproduce."""
    out = tmp_path_factory.mktemp("run") / "sugd"
    assert main(run_args(small_world, out)) == 0
    return out


def test_run_end_to_end_writes_the_run_folder_and_unlearns(small_world, reference_run):
    out = reference_run
    for name in ("config.yaml", "log.jsonl", "phases.jsonl", "results.json", "forget_generations.jsonl",
                 "retain_generations.jsonl", "mia_nll.json", "checkpoint/state.json",
                 "checkpoint/trainable.safetensors", "model/model.safetensors"):
        assert (out / name).is_file(), name
    for plot in ("loss.png", "phases.png"):
        assert (out / plot).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n", plot
    phases = read_jsonl(out / "phases.jsonl")
    assert [p["phase"] for p in phases] == list(range(PHASES)) and all(p["steps"] == 4 for p in phases)
    assert len(read_jsonl(out / "log.jsonl")) == STEPS
    state = load_checkpoint(out)
    assert state | {"seconds": 0, "weights_sha256": "", "phases_sha256": ""} == {
        "phases_done": PHASES, "phases_total": PHASES, "global_step": STEPS, "log_lines": STEPS, "seconds": 0,
        "method": "sugd", "weights_sha256": "", "phases_sha256": ""}
    assert len(state["weights_sha256"]) == len(state["phases_sha256"]) == 64
    results = json.loads((out / "results.json").read_text())
    assert results["method"] == "sugd" and results["evaluated"]["unlearned_from"] == str(small_world.target)
    assert {"final_score", "task_aggregate", "mia_auc", "utility", "terms"} <= set(results)
    assert results["timings"]["unlearning"] > 0

    # The honest outcome: gradient ascent pushed the forget answers' NLL up, chunk after chunk and overall,
    # more than the interleaved retain examples let the retain answers' NLL move.
    assert phases[-1]["forget_nll"] > phases[0]["forget_nll"] + 0.2, [p["forget_nll"] for p in phases]
    # The plots' first point: the same check of the model before unlearning, which had memorised the forget set.
    before = json.loads((out / "before.json").read_text())
    assert before["phase"] == -1 and before["forget_nll"] < phases[0]["forget_nll"] < phases[-1]["forget_nll"]
    assert before["forget_regurgitation"] >= phases[-1]["forget_regurgitation"]
    before, after = mean_nll(small_world.target, small_world.data), mean_nll(out / "model", small_world.data)
    assert after["forget"] > before["forget"] + 0.5, (before, after)
    assert after["forget"] - before["forget"] > after["retain"] - before["retain"], (before, after)


def test_killed_run_resumes_to_the_same_weights(small_world, reference_run, tmp_path):
    out = tmp_path / "killed"
    log = (tmp_path / "stdout.txt").open("w")
    process = subprocess.Popen([sys.executable, "-m", "utils.cli", *run_args(small_world, out)], cwd=REPO, env=ENV,
                               stdout=log, stderr=subprocess.STDOUT)
    state_path = out / "checkpoint" / "state.json"
    deadline = time.monotonic() + 120
    try:
        while True:
            if state_path.is_file() and json.loads(state_path.read_text())["phases_done"] >= 1:
                process.send_signal(signal.SIGKILL)
                break
            assert process.poll() is None, (tmp_path / "stdout.txt").read_text()
            assert time.monotonic() < deadline, "no checkpoint within 2 minutes"
            time.sleep(0.005)
    finally:
        process.kill()
        process.wait()
        log.close()
    assert process.returncode == -signal.SIGKILL
    state = load_checkpoint(out)
    assert 1 <= state["phases_done"] < PHASES, state  # killed mid-run, not after the last phase
    assert not (out / "model").exists() and not (out / "results.json").exists()

    assert main(run_args(small_world, out, flags=("--resume",))) == 0
    assert_same_tensors(load_file(out / "model" / "model.safetensors"),
                        load_file(reference_run / "model" / "model.safetensors"), atol=1e-6)
    resumed, reference = read_jsonl(out / "log.jsonl"), read_jsonl(reference_run / "log.jsonl")
    assert len(resumed) == len(reference) == STEPS
    assert [r["global_step"] for r in resumed] == list(range(1, STEPS + 1))
    assert [r["loss"] for r in resumed] == pytest.approx([r["loss"] for r in reference], abs=1e-6)
    assert len(read_jsonl(out / "phases.jsonl")) == PHASES


def test_an_existing_run_is_never_overwritten(small_world, reference_run, capsys):
    before = files_of(reference_run)
    err = main_expecting_user_error(run_args(small_world, reference_run), capsys)
    # The refusal suggests only what is safe: another folder (not --resume, which re-did the evaluation
    # once, nor --overwrite).
    assert "already holds a finished run" in err and "choose another --out" in err
    assert "--resume" not in err and "--overwrite" not in err
    # Resuming with a setting that changes the training is refused too: it would mix two runs.
    err = main_expecting_user_error(run_args(small_world, reference_run, "training.learning_rate=1e-3",
                                             flags=("--resume",)), capsys)
    assert "different training.learning_rate" in err
    assert files_of(reference_run) == before


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


# A small learning rate: on a memorised model many gradient entries are near zero, where Adam's normalised
# step turns last-bit differences of the summation order into visible weight differences.
# No trackers: their event files are named by time and host, and this test compares the folders' files.
DDP_OVERRIDES = ("training.batch_size=4", "training.learning_rate=1e-3", "training.report_to=none")


def test_two_process_ddp_matches_one_process(small_world, tmp_path):
    ddp, single = tmp_path / "ddp", tmp_path / "single"
    # A global batch of 4: each of the 2 processes takes 2 examples of every step. The DDP run also cuts
    # them into micro-batches by padded tokens (a budget below two rows of the longer examples), so the
    # processes run different numbers of micro-batches unless padded with zero-weight ones: same result.
    args = run_args(small_world, ddp, *DDP_OVERRIDES, "training.max_micro_batch_tokens=40", flags=("--no-eval",))
    completed = subprocess.run(
        [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_addr", "127.0.0.1",
         "--master_port", str(free_port()), "-m", "utils.cli", *args],
        check=False, cwd=REPO, env=ENV, capture_output=True, text=True, timeout=300)
    assert completed.returncode == 0, completed.stdout[-3000:] + completed.stderr[-3000:]
    # The 1-process run goes into the folder of an attempt killed before its first checkpoint: its stale
    # log lines must not lead the new log.
    single.mkdir()
    (single / ".lume-unlearning").write_text('{"made_by": "unlearn run"}\n')  # (the attempt's folder marker)
    (single / "log.jsonl").write_text('{"global_step": 1, "loss": 0.0}\n' * 3)
    (single / "phases.jsonl").write_text('{"phase": 0}\n')
    assert main(run_args(small_world, single, *DDP_OVERRIDES, flags=("--no-eval", "--resume"))) == 0

    # Float sums over 2 examples per process instead of 4 differ in the last bits, and Adam's normalised
    # steps amplify that where gradients are near zero (a single entry of lora_A can move by ~1e-3). So:
    # elementwise within 5e-3 of weights of size ~0.1, and the learnt update (lora_B starts at zero, so its
    # final value is the update) equal to within 1% of its norm; a process that saw other examples than its
    # share of the global batch moves these by tens of percent.
    ddp_weights = load_file(ddp / "checkpoint" / "trainable.safetensors")
    single_weights = load_file(single / "checkpoint" / "trainable.safetensors")
    assert_same_tensors(ddp_weights, single_weights, atol=5e-3)
    updates = [name for name in single_weights if "lora_B" in name]
    assert updates
    for name in updates:
        relative = float((ddp_weights[name] - single_weights[name]).norm() / single_weights[name].norm())
        assert relative < 1e-2, (name, relative)
    # Written once, by the main process, with the loss of the whole global batch.
    ddp_log, single_log = read_jsonl(ddp / "log.jsonl"), read_jsonl(single / "log.jsonl")
    assert len(ddp_log) == len(single_log) == 10
    assert [r["loss"] for r in ddp_log] == pytest.approx([r["loss"] for r in single_log], abs=1e-5)
    ddp_phases, single_phases = read_jsonl(ddp / "phases.jsonl"), read_jsonl(single / "phases.jsonl")
    assert len(ddp_phases) == PHASES
    for key in ("forget_nll", "retain_nll"):
        assert [p[key] for p in ddp_phases] == pytest.approx([p[key] for p in single_phases], abs=1e-5), key
    # The quick checks ran sharded over both processes (each generated half the prompts) and gathered: before
    # any training (same weights) they equal the one-process check; after each phase they are there.
    ddp_before, single_before = read_jsonl(ddp / "before.json"), read_jsonl(single / "before.json")
    assert ddp_before[0].keys() == single_before[0].keys() >= {"forget_regurgitation", "retain_knowledge",
                                                                "forget_nll"}
    assert ddp_before == [pytest.approx(single_before[0], abs=1e-6)]
    assert all(0 <= p["forget_regurgitation"] <= 1 and 0 <= p["retain_knowledge"] <= 1 for p in ddp_phases)
    assert sorted(files_of(ddp)) == sorted(files_of(single))


@pytest.mark.parametrize("override, phrase", [
    ("method.chunk_size=0", "method.chunk_size must be a positive integer, got 0"),
    ("method.positive_ratio=-1", "method.positive_ratio must be 0 or more, got -1"),
    ("adapter.target_modules=[nope_proj]", "the model has no module named nope_proj"),
    ("method.name=nope", "unknown method 'nope'"),
    ("evaluation.subset=0", "evaluation.subset must be at least 1 document per task"),
])
def test_bad_settings_stop_before_anything_is_written(override, phrase, small_world, tmp_path, capsys):
    out = tmp_path / "run"
    err = main_expecting_user_error(run_args(small_world, out, override), capsys)
    assert phrase in err
    assert not out.exists()


def test_diverging_loss_keeps_the_last_good_checkpoint(small_world, reference_run, tmp_path, monkeypatch, capsys):
    real_make_loss = sugd.make_loss  # the loss sugd's terms make
    calls = 0

    def make_loss(method, reference=None):
        real = real_make_loss(method, reference)

        def loss_fn(model, batch):
            nonlocal calls
            calls += 1
            output = real(model, batch)
            if calls == 2 * 4 + 2:  # the 2nd step of the 3rd chunk
                return LossOutput(per_example=output.per_example * float("nan"), nll=output.nll)
            return output

        return loss_fn

    monkeypatch.setattr(sugd, "make_loss", make_loss)
    out = tmp_path / "run"
    err = main_expecting_user_error(run_args(small_world, out), capsys)
    assert "loss became nan in phase 'sugd-chunk2' at step 2" in err
    state = load_checkpoint(out)
    assert state["phases_done"] == 2 and state["log_lines"] == 8
    weights = load_file(out / "checkpoint" / "trainable.safetensors")
    assert weights and all("lora_" in name and torch.isfinite(t).all() for name, t in weights.items())
    assert len(read_jsonl(out / "log.jsonl")) == 9  # the good first step of the diverged chunk
    assert not (out / "model").exists() and not (out / "results.json").exists()

    # A kill between the two renames of the next checkpoint save leaves only the set-aside copy; resume
    # must find it. With the loss healthy again, the run ends where the uninterrupted one did.
    monkeypatch.setattr(sugd, "make_loss", real_make_loss)
    os.replace(out / "checkpoint", out / ".checkpoint.old")
    assert load_checkpoint(out)["phases_done"] == 2
    assert main(run_args(small_world, out, flags=("--resume",))) == 0
    assert_same_tensors(load_file(out / "model" / "model.safetensors"),
                        load_file(reference_run / "model" / "model.safetensors"), atol=1e-6)
    assert len(read_jsonl(out / "log.jsonl")) == STEPS
    shutil.rmtree(out)


def test_sparser_checkpoints_kept_in_number_and_a_resume_from_one(small_world, reference_run, tmp_path):
    """checkpoint_every=2 and keep_checkpoints=2 on 5 phases: checkpoints after phases 2, 4 and 5 (the last),
    the newest in checkpoint/ and one earlier kept; a run stopped after phase 3 resumes from phase 2's
    checkpoint to the weights of the uninterrupted run (whose checkpoints came after every phase)."""
    from utils.experiment import Experiment

    out = tmp_path / "sparse"
    overrides = [*small_world.overrides, f"workdir={small_world.root}", *RUN_OVERRIDES,
                 "training.checkpoint_every=2", "training.keep_checkpoints=2"]
    experiment = Experiment.from_config(str(CONFIG), overrides, out)
    plan = experiment.plan()["checkpoints"]
    assert plan["count"] == 3 and "one every 2 phases and after the last" in plan["note"]
    assert experiment.run(progress=False, evaluate=False, stop_after_phases=3, log=lambda _: None) == \
        {"stopped_after_phase": 3}
    assert load_checkpoint(out)["phases_done"] == 2 and not (out / "checkpoints").exists()
    # A resume may change how often checkpoints are written: it does not change the weights.
    resumed = Experiment.from_config(str(CONFIG), [*overrides[:-1], "training.keep_checkpoints=2",
                                                   "training.checkpoint_every=1"], out)
    resumed.run(resume=True, progress=False, evaluate=False, log=lambda _: None)
    assert load_checkpoint(out)["phases_done"] == PHASES
    kept = sorted(p.name for p in (out / "checkpoints").iterdir())
    assert kept == ["after-phase-0004"], kept  # after 2, 3 (every=1 now) and 4 came; one earlier is kept
    assert load_file(out / "checkpoints" / kept[0] / "trainable.safetensors").keys() == \
        load_file(out / "checkpoint" / "trainable.safetensors").keys()
    assert_same_tensors(load_file(out / "model" / "model.safetensors"),
                        load_file(reference_run / "model" / "model.safetensors"), atol=1e-6)
    assert len(read_jsonl(out / "log.jsonl")) == STEPS and len(read_jsonl(out / "phases.jsonl")) == PHASES
