"""training.stop_chunk_at: a phase with forget examples (a SUGD/AGAD chunk) ends after the first epoch whose mean
forget answer NLL reaches the level, and the run goes on with the next phase. A level reached at once stops every
chunk after its first epoch; the gold standard's level stops some chunks and not others; an unreachable level
trains what the run without the key trains, to the bit; a killed run resumes to the same weights; bad values and a
missing gold standard end in one line."""

from __future__ import annotations

import copy
import json
import shutil
from pathlib import Path

import pytest
from safetensors.torch import load_file

from methods.engine.checkpoint import load_checkpoint
from utils.cli.main import main
from utils.config import load_config
from utils.errors import UserError
from utils.experiment.run import run_unlearning

from ..conftest import REPO
from ..experiment.test_resume_and_finished_runs import expect_one_line_error
from ..experiment.test_run import assert_same_tensors, read_jsonl

pytestmark = pytest.mark.usefixtures("one_thread")

CHUNK_STOP = REPO / "configs" / "sugd_chunk_stop.yaml"
# SUGD in small chunks (PHASES of them, EPOCHS epochs of PER_EPOCH steps each), full fine-tuning at a learning rate
# at which the forget NLL climbs within a chunk: what a chunk stop cuts short.
CHUNKED = ["method.chunk_size=4", "method.positive_ratio=1", "training.epochs=3", "training.batch_size=2",
           "training.learning_rate=2e-3", "adapter.kind=full", "evaluation.per_phase_subset=0"]
PHASES, PER_EPOCH, EPOCHS = 5, 4, 3


def overrides(world, *extra: str) -> list[str]:
    return [*world.overrides, f"workdir={world.root}", *CHUNKED, *extra]


def run(world, out: Path, *extra: str, **kwargs) -> dict:
    config = load_config(CHUNK_STOP, overrides(world, *extra))
    return run_unlearning(config, out, progress=False, evaluate=False, log=kwargs.pop("log", lambda _: None), **kwargs)


def weights(out: Path) -> dict:
    return load_file(str(out / "model" / "model.safetensors"))


def start_level(world) -> float:
    """The target's forget answer NLL (the memorised start of every chunk's climb) plus a little."""
    report = json.loads((world.root / "prepare_report.json").read_text())
    return report["target"]["forget"]["output_nll"] + 0.1


@pytest.fixture(scope="module")
def plain(small_world, tmp_path_factory) -> Path:
    """The same schedule without the key (null): every chunk trains its three epochs."""
    out = tmp_path_factory.mktemp("chunk_stop") / "plain"
    run(small_world, out, "training.stop_chunk_at=null")
    return out


@pytest.fixture(scope="module")
def low(small_world, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("chunk_stop") / "low"
    lines: list[str] = []
    run(small_world, out, f"training.stop_chunk_at={start_level(small_world)}", log=lines.append)
    (out / "printed.txt").write_text("\n".join(lines))
    return out


def test_a_level_reached_at_once_stops_every_chunk_after_its_first_epoch(small_world, plain, low, tmp_path, capsys):
    level = start_level(small_world)
    # The dry run lists the full schedule and says chunks may end early, at which level.
    schedule_path = tmp_path / "schedule.json"
    args = ["run", str(CHUNK_STOP), "--dry-run", "--out", str(tmp_path / "dry"), "--schedule-out", str(schedule_path)]
    for override in overrides(small_world, f"training.stop_chunk_at={level}"):
        args += ["--set", override]
    capsys.readouterr()
    assert main(args) == 0
    said = [line for line in capsys.readouterr().out.splitlines() if line.startswith("chunk stop:")]
    assert len(said) == 1 and f"{level:.4g}" in said[0] and "most it trains" in said[0]
    planned = [phase["steps"] for phase in json.loads(schedule_path.read_text())["phases"]]
    assert planned == [PER_EPOCH * EPOCHS] * PHASES

    phases = read_jsonl(low / "phases.jsonl")
    assert [phase["steps"] for phase in phases] == [PER_EPOCH] * PHASES
    assert sum(phase["steps"] for phase in phases) < sum(planned)
    for phase in phases:
        stop = phase["stopped_early"]
        assert stop["epoch"] == 1 and stop["level"] == pytest.approx(level)
        # One epoch trained: the phase's forget NLL is that epoch's, and it is past the level by a margin.
        assert stop["forget_nll"] == pytest.approx(phase["forget_nll"], rel=1e-9)
        assert stop["forget_nll"] > level + 0.05
    assert len(read_jsonl(low / "log.jsonl")) == PER_EPOCH * PHASES
    # The first chunk's first epoch is the plain run's, step for step; after it the two part.
    first = [line["loss"] for line in read_jsonl(low / "log.jsonl")[:PER_EPOCH]]
    assert first == [line["loss"] for line in read_jsonl(plain / "log.jsonl")[:PER_EPOCH]]
    printed = (low / "printed.txt").read_text().splitlines()
    assert sum("after epoch 1 of 3; next phase" in line for line in printed) == PHASES
    assert "stopped_early" not in read_jsonl(plain / "phases.jsonl")[0]  # off: phases.jsonl as before the key


def test_the_gold_standard_level_stops_only_the_chunks_that_reach_it(small_world, plain, tmp_path):
    out = tmp_path / "gold"
    run(small_world, out)  # the shipped config: training.stop_chunk_at: gold_standard
    report = json.loads((small_world.root / "prepare_report.json").read_text())
    gold = report["gold_standard"]["forget"]["output_nll"]
    phases = read_jsonl(out / "phases.jsonl")
    assert len(phases) == PHASES
    for phase in phases:
        stop = phase["stopped_early"]
        if stop is None:
            assert phase["steps"] == PER_EPOCH * EPOCHS
        else:
            assert 1 <= stop["epoch"] < EPOCHS and phase["steps"] == PER_EPOCH * stop["epoch"]
            assert stop["level"] == pytest.approx(gold) and stop["forget_nll"] >= gold
    # The first chunk starts from the memorised target and stays far below the gold standard's NLL before its
    # last epoch; later chunks, starting from weights already pushed up, reach it.
    assert phases[0]["stopped_early"] is None
    assert any(phase["stopped_early"] for phase in phases[1:])
    # The saved config keeps the setting as written.
    assert "stop_chunk_at: gold_standard" in (out / "config.yaml").read_text()


def test_an_unreachable_level_trains_what_the_run_without_it_trains(small_world, plain, tmp_path):
    out = tmp_path / "unreachable"
    run(small_world, out, "training.stop_chunk_at=1000")
    phases, reference = read_jsonl(out / "phases.jsonl"), read_jsonl(plain / "phases.jsonl")
    assert [p["stopped_early"] for p in phases] == [None] * PHASES
    assert [p["steps"] for p in phases] == [p["steps"] for p in reference] == [PER_EPOCH * EPOCHS] * PHASES
    assert [line["loss"] for line in read_jsonl(out / "log.jsonl")] == \
        [line["loss"] for line in read_jsonl(plain / "log.jsonl")]
    assert_same_tensors(weights(out), weights(plain), atol=0)


def test_agad_stops_its_ascent_chunks_and_anneals_in_full(small_world, tmp_path):
    agad = [*small_world.overrides, f"workdir={small_world.root}", *CHUNKED[2:], "method.chunk_size=8",
            "training.batch_size=4"]
    plain_out, stopped_out = tmp_path / "agad_plain", tmp_path / "agad_stopped"
    for out, level in ((plain_out, "null"), (stopped_out, start_level(small_world))):
        config = load_config(REPO / "configs" / "agad.yaml", [*agad, f"training.stop_chunk_at={level}"])
        run_unlearning(config, out, progress=False, evaluate=False, log=lambda _: None)
    plain_phases, phases = read_jsonl(plain_out / "phases.jsonl"), read_jsonl(stopped_out / "phases.jsonl")
    assert [p["name"] for p in phases] == [p["name"] for p in plain_phases]
    ascents = [i for i, p in enumerate(phases) if p["kind"] == "ascent"]
    assert ascents and len(ascents) < len(phases)
    for index, (phase, full) in enumerate(zip(phases, plain_phases, strict=True)):
        if index in ascents:
            assert phase["stopped_early"] is not None and phase["steps"] < full["steps"]
        else:  # annealing trains on retain examples only: never stopped
            assert phase["stopped_early"] is None and phase["steps"] == full["steps"]


def test_a_killed_run_resumes_to_the_weights_of_the_uninterrupted_one(small_world, low, tmp_path):
    level = start_level(small_world)
    out = tmp_path / "killed"
    assert run(small_world, out, f"training.stop_chunk_at={level}", stop_after_phases=2) == {"stopped_after_phase": 2}
    assert load_checkpoint(out)["phases_done"] == 2
    argv = ["run", str(CHUNK_STOP), "--out", str(out), "--resume", "--no-eval", "--quiet"]
    for override in overrides(small_world, f"training.stop_chunk_at={level}"):
        argv += ["--set", override]
    assert main(argv) == 0
    assert_same_tensors(weights(out), weights(low), atol=1e-6)
    resumed, whole = read_jsonl(out / "phases.jsonl"), read_jsonl(low / "phases.jsonl")
    assert [(p["steps"], p["stopped_early"]["epoch"]) for p in resumed] == \
        [(p["steps"], p["stopped_early"]["epoch"]) for p in whole]
    assert [r["global_step"] for r in read_jsonl(out / "log.jsonl")] == list(range(1, PER_EPOCH * PHASES + 1))


@pytest.mark.parametrize("value", ["-1", "0", "-0.5", "sometimes", "[1, 2]", "true", ".inf"])
def test_a_bad_level_ends_in_one_line_naming_the_key(small_world, tmp_path, capsys, value):
    with pytest.raises(UserError, match=r"training\.stop_chunk_at"):
        load_config(None, [f"training.stop_chunk_at={value}"])
    args = ["run", str(CHUNK_STOP), "--dry-run", "--out", str(tmp_path / "dry")]
    for override in overrides(small_world, f"training.stop_chunk_at={value}"):
        args += ["--set", override]
    assert "training.stop_chunk_at" in expect_one_line_error(args, capsys)


def test_gold_standard_without_a_prepare_report_ends_in_one_line(small_world, tmp_path, capsys):
    # A workdir holding the world's data and target but no prepare_report.json.
    workdir = tmp_path / "world"
    workdir.mkdir()
    for part in ("data", "target", "gold_standard"):
        (workdir / part).symlink_to(small_world.root / part)
    out = tmp_path / "run"
    for flags in (("--dry-run",), ("--no-eval",)):
        args = ["run", str(CHUNK_STOP), "--out", str(out), "--quiet", *flags]
        for override in [*small_world.overrides, *CHUNKED, f"workdir={workdir}"]:
            args += ["--set", override]
        line = expect_one_line_error(args, capsys)
        assert "training.stop_chunk_at: gold_standard" in line and "prepare_report.json" in line
        assert not out.exists() or not any(out.iterdir())
    shutil.rmtree(workdir)


def test_two_processes_decide_each_stop_as_one_process_does(small_world, low, tmp_path):
    """Under DDP each process sees its share of an epoch's forget NLLs: the stop is decided on their sum."""
    import subprocess
    import sys

    from ..experiment.test_run import ENV, free_port

    out = tmp_path / "two"
    args = ["run", str(CHUNK_STOP), "--out", str(out), "--no-eval", "--quiet"]
    for override in overrides(small_world, f"training.stop_chunk_at={start_level(small_world)}",
                              "training.report_to=none"):
        args += ["--set", override]
    completed = subprocess.run(
        [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_addr", "127.0.0.1",
         "--master_port", str(free_port()), "-m", "utils.cli", *args],
        check=False, cwd=REPO, env=ENV, capture_output=True, text=True, timeout=600)
    assert completed.returncode == 0, completed.stdout[-3000:] + completed.stderr[-3000:]
    two, one = read_jsonl(out / "phases.jsonl"), read_jsonl(low / "phases.jsonl")
    assert [(p["steps"], p["stopped_early"]["epoch"]) for p in two] == \
        [(p["steps"], p["stopped_early"]["epoch"]) for p in one]
    # The same NLLs up to the drift of a different reduction order over the run's steps.
    for a, b in zip(two, one, strict=True):
        assert a["stopped_early"]["forget_nll"] == pytest.approx(b["stopped_early"]["forget_nll"], rel=2e-3)


def test_the_trainer_checks_at_each_epoch_end_but_the_last(tiny_model, tiny_tokenizer):
    """Epoch ends follow the Trainer's own batches (shuffled, length-grouped, a fractional last epoch); a phase
    without forget examples, a single epoch and an unreachable level train every step."""
    import dataclasses
    import math

    from methods.engine.trainer import Phase, Trainer, nll_loss
    from utils.config import TrainingConfig
    from utils.data.tokenization import encode_text

    from ..conftest import SENTENCES

    texts = [encode_text(tiny_tokenizer, sentence) for sentence in SENTENCES]
    mixed = [dataclasses.replace(e, role="forget") if i % 2 else e for i, e in enumerate(texts)]
    per_epoch = math.ceil(len(mixed) / 3)

    def train(examples, epochs: float, level):
        config = TrainingConfig(epochs=epochs, batch_size=3, learning_rate=1e-3, group_by_length=True,
                                stop_chunk_at=level)
        trainer = Trainer(copy.deepcopy(tiny_model), tiny_tokenizer, config, nll_loss, progress=False)
        return trainer.train_phase(Phase("p", examples, epochs=epochs, shuffle=True))

    # An untrained model's NLL is far above this level: the first epoch reaches it.
    stopped = train(mixed, 2.5, 1.0)
    assert stopped.steps == per_epoch and stopped.stopped_early["epoch"] == 1
    assert stopped.stopped_early["forget_nll"] == pytest.approx(stopped.forget_nll) and stopped.forget_nll > 3
    for examples, epochs, level in ((mixed, 1, 1.0), (texts, 2.5, 1.0), (mixed, 2.5, 1000.0)):
        result = train(examples, epochs, level)
        assert result.stopped_early is None and result.steps == math.ceil(epochs * per_epoch)
    with pytest.raises(UserError, match="training.stop_chunk_at"):
        train(mixed, 2.5, "gold_standard")
