"""Exact memorisation and extraction strength: hand-computed values, the teacher-forced pass checked against a
one-item-at-a-time reading of the same logits, and a fitted model scoring its training answers as memorised."""

from __future__ import annotations

import pytest
import torch

from utils.data.lume import Item
from utils.evaluation.memorisation import (
    answer_predictions,
    exact_memorisation,
    extraction_strength,
    memorisation_block,
)

from ..conftest import SENTENCES


@pytest.mark.parametrize(("predicted", "true", "em", "es"), [
    ([1, 2, 3, 4], [1, 2, 3, 4], 1.0, 1.0),        # all right: everything extractable
    ([1, 9, 3, 4], [1, 2, 3, 4], 0.75, 0.5),       # wrong at index 1: the suffix from index 2 is right
    ([9, 2, 3, 4], [1, 2, 3, 4], 0.75, 0.75),      # only the first wrong: k = 1
    ([1, 2, 3, 9], [1, 2, 3, 4], 0.75, 0.0),       # the last token wrong: nothing extractable
    ([9, 9, 9, 9, 5], [1, 2, 3, 4, 5], 0.2, 0.2),  # only the last right: k = 4 of 5
    ([7], [7], 1.0, 1.0),
    ([6], [7], 0.0, 0.0),
])
def test_hand_computed_values(predicted, true, em, es):
    assert exact_memorisation(predicted, true) == pytest.approx(em, abs=1e-12)
    assert extraction_strength(predicted, true) == pytest.approx(es, abs=1e-12)


def test_an_empty_answer_is_not_measured_and_a_length_mismatch_is_refused():
    assert exact_memorisation([], []) is None and extraction_strength([], []) is None
    with pytest.raises(ValueError):
        extraction_strength([1, 2], [1, 2, 3])


def items(split: str, sentences: list[str]) -> list[Item]:
    out = []
    for number, sentence in enumerate(sentences):
        words = sentence.split()
        half = len(words) // 2
        out.append(Item(id=f"{split}{number}sc1", input=" ".join(words[:half]), output=" ".join(words[half:]),
                        task="Task1", split=split, kind="sc", index=1, document_id=f"{split}{number}"))
    return out


def test_batched_predictions_equal_one_item_at_a_time(trained, tiny_tokenizer):
    """Padding and the shift by one position must not move a prediction: the batched pass against each item
    alone, its argmax read at the positions before the answer tokens."""
    chosen = items("forget", SENTENCES)
    batched = answer_predictions(trained, tiny_tokenizer, chosen, batch_size=4)
    for item, (predicted, true) in zip(chosen, batched):
        prompt = tiny_tokenizer(item.input)["input_ids"]
        answer = tiny_tokenizer(" " + item.output, add_special_tokens=False)["input_ids"]
        assert true == answer
        ids = torch.tensor([prompt + answer])
        with torch.no_grad():
            logits = trained(input_ids=ids).logits[0]
        alone = logits[len(prompt) - 1:len(prompt) + len(answer) - 1].argmax(dim=-1).tolist()
        assert predicted == alone


def test_a_fitted_model_has_memorised_its_training_answers_and_not_new_ones(trained, tiny_tokenizer):
    """The fixture model was fitted on these six sentences' second halves: EM and ES near 1; on sentences it never
    saw, far lower."""
    seen = items("forget", SENTENCES[:3]) + items("retain", SENTENCES[3:])
    unseen = items("forget", ["Quarrelsome herons argue loudly about the price of silver spoons.",
                              "Seventeen violet kites drifted over the frozen parliament at dawn."])
    block = memorisation_block(trained, tiny_tokenizer, seen, batch_size=4)
    assert set(block) == {"forget", "retain"} and block["forget"]["items"] == 3
    for split in ("forget", "retain"):
        assert block[split]["exact_memorisation"] > 0.9 and block[split]["extraction_strength"] > 0.8
        assert block[split]["by_task"]["Task1"]["exact_memorisation"] == block[split]["exact_memorisation"]
    new = memorisation_block(trained, tiny_tokenizer, unseen, batch_size=4)["forget"]
    assert new["exact_memorisation"] < 0.5 and new["extraction_strength"] < 0.5
