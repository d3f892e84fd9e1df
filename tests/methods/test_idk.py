"""IdkNLL and IdkDPO: refusal examples, the stable choice of refusal, both losses against hand computations,
and both methods moving the model from the original answers towards the refusals, alone and in a run."""

from __future__ import annotations

import copy
import dataclasses
import hashlib
import json
import math

import pytest
import torch

from methods import idk_dpo, idk_nll
from methods.engine.losses import Reference
from methods.engine.trainer import Phase, Trainer, nll_loss, nll_per_example
from methods.registry import get_method, make_loss, prepare_reference, typed, typed_settings
from utils.cli.main import main
from utils.config import AdapterConfig, Config, MethodSection, TrainingConfig
from utils.data.lume import Item
from utils.data.tokenization import IGNORE_INDEX, collate, encode_prompt
from utils.errors import UserError
from utils.experiment.inputs import example_encoder
from utils.models.adapters import apply_adapter
from utils.models.loading import build_tiny_model

from ..conftest import REPO, SENTENCES

pytestmark = pytest.mark.usefixtures("one_thread")

REFUSALS = ["I don't know.", "I can't say.", "No idea, sorry."]


def item(sentence: str, split: str, index: int) -> Item:
    words = sentence.split()
    half = len(words) // 2
    return Item(id=f"doc{index}_sc1", input=" ".join(words[:half]), output=" ".join(words[half:]), task="Task1",
                split=split, kind="sc", index=1, document_id=f"doc{index}")


@pytest.fixture(scope="module")
def items():
    return ([item(s, "forget", i) for i, s in enumerate(SENTENCES[:3])],
            [item(s, "retain", i + 3) for i, s in enumerate(SENTENCES[3:])])


@pytest.fixture(scope="module")
def refusals_file(tmp_path_factory):
    path = tmp_path_factory.mktemp("refusals") / "refusals.txt"
    path.write_text("# a comment, then a blank line\n\n" + "\n".join(REFUSALS) + "\n")
    return str(path)


@pytest.fixture(scope="module")
def encode(tiny_tokenizer):
    return example_encoder(tiny_tokenizer, Config())  # the default run: no EOS on unlearning examples


@pytest.fixture(scope="module")
def trained(tiny_tokenizer, items, encode):
    """A tiny model that has learnt all six original sentences."""
    forget, retain = items
    model = build_tiny_model(tiny_tokenizer, hidden_size=32, num_layers=2, num_heads=2, intermediate_size=64,
                             max_position_embeddings=128, seed=0)
    examples = [encode(i, i.split) for i in forget + retain]
    config = TrainingConfig(epochs=45, learning_rate=1e-2, batch_size=6, lr_schedule="cosine", warmup_steps=5)
    Trainer(model, tiny_tokenizer, config, nll_loss, progress=False).train_phase(Phase("fit", examples, epochs=45))
    model.eval()
    return model


def sequence_logp(model, input_ids, labels) -> float:
    """log p(labelled tokens | the tokens before them), one unpadded sequence at a time, by hand."""
    with torch.no_grad():
        logits = model(input_ids=torch.tensor([input_ids]), attention_mask=torch.ones(1, len(input_ids),
                                                                                       dtype=torch.long)).logits[0]
    logp = torch.log_softmax(logits.double(), dim=-1)
    return sum(float(logp[t - 1, labels[t]]) for t in range(1, len(labels)) if labels[t] != IGNORE_INDEX)


def mean_nll(model, examples, pad_id) -> float:
    model.eval()
    with torch.no_grad():
        return float(nll_per_example(model, collate(examples, pad_id)).mean())


# --------------------------------------------------------------------------------------------
# Refusal examples and templates


def test_refusal_examples_keep_the_prompt_and_label_the_refusal_only(tiny_tokenizer, items, encode, refusals_file):
    forget, retain = items
    settings = idk_nll.Settings(refusals=refusals_file)
    examples = idk_nll.make_examples(forget, "forget", encode, settings, seed=0)
    for source, example in zip(forget, examples):
        prompt = encode_prompt(tiny_tokenizer, source.input)
        refusal = idk_nll.choose_refusal(source.id, REFUSALS, 0)
        answer = tiny_tokenizer(" " + refusal, add_special_tokens=False)["input_ids"]
        assert example.input_ids == prompt + answer
        assert example.labels == [IGNORE_INDEX] * len(prompt) + answer
        assert (example.item_id, example.role) == (source.id, "forget")
    # Retain items are left as they are.
    assert [e.input_ids for e in idk_nll.make_examples(retain, "retain", encode, settings, 0)] == \
        [encode(i, "retain").input_ids for i in retain]
    # IdkDPO: the original example, with the refusal example as its pair.
    paired = idk_dpo.make_examples(forget, "forget", encode, idk_dpo.Settings(refusals=refusals_file), seed=0)
    for source, refusal, example in zip(forget, examples, paired):
        original = encode(source, "forget")
        assert (example.input_ids, example.labels) == (original.input_ids, original.labels)
        assert (example.pair_input_ids, example.pair_labels) == (refusal.input_ids, refusal.labels)
    # The run's encoding options hold for refusals too: EOS when training.append_eos says so.
    with_eos = example_encoder(tiny_tokenizer, Config(training=TrainingConfig(append_eos=True)))
    example = idk_nll.make_examples(forget[:1], "forget", with_eos, settings, 0)[0]
    assert example.input_ids[-1] == example.labels[-1] == tiny_tokenizer.eos_token_id


def test_the_refusal_choice_is_a_stable_hash_of_the_item_id():
    templates = idk_nll.load_refusals(idk_nll.DEFAULT_REFUSALS)
    assert len(templates) >= 15 and len(set(templates)) == len(templates)
    ids = [f"doc{i}_qa{j}" for i in range(40) for j in range(3)]
    chosen = [idk_nll.choose_refusal(i, templates, 0) for i in ids]
    # sha256, not Python's salted hash(): the same choice in every process, every resume, every machine.
    expected = [templates[int.from_bytes(hashlib.sha256(f"0\0{i}".encode()).digest()[:8], "big") % len(templates)]
                for i in ids]
    assert chosen == expected
    assert len(set(chosen)) >= 15  # spread over the templates
    assert [idk_nll.choose_refusal(i, templates, 1) for i in ids] != chosen  # training.seed reshuffles


def test_the_default_refusals_file_is_found_from_any_folder(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert idk_nll.load_refusals("configs/refusals.txt") == idk_nll.load_refusals(
        str(REPO / "configs" / "refusals.txt"))


@pytest.mark.parametrize("content, message", [
    (None, "was not found"),
    ("", "holds no refusal"),
    ("# only a comment\n\n   \n", "holds no refusal"),
    (b"\xff\xfe\x00bad", "cannot read"),
    ("dir", "cannot read"),
])
def test_a_missing_or_empty_refusals_file_is_a_one_line_error(tmp_path, items, encode, content, message):
    path = tmp_path / "refusals.txt"
    if content == "dir":
        path.mkdir()
    elif isinstance(content, bytes):
        path.write_bytes(content)
    elif content is not None:
        path.write_text(content)
    for module in (idk_nll, idk_dpo):
        with pytest.raises(UserError, match=message) as caught:
            module.make_examples(items[0], "forget", encode, module.Settings(refusals=str(path)), 0)
        assert "\n" not in str(caught.value) and str(caught.value).startswith("method.refusals: ")


def test_bad_settings_and_data_are_one_line_errors(items, encode, refusals_file):
    forget = idk_nll.make_examples(items[0], "forget", encode, idk_nll.Settings(refusals=refusals_file), 0)
    cases = [
        ("idk_nll", {}, {}, forget, [], "idk_nll: the retain set is empty"),
        ("idk_dpo", {}, {}, [], forget, "idk_dpo: the forget set is empty"),
        ("idk_dpo", {}, {"batch_size": 1}, forget, forget, "batch_size must be at least 2"),
        ("idk_nll", {"retain_weight": -1.0}, {}, forget, forget,
         "config: method.retain_weight must be a finite number >= 0"),
    ]
    for name, changes, training, f, r, message in cases:
        module = get_method(name)
        with pytest.raises(UserError, match=message) as caught:  # ranges: when the settings are made
            settings = typed_settings(MethodSection(name=name, options=changes))
            module.build_phases(f, r, settings, TrainingConfig(**training), 0)
        assert "\n" not in str(caught.value)
    # Without a retain term, the forget examples alone (reshuffled every epoch).
    phases = idk_nll.build_phases(forget, [], idk_nll.Settings(retain_loss="none"), TrainingConfig(epochs=2), 0)
    assert [(p.epochs, p.shuffle, len(p.examples)) for p in phases] == [(2, True, 3)]
    with pytest.raises(UserError, match="dpo_beta must be positive"):
        make_loss(idk_dpo.Settings(dpo_beta=0.0), None)
    with pytest.raises(UserError, match="needs a reference model"):
        make_loss(idk_dpo.Settings(), None)


# --------------------------------------------------------------------------------------------
# The losses against hand computations


def test_idk_nll_loss_is_the_refusals_nll(trained, tiny_tokenizer, items, encode, refusals_file):
    forget, retain = items
    refusal = idk_nll.make_examples(forget[:1], "forget", encode, idk_nll.Settings(refusals=refusals_file), 0)[0]
    kept = encode(retain[0], "retain")
    batch_examples = [dataclasses.replace(refusal, weight=1.5), dataclasses.replace(kept, weight=0.5)]
    out = make_loss(idk_nll.Settings(retain_weight=0.5), None)(trained, collate(batch_examples,
                                                                                tiny_tokenizer.pad_token_id))

    def hand_nll(example):
        tokens = sum(label != IGNORE_INDEX for label in example.labels[1:])
        return -sequence_logp(trained, example.input_ids, example.labels) / tokens

    expected = [1.5 * hand_nll(refusal), 0.5 * hand_nll(kept)]
    assert out.per_example.tolist() == pytest.approx(expected, rel=1e-5)
    assert out.nll.tolist() == pytest.approx([hand_nll(refusal), hand_nll(kept)], rel=1e-5)


@pytest.mark.parametrize("adapter", ["full", "lora"])
def test_idk_dpo_loss_matches_a_hand_computation(trained, tiny_tokenizer, items, encode, refusals_file, adapter):
    """Two forget examples (refusals of different lengths), weights 1 and 2, against a model moved away
    from its reference; every log-likelihood computed alone, without padding."""
    forget, _ = items
    beta = 0.5
    settings = idk_dpo.Settings(refusals=refusals_file, dpo_beta=beta)
    examples = idk_dpo.make_examples(forget[:2], "forget", encode, settings, 0)
    assert len(examples[0].pair_input_ids) != len(examples[1].pair_input_ids) or \
        len(examples[0].input_ids) != len(examples[1].input_ids)
    examples = [dataclasses.replace(examples[0], weight=1.0), dataclasses.replace(examples[1], weight=2.0)]
    start = copy.deepcopy(trained)
    model = apply_adapter(copy.deepcopy(trained), AdapterConfig(kind=adapter, lora_rank=4, lora_alpha=8))
    reference = Reference.for_model(model, adapter)
    reference.prepare([Phase("idk_dpo", examples, epochs=1)], tiny_tokenizer)
    loss_fn = make_loss(settings, reference)  # precomputes both sequences' reference log-likelihoods (full)
    if adapter == "full":
        assert all(e.reference_logp is not None and e.pair_reference_logp is not None for e in examples)
    torch.manual_seed(0)
    with torch.no_grad():  # move the model away from its reference
        for name, parameter in model.named_parameters():
            if adapter == "full" or "lora_B" in name:
                parameter.add_(torch.randn_like(parameter) * 0.05)
    out = loss_fn(model, collate(examples, tiny_tokenizer.pad_token_id))

    hand = []
    for example in examples:
        chosen = sequence_logp(model, example.pair_input_ids, example.pair_labels)
        rejected = sequence_logp(model, example.input_ids, example.labels)
        chosen_ref = sequence_logp(start, example.pair_input_ids, example.pair_labels)
        rejected_ref = sequence_logp(start, example.input_ids, example.labels)
        margin = beta * ((chosen - chosen_ref) - (rejected - rejected_ref))
        assert abs(margin) > 1e-3  # the model really moved: not the trivial (2/beta) log 2
        hand.append(example.weight * -(2 / beta) * math.log(1 / (1 + math.exp(-margin))))
    assert out.per_example.tolist() == pytest.approx(hand, rel=1e-5)
    # The logged NLL of a forget row is its original answer's.
    assert out.nll.tolist() == pytest.approx(
        [-sequence_logp(model, e.input_ids, e.labels) / sum(t != IGNORE_INDEX for t in e.labels[1:])
         for e in examples], rel=1e-5)


def test_idk_dpo_loss_adds_the_retain_nll_and_refuses_an_unpaired_forget_example(trained, tiny_tokenizer, items,
                                                                                   encode, refusals_file):
    forget, retain = items
    settings = idk_dpo.Settings(refusals=refusals_file)
    paired = idk_dpo.make_examples(forget[:1], "forget", encode, settings, 0)[0]
    kept = dataclasses.replace(encode(retain[0], "retain"), weight=0.5)
    model = apply_adapter(copy.deepcopy(trained), AdapterConfig(kind="full"))
    reference = Reference.for_model(model, "full")
    reference.prepare([Phase("idk_dpo", [paired, kept], epochs=1)], tiny_tokenizer)
    loss_fn = make_loss(settings, reference)
    assert kept.reference_logp is None  # only forget examples are precomputed
    out = loss_fn(model, collate([paired, kept], tiny_tokenizer.pad_token_id))
    tokens = sum(t != IGNORE_INDEX for t in kept.labels[1:])
    retain_nll = -sequence_logp(model, kept.input_ids, kept.labels) / tokens
    # Unchanged model: the DPO term is (2/beta) log 2 exactly.
    assert out.per_example.tolist() == pytest.approx([2 / 0.1 * math.log(2), 0.5 * retain_nll], rel=1e-5)
    unpaired = dataclasses.replace(paired, pair_input_ids=None, pair_labels=None)
    with pytest.raises(UserError, match="no refusal paired"):
        loss_fn(model, collate([unpaired, kept], tiny_tokenizer.pad_token_id))


def test_a_kl_retain_term_under_full_training_reads_a_frozen_copy(trained, tiny_tokenizer, items, encode,
                                                                   refusals_file):
    """retain_loss kl: the reference becomes a frozen copy, which also gives DPO its log-likelihoods; at the
    start the KL term is 0 and the DPO term (2/beta) log 2; after a change the KL is positive."""
    forget, retain = items
    kept = encode(retain[0], "retain")
    for module in (idk_nll, idk_dpo):
        settings = module.Settings(refusals=refusals_file, retain_loss="kl")
        first = module.make_examples(forget[:1], "forget", encode, settings, 0)[0]
        model = apply_adapter(copy.deepcopy(trained), AdapterConfig(kind="full"))
        reference = prepare_reference(settings, model, "full", [Phase("p", [first, kept], epochs=1)], tiny_tokenizer)
        loss_fn = make_loss(settings, reference)
        assert reference.mode == "copy" and first.reference_logp is None  # nothing precomputed: the copy serves
        batch = collate([first, kept], tiny_tokenizer.pad_token_id)
        out = loss_fn(model, batch).per_example.tolist()
        if module is idk_dpo:
            assert out[0] == pytest.approx(2 / 0.1 * math.log(2), rel=1e-5)
        assert abs(out[1]) < 1e-6
        with torch.no_grad():
            model.lm_head.weight.add_(torch.randn_like(model.lm_head.weight) * 0.5)
        assert loss_fn(model, batch).per_example[1] > 1e-3


# --------------------------------------------------------------------------------------------
# What the methods do


def unlearn(model, tokenizer, items, encode, settings, training, adapter):
    """What a run does: the method's examples and phases, adapter, reference, loss, the loop."""
    module = get_method(settings.name)
    forget = module.make_examples(items[0], "forget", encode, settings, training.seed)
    retain = module.make_examples(items[1], "retain", encode, settings, training.seed)
    phases = module.build_phases(forget, retain, settings, training, training.seed)
    model = apply_adapter(model, AdapterConfig(kind=adapter, lora_rank=8, lora_alpha=16))
    reference = prepare_reference(settings, model, adapter, phases, tokenizer)
    assert (reference is None) == (settings.name == "idk_nll")
    trainer = Trainer(model, tokenizer, training, make_loss(settings, reference), progress=False)
    for index, phase in enumerate(phases):
        trainer.train_phase(phase, index)
    return trainer.unwrapped_model


@pytest.mark.parametrize("name, adapter", [("idk_nll", "full"), ("idk_dpo", "full"), ("idk_dpo", "lora")])
def test_the_refusal_becomes_likelier_and_the_original_answer_less_so(trained, tiny_tokenizer, items, encode,
                                                                     refusals_file, name, adapter):
    forget, retain = items
    module = get_method(name)
    settings = module.Settings(refusals=refusals_file)
    pad = tiny_tokenizer.pad_token_id
    refusals = idk_nll.make_examples(forget, "forget", encode, settings, 0)
    originals = [encode(i, "forget") for i in forget]
    kept = [encode(i, "retain") for i in retain]
    before = [mean_nll(trained, examples, pad) for examples in (refusals, originals, kept)]
    training = TrainingConfig(epochs=4, batch_size=4, learning_rate=1e-2 if adapter == "lora" else 3e-3,
                              lr_schedule="constant")
    after_model = unlearn(copy.deepcopy(trained), tiny_tokenizer, items, encode, settings, training, adapter)
    after = [mean_nll(after_model, examples, pad) for examples in (refusals, originals, kept)]
    # Margins (nats of mean token NLL): the refusal's NLL falls by more than 1 and the original answer's
    # rises by more than 1, the retain NLL moving less than the refusal's (measured: refusal -1.8 to -3.3,
    # original +2.9 to +4.2, retain +0.1 to +0.3).
    assert before[0] - after[0] > 1.0, (before, after)
    assert after[1] - before[1] > 1.0, (before, after)
    assert abs(after[2] - before[2]) < before[0] - after[0], (before, after)


def run_overrides(world, *extra):
    return [*world.overrides, f"workdir={world.root}", "evaluation.subset=1", "evaluation.per_phase_subset=0",
            "evaluation.max_new_tokens=8", *extra]


@pytest.mark.parametrize("name", ["idk_nll", "idk_dpo"])
def test_a_run_on_the_tiny_default_moves_the_model_to_the_refusals(small_world, tmp_path, name):
    """`unlearn run configs/<name>.yaml` on the small world, evaluated; then the saved model against the target."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from utils.config import load_config
    from utils.data.lume import load_lume

    out = tmp_path / "run"
    args = ["run", str(REPO / "configs" / f"{name}.yaml"), "--out", str(out), "--quiet"]
    overrides = run_overrides(small_world)
    for override in overrides:
        args += ["--set", override]
    assert main(args) == 0
    results = json.loads((out / "results.json").read_text())
    assert results["method"] == name
    config = typed(load_config(str(REPO / "configs" / f"{name}.yaml"), overrides))
    tokenizer = AutoTokenizer.from_pretrained(small_world.target)
    encode = example_encoder(tokenizer, config)
    forget = load_lume(small_world.data).forget
    refusals = idk_nll.make_examples(forget, "forget", encode, config.method, config.training.seed)
    originals = [encode(i, "forget") for i in forget]
    pad = tokenizer.pad_token_id
    target = AutoModelForCausalLM.from_pretrained(small_world.target)
    final = AutoModelForCausalLM.from_pretrained(out / "model")
    before = [mean_nll(target, examples, pad) for examples in (refusals, originals)]
    after = [mean_nll(final, examples, pad) for examples in (refusals, originals)]
    # The target has memorised its forget answers (mean token NLL ~0.02) and never saw a refusal (~10).
    # Margins: the refusal's NLL falls by more than 1 nat per token; the original answer's at least
    # quadruples (measured: refusal 10.7 -> 4.8 (idk_nll), 5.7 (idk_dpo); original 0.019 -> 0.197, 0.859).
    assert before[0] - after[0] > 1.0, (before, after)
    assert after[1] > 4 * before[1] and after[1] - before[1] > 0.06, (before, after)


def test_dry_run_of_idk_dpo_counts_the_steps_with_and_without_a_tokenizer(small_world, tmp_path, monkeypatch,
                                                                          capsys):
    from ..experiment.test_dry_run import refuse_to_load_models

    refuse_to_load_models(monkeypatch)
    config = str(REPO / "configs" / "idk_dpo.yaml")
    plans = []
    for extra in ([], ["model.tokenizer=some-org/some-tokenizer"]):
        schedule_path = tmp_path / f"schedule{len(plans)}.json"
        args = ["run", config, "--dry-run", "--out", str(tmp_path / "run"), "--schedule-out", str(schedule_path)]
        for override in run_overrides(small_world, *extra):
            args += ["--set", override]
        assert main(args) == 0
        plans.append(json.loads(schedule_path.read_text()))
    measured, stand_in = plans
    assert not measured["stand_in_examples"] and stand_in["stand_in_examples"]
    n_forget = measured["items"]["forget"]
    # 3 epochs of the forget set, 4 forget + 4 retain examples per step of 8.
    assert measured["total_steps"] == stand_in["total_steps"] == math.ceil(3 * n_forget / 4)
    assert measured["phases"][0]["tokens_per_step"]["min"] > 0
    assert not (tmp_path / "run").exists()
    capsys.readouterr()
    # A refusals file that is not there stops the dry run with one line.
    args = ["run", config, "--dry-run", "--out", str(tmp_path / "run")]
    for override in run_overrides(small_world, f"method.refusals={tmp_path / 'none.txt'}"):
        args += ["--set", override]
    assert main(args) == 2
    err = capsys.readouterr().err
    assert len(err.splitlines()) == 1 and "method.refusals" in err and "was not found" in err, err


def test_a_dry_run_counts_a_paired_sequence_as_tokens_of_its_step():
    """IdkDPO puts both sequences of a pair through the model: the schedule's tokens per step count both."""
    from utils.data.tokenization import Example
    from utils.experiment.schedule import schedule_phase

    paired = Example([1, 2, 3], [-100, 2, 3], "F1", "forget", pair_input_ids=[1, 2, 7, 8, 9],
                     pair_labels=[-100, 2, 7, 8, 9])
    plain = Example([1, 2], [-100, 2], "R1", "retain")
    assert paired.token_count == 8 and plain.token_count == 2
    plan = schedule_phase(Phase("idk_dpo", [paired, plain], epochs=2), 0,
                          Config(training=TrainingConfig(batch_size=2)), measured=True)
    assert plan.steps == 2 and plan.tokens_per_step.min == plan.tokens_per_step.max == 10


def test_the_trainer_counts_a_pair_s_tokens_and_not_the_stand_in_of_an_unpaired_row(tiny_model, tiny_tokenizer):
    """A phase of one paired example (3 + 5 tokens) and one plain example (2 tokens, given a one-token stand-in
    pair by collate): the trainer's token total is the dry run's, 10 per step."""
    from utils.data.tokenization import Example

    paired = Example([1, 2, 3], [-100, 2, 3], "F1", "forget", pair_input_ids=[1, 2, 7, 8, 9],
                     pair_labels=[-100, 2, 7, 8, 9])
    plain = Example([1, 2], [-100, 2], "R1", "retain")
    result = Trainer(tiny_model, tiny_tokenizer, TrainingConfig(batch_size=2, epochs=2), nll_loss,
                     progress=False).train_phase(Phase("idk_dpo", [paired, plain], epochs=2))
    assert result.steps == 2 and result.tokens == 2 * 10
