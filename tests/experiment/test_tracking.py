"""Experiment tracking through accelerate's trackers: a run's TensorBoard events hold the loss of each of its
optimiser steps, its per-chunk checks and its final scores (a score that was not measured is left out,
never logged as a number); `none` writes none; a tracker that is not installed stops the run in one line
before anything is written."""

from __future__ import annotations

import json

import pytest

from utils.errors import UserError
from utils.experiment import Experiment
from utils.experiment.tracking import chosen_trackers, flat_config, installed

from ..conftest import REPO
from ..experiment.test_run import PHASES, RUN_OVERRIDES, STEPS

pytestmark = pytest.mark.usefixtures("one_thread")


def scalars(folder) -> dict[str, list[tuple[int, float]]]:
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = EventAccumulator(str(folder))
    events.Reload()
    return {tag: [(event.step, event.value) for event in events.Scalars(tag)] for tag in events.Tags()["scalars"]}


@pytest.mark.skipif(not installed("tensorboard"), reason="tensorboard is not installed")
def test_a_runs_tensorboard_events_hold_its_losses_checks_and_scores(small_world, tmp_path):
    out = tmp_path / "run"
    experiment = Experiment.from_config(REPO / "configs" / "sugd.yaml",
                                        [*small_world.overrides, f"workdir={small_world.root}", *RUN_OVERRIDES], out)
    results = experiment.run(progress=False, log=lambda _: None)
    logged = scalars(out / "tensorboard")
    steps = [json.loads(line) for line in (out / "log.jsonl").read_text().splitlines()]
    assert [step for step, _ in logged["train/loss"]] == list(range(1, STEPS + 1))
    assert [value for _, value in logged["train/loss"]] == pytest.approx([s["loss"] for s in steps], rel=1e-6)
    # SUGD's two terms and their weights beside the total (1 on forget, whose ascent term is minus its NLL, and
    # positive_factor on retain).
    for name in ("forget_ascent", "retain_nll"):
        assert [value for _, value in logged[f"train/term/{name}"]] == \
            pytest.approx([s["terms"][name] for s in steps], rel=1e-6)
    assert [value for _, value in logged["train/weight/forget"]] == pytest.approx([1.0] * STEPS)
    assert [value for _, value in logged["train/weight/retain"]] == \
        pytest.approx([experiment.config.method.positive_factor] * STEPS)
    phases = [json.loads(line) for line in (out / "phases.jsonl").read_text().splitlines()]
    assert [value for _, value in logged["phase/forget_nll"]] == pytest.approx([p["forget_nll"] for p in phases],
                                                                             rel=1e-6)
    assert len(logged["phase/forget_regurgitation"]) == PHASES
    ((step, score),) = logged["final/final_score"]
    assert step == STEPS and score == pytest.approx(results["final_score"], rel=1e-6)
    assert logged["final/utility"] == [(STEPS, pytest.approx(results["utility"]["score"], rel=1e-6))]
    assert logged["final/mia_auc"] == [(STEPS, pytest.approx(results["mia_auc"], rel=1e-6))]


def test_no_tracker_and_a_missing_one(small_world, tmp_path, monkeypatch):
    assert chosen_trackers("none") == [] and chosen_trackers(" tensorboard , tensorboard") == ["tensorboard"] \
        if installed("tensorboard") else True
    with pytest.raises(UserError, match="unknown tracker 'neptune'"):
        chosen_trackers("neptune")
    monkeypatch.setattr("utils.experiment.tracking.installed", lambda module: module != "wandb")
    out = tmp_path / "run"
    experiment = Experiment.from_config(REPO / "configs" / "sugd.yaml",
                                        [*small_world.overrides, f"workdir={small_world.root}", *RUN_OVERRIDES,
                                         "training.report_to=wandb"], out)
    with pytest.raises(UserError, match=r"training.report_to: wandb is not installed \(pip install wandb\)"):
        experiment.run(progress=False, log=lambda _: None)
    assert not out.exists()
    assert flat_config({"a": {"b": 1, "c": None, "d": [1, 2]}, "e": True}) == \
        {"a.b": 1, "a.c": "None", "a.d": "[1, 2]", "e": True}


def test_report_to_none_writes_no_tracker_files(small_world, tmp_path):
    out = tmp_path / "run"
    experiment = Experiment.from_config(REPO / "configs" / "sugd.yaml",
                                        [*small_world.overrides, f"workdir={small_world.root}", *RUN_OVERRIDES,
                                         "training.report_to=none"], out)
    experiment.run(progress=False, evaluate=False, log=lambda _: None)
    assert (out / "log.jsonl").is_file() and not (out / "tensorboard").exists()


def test_only_measured_numbers_reach_a_tracker(tmp_path):
    from utils.experiment.tracking import Trackers

    class Recorder:
        def __init__(self):
            self.calls = []

        def log(self, values, step):
            self.calls.append((values, step))

    trackers = Trackers([], tmp_path, "run")
    recorder = Recorder()
    trackers.trackers.append(recorder)
    trackers.log({"final/mia_auc": None, "phase/forget_nll": float("nan"), "phase/name": "chunk0",
                  "final/final_score": 0.5, "phase/chunk": 3, "flag": True}, step=7)
    trackers.log({"final/utility": None}, step=8)
    assert recorder.calls == [({"final/final_score": 0.5, "phase/chunk": 3.0}, 7)]
