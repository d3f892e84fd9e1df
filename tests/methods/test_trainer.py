import copy
import json

import pytest
import torch

from methods.engine.trainer import LossOutput, Phase, Trainer, TrainingDiverged, nll_loss, nll_per_example
from utils.config import AdapterConfig, TrainingConfig
from utils.data.tokenization import collate, encode_text
from utils.errors import UserError
from utils.models.adapters import apply_adapter

from ..conftest import SENTENCES


def examples(tokenizer):
    return [encode_text(tokenizer, s) for s in SENTENCES]


def mean_nll(model, tokenizer, items):
    model.eval()
    with torch.no_grad():
        return float(nll_per_example(model, collate(items, tokenizer.pad_token_id)).mean())


def test_loss_goes_down_and_is_logged(tiny_model, tiny_tokenizer, tmp_path):
    data = examples(tiny_tokenizer)
    before = mean_nll(tiny_model, tiny_tokenizer, data)
    config = TrainingConfig(epochs=20, learning_rate=1e-2, batch_size=3, lr_schedule="cosine", warmup_steps=2)
    trainer = Trainer(tiny_model, tiny_tokenizer, config, nll_loss, log_path=tmp_path / "log.jsonl", progress=False)
    result = trainer.train_phase(Phase("fit", data, epochs=20, shuffle=True))
    after = mean_nll(trainer.unwrapped_model, tiny_tokenizer, data)
    assert after < before * 0.6, (before, after)
    assert result.steps == 40
    records = [json.loads(line) for line in (tmp_path / "log.jsonl").read_text().splitlines()]
    assert len(records) == 40 and records[-1]["global_step"] == 40


def test_gradient_accumulation_matches_one_big_batch(tiny_model, tiny_tokenizer):
    data = examples(tiny_tokenizer)
    twin = copy.deepcopy(tiny_model)
    results = []
    for model, accumulation in ((tiny_model, 1), (twin, 3)):
        config = TrainingConfig(epochs=2, learning_rate=1e-3, batch_size=6, gradient_accumulation_steps=accumulation)
        trainer = Trainer(model, tiny_tokenizer, config, nll_loss, progress=False)
        trainer.train_phase(Phase("acc", data, epochs=2))
        results.append(trainer.unwrapped_model.state_dict())
    for name, tensor in results[0].items():
        assert torch.allclose(tensor, results[1][name], atol=1e-5), name


def test_nan_loss_stops_with_a_clear_error(tiny_model, tiny_tokenizer):
    def broken_loss(model, batch):
        nll = nll_per_example(model, batch)
        return LossOutput(per_example=nll * float("nan"), nll=nll)

    trainer = Trainer(tiny_model, tiny_tokenizer, TrainingConfig(batch_size=2), broken_loss, progress=False)
    with pytest.raises(TrainingDiverged, match="loss became nan in phase 'p' at step 1"):
        trainer.train_phase(Phase("p", examples(tiny_tokenizer), epochs=1))


def test_last_k_trains_only_the_last_layers(tiny_model, tiny_tokenizer):
    original = copy.deepcopy(tiny_model.state_dict())
    model = apply_adapter(tiny_model, AdapterConfig(kind="last_k", last_k=1))
    Trainer(model, tiny_tokenizer, TrainingConfig(batch_size=3, learning_rate=1e-2), nll_loss,
            progress=False).train_phase(Phase("k", examples(tiny_tokenizer), epochs=1))
    changed = {n for n, t in model.state_dict().items() if not torch.equal(t, original[n])}
    assert changed and all(n.startswith("model.layers.1.") for n in changed), changed


def test_lora_trains_adapter_only_and_rejects_unknown_modules(tiny_model, tiny_tokenizer):
    with pytest.raises(UserError, match="no module named w_proj"):
        apply_adapter(copy.deepcopy(tiny_model), AdapterConfig(kind="lora", target_modules=["q_proj", "w_proj"]))
    model = apply_adapter(tiny_model, AdapterConfig(kind="lora", lora_rank=4, lora_alpha=8))
    trainable = [n for n, p in model.named_parameters() if p.requires_grad]
    assert trainable and all("lora_" in n for n in trainable)


def test_group_by_length_batches_similar_lengths_and_keeps_every_example(tiny_model, tiny_tokenizer):
    from utils.data.tokenization import Example

    # Lengths 1..96 in a scrambled order: random batches mix short and long items.
    lengths = [(n * 37) % 96 + 1 for n in range(96)]
    items = [Example(input_ids=[5] * n, labels=[5] * n, item_id=f"x{i}") for i, n in enumerate(lengths)]
    phase = Phase("p", items, epochs=2, shuffle=True)

    def padded_tokens(group: bool):
        config = TrainingConfig(batch_size=4, group_by_length=group, seed=3)
        trainer = Trainer(copy.deepcopy(tiny_model), tiny_tokenizer, config, nll_loss, progress=False)
        batches = trainer.batches_for(phase, 0)
        assert len(batches) == 2 * 24
        for epoch in range(2):  # every example exactly once per epoch
            seen = sorted(e.item_id for b in batches[epoch * 24:(epoch + 1) * 24] for e in b)
            assert seen == sorted(e.item_id for e in items)
        assert trainer.batches_for(phase, 0) == batches  # seeded: the same batches again
        return sum(max(len(e.input_ids) for e in b) * len(b) for b in batches)

    real = 2 * sum(lengths)
    assert padded_tokens(True) < 1.1 * real < padded_tokens(False)


def test_micro_batches_by_padded_tokens_give_the_same_weights_with_less_padding(tiny_model, tiny_tokenizer):
    from methods.engine.trainer import split_by_padded_tokens

    data = examples(tiny_tokenizer)
    budget = 2 * max(len(e.input_ids) for e in data)
    pieces = split_by_padded_tokens(data, budget)
    assert sorted(id(e) for piece in pieces for e in piece) == sorted(id(e) for e in data)
    assert all(len(p) * max(len(e.input_ids) for e in p) <= budget or len(p) == 1 for p in pieces)
    assert len(pieces) > 1

    twin = copy.deepcopy(tiny_model)
    results = []
    for model, limit in ((tiny_model, None), (twin, budget)):
        config = TrainingConfig(epochs=2, learning_rate=1e-3, batch_size=6, max_micro_batch_tokens=limit)
        trainer = Trainer(model, tiny_tokenizer, config, nll_loss, progress=False)
        trainer.train_phase(Phase("micro", data, epochs=2, shuffle=True))
        results.append(trainer.unwrapped_model.state_dict())
    for name, tensor in results[0].items():
        assert torch.allclose(tensor, results[1][name], atol=1e-5), name


def test_each_loss_term_and_role_weight_is_logged_beside_the_total(model, tiny_tokenizer, data, tmp_path):
    """One step over 3 forget (weight 1) and 3 retain (weight 0.5) examples of gradient difference: the log has
    each term's mean (ascent = minus the forget NLL) and each role's weight, and they add up to the total."""
    import dataclasses

    from methods.engine.losses import unlearning_loss
    from methods.losses.ascent import Ascent
    from methods.losses.nll import NLL

    forget, retain = data
    batch = [*forget, *(dataclasses.replace(example, weight=0.5) for example in retain)]
    config = TrainingConfig(epochs=1, learning_rate=1e-3, batch_size=6)
    trainer = Trainer(model, tiny_tokenizer, config, unlearning_loss(Ascent(), NLL()), log_path=tmp_path / "log.jsonl",
                      progress=False)
    result = trainer.train_phase(Phase("gd", batch, epochs=1))
    record, = [json.loads(line) for line in (tmp_path / "log.jsonl").read_text().splitlines()]
    assert set(record["terms"]) == {"forget_ascent", "retain_nll"}
    assert record["weights"] == {"forget": 1.0, "retain": 0.5}
    assert record["terms"]["forget_ascent"] == pytest.approx(-result.forget_nll, rel=1e-5)
    assert record["terms"]["retain_nll"] == pytest.approx(result.retain_nll, rel=1e-5)
    total = (3 * 1.0 * record["terms"]["forget_ascent"] + 3 * 0.5 * record["terms"]["retain_nll"]) / 6
    assert record["loss"] == pytest.approx(total, rel=1e-5)
