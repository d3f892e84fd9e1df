"""Prompt attacks: rewritten prompts keep every answer and id; in-context relearning shows answered items of the
other documents only, those of the asked item's task and kind first."""

from __future__ import annotations

import pytest

from utils.data.lume import Item
from utils.experiment.prompt_attacks import PREFIX, ROLE, attacked_items, in_context, paraphrased
from utils.experiment.robustness import document_halves


def item(document: str, task: str, kind: str, number: int = 1) -> Item:
    return Item(id=f"{document}{kind}{number}", input=f"prompt of {document} {kind}", output=f"answer of {document}",
                task=task, split="forget", kind=kind, index=number, document_id=document)


FORGET = [item(f"doc{d}", task, kind) for d, task in enumerate(["Task1", "Task1", "Task2", "Task2"])
          for kind in ("sc", "qa")]


@pytest.mark.parametrize("name", ["prefix", "roleplay", "paraphrase"])
def test_rewritten_prompts_keep_ids_answers_and_the_original_prompt(name):
    halves = document_halves(FORGET)
    attacked = attacked_items(name, FORGET, *halves, count=2)
    assert [(a.id, a.output, a.kind, a.task) for a in attacked] == [(i.id, i.output, i.kind, i.task) for i in FORGET]
    for original, rewritten in zip(FORGET, attacked):
        assert original.input in rewritten.input and rewritten.input != original.input
    if name == "prefix":
        assert attacked[0].input == PREFIX + FORGET[0].input
    if name == "roleplay":
        assert attacked[0].input == ROLE + FORGET[0].input


def test_paraphrase_asks_a_question_as_a_question_and_continues_a_passage():
    qa, sc = FORGET[1], FORGET[0]
    assert paraphrased([qa])[0].input == f"Question: {qa.input}\nAnswer:"
    assert paraphrased([sc])[0].input == f"Continue this passage exactly: {sc.input}"


def test_in_context_shows_the_other_half_same_task_and_kind_first():
    half_a, half_b = document_halves(FORGET)
    assert {i.document_id for i in half_a}.isdisjoint({i.document_id for i in half_b})
    asked = in_context(half_a, half_b, count=2)
    assert [a.id for a in asked] == [b.id for b in half_b]
    for original, rewritten in zip(half_b, asked):
        lines = rewritten.input.split("\n")
        assert lines[-1] == original.input and len(lines) == 3
        shown = lines[:2]
        same = next(a for a in half_a if a.task == original.task and a.kind == original.kind)
        assert shown[0] == f"{same.input} {same.output}"  # the matching example first
        assert all(original.document_id not in line for line in shown)  # never its own document
    assert in_context(half_a, half_b, count=0) == half_b


def test_reverse_asks_for_the_prompt_given_the_answer():
    from utils.experiment.prompt_attacks import reversed_items

    sc, qa = FORGET[0], FORGET[1]
    backwards = reversed_items([sc, qa])
    assert backwards[0].input == f"{sc.output}\nThe text before this was:" and backwards[0].output == sc.input
    assert backwards[1].input == f"{qa.output}\nIt is the answer to the question:" and backwards[1].output == qa.input
    assert [b.id for b in backwards] == [sc.id, qa.id] and [b.kind for b in backwards] == ["sc", "qa"]


def test_reverse_recovery_is_the_share_of_the_targets_reverse_recall_still_there():
    from utils.experiment.robustness import reverse_recovery

    target = {"Task1": {"regurgitation": 0.8, "knowledge": 0.0}, "Task2": {"regurgitation": 0.4, "knowledge": None}}
    unlearned = {"Task1": {"regurgitation": 0.2, "knowledge": 0.0}, "Task2": {"regurgitation": 0.6, "knowledge": None}}
    mean, terms = reverse_recovery(target, unlearned)
    # Task1: 0.2 / 0.8 = 0.25; Task2: 0.6 / 0.4 clipped to 1; knowledge the target never recalls: not counted.
    assert terms["Task1/regurgitation"] == pytest.approx(0.25) and terms["Task2/regurgitation"] == 1.0
    assert terms["Task1/knowledge"] is None and terms["Task3/regurgitation"] is None
    assert mean == pytest.approx((0.25 + 1.0) / 2)
    assert reverse_recovery({"Task1": {"regurgitation": 0.0}}, {"Task1": {"regurgitation": 0.0}})[0] is None
