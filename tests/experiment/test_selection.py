"""Checkpoint selection during a run (training.select, patience, budget_minutes): a run whose later phases
over-forget keeps an earlier checkpoint when asked, patience and a time budget stop training and still finish
the run, a killed run resumes to the same weights and curve, and the score reads only the run's training items."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

import utils.experiment.selection as selection_module
from utils.cli.main import main
from utils.config import load_config
from utils.data.lume import find_mia_dir, load_lume, load_mia_documents
from utils.errors import UserError
from utils.experiment.run import run_unlearning
from utils.experiment.selection import SELECTION_FILE, selection_score

from ..experiment.test_run import assert_same_tensors, read_jsonl

pytestmark = pytest.mark.usefixtures("one_thread")

# SUGD in 5 chunks of 4 forget + 4 retain examples (4 steps each), full fine-tuning at a learning rate that
# over-forgets after the second chunk on the small world: the selection score peaks at an early phase and
# falls by the last (the retain NLL climbs with the forget NLL).
OVER_FORGETTING = ["method.name=sugd", "method.chunk_size=4", "method.positive_ratio=1", "training.epochs=1",
                   "training.batch_size=2", "training.learning_rate=2e-3", "adapter.kind=full",
                   "evaluation.subset=1"]
PHASES, STEPS = 5, 20


def run(world, out: Path, *extra: str, evaluate: bool = False, **kwargs) -> dict:
    config = world.config(*OVER_FORGETTING, *extra)
    return run_unlearning(config, out, progress=False, evaluate=evaluate, log=lambda _: None, **kwargs)


def selection_of(out: Path) -> dict:
    return json.loads((out / "selection.json").read_text())


def model_weights(out: Path) -> dict:
    return load_file(str(out / "model" / "model.safetensors"))


@pytest.fixture(scope="module")
def best_run(small_world, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("select") / "best"
    run(small_world, out, "training.select.keep=best", "training.keep_checkpoints=10")
    return out


def test_keep_best_keeps_the_earlier_checkpoint_and_keep_last_the_last(best_run, small_world, tmp_path):
    selection = selection_of(best_run)
    curve, chosen = selection["curve"], selection["chosen"]
    assert [point["phase"] for point in curve] == [-1, 0, 1, 2, 3, 4]
    assert [point["step"] for point in curve] == [0, 4, 8, 12, 16, 20]
    # The later phases over-forget: the chosen point is an earlier phase, and it beats the last by a margin.
    assert 0 <= chosen["phase"] < PHASES - 1
    assert selection["score"] == max(point["score"] for point in curve)
    assert selection["score"] > curve[-1]["score"] + 0.1
    assert curve[-1]["forget_nll"] > curve[chosen["phase"] + 1]["forget_nll"] + 1.0
    assert "best selection score" in chosen["reason"]
    # The saved model holds that phase's weights (kept as checkpoints/after-phase-NNNN), not the last ones.
    kept = load_file(str(best_run / "checkpoints" / f"after-phase-{chosen['phase'] + 1:04d}" / "trainable.safetensors"))
    saved = model_weights(best_run)
    assert_same_tensors({k: saved[k] for k in kept}, kept, atol=0)
    last = load_file(str(best_run / "checkpoint" / "trainable.safetensors"))
    assert max((saved[k] - last[k]).abs().max() for k in last) > 1e-3
    # Every phase line carries its score; the curve is drawn.
    lines = read_jsonl(best_run / "phases.jsonl")
    assert [line["selection_score"] for line in lines] == [point["score"] for point in curve[1:]]
    assert (best_run / "selection.png").stat().st_size > 1000

    # keep: last (with a patience that never triggers, so the curve is still written) keeps the last weights.
    last_out = tmp_path / "last"
    run(small_world, last_out, "training.patience=100")
    last_selection = selection_of(last_out)
    assert [p["score"] for p in last_selection["curve"]] == pytest.approx([p["score"] for p in curve], abs=1e-6)
    assert last_selection["chosen"]["phase"] == PHASES - 1 and "keep: last" in last_selection["chosen"]["reason"]
    saved_last = model_weights(last_out)
    assert_same_tensors({k: saved_last[k] for k in last}, last, atol=1e-6)


def test_patience_stops_early_and_the_run_still_finishes(small_world, tmp_path):
    out = tmp_path / "patient"
    results = run(small_world, out, "training.select.keep=best", "training.patience=2", evaluate=True)
    selection = results["selection"]
    scores = [point["score"] for point in selection["curve"]]
    best_phase = selection["chosen"]["phase"]
    # Two scores without improvement after the best, then no more phases.
    assert selection["stopped"] == "patience"
    assert len(read_jsonl(out / "phases.jsonl")) == best_phase + 3 < PHASES
    assert all(score <= scores[best_phase + 1] for score in scores[best_phase + 2:])
    written = json.loads((out / "results.json").read_text())
    assert written["selection"]["chosen"] == selection["chosen"] and "final_score" in written
    assert "without improvement" in selection["chosen"]["reason"]


def test_budget_stops_between_steps_and_keeps_the_best_so_far(small_world, tmp_path, monkeypatch):
    # A clock that advances 20 s each time it is read: a 1.5-minute budget runs out after a few steps.
    ticks = iter(range(0, 10**6, 20))
    monkeypatch.setattr(selection_module, "clock", lambda: float(next(ticks)))
    out = tmp_path / "budget"
    run(small_world, out, "training.select.keep=best", "training.select.every=2", "training.budget_minutes=1.5")
    selection = selection_of(out)
    steps = read_jsonl(out / "log.jsonl")
    assert selection["stopped"] == "budget" and "budget" in selection["chosen"]["reason"]
    assert 0 < len(steps) < STEPS
    curve = selection["curve"]
    assert [point["step"] for point in curve][:3] == [0, 2, 4]
    assert curve[-1]["step"] == len(steps)  # the weights when the budget ran out are scored too
    assert selection["score"] == max(point["score"] for point in curve)
    # The saved model holds the best-scoring weights, which the checkpoint keeps beside its last ones.
    best = load_file(str(out / "checkpoint" / "best.safetensors"))
    saved = model_weights(out)
    assert_same_tensors({k: saved[k] for k in best}, best, atol=0)
    # A stopped run killed before it finished resumes to nothing more: its checkpoint says it stopped.
    state = json.loads((out / "checkpoint" / "state.json").read_text())
    assert state["selection"]["stop_reason"] == "budget"
    (out / SELECTION_FILE).unlink()
    run(small_world, out, "training.select.keep=best", "training.select.every=2", "training.budget_minutes=1.5",
        resume=True)
    assert len(read_jsonl(out / "log.jsonl")) == len(steps)
    assert selection_of(out)["curve"] == curve
    assert_same_tensors(model_weights(out), saved, atol=0)


def test_a_killed_run_resumes_to_the_same_weights_and_curve(best_run, small_world, tmp_path):
    out = tmp_path / "resumed"
    stopped = run(small_world, out, "training.select.keep=best", "training.keep_checkpoints=10",
                  stop_after_phases=2)
    assert stopped == {"stopped_after_phase": 2}
    assert not (out / "selection.json").exists()
    run(small_world, out, "training.select.keep=best", "training.keep_checkpoints=10", resume=True)
    uninterrupted, resumed = selection_of(best_run), selection_of(out)
    assert resumed["chosen"] == uninterrupted["chosen"]
    for a, b in zip(resumed["curve"], uninterrupted["curve"], strict=True):
        assert a == pytest.approx(b, abs=1e-6)
    assert_same_tensors(model_weights(out), model_weights(best_run), atol=1e-6)


def test_the_score_reads_only_the_runs_training_items(small_world, tmp_path, monkeypatch):
    seen = []
    real_mean_nll = selection_module.mean_nll

    def spy(model, examples, pad_id, batch_size):
        seen.extend(examples)
        return real_mean_nll(model, examples, pad_id, batch_size)

    monkeypatch.setattr(selection_module, "mean_nll", spy)
    run(small_world, tmp_path / "spied", "training.select.keep=best", stop_after_phases=1)
    lume = load_lume(small_world.data)
    ids = {"forget": {item.id for item in lume.forget}, "retain": {item.id for item in lume.retain}}
    assert seen and {e.role for e in seen} == {"forget", "retain"}
    assert all(e.item_id in ids[e.role] for e in seen)
    # Nothing of the MIA: no non-member document is among the texts scored, nor any text outside the split.
    from utils.models.loading import load_tokenizer

    tokenizer = load_tokenizer(str(small_world.target))
    scored = " ".join(tokenizer.decode(e.input_ids, skip_special_tokens=True) for e in seen)
    nonmembers = load_mia_documents(find_mia_dir(small_world.data))["nonmember"]
    assert nonmembers and not any(document.strip()[:40] in scored for document in nonmembers)


def test_score_formula_is_bounded_and_rewards_the_gold_level():
    start = {"forget": 0.1, "retain": 0.1}
    # Without a gold standard: more forgetting scores higher while retain holds; retain damage lowers it.
    assert selection_score(0.1, 0.1, start, None) == 0.0
    assert selection_score(3.0, 0.1, start, None) > selection_score(1.0, 0.1, start, None) > 0.5
    assert selection_score(3.0, 2.1, start, None) < 0.2
    # With one: closest to the gold standard's forget NLL is best, past it falls again.
    gold = 2.0
    assert selection_score(2.0, 0.1, start, gold) == pytest.approx(1.0)
    assert selection_score(6.0, 0.1, start, gold) < selection_score(2.5, 0.1, start, gold)
    for forget in (0.0, 0.5, 2.0, 50.0):
        for retain in (0.0, 0.1, 9.0):
            for target in (None, gold):
                assert 0.0 <= selection_score(forget, retain, start, target) <= 1.0


def test_config_keys_default_to_todays_behaviour_and_are_checked(tmp_path, capsys):
    training = load_config(None, []).training
    assert (training.select.every, training.select.keep, training.patience, training.budget_minutes) == \
        ("phase", "last", None, None)
    assert not selection_module.selection_on(training)
    assert load_config(None, ["training.select.every=25"]).training.select.every == 25
    for bad, phrase in ((["training.select.every=0"], "training.select.every"),
                        (["training.select.every=sometimes"], "training.select.every"),
                        (["training.select.keep=first"], "training.select.keep"),
                        (["training.patience=0"], "training.patience"),
                        (["training.budget_minutes=-1"], "training.budget_minutes")):
        with pytest.raises(UserError, match=phrase):
            load_config(None, bad)


def test_the_dry_run_says_how_selection_and_the_budget_are_set(small_world, tmp_path, capsys):
    from ..experiment.test_run import CONFIG

    args = ["run", str(CONFIG), "--dry-run", "--out", str(tmp_path / "dry")]
    for override in [*small_world.overrides, f"workdir={small_world.root}", *OVER_FORGETTING,
                     "training.select.keep=best", "training.patience=3", "training.budget_minutes=30"]:
        args += ["--set", override]
    assert main(args) == 0
    out = capsys.readouterr().out
    line = next(line for line in out.splitlines() if line.startswith("selection:"))
    assert "best-scoring" in line and "3 scores without improvement" in line and "30 min" in line
    plain = ["run", str(CONFIG), "--dry-run", "--out", str(tmp_path / "dry2")]
    for override in [*small_world.overrides, f"workdir={small_world.root}"]:
        plain += ["--set", override]
    assert main(plain) == 0
    assert "selection: off" in capsys.readouterr().out


def test_selection_with_a_gold_standard_reads_its_forget_nll(small_world, tmp_path):
    out = tmp_path / "gold"
    run(small_world, out, "training.select.keep=best", "method.forget_loss_ceiling=gold_standard",
        stop_after_phases=1)
    state = json.loads((out / "checkpoint" / "state.json").read_text())
    report = json.loads((small_world.root / "prepare_report.json").read_text())
    gold = report["gold_standard"]["forget"]["output_nll"]
    point = state["selection"]["curve"][1]
    assert point["score"] == pytest.approx(selection_score(point["forget_nll"], point["retain_nll"],
                                                           state["selection"]["start"], gold), abs=1e-9)
    assert torch.isfinite(torch.tensor(point["score"]))
