"""The white-box probe: a linear probe finds a token code that is there and not one that is not, the logit lens on
the last layer reads the model's own predictions, and latent recovery is the hand-computed clipped ratio."""

from __future__ import annotations

import pytest
import torch

from utils.evaluation.memorisation import answer_predictions
from utils.experiment.probe import answer_states, latent_recovery, logit_lens_accuracy, probe_accuracy

from ..conftest import SENTENCES
from ..evaluation.test_memorisation import items


def test_a_probe_reads_a_code_that_is_there_and_not_one_that_is_not():
    generator = torch.Generator().manual_seed(0)
    codes = torch.randn(5, 16, generator=generator)  # one direction per token
    tokens = torch.randint(0, 5, (400,), generator=generator) + 100
    encoded = codes[tokens - 100] + 0.3 * torch.randn(400, 16, generator=generator)
    noise = torch.randn(400, 16, generator=generator)
    assert probe_accuracy(encoded[:200], tokens[:200], encoded[200:], tokens[200:]) > 0.95
    assert probe_accuracy(noise[:200], tokens[:200], noise[200:], tokens[200:]) < 0.45  # chance is about 0.2
    assert probe_accuracy(encoded[:0], tokens[:0], encoded, tokens) is None


@pytest.mark.parametrize(("unlearned", "target", "gold", "expected"), [
    (0.5, 0.9, 0.1, 0.5),      # (0.5 - 0.1) / (0.9 - 0.1)
    (0.05, 0.9, 0.1, 0.0),     # below the gold standard: clipped to 0
    (0.95, 0.9, 0.1, 1.0),     # above the target: clipped to 1
    (0.5, 0.105, 0.1, None),   # the target holds no more than the gold standard: nothing to recover
    (None, 0.9, 0.1, None),
])
def test_latent_recovery(unlearned, target, gold, expected):
    assert latent_recovery(unlearned, target, gold) == (expected if expected is None else pytest.approx(expected))


def test_states_align_with_answer_tokens_and_the_last_layer_lens_is_the_models_own_prediction(trained, tiny_tokenizer):
    chosen = items("forget", SENTENCES)
    last = trained.config.num_hidden_layers - 1
    states, tokens, owners = answer_states(trained, tiny_tokenizer, chosen, last, batch_size=4)
    pairs = answer_predictions(trained, tiny_tokenizer, chosen, batch_size=4)
    assert tokens.tolist() == [t for _, true in pairs for t in true]
    assert owners.tolist() == [i for i, (_, true) in enumerate(pairs) for _ in true]
    assert states.shape == (len(tokens), trained.config.hidden_size)
    # The last layer through the output head is the model's own argmax: the lens reads what exact
    # memorisation reads.
    right = sum(p == t for predicted, true in pairs for p, t in zip(predicted, true)) / len(tokens)
    assert logit_lens_accuracy(trained, states, tokens, normed=True) == pytest.approx(right, abs=1e-9)
