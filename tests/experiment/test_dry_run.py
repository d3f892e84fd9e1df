"""`unlearn run CONFIG --dry-run`: the schedule a run would train, with no model loaded and nothing
written to the run folder. The seed's SUGD on the real validation split is 224 optimiser steps of 8
examples per chunk of 32; on the small world the dry run's steps are the ones a real run records."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest

from utils.cli.main import main

from ..conftest import REPO

pytestmark = pytest.mark.usefixtures("one_thread")


def refuse_to_load_models(monkeypatch) -> None:
    """Any attempt to load a model fails the test."""
    from utils.experiment import resolved  # imported before the patch, so it never binds the refusal

    def refuse(*args, **kwargs):
        raise AssertionError("a dry run loaded a model")

    monkeypatch.setattr("utils.models.loading.load_model_and_tokenizer", refuse)
    monkeypatch.setattr(resolved, "load_model_and_tokenizer", refuse)
    monkeypatch.setattr("transformers.AutoModelForCausalLM.from_pretrained", refuse)


def read_jsonl(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()]


def test_the_seed_sugd_setting_is_224_steps_of_8_examples_per_chunk(real_data_dir, tmp_path, monkeypatch, capsys):
    refuse_to_load_models(monkeypatch)
    out, schedule_path = tmp_path / "run", tmp_path / "schedule.json"
    assert main(["run", str(REPO / "configs" / "olmo-7b" / "sugd.yaml"), "--dry-run", "--out", str(out),
                 "--schedule-out", str(schedule_path), "--set", f"data.path={real_data_dir}",
                 "--set", "data.split=validation"]) == 0
    printed = capsys.readouterr().out
    assert not out.exists()
    schedule = json.loads(schedule_path.read_text())

    forget_items = schedule["items"]["forget"]
    assert forget_items == 254  # docs/benchmark.md, "Data layout": the validation split's forget rows
    full_chunks, remainder = divmod(forget_items, 32)
    phases = schedule["phases"]
    assert len(phases) == full_chunks + (remainder > 0)
    for phase in phases[:full_chunks]:
        assert (phase["forget_examples"], phase["retain_examples"], phase["steps"]) == (32, 224, 224)
        assert phase["examples_per_step"] == {"min": 8, "median": 8, "max": 8}
    last = phases[-1]
    # Each forget example and its 7 retain examples make one step, for 7 epochs.
    assert (last["forget_examples"], last["retain_examples"], last["steps"]) == (remainder, 7 * remainder, 7 * remainder)
    assert last["examples_per_step"] == {"min": 8, "median": 8, "max": 8}
    assert schedule["total_steps"] == 224 * full_chunks + 7 * remainder == 1778
    # configs/olmo-7b/sugd_training.yaml: a 3 GB checkpoint every 5th chunk and after the last (here 5 and 8).
    assert schedule["checkpoints"] == {"count": 2, "path": str(out / "checkpoint"), "every": 5, "keep": 1,
                                       "note": "one every 5 phases and after the last, each replacing the one "
                                               "before"}

    # The tokenizer is a hub name: tokens are unknown, with the reason, and the examples are stand-ins.
    assert schedule["stand_in_examples"] and all(phase["tokens_per_step"] is None for phase in phases)
    assert "allenai/OLMo-7B-0724-Instruct-hf (model.tokenizer) is a hub name" in schedule["tokenizer"]["reason"]
    assert "sugd-chunk0  chunk  32      224     7       in order  224    8              unknown" in printed
    assert "total: 1778 optimiser steps in 8 phases" in printed


# AGAD with a batch that does not divide its phases and half epochs: ragged last batches, shuffled phases.
AGAD_OVERRIDES = ["method.name=agad", "method.chunk_size=8", "training.batch_size=3", "training.epochs=1.5",
                  "training.learning_rate=1e-3", "adapter.kind=lora", "adapter.lora_rank=4",
                  "evaluation.per_phase_subset=0"]


def agad_args(world, out: Path, *flags: str) -> list[str]:
    args = ["run", str(REPO / "configs" / "agad.yaml"), "--out", str(out), "--quiet", *flags]
    for override in [*world.overrides, f"workdir={world.root}", *AGAD_OVERRIDES]:
        args += ["--set", override]
    return args


def test_dry_run_steps_are_the_steps_a_run_records(small_world, tmp_path, monkeypatch, capsys):
    dry_out, schedule_path = tmp_path / "dry", tmp_path / "schedule.json"
    dry_out.mkdir()
    with monkeypatch.context() as patched:
        refuse_to_load_models(patched)
        assert main(agad_args(small_world, dry_out, "--dry-run", "--schedule-out", str(schedule_path))) == 0
    printed = capsys.readouterr().out
    assert list(dry_out.iterdir()) == []
    schedule = json.loads(schedule_path.read_text())
    # The prepared world's tokenizer is local: tokens are measured on the real examples.
    assert schedule["tokenizer"] == {"path": str(small_world.target), "reason": ""}
    assert not schedule["stand_in_examples"]
    for phase in schedule["phases"]:
        spread = phase["tokens_per_step"]
        assert 0 < spread["min"] <= spread["median"] <= spread["max"], phase
        assert 1 <= phase["examples_per_step"]["min"] <= phase["examples_per_step"]["max"] == 3
    assert f"total: {schedule['total_steps']} optimiser steps" in printed

    run_out = tmp_path / "run"
    assert main(agad_args(small_world, run_out, "--no-eval")) == 0
    recorded = read_jsonl(run_out / "phases.jsonl")
    assert [(p["name"], p["kind"], p["steps"]) for p in recorded] == \
        [(p["name"], p["kind"], p["steps"]) for p in schedule["phases"]]
    assert len(read_jsonl(run_out / "log.jsonl")) == schedule["total_steps"]
    # 3 ascent phases (8, 8, 4 forget), an annealing of 5 retain after each full chunk (the seed's: none after
    # the remainder chunk of 4), a final one on all 20: ceil(1.5 x batches).
    assert [p["steps"] for p in recorded] == [math.ceil(1.5 * math.ceil(n / 3)) for n in (8, 5, 8, 5, 4, 20)]


@pytest.mark.parametrize("flags, phrase", [
    (("--schedule-out", "{tmp}/s.json"), "--schedule-out writes the schedule of a dry run: pass it with --dry-run"),
    (("--dry-run", "--schedule-out", "{tmp}/run/s.json"), "lies in the run folder"),
    (("--dry-run", "--resume"), "drop --resume"),
])
def test_dry_run_flag_mistakes_are_one_line_errors(flags, phrase, tmp_path, capsys):
    out = tmp_path / "run"
    argv = ["run", str(REPO / "configs" / "sugd.yaml"), "--out", str(out),
            *(flag.format(tmp=tmp_path) for flag in flags)]
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert len(err.splitlines()) == 1 and err.startswith("error: ") and phrase in err, err
    assert list(tmp_path.iterdir()) == []
