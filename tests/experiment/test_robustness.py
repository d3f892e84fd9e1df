"""Robustness attacks: round-to-nearest quantisation against hand-computed values, the document halves of
relearning, the recovery formula, and end to end on the small world that relearning brings back what a GA run
stopped early only suppressed, far more than anything it brings back from the gold standard."""

from __future__ import annotations

import copy
import json

import pytest
import torch

from utils.cli.main import main
from utils.data.lume import TASKS, load_lume
from utils.errors import UserError
from utils.evaluation.leaderboard import row_from_results, to_csv, to_text
from utils.experiment.robustness import (
    document_halves,
    mean_recovery,
    parse_attacks,
    quantize_rtn,
    quantize_rtn_groups,
    quantized_copy,
    recovery,
)

from ..conftest import REPO

pytestmark = pytest.mark.usefixtures("one_thread")


# --------------------------------------------------------------------------------------------
# Quantisation


WEIGHT = torch.tensor([[1.0, -0.4, 0.2, 0.0],
                       [0.0, 0.0, 0.0, 0.0],
                       [-2.0, 0.5, 1.1, 0.3]])


@pytest.mark.parametrize(("bits", "expected"), [
    # 8 bits: 127 levels a side. Row 1: scale 1/127, so -0.4 -> -50.8 -> -51 and 0.2 -> 25.4 -> 25.
    # Row 3: scale 2/127; 0.5 -> 31.75 -> 32, 1.1 -> 69.85 -> 70, 0.3 -> 19.05 -> 19.
    (8, [[1.0, -51 / 127, 25 / 127, 0.0], [0.0] * 4, [-2.0, 64 / 127, 140 / 127, 38 / 127]]),
    # 4 bits: 7 levels a side. Row 1: -0.4 * 7 = -2.8 -> -3, 0.2 * 7 = 1.4 -> 1. Row 3: scale 2/7;
    # 0.5 -> 1.75 -> 2, 1.1 -> 3.85 -> 4, 0.3 -> 1.05 -> 1.
    (4, [[1.0, -3 / 7, 1 / 7, 0.0], [0.0] * 4, [-2.0, 4 / 7, 8 / 7, 2 / 7]]),
])
def test_round_to_nearest_per_output_channel_matches_hand_computed_values(bits, expected):
    assert torch.allclose(quantize_rtn(WEIGHT, bits), torch.tensor(expected), atol=1e-6)


@pytest.mark.parametrize(("size", "expected"), [
    # Groups of 2, 4 bits (7 levels a side). Row 1: [1.0, -0.4] scale 1/7 -> 7, -2.8 -> -3; [0.2, 0.0] scale
    # 0.2/7 -> 7, 0. Row 3: [-2.0, 0.5] scale 2/7 -> -7, 1.75 -> 2; [1.1, 0.3] scale 1.1/7 -> 7, 1.909 -> 2.
    (2, [[1.0, -3 / 7, 0.2, 0.0], [0.0] * 4, [-2.0, 4 / 7, 1.1, 2.2 / 7]]),
    # Groups of 3: the last group of each row is one weight, kept exactly (its own scale).
    (3, [[1.0, -3 / 7, 1 / 7, 0.0], [0.0] * 4, [-2.0, 4 / 7, 8 / 7, 0.3]]),
])
def test_group_wise_round_to_nearest_matches_hand_computed_values(size, expected):
    assert torch.allclose(quantize_rtn_groups(WEIGHT, 4, size), torch.tensor(expected), atol=1e-6)


def test_a_group_as_wide_as_the_row_is_per_channel_quantisation():
    assert torch.equal(quantize_rtn_groups(WEIGHT, 4, 4), quantize_rtn(WEIGHT, 4))
    assert torch.equal(quantize_rtn_groups(WEIGHT, 8, 1000), quantize_rtn(WEIGHT, 8))


def test_quantized_copy_changes_linear_weights_only_and_leaves_the_model_alone(tiny_model):
    original = copy.deepcopy(tiny_model.state_dict())
    quantized = quantized_copy(tiny_model, 4)
    for name, value in tiny_model.state_dict().items():
        assert torch.equal(value, original[name]), name  # the evaluated model is never touched
    state = quantized.state_dict()
    changed = {name for name, value in state.items() if not torch.equal(value, original[name])}
    linear = {f"{name}.weight" for name, module in tiny_model.named_modules() if isinstance(module, torch.nn.Linear)}
    head = {name for name in linear if name.startswith("lm_head")}
    assert changed and changed <= linear - head  # embeddings, norms and the output head keep full precision
    some = min(changed)
    row = state[some][0]
    scale = original[some][0].abs().max() / 7
    assert torch.allclose(row / scale, torch.round(row / scale), atol=1e-4)  # on the 4-bit grid of its row


def test_quantisation_outside_2_to_8_bits_is_refused():
    with pytest.raises(UserError, match="between 2 and 8"):
        quantize_rtn(WEIGHT, 16)


# --------------------------------------------------------------------------------------------
# Halves and recovery


def test_document_halves_are_disjoint_cover_the_forget_set_and_keep_documents_whole(small_world):
    forget = load_lume(small_world.data).forget
    half_a, half_b = document_halves(forget)
    assert {i.id for i in half_a}.isdisjoint({i.id for i in half_b})
    assert sorted(i.id for i in half_a + half_b) == sorted(i.id for i in forget)
    assert {i.document_id for i in half_a}.isdisjoint({i.document_id for i in half_b})
    for task in TASKS:  # 2 documents per task: one on each side
        assert len({i.document_id for i in half_a if i.task == task}) == 1
        assert len({i.document_id for i in half_b if i.task == task}) == 1
    again_a, _ = document_halves(list(reversed(forget)))  # by id, not by file order
    assert {i.id for i in again_a} == {i.id for i in half_a}


def side(regurgitation, knowledge):
    return {task: {"regurgitation": regurgitation, "knowledge": knowledge} for task in TASKS}


def test_recovery_is_the_clipped_share_of_what_was_forgotten_that_came_back():
    # Forgotten 0.8 regurgitation, of which 0.4 came back (0.5); knowledge: 1.0 forgotten, 0.25 back.
    value, terms = recovery(side(1.0, 1.0), side(0.2, 0.0), side(0.6, 0.25))
    assert terms["Task1/regurgitation"] == pytest.approx(0.5) and terms["Task2/knowledge"] == pytest.approx(0.25)
    assert value == pytest.approx(0.375)
    # Below the unlearned model counts as 0, above the target as 1.
    assert recovery(side(1.0, 1.0), side(0.2, 0.5), side(0.1, 1.0))[0] == pytest.approx(0.5)


def test_recovery_is_null_when_nothing_was_forgotten_or_measured():
    assert recovery(side(0.3, 0.0), side(0.3, 0.0), side(0.9, 1.0)) == (None, {f"{t}/{k}": None for t in TASKS
                                                                            for k in ("regurgitation", "knowledge")})
    assert recovery(side(1.0, 1.0), side(0.995, 1.0), side(1.0, 1.0))[0] is None  # a drop under MIN_FORGOTTEN
    partly = side(None, 1.0)
    value, terms = recovery(side(1.0, 1.0), side(0.0, 0.0), partly)
    assert value == pytest.approx(1.0) and terms["Task1/regurgitation"] is None
    assert mean_recovery({"relearn": {"recovery": 0.6}, "quantize_4bit": {"recovery": None},
                          "quantize_8bit": {"recovery": 0.2}}) == pytest.approx(0.4)
    assert mean_recovery({"relearn": {"recovery": None}}) is None


def test_attack_names_are_checked():
    assert parse_attacks("relearn, quantize,relearn") == ["relearn", "quantize"]
    assert parse_attacks("none") == []
    with pytest.raises(UserError, match="unknown attack 'prune'"):
        parse_attacks("relearn,prune")
    from utils.config import load_config

    with pytest.raises(UserError, match="evaluation.attacks"):
        load_config(None, ["evaluation.attacks=[relearn, prune]"])


def test_an_unknown_attack_on_the_command_line_is_one_line_and_writes_nothing(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    capsys.readouterr()
    assert main(["evaluate", "--out", str(tmp_path / "out"), "--quiet", "--attacks", "relearn,prune"]) == 2
    err = capsys.readouterr().err.splitlines()
    assert len(err) == 1 and "--attacks: unknown attack 'prune'" in err[0]
    assert list(tmp_path.iterdir()) == []


# --------------------------------------------------------------------------------------------
# End to end on the small world


# GA stopped after one epoch at a high lr: the forget scores dropped while the weights still hold the answers.
GA_EARLY = ["method.name=ga", "training.epochs=1", "training.learning_rate=1e-2", "adapter.kind=lora",
            ("evaluation.attacks=[relearn, quantize, quantize_group, nf4, prefix, roleplay, paraphrase, reverse, "
             "incontext, probe]"),
            "evaluation.quantize_group_size=16", "evaluation.incontext_examples=2"]


@pytest.fixture(scope="module")
def ga_run(small_world, tmp_path_factory):
    from utils.experiment.run import run_unlearning

    out = tmp_path_factory.mktemp("ga_early") / "run"
    run_unlearning(small_world.config(*GA_EARLY), out, progress=False, log=lambda _: None)
    return json.loads((out / "results.json").read_text())


@pytest.fixture(scope="module")
def gold_evaluation(small_world, tmp_path_factory):
    out = tmp_path_factory.mktemp("gold_attacked")
    overrides = [arg for override in [*small_world.overrides, f"workdir={small_world.root}", "adapter.kind=lora"]
                 for arg in ("--set", override)]
    assert main(["evaluate", "--model", str(small_world.gold_standard), "--out", str(out), "--quiet",
                 "--attacks", "relearn,quantize", *overrides]) == 0
    return json.loads((out / "results.json").read_text())


def test_results_json_has_the_robustness_block(ga_run, small_world):
    block = ga_run["robustness"]
    assert set(block) >= {"relearn", "quantize_8bit", "quantize_4bit", "mean_recovery"}
    assert block["target"] == str(small_world.target)
    relearn = block["relearn"]
    assert relearn["items"] == 10 and relearn["settings"]["trained_documents"] == 3  # one document per task
    assert set(relearn["terms"]) == {"forget"}
    assert 0.0 <= relearn["mia_auc"] <= 1.0 and relearn["mia_members"] == 1
    for name in ("quantize_8bit", "quantize_4bit", "quantize_group_4bit_g16"):
        assert block[name]["items"] == 40 and set(block[name]["terms"]) == {"forget", "retain"}
    assert block["quantize_group_4bit_g16"]["settings"]["group_size"] == 16
    if not torch.cuda.is_available():  # NF4 needs a GPU: skipped with one line, not counted
        assert block["nf4"]["recovery"] is None and "needs a CUDA GPU" in block["nf4"]["skipped"]
        assert any("nf4 needs a CUDA GPU" in note for note in block["warnings"])
    for name in ("prefix", "roleplay", "paraphrase"):
        assert block[name]["items"] == 20 and set(block[name]["terms"]) == {"forget"}
    reverse = block["reverse"]
    assert reverse["items"] == 20 and set(reverse["target_terms"]) == {"forget"}
    assert reverse["recovery"] is None or 0.0 <= reverse["recovery"] <= 1.0
    probe = block["probe"]
    assert probe["layer"] == 0 and set(probe["readings"]) == {"unlearned", "target", "gold_standard"}
    readings = probe["readings"]
    # The target's first layer encodes the held-out forget answers, the gold standard's does not (measured: 0.42
    # against 0.03); a GA run stopped after one epoch still holds nearly all of it (0.96) though it no longer says it.
    assert readings["target"]["probe"] > readings["gold_standard"]["probe"] + 0.2
    assert probe["recovery"] > 0.5 and 0.0 <= probe["logit_lens_recovery"] <= 1.0
    assert block["incontext"]["items"] == 10 and block["incontext"]["settings"]["shown_per_prompt"] == 2
    assert block["incontext"]["settings"]["example_prompt"].count("\n") == 2
    measured = [block[n]["recovery"] for n in ("relearn", "quantize_8bit", "quantize_4bit", "quantize_group_4bit_g16",
                                               "prefix", "roleplay", "paraphrase", "reverse", "incontext", "probe")
                if block[n]["recovery"] is not None]
    assert block["mean_recovery"] == pytest.approx(sum(measured) / len(measured))
    assert ga_run["timings"]["robustness"] > 0
    # The GA run did forget (else recovery would mean nothing): its forget scores fell well below the target's.
    assert ga_run["overall"]["forget"]["regurgitation"] < 0.5


def test_relearning_recovers_more_from_suppression_than_from_the_gold_standard(ga_run, gold_evaluation):
    suppressed = ga_run["robustness"]["relearn"]["recovery"]
    gold = gold_evaluation["robustness"]["relearn"]["recovery"]
    # Measured on this world: about 0.8 against 0.03.
    assert suppressed is not None and gold is not None
    assert suppressed > gold + 0.4, (suppressed, gold)


def test_leaderboard_has_a_robustness_column(ga_run, gold_evaluation):
    rows = [row_from_results("ga", ga_run), row_from_results("gold_standard", gold_evaluation),
            row_from_results("plain", {k: v for k, v in ga_run.items() if k != "robustness"})]
    assert rows[0]["robustness"] == ga_run["robustness"]["mean_recovery"]
    header, *lines = to_csv(rows).splitlines()
    # The fixed columns (a contract), then one recovery column per attack (the robustness matrix).
    fixed = ",utility_benchmark,robustness,final_score_low,final_score_high"
    attacks = ["relearn", "quantize_8bit", "quantize_4bit", "quantize_group_4bit_g16", "nf4", "prefix", "roleplay",
               "paraphrase", "reverse", "incontext", "probe"]
    assert header.endswith(fixed + "," + ",".join(f"recovery_{a}" for a in attacks))
    assert header.startswith("method,final_score,task_aggregate,mia_score,utility,seconds,")  # the contract
    assert lines[2].endswith(",,," + "," * len(attacks))  # robustness not measured, no interval: blank
    cells = dict(zip(header.split(","), lines[0].split(",")))
    assert float(cells["recovery_relearn"]) == pytest.approx(ga_run["robustness"]["relearn"]["recovery"])
    assert "robustness" in to_text(rows).splitlines()[0]


def test_the_run_summary_and_the_sweep_summary_show_robustness(ga_run, tmp_path, monkeypatch, capsys):
    """`unlearn run` prints the attacks after the scores, and a sweep's run_summary.csv has the column."""
    from utils.experiment.experiment import Experiment
    from utils.experiment.sweep import SCORE_COLUMNS, summary_row

    monkeypatch.setattr(Experiment, "run", lambda self, **kwargs: ga_run)
    capsys.readouterr()
    assert main(["run", str(REPO / "configs" / "ga.yaml"), "--out", str(tmp_path / "run"), "--quiet"]) == 0
    printed = capsys.readouterr().out
    assert "robustness relearn: forget mean" in printed
    assert f"robustness (mean recovery, lower is better): {ga_run['robustness']['mean_recovery']:.4f}" in printed
    assert SCORE_COLUMNS[-1] == "robustness"
    row = summary_row({"run": "run_000", "results": ga_run}, [])
    assert row["robustness"] == ga_run["robustness"]["mean_recovery"] > 0
