"""The unlearning methods: exact schedules, the losses' arithmetic, the reference model, and that each
method does what it claims on the tiny model after a few steps."""

import copy
import math
from types import SimpleNamespace

import pytest
import torch

from methods import agad, ga, sugd
from methods.engine.losses import Reference, kl_per_example
from methods.engine.trainer import Phase, Trainer, nll_per_example
from methods.losses.npo import npo_loss
from methods.registry import METHODS, get_method, make_loss, prepare_reference, typed_settings
from utils.config import AdapterConfig, MethodSection, TrainingConfig
from utils.data.tokenization import Example, collate
from utils.errors import UserError
from utils.models.adapters import apply_adapter

from .helpers import term_loss


def mean_nll(model, tokenizer, items):
    model.eval()
    with torch.no_grad():
        return float(nll_per_example(model, collate(items, tokenizer.pad_token_id)).mean())


def fake(prefix, count, role="train"):
    """Token-free examples for schedule tests; item ids F1.., R1.. as in docs/benchmark.md's account of SUGD."""
    return [Example([1, 2, 3], [-100, 2, 3], f"{prefix}{i + 1}", role) for i in range(count)]


def ids(phase):
    return [(e.role, e.item_id) for e in phase.examples]


def settings(name, **changes):
    """The settings of method `name` (its own dataclass) with `changes` as a config states them (a term by
    name or {loss: NAME, KNOB: VALUE}), range-checked as a config is."""
    return typed_settings(MethodSection(name=name, options=changes), quiet=True)


# --------------------------------------------------------------------------------------------
# Schedules


def test_sugd_schedule_is_exact_with_cyclic_cursor_across_chunks():
    method = settings("sugd", chunk_size=2, positive_ratio=3, positive_factor=0.5)
    # Roles come from the argument position, whatever the examples carried.
    phases = sugd.build_phases(fake("F", 5), fake("R", 4), method, TrainingConfig(epochs=2, batch_size=1), seed=0)

    def F(i):
        return "forget", f"F{i}"

    def R(i):
        return "retain", f"R{i}"

    assert [ids(p) for p in phases] == [
        [F(1), R(1), R(2), R(3), F(2), R(4), R(1), R(2)],
        [F(3), R(3), R(4), R(1), F(4), R(2), R(3), R(4)],
        [F(5), R(1), R(2), R(3)],  # the remainder chunk
    ]
    assert [p.info for p in phases] == [{"kind": "chunk", "chunk": 0, "retain_cursor": 0},
                                        {"kind": "chunk", "chunk": 1, "retain_cursor": 2},
                                        {"kind": "chunk", "chunk": 2, "retain_cursor": 0}]
    assert all(p.epochs == 2 and not p.shuffle for p in phases)
    weights = {(e.role, e.weight) for p in phases for e in p.examples}
    assert weights == {("forget", 1.0), ("retain", 0.5)}
    # The loop keeps the order: each epoch repeats the same unshuffled sequence.
    trainer = SimpleNamespace(config=TrainingConfig(batch_size=3, seed=0))
    batches = Trainer.batches_for(trainer, phases[2], 2)
    assert [[e.item_id for e in b] for b in batches] == [["F5", "R1", "R2"], ["R3"], ["F5", "R1", "R2"], ["R3"]]


def test_sugd_without_retain_loss_trains_forget_only():
    method = settings("sugd", chunk_size=2, positive_ratio=3, retain="none")
    phases = sugd.build_phases(fake("F", 3), [], method, TrainingConfig(), seed=0)
    assert [ids(p) for p in phases] == [[("forget", "F1"), ("forget", "F2")], [("forget", "F3")]]


def kinds(phases):
    return [(p.info["kind"], p.info["chunk"]) for p in phases]


def test_agad_schedule_interleaving_and_final_annealing():
    forget, retain, training = fake("F", 5), fake("R", 8), TrainingConfig(epochs=3)
    every = agad.build_phases(forget, retain, settings("agad", chunk_size=2), training, seed=0)
    # As the seed: annealing after full chunks only; the remainder chunk (of 1) gets the final annealing alone.
    assert kinds(every) == [("ascent", 0), ("anneal", 0), ("ascent", 1), ("anneal", 1), ("ascent", 2),
                            ("final_anneal", 2)]
    assert [len(p.examples) for p in every] == [2, 2, 2, 2, 1, 8]  # 0.25 of 8 retain; remainder chunk of 1
    earlier = agad.build_phases(forget, retain, settings("agad", chunk_size=2, anneal_after_remainder=True),
                                training, seed=0)
    assert kinds(earlier) == [("ascent", 0), ("anneal", 0), ("ascent", 1), ("anneal", 1), ("ascent", 2),
                              ("anneal", 2), ("final_anneal", 2)]
    even = agad.build_phases(fake("F", 4), retain, settings("agad", chunk_size=2), training, seed=0)
    assert kinds(even) == [("ascent", 0), ("anneal", 0), ("ascent", 1), ("anneal", 1), ("final_anneal", 1)]
    assert all(p.shuffle and p.epochs == 3 for p in every)
    assert {e.role for p in every if p.info["kind"] == "ascent" for e in p.examples} == {"forget"}
    assert {e.role for p in every if p.info["kind"] != "ascent" for e in p.examples} == {"retain"}
    # Interleaving factor 0.5: annealing after every 2nd chunk; final annealing after the remainder chunk.
    half = agad.build_phases(forget, retain, settings("agad", chunk_size=2, interleaving_factor=0.5),
                             training, seed=0)
    assert kinds(half) == [("ascent", 0), ("ascent", 1), ("anneal", 1), ("ascent", 2), ("final_anneal", 2)]
    no_final = agad.build_phases(forget, retain, settings("agad", chunk_size=2, interleaving_factor=0.5,
                                                              final_annealing=False), training, seed=0)
    assert kinds(no_final) == [("ascent", 0), ("ascent", 1), ("anneal", 1), ("ascent", 2)]
    twice = agad.build_phases(forget, retain, settings("agad", chunk_size=5, interleaving_factor=2,
                                                           final_annealing=False), training, seed=0)
    assert kinds(twice) == [("ascent", 0), ("anneal", 0), ("anneal", 0)]
    assert [agad.anneals_after(n, 1 / 3) for n in range(1, 7)] == [0, 0, 1, 0, 0, 1]


def test_agad_annealing_subsets_are_seeded_and_differ_between_phases():
    forget, retain = fake("F", 8), fake("R", 20)
    method = settings("agad", chunk_size=2, annealing_fraction=0.25)

    def subsets(seed):
        phases = agad.build_phases(forget, retain, method, TrainingConfig(), seed=seed)
        return [[e.item_id for e in p.examples] for p in phases if p.info["kind"] == "anneal"]

    first = subsets(0)
    assert len(first) == 4 and all(len(s) == 5 for s in first)
    assert len({tuple(s) for s in first}) > 1  # a different random subset per annealing phase
    assert subsets(0) == first
    assert subsets(1) != first


def test_gd_batches_hold_forget_and_retain_in_equal_numbers(tiny_tokenizer):
    forget, retain = fake("F", 5), fake("R", 3)
    method = settings("gd", retain_weight=0.5)
    training = TrainingConfig(epochs=2, batch_size=4, seed=0)
    phases = get_method("gd").build_phases(forget, retain, method, training, seed=7)
    assert len(phases) == 1 and not phases[0].shuffle
    batches = Trainer.batches_for(SimpleNamespace(config=training), phases[0], 0)
    assert len(batches) == 5  # 10 forget draws, 2 per batch
    for batch in batches:
        f = [e for e in batch if e.role == "forget"]
        r = [e for e in batch if e.role == "retain"]
        assert len(f) == len(r) == 2
        # batch loss = sum(w * loss) / len(batch) = mean forget loss + 0.5 * mean retain loss
        assert sum(e.weight for e in f) / len(batch) == pytest.approx(1.0)
        assert sum(e.weight for e in r) / len(batch) == pytest.approx(0.5)
    draws = [e.item_id for b in batches for e in b if e.role == "forget"]
    assert sorted(draws) == sorted([f"F{i}" for i in range(1, 6)] * 2)  # each forget example once per epoch
    assert ids(get_method("gd").build_phases(forget, retain, method, training, seed=7)[0]) == ids(phases[0])
    # Odd batch size: 2 forget + 1 retain per batch; the last batch holds the leftover forget example.
    odd = get_method("gd").build_phases(forget, retain, method, TrainingConfig(epochs=1, batch_size=3), seed=0)[0]
    batches = Trainer.batches_for(SimpleNamespace(config=TrainingConfig(batch_size=3)), odd, 0)
    assert [[e.role[0] for e in b] for b in batches] == [list("ffr"), list("ffr"), list("fr")]
    for batch in batches:
        assert sum(e.weight for e in batch if e.role == "forget") / len(batch) == pytest.approx(1.0)
        assert sum(e.weight for e in batch if e.role == "retain") / len(batch) == pytest.approx(0.5)


def test_registry():
    from methods.registry import Method
    from methods.terms import make_loss as term_make_loss

    assert set(METHODS) == {"ga", "gd", "agad", "sugd", "gold_standard", "rmu", "idk_nll", "idk_dpo"}
    # RMU (hidden states) and the Idk methods (refusal NLL, preference pairs) bring their own loss; the
    # schedules over loss terms share one.
    own_loss = {"rmu", "idk_nll", "idk_dpo", "gold_standard"}
    for name, module in METHODS.items():
        assert isinstance(module, Method) and module.NAME == name and module.Settings().name == name
        assert (module.make_loss is not term_make_loss) == (name in own_loss), name
    with pytest.raises(UserError, match="unknown method 'sgd' .*known: ga, gd, agad, sugd"):
        get_method("sgd")


@pytest.mark.parametrize("name, changes, training, forget, retain, message", [
    ("sugd", {"chunk_size": 0}, {}, 3, 3, "config: method.chunk_size must be a positive integer, got 0"),
    ("agad", {"chunk_size": -2}, {}, 3, 3, "config: method.chunk_size must be a positive integer"),
    ("sugd", {"positive_ratio": -1}, {}, 3, 3, "config: method.positive_ratio must be 0 or more"),
    ("sugd", {"positive_factor": -0.5}, {}, 3, 3, "config: method.positive_factor must be a finite number >= 0"),
    ("agad", {"annealing_fraction": 0.0}, {}, 3, 3, r"annealing_fraction must be a finite number in \(0, 1\], got 0.0"),
    ("agad", {"annealing_fraction": 1.5}, {}, 3, 3, r"annealing_fraction must be a finite number in \(0, 1\]"),
    ("agad", {"interleaving_factor": 0.0}, {}, 3, 3, "interleaving_factor must be a finite number > 0"),
    ("agad", {"retain": "none"}, {}, 3, 3, "config: method.retain must be one of nll, kl, got 'none'"),
    ("ga", {}, {}, 0, 3, "ga: the forget set is empty"),
    ("sugd", {}, {}, 0, 3, "sugd: the forget set is empty"),
    ("gd", {}, {}, 3, 0, "gd: the retain set is empty"),
    ("gd", {"retain": "kl"}, {}, 3, 0, "gd: the retain set is empty but the method needs it \\(retain loss 'kl'\\)"),
    ("sugd", {}, {}, 3, 0, "sugd: the retain set is empty"),
    ("agad", {}, {}, 3, 0, "agad: the retain set is empty"),
    ("gd", {"forget": {"loss": "npo", "beta": 0.0}}, {}, 3, 3, "method.forget.beta must be a finite number > 0, got 0.0"),
    ("sugd", {"forget": {"loss": "npo", "beta": -1.0}}, {}, 3, 3, "method.forget.beta must be a finite number > 0"),
    ("gd", {}, {"batch_size": 1}, 3, 3, "batch_size must be at least 2"),
    ("gd", {"retain_weight": -1.0}, {}, 3, 3, "config: method.retain_weight must be a finite number >= 0"),
    ("ga", {"forget_loss_ceiling": 0.0}, {}, 3, 3, "config: method.forget_loss_ceiling must be a finite number > 0"),
    ("ga", {}, {"epochs": 0.0}, 3, 3, "epochs must be positive"),
])
def test_bad_settings_are_one_line_user_errors(name, changes, training, forget, retain, message):
    """A range is the config's to check (once, when the settings are made); the rest the schedule's."""
    with pytest.raises(UserError, match=message) as caught:
        method = settings(name, **changes)
        get_method(name).build_phases(fake("F", forget), fake("R", retain), method, TrainingConfig(**training), 0)
    assert "\n" not in str(caught.value)


def test_retain_free_methods_accept_an_empty_retain_set():
    assert get_method("ga").build_phases(fake("F", 2), [], settings("ga"), TrainingConfig(), 0)
    npo_only = settings("ga", forget="npo")
    assert get_method("ga").build_phases(fake("F", 2), [], npo_only, TrainingConfig(), 0)
    assert sugd.build_phases(fake("F", 2), [], settings("sugd", positive_ratio=0), TrainingConfig(), 0)
    assert sugd.build_phases(fake("F", 2), [], settings("sugd", retain="none"), TrainingConfig(), 0)


# --------------------------------------------------------------------------------------------
# Loss arithmetic


class FixedLogits(torch.nn.Module):
    """A 'model' whose logits are a fixed trainable table, for hand-checked losses."""

    def __init__(self, table):
        super().__init__()
        self.table = torch.nn.Parameter(torch.tensor(table))

    def forward(self, input_ids, attention_mask):
        return SimpleNamespace(logits=self.table)


def test_npo_loss_matches_a_hand_computation():
    logp, ref = torch.tensor([-10.0, -3.0, -1.0]), torch.tensor([-8.0, -3.0, -4.0])
    expected = [-(2 / 0.5) * math.log(1 / (1 + math.exp(-0.5 * -(-10.0 + 8.0)))), 4 * math.log(2),
                -(2 / 0.5) * math.log(1 / (1 + math.exp(0.5 * 3.0)))]
    assert npo_loss(logp, ref, 0.5).tolist() == pytest.approx(expected, rel=1e-6)

    # Through the loss function: two sequences over a 3-token vocabulary, fixed logits.
    table = [[[1.0, 2.0, 0.5], [0.0, 0.0, 3.0], [0.0, 0.0, 0.0]],
             [[0.0, 0.0, 0.0], [2.0, -1.0, 0.0], [0.0, 0.0, 0.0]]]
    model = FixedLogits(table)

    def lsm(row):
        return [x - math.log(sum(math.exp(v) for v in row)) for x in row]

    logp0 = lsm(table[0][0])[1] + lsm(table[0][1])[2]  # labels 1, 2 predicted from positions 0, 1
    logp1 = lsm(table[1][1])[0]  # label 0 predicted from position 1
    batch = {"input_ids": torch.zeros(2, 3, dtype=torch.long), "attention_mask": torch.ones(2, 3, dtype=torch.long),
             "labels": torch.tensor([[-100, 1, 2], [-100, -100, 0]]), "weight": torch.tensor([1.0, 2.0]),
             "is_forget": torch.tensor([True, True]), "reference_logp": torch.tensor([-2.0, -0.5])}
    loss_fn = term_loss("npo", "none", beta=0.5, reference=Reference(model, "precomputed"))
    out = loss_fn(model, batch)
    hand = [-(4.0) * math.log(1 / (1 + math.exp(0.5 * (logp0 + 2.0)))),
            2.0 * -(4.0) * math.log(1 / (1 + math.exp(0.5 * (logp1 + 0.5))))]
    assert out.per_example.tolist() == pytest.approx(hand, rel=1e-5)
    assert out.nll.tolist() == pytest.approx([-logp0 / 2, -logp1], rel=1e-5)
    # Ascent on the same batch: -weight x mean token NLL.
    ascent = term_loss("ascent", "none")(model, batch)
    assert ascent.per_example.tolist() == pytest.approx([logp0 / 2, 2 * logp1], rel=1e-5)


def test_npo_without_any_reference_log_likelihood_is_a_clear_error():
    model = FixedLogits([[[0.0, 1.0], [1.0, 0.0]]])
    batch = {"input_ids": torch.zeros(1, 2, dtype=torch.long), "attention_mask": torch.ones(1, 2, dtype=torch.long),
             "labels": torch.tensor([[-100, 1]]), "weight": torch.tensor([1.0]), "is_forget": torch.tensor([True])}
    loss_fn = term_loss("npo", "none", reference=Reference(model, "precomputed"))
    with pytest.raises(UserError, match="reference log-likelihoods precomputed"):
        loss_fn(model, batch)
    # A zero-weight placeholder row (a DDP process without an example) needs nothing.
    assert loss_fn(model, {**batch, "weight": torch.tensor([0.0])}).per_example.tolist() == [0.0]
    # Rows that all contribute nothing still give a loss attached to the model (DDP needs the backward).
    zero = term_loss("ascent", "nll")(model, {**batch, "weight": torch.tensor([0.0])}).per_example
    zero.sum().backward()
    assert zero.tolist() == [0.0] and model.table.grad is not None and not model.table.grad.any()
    with pytest.raises(UserError, match="kl loss needs a reference"):
        term_loss("ascent", "kl")


def test_kl_is_zero_against_itself_and_positive_after_a_change(model, tiny_tokenizer, data):
    _, retain = data
    batch = collate(retain, tiny_tokenizer.pad_token_id)
    # LoRA: the reference is the adapter switched off; a fresh adapter (B = 0) changes nothing.
    lora = apply_adapter(copy.deepcopy(model), AdapterConfig(kind="lora", lora_rank=4, lora_alpha=8))
    reference = Reference.for_model(lora, "lora")
    loss_fn = term_loss("ascent", "kl", reference=reference)
    assert loss_fn(lora, batch).per_example.abs().max() < 1e-6
    with torch.no_grad():
        for name, parameter in lora.named_parameters():
            if "lora_B" in name:
                parameter.normal_(0, 0.5)
    assert loss_fn(lora, batch).per_example.min() > 1e-3
    # Full fine-tuning: a frozen copy, made once; changing the model leaves the copy alone.
    full = apply_adapter(copy.deepcopy(model), AdapterConfig(kind="full"))
    reference = Reference.for_model(full, "full")
    loss_fn = term_loss("ascent", "kl", reference=reference)
    assert reference.mode == "copy" and reference.frozen is not full
    assert loss_fn(full, batch).per_example.abs().max() < 1e-6
    with torch.no_grad():
        full.lm_head.weight.add_(torch.randn_like(full.lm_head.weight) * 0.5)
    kl = loss_fn(full, batch).per_example.detach()
    assert kl.min() > 1e-3
    # Only output tokens count: the hand formula over the labelled positions.
    with torch.no_grad():
        logits = full(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
        ref_logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
    p, q = ref_logits[0, :-1].softmax(-1), logits[0, :-1].softmax(-1)
    mask = batch["labels"][0, 1:] != -100
    hand = ((p * (p.log() - q.log())).sum(-1)[mask]).mean()
    assert float(kl[0]) == pytest.approx(float(hand), rel=1e-4)
    assert kl_per_example(logits, ref_logits, batch["labels"]).tolist() == pytest.approx(kl.tolist(), rel=1e-5)


@pytest.mark.parametrize("kind", ["ascent", "npo"])
def test_forget_loss_ceiling_stops_ascent_per_example(model, tiny_tokenizer, data, kind):
    forget, _ = data
    nll = nll_per_example(model, collate(forget, tiny_tokenizer.pad_token_id)).tolist()
    high, low = max(range(3), key=nll.__getitem__), min(range(3), key=nll.__getitem__)
    ceiling = (nll[high] + nll[low]) / 2
    reference = Reference.for_model(model, "full")
    reference.precompute_sequence_logp(forget, tiny_tokenizer)
    loss_fn = term_loss(kind, "none", reference=reference, ceiling=ceiling)
    model.train()

    def grad_norm(example):
        model.zero_grad()
        out = loss_fn(model, collate([example], tiny_tokenizer.pad_token_id))
        out.per_example.sum().backward()
        return out.per_example.detach(), sum(float(p.grad.abs().sum()) for p in model.parameters() if p.grad is not None)

    above, above_grad = grad_norm(forget[high])
    assert float(above) == 0.0 and above_grad == 0.0
    below, below_grad = grad_norm(forget[low])
    assert float(below) != 0.0 and below_grad > 0.0


# --------------------------------------------------------------------------------------------
# The reference model


def test_lora_reference_is_exactly_the_base_model(model, tiny_tokenizer, data):
    forget, retain = data
    batch = collate(forget + retain, tiny_tokenizer.pad_token_id)
    base_logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
    lora = apply_adapter(model, AdapterConfig(kind="lora", lora_rank=4, lora_alpha=8))
    with torch.no_grad():
        for name, parameter in lora.named_parameters():
            if "lora_B" in name:
                parameter.normal_(0, 0.5)
    adapter_state = {n: p.clone() for n, p in lora.named_parameters() if "lora_" in n}
    lora.train()
    tuned = lora(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
    assert (tuned - base_logits).abs().max() > 1e-2
    reference = Reference.for_model(lora, "lora")
    ref_logits = reference.logits(batch["input_ids"], batch["attention_mask"])
    assert float((ref_logits - base_logits).abs().max()) == 0.0
    assert not ref_logits.requires_grad
    assert all(torch.equal(p, adapter_state[n]) for n, p in lora.named_parameters() if "lora_" in n)
    # Under accelerate/DDP the loss receives a wrapped model; the reference holds the bare one.
    assert Reference.for_model(torch.nn.DataParallel(lora), "lora").model is lora
    with pytest.raises(UserError, match="apply_adapter first"):
        Reference.for_model(copy.deepcopy(model), "lora")


def test_full_finetuning_npo_reference_is_precomputed_once(model, tiny_tokenizer, data):
    forget, _ = data
    method = settings("ga", forget={"loss": "npo", "beta": 0.1})
    training = TrainingConfig(epochs=2, batch_size=3, learning_rate=1e-3)
    phases = ga.build_phases(forget, [], method, training, seed=0)
    model = apply_adapter(model, AdapterConfig(kind="full"))
    expected = (-nll_per_example(model, collate(forget, tiny_tokenizer.pad_token_id)) *
                torch.tensor([sum(t != -100 for t in e.labels[1:]) for e in forget])).tolist()
    calls = []
    model.register_forward_hook(lambda *args: calls.append(1))
    reference = Reference.for_model(model, "full")
    reference.prepare(phases, tiny_tokenizer, batch_size=8)
    assert len(calls) == 0 and reference.mode == "precomputed"  # nothing asked for NPO yet
    loss_fn = make_loss(method, reference)
    assert len(calls) == 1  # one forward pass over the three forget examples, before training
    assert [e.reference_logp for e in phases[0].examples] == pytest.approx(expected, rel=1e-5)
    make_loss(method, reference)
    assert len(calls) == 1  # not again
    out = loss_fn(model, collate(phases[0].examples, tiny_tokenizer.pad_token_id))
    assert out.per_example.tolist() == pytest.approx([2 / 0.1 * math.log(2)] * 3, rel=1e-4)  # logp == ref
    calls.clear()
    Trainer(model, tiny_tokenizer, training, loss_fn, progress=False).train_phase(phases[0], 0)
    assert len(calls) == 2  # two steps, one forward each: no reference model at training time
    # The one-call helper does the same for any method.
    assert prepare_reference(settings("ga"), model, "full", phases, tiny_tokenizer) is None


# --------------------------------------------------------------------------------------------
# Each method does what it claims (a few steps of full fine-tuning on the tiny model)


def unlearn(model, tokenizer, data, method, training, adapter=None):
    """What a run does: phases, adapter, reference (before training), loss, the loop over phases."""
    forget, retain = data
    adapter = adapter or AdapterConfig(kind="full")
    module = get_method(method.name)
    phases = module.build_phases(forget, retain, method, training, training.seed)
    model = apply_adapter(model, adapter)
    reference = Reference.for_model(model, adapter.kind)
    reference.prepare(phases, tokenizer, batch_size=8)
    trainer = Trainer(model, tokenizer, training, make_loss(method, reference), progress=False)
    for index, phase in enumerate(phases):
        trainer.train_phase(phase, index)
    return trainer.unwrapped_model


def nll_change(model, tokenizer, data, method, training, adapter=None):
    forget, retain = data
    before = mean_nll(model, tokenizer, forget), mean_nll(model, tokenizer, retain)
    after_model = unlearn(model, tokenizer, data, method, training, adapter)
    after = mean_nll(after_model, tokenizer, forget), mean_nll(after_model, tokenizer, retain)
    return after[0] - before[0], after[1] - before[1], before


def test_ga_raises_forget_nll(model, tiny_tokenizer, data):
    training = TrainingConfig(epochs=4, batch_size=3, learning_rate=3e-3, lr_schedule="constant")
    forget_rise, _, before = nll_change(model, tiny_tokenizer, data, settings("ga"), training)
    assert before[0] < 1.5  # the tiny model knows the forget answers to begin with
    assert forget_rise > 1.0


@pytest.mark.parametrize("name, changes, adapter", [
    ("gd", {"retain_weight": 1.0}, "full"),
    ("gd", {"retain": "kl", "retain_weight": 1.0}, "full"),
    ("gd", {"retain": "kl", "retain_weight": 1.0}, "lora"),
    ("gd", {"forget": {"loss": "npo", "beta": 0.1}, "retain": "nll"}, "full"),
    ("sugd", {"chunk_size": 2, "positive_ratio": 2, "positive_factor": 1.0}, "full"),
    ("agad", {"chunk_size": 2, "annealing_fraction": 1.0}, "full"),
])
def test_methods_with_a_retain_term_forget_more_than_they_damage(model, tiny_tokenizer, data, name, changes,
                                                                 adapter):
    # Tolerance: the forget NLL rises by more than 1 nat and by at least twice as much as the retain NLL
    # (measured: forget +3.3 to +10, retain -0.4 to +0.8; plain GA's forget rise is about +4).
    lr = 1e-2 if adapter == "lora" else 3e-3
    batch_size = 4 if name == "gd" else 2
    training = TrainingConfig(epochs=4, batch_size=batch_size, learning_rate=lr, lr_schedule="constant")
    adapter_config = AdapterConfig(kind=adapter, lora_rank=8, lora_alpha=16)
    forget_rise, retain_rise, _ = nll_change(model, tiny_tokenizer, data, settings(name, **changes),
                                             training, adapter_config)
    assert forget_rise > 1.0, (forget_rise, retain_rise)
    assert retain_rise < forget_rise / 2, (forget_rise, retain_rise)


def test_gathered_kl_equals_the_dense_masked_mean():
    """kl_per_example gathers answer positions first; it must equal the dense masked computation."""
    import torch.nn.functional as F

    from methods.engine.losses import kl_per_example

    generator = torch.Generator().manual_seed(0)
    logits = torch.randn(3, 7, 11, generator=generator)
    ref_logits = torch.randn(3, 7, 11, generator=generator)
    labels = torch.tensor([[-100, -100, 4, 5, 6, -100, -100], [-100, 1, 2, 3, 4, 5, 6],
                           [-100, -100, -100, -100, -100, -100, -100]])
    dense = F.kl_div(F.log_softmax(logits[:, :-1], -1), F.log_softmax(ref_logits[:, :-1], -1), reduction="none",
                     log_target=True).sum(-1)
    mask = labels[:, 1:] != -100
    expected = (dense * mask).sum(1) / mask.sum(1).clamp(min=1)
    assert torch.allclose(kl_per_example(logits, ref_logits, labels), expected, atol=1e-6)
    assert kl_per_example(logits, ref_logits, labels)[2] == 0.0


def test_document_scope_compares_the_ceiling_with_the_whole_texts_nll(model, tiny_tokenizer, data):
    """Answer scope reads the answer tokens' NLL, document scope the whole text's (prompt included, the
    MIA attack's quantity): a ceiling between the two stops the example under exactly one of them."""
    from methods.engine.trainer import token_nll_from_logits

    forget, _ = data
    batch = collate([forget[0]], tiny_tokenizer.pad_token_id)
    model.train()
    with torch.no_grad():
        logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
    answer_nll = float(token_nll_from_logits(logits, batch["labels"])[0][0])
    text_nll = float(token_nll_from_logits(logits, batch["input_ids"])[0][0])
    assert abs(answer_nll - text_nll) > 0.05
    between = (answer_nll + text_nll) / 2

    def loss(scope):
        loss_fn = term_loss("ascent", "none", ceiling=between, ceiling_scope=scope)
        return float(loss_fn(model, batch).per_example[0])

    stopped_by = "answer" if answer_nll > text_nll else "document"
    running = "document" if stopped_by == "answer" else "answer"
    assert loss(stopped_by) == 0.0
    assert loss(running) == pytest.approx(-answer_nll, rel=1e-5)


# --------------------------------------------------------------------------------------------
# Methods as plug-ins: typed settings, retain_loss honoured where declared, a method registered from outside


def test_the_kl_config_is_gd_with_a_kl_retain_term(model, tiny_tokenizer, data, capsys):
    """configs/kl.yaml is gd with `retain: kl`; an old `name: kl` section loads as the same settings."""
    from methods.losses.kl import KL
    from utils.config import load_config

    from ..conftest import REPO

    forget, retain = data
    training = TrainingConfig(epochs=2, batch_size=4, seed=3)
    gd_kl, kl = settings("gd", retain="kl", retain_weight=0.7), settings("kl", retain_weight=0.7)
    assert gd_kl == kl and kl.retain == KL() and get_method("gd").loss_kinds(kl) == ("ascent", "kl")
    shipped = typed_settings(load_config(REPO / "configs" / "kl.yaml").method)
    assert (shipped.name, shipped.retain) == ("gd", KL())
    gd_phases = get_method("gd").build_phases(forget, retain, gd_kl, training, seed=3)
    # The KL values on a batch, against a reference the model has moved away from.
    lora = apply_adapter(model, AdapterConfig(kind="lora", lora_rank=4, lora_alpha=8))
    with torch.no_grad():
        for name, parameter in lora.named_parameters():
            if "lora_B" in name:
                parameter.normal_(0, 0.5)
    reference = prepare_reference(gd_kl, lora, "lora", gd_phases, tiny_tokenizer)
    assert reference is not None and reference.mode == "adapter"
    batch = collate(gd_phases[0].examples[:4], tiny_tokenizer.pad_token_id)
    assert batch["is_forget"].any() and not batch["is_forget"].all()
    gd_out = make_loss(gd_kl, reference)(lora, batch)
    retain_rows = ~batch["is_forget"]
    assert gd_out.per_example[retain_rows].min() > 1e-4  # a real KL term, not zeros
    with torch.no_grad():
        logits = lora(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
    hand = kl_per_example(logits, reference.logits(batch["input_ids"], batch["attention_mask"]), batch["labels"])
    assert gd_out.per_example[retain_rows].tolist() == pytest.approx(
        (hand * batch["weight"])[retain_rows].tolist(), rel=1e-5)
    # ...and a different one from plain gd's NLL retain term.
    nll_out = make_loss(settings("gd", retain_weight=0.7), reference)(lora, batch)
    assert not torch.allclose(nll_out.per_example[retain_rows], gd_out.per_example[retain_rows])


def test_register_checks_the_interface():
    from types import ModuleType

    from methods.registry import register

    bare = ModuleType("bare")
    bare.NAME = "bare"
    with pytest.raises(TypeError, match="lacks Settings, build_phases, make_loss, needs_reference, loss_kinds"):
        register(bare)
    bare.Settings, bare.loss_kinds, bare.build_phases, bare.make_loss, bare.needs_reference = (
        dict, *[lambda *args: None] * 4)
    with pytest.raises(TypeError, match="dataclass subclassing utils.config.MethodConfig"):
        register(bare)
    bare.Settings = get_method("ga").Settings  # its name defaults to "ga"
    with pytest.raises(ValueError, match="name must default to NAME"):
        register(bare)
    bare.NAME = "ga"
    with pytest.raises(ValueError, match="'ga' is already registered"):
        register(bare)
    assert "bare" not in METHODS and get_method("ga").__name__ == "methods.ga"


@pytest.mark.usefixtures("one_thread")
def test_a_registered_method_with_its_own_knob_runs_end_to_end(small_world, tmp_path):
    """One module object, one registry line: its knob loads from the config, is range-checked, reaches
    build_phases, and the run trains and evaluates like any shipped method's."""
    import dataclasses
    import json
    from types import ModuleType

    import yaml

    from methods import terms
    from methods.engine.phases import tagged
    from methods.losses.npo import NPO
    from methods.registry import register, unregister
    from utils.config import AT_LEAST_ONE, ranged
    from utils.experiment.run import run_unlearning

    @dataclasses.dataclass
    class ToySettings(terms.ForgetSettings):
        name: str = "toy"
        passes: int = ranged(1, AT_LEAST_ONE, "how many times the first forget examples repeat")

    seen = []

    def build_phases(forget, retain, toy_settings, training, seed):
        seen.append(toy_settings)
        examples = [tagged(e, "forget") for e in forget[:2]] * toy_settings.passes
        return [Phase(name="toy", examples=examples, epochs=1, shuffle=False, info={"kind": "ascent"})]

    toy = ModuleType("toy_method")
    toy.NAME, toy.Settings, toy.build_phases = "toy", ToySettings, build_phases
    toy.loss_kinds, toy.make_loss, toy.needs_reference = terms.loss_kinds, terms.make_loss, terms.needs_reference
    register(toy)
    out = tmp_path / "run"
    try:
        with pytest.raises(UserError, match=r"^config: method\.passes must be a positive integer, got 0$"):
            small_world.config("method.name=toy", "method.passes=0")
        with pytest.raises(UserError, match=r"method\.passes is not a setting of sugd \(it belongs to toy\)"):
            small_world.config("method.passes=2")
        config = small_world.config("method.name=toy", "method.passes=3", "method.forget.loss=npo",
                                    "method.forget.beta=0.2",
                                    "training.batch_size=2", "training.learning_rate=1e-3", "adapter.kind=lora",
                                    "adapter.lora_rank=4", "evaluation.subset=1", "evaluation.per_phase_subset=0",
                                    "evaluation.max_new_tokens=8")
        assert type(config.method) is ToySettings
        results = run_unlearning(config, out, progress=False, log=lambda _: None)
    finally:
        unregister("toy")
    assert "toy" not in METHODS
    assert [(s.passes, s.forget) for s in seen] == [(3, NPO(beta=0.2))]
    assert (out / "results.json").is_file() and results["method"] == "toy"
    assert json.loads((out / "results.json").read_text())["method"] == "toy"
    assert len((out / "log.jsonl").read_text().splitlines()) == 3  # 6 examples, 2 per step
    saved = yaml.safe_load((out / "config.yaml").read_text())["method"]
    assert saved["passes"] == 3 and "chunk_size" not in saved
