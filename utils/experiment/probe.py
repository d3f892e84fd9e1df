"""The white-box probe: does a layer's hidden state still hold the forget answers the model no longer says?

For every forget item, one teacher-forced pass over prompt and answer gives, at each position that predicts an
answer token, the hidden state of `evaluation.probe_layer` (the output of that decoder layer; default the middle
one) and the token it should predict. Two readings of those states:

* **linear probe**: a linear classifier over the answer tokens seen (one class per distinct token), trained with
  AdamW on the positions of half A of the forget documents (robustness.document_halves) and scored by top-1
  accuracy on the positions of half B: what a layer encodes about answers it was not fitted on.
* **logit lens**: the model's own final norm and output head applied to that layer's states: top-1 accuracy on
  half B without any fitting.

The same probe runs on the target and on the gold standard. **Latent recovery** = clip((probe on the unlearned
model - probe on the gold standard) / (probe on the target - probe on the gold standard), 0, 1): 0 when the layer
holds no more than a model that never saw the forget set, 1 when it holds as much as before unlearning, so a model
that only suppresses its output scores high even when its generations say nothing.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from utils.data.lume import Item
from utils.data.tokenization import collate, encode_item
from utils.models.loading import context_length

PROBE_STEPS = 300
PROBE_LEARNING_RATE = 1e-2
MIN_GAP = 0.01  # below this target-to-gold gap in accuracy the ratio is noise: no recovery


def default_layer(model) -> int:
    layers = getattr(getattr(model, "config", None), "num_hidden_layers", None)
    return max(0, (layers or 2) // 2 - 1)


@torch.inference_mode()
def answer_states(model, tokenizer, items: Sequence[Item], layer: int, batch_size: int
                  ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(hidden states [N, width] of `layer`'s output at every position predicting an answer token, those tokens
    [N], the item index of each position [N])."""
    model.eval()
    device = next(model.parameters()).device
    examples = [encode_item(tokenizer, item, "output", max_length=context_length(model), add_eos=False)
                for item in items]
    states, tokens, owners = [], [], []
    for start in range(0, len(examples), batch_size):
        batch = collate(examples[start:start + batch_size], tokenizer.pad_token_id)
        output = model(input_ids=batch["input_ids"].to(device), attention_mask=batch["attention_mask"].to(device),
                       output_hidden_states=True)
        hidden = output.hidden_states[layer + 1]  # [0] is the embeddings
        targets = batch["labels"][:, 1:]
        predicting = targets != -100
        states.append(hidden[:, :-1][predicting.to(device)].float().cpu())
        tokens.append(targets[predicting])
        rows = torch.arange(start, start + targets.shape[0]).unsqueeze(1).expand_as(targets)
        owners.append(rows[predicting])
    return torch.cat(states), torch.cat(tokens), torch.cat(owners)


def is_last_layer(model, layer: int) -> bool:
    return layer == getattr(getattr(model, "config", None), "num_hidden_layers", -1) - 1


@torch.inference_mode()
def logit_lens_accuracy(model, states: torch.Tensor, tokens: torch.Tensor, normed: bool = False) -> float | None:
    """Top-1 accuracy of the model's final norm (unless the states are `normed` already: transformers hands out
    the last layer's states after it) and output head on `states`."""
    if not len(tokens):
        return None
    device = next(model.parameters()).device
    norm = getattr(model.get_decoder(), "norm", None) if hasattr(model, "get_decoder") else None
    hidden = states.to(device=device, dtype=next(model.parameters()).dtype)
    if norm is not None and not normed:
        hidden = norm(hidden)
    predicted = model.get_output_embeddings()(hidden).argmax(dim=-1).cpu()
    return float((predicted == tokens).float().mean())


def probe_accuracy(train_states: torch.Tensor, train_tokens: torch.Tensor, test_states: torch.Tensor,
                   test_tokens: torch.Tensor, seed: int = 0) -> float | None:
    """A linear classifier over the tokens of both halves fitted on the train positions (full batch, AdamW,
    PROBE_STEPS steps, seeded); its top-1 accuracy on the test positions."""
    if not len(train_tokens) or not len(test_tokens):
        return None
    classes = torch.unique(torch.cat([train_tokens, test_tokens]))
    index = {int(token): i for i, token in enumerate(classes)}
    train_y = torch.tensor([index[int(t)] for t in train_tokens])
    test_y = torch.tensor([index[int(t)] for t in test_tokens])
    mean, spread = train_states.mean(0), train_states.std(0).clamp_min(1e-6)
    generator = torch.Generator().manual_seed(seed)
    linear = torch.nn.Linear(train_states.shape[1], len(classes))
    with torch.no_grad():
        linear.weight.copy_(torch.randn(linear.weight.shape, generator=generator) * 0.01)
        linear.bias.zero_()
    optimiser = torch.optim.AdamW(linear.parameters(), lr=PROBE_LEARNING_RATE)
    x = (train_states - mean) / spread
    with torch.enable_grad():
        for _ in range(PROBE_STEPS):
            loss = torch.nn.functional.cross_entropy(linear(x), train_y)
            optimiser.zero_grad()
            loss.backward()
            optimiser.step()
    with torch.no_grad():
        predicted = linear((test_states - mean) / spread).argmax(dim=-1)
    return float((predicted == test_y).float().mean())


def model_probe(model, tokenizer, half_a: Sequence[Item], half_b: Sequence[Item], layer: int,
                batch_size: int) -> dict[str, float | None]:
    """{"probe": accuracy on half B of a probe fitted on half A, "logit_lens": accuracy on half B} of one model."""
    train_states, train_tokens, _ = answer_states(model, tokenizer, half_a, layer, batch_size)
    test_states, test_tokens, _ = answer_states(model, tokenizer, half_b, layer, batch_size)
    return {"probe": probe_accuracy(train_states, train_tokens, test_states, test_tokens),
            "logit_lens": logit_lens_accuracy(model, test_states, test_tokens, normed=is_last_layer(model, layer)),
            "positions": len(test_tokens)}


def latent_recovery(unlearned: float | None, target: float | None, gold: float | None) -> float | None:
    """clip((unlearned - gold) / (target - gold), 0, 1); None without all three or when the gap is below MIN_GAP."""
    if unlearned is None or target is None or gold is None or target - gold <= MIN_GAP:
        return None
    return min(1.0, max(0.0, (unlearned - gold) / (target - gold)))
