"""RMU: its loss on a two-example batch against a hand computation, which weights it trains, its refusals,
and a run on the small world that moves the forget hidden states toward c * u while the retain set holds."""

from __future__ import annotations

import copy
import json
import re

import pytest
import torch

from methods import rmu
from methods.engine.phases import tagged
from methods.engine.trainer import nll_per_example
from methods.registry import make_loss, prepare_reference, typed
from utils.config import AdapterConfig, TrainingConfig, load_config
from utils.data.tokenization import collate, encode_pair
from utils.errors import UserError
from utils.models.adapters import apply_adapter
from utils.models.loading import build_tiny_model

from ..conftest import SENTENCES


def pair(tokenizer, sentence: str, role: str, weight: float = 1.0):
    words = sentence.split()
    half = len(words) // 2
    example = encode_pair(tokenizer, " ".join(words[:half]), " ".join(words[half:]), item_id=sentence[:12], role=role)
    return tagged(example, role, weight)


def tiny(tokenizer, layers: int):
    return build_tiny_model(tokenizer, hidden_size=32, num_layers=layers, num_heads=2, intermediate_size=64,
                            max_position_embeddings=128, seed=0)


def unit_direction(size: int, seed: int) -> torch.Tensor:
    """u as the paper draws it: uniform in [0, 1)^d, normalised (float64, for the hand computations)."""
    vector = torch.rand(size, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)
    return vector / vector.norm()


def states(model, example, index: int) -> torch.Tensor:
    """One example's hidden_states[index] alone (no padding, no batch), float64: [tokens, d]."""
    with torch.no_grad():
        out = model(input_ids=torch.tensor([example.input_ids]), output_hidden_states=True)
    return out.hidden_states[index][0].double()


def labelled(example) -> list[int]:
    return [t for t, label in enumerate(example.labels) if label != -100]


@pytest.mark.parametrize("kind", ["last_k", "lora"])
def test_the_loss_of_a_forget_and_a_retain_example_is_the_hand_computed_one(tiny_tokenizer, kind):
    original = tiny(tiny_tokenizer, 3)
    model = apply_adapter(copy.deepcopy(original), AdapterConfig(kind=kind, layers=[0, 1], lora_rank=4, lora_alpha=8))
    settings = rmu.Settings(layer=1, steering_coeff=3.0, retain_weight=0.5, direction_seed=7)
    loss_fn = make_loss(settings, prepare_reference(settings, model, kind, [], tiny_tokenizer))
    # Move the trained weights after the reference is taken, so the retain term is not zero.
    torch.manual_seed(1)
    with torch.no_grad():
        for parameter in (p for p in model.parameters() if p.requires_grad):
            parameter.add_(0.05 * torch.randn_like(parameter))
    # Weights as a mixed batch gives them; the retain sentence is the longer one, so the forget row is padded.
    forget, retain = pair(tiny_tokenizer, SENTENCES[0], "forget", 1.5), pair(tiny_tokenizer, SENTENCES[2], "retain", 0.25)
    assert len(forget.input_ids) < len(retain.input_ids)
    batch = collate([forget, retain], tiny_tokenizer.pad_token_id)
    out = loss_fn(model, batch)

    # By hand, each example alone: mean over its labelled tokens of ||h_t - target_t||^2 / d at hidden_states[2].
    target = 3.0 * unit_direction(32, 7)
    h_forget = states(model, forget, 2)
    forget_value = sum(((h_forget[t] - target) ** 2).sum() / 32 for t in labelled(forget)) / len(labelled(forget))
    h_retain, h_frozen = states(model, retain, 2), states(original, retain, 2)
    retain_value = sum(((h_retain[t] - h_frozen[t]) ** 2).sum() / 32 for t in labelled(retain)) / len(labelled(retain))
    assert retain_value > 1e-4  # the perturbation shows: the retain term is really compared
    assert out.per_example.tolist() == pytest.approx([1.5 * float(forget_value), 0.25 * float(retain_value)], rel=1e-5)
    assert out.nll.tolist() == pytest.approx(nll_per_example(model, batch).tolist(), rel=1e-5)


def test_the_direction_is_a_seeded_unit_vector_whatever_the_global_generator():
    first = rmu.steering_direction(64, 3).clone()
    rmu.steering_direction.cache_clear()  # as a resumed run or another process would draw it
    torch.manual_seed(12345)
    torch.rand(7)
    again = rmu.steering_direction(64, 3)
    assert torch.equal(first, again)
    assert float(again.norm()) == pytest.approx(1.0, abs=1e-6) and bool((again >= 0).all())
    assert torch.allclose(again.double(), unit_direction(64, 3), atol=1e-7)
    assert float((rmu.steering_direction(64, 4) - again).abs().max()) > 0.05


@pytest.mark.parametrize("kind", ["last_k", "lora"])
def test_only_the_chosen_layers_receive_gradients(tiny_tokenizer, kind):
    model = apply_adapter(tiny(tiny_tokenizer, 4), AdapterConfig(kind=kind, layers=[1, 2], lora_rank=4, lora_alpha=8))
    settings = rmu.Settings(layer=2, steering_coeff=4.0, retain_weight=1.0)
    loss_fn = make_loss(settings, prepare_reference(settings, model, kind, [], tiny_tokenizer))
    batch = collate([pair(tiny_tokenizer, SENTENCES[0], "forget"), pair(tiny_tokenizer, SENTENCES[3], "retain")],
                    tiny_tokenizer.pad_token_id)
    loss_fn(model, batch).per_example.sum().backward()

    def layer_of(name: str) -> int | None:
        found = re.search(r"layers\.(\d+)\.", name)
        return int(found.group(1)) if found else None

    trainable = {name for name, p in model.named_parameters() if p.requires_grad}
    moved = {name for name, p in model.named_parameters() if p.grad is not None and float(p.grad.abs().sum()) > 0}
    assert {layer_of(name) for name in trainable} == {1, 2}
    assert moved and moved <= trainable and {layer_of(name) for name in moved} == {1, 2}
    if kind == "last_k":
        assert trainable == {name for name, _ in model.named_parameters() if layer_of(name) in (1, 2)}
    else:
        assert all("lora_" in name for name in trainable)


@pytest.mark.parametrize("adapter, layer, message", [
    (AdapterConfig(kind="last_k", layers=[1, 3]), 2,
     (r"^rmu: the adapter trains weights after decoder layer 2 \(method\.layer\), which the RMU loss never reaches "
      r"\(e\.g\. model\.layers\.3\..*adapter\.layers to layers at or before it, e\.g\. \[0, 1, 2\]")),
    (AdapterConfig(kind="full"), 1, r"^rmu: the adapter trains weights after decoder layer 1"),
    (AdapterConfig(kind="lora", lora_rank=4, lora_alpha=8), 1, r"^rmu: the adapter trains weights after decoder"),
    (AdapterConfig(kind="last_k", layers=[0]), 3,
     r"^rmu: method\.layer must be a decoder layer before this model's last, 0 to 2, got 3$"),
])
def test_settings_the_model_cannot_honour_are_one_line(tiny_tokenizer, adapter, layer, message):
    model = apply_adapter(tiny(tiny_tokenizer, 4), adapter)
    settings = rmu.Settings(layer=layer)
    with pytest.raises(UserError, match=message) as caught:
        make_loss(settings, prepare_reference(settings, model, adapter.kind, [], tiny_tokenizer))
    assert "\n" not in str(caught.value)
    with pytest.raises(UserError, match=r"^rmu needs the reference model's hidden states"):
        make_loss(rmu.Settings(layer=1), None)


@pytest.mark.parametrize("adapter, message", [
    (AdapterConfig(kind="last_k", layers=[4]), r"^adapter\.layers: this model's decoder layers are 0 to 3, got 4$"),
    (AdapterConfig(kind="lora", layers=[-1]), r"^adapter\.layers: this model's decoder layers are 0 to 3, got -1$"),
    (AdapterConfig(kind="last_k", layers=[1, 1]), r"^adapter\.layers names a layer twice: \[1, 1\]$"),
    (AdapterConfig(kind="lora", layers=[]), r"^adapter\.layers must name at least one decoder layer"),
    (AdapterConfig(kind="full", layers=[1]), r"^adapter\.layers names the layers that train, but adapter\.kind full"),
])
def test_bad_adapter_layers_are_one_line(tiny_tokenizer, adapter, message):
    with pytest.raises(UserError, match=message) as caught:
        apply_adapter(tiny(tiny_tokenizer, 4), adapter)
    assert "\n" not in str(caught.value)


@pytest.mark.parametrize("override, message", [
    ("method.layer=-1", r"^config: method\.layer must be 0 or more, got -1$"),
    ("method.steering_coeff=0", r"^config: method\.steering_coeff must be .*, got 0"),
    ("method.retain_weight=-1", r"^config: method\.retain_weight must be .*, got -1"),
    ("adapter.layers=[1, x]", r"^config: adapter\.layers\[1\] must be an integer"),
])
def test_bad_rmu_settings_in_a_config_are_one_line(override, message):
    with pytest.raises(UserError, match=message) as caught:
        typed(load_config(None, ["method.name=rmu", override]))
    assert "\n" not in str(caught.value)


def test_the_shipped_configs_load_with_the_paper_shape():
    from pathlib import Path

    root = Path(__file__).resolve().parents[2] / "configs"
    tiny_config = typed(load_config(root / "rmu.yaml"))
    olmo = typed(load_config(root / "olmo-1b" / "rmu.yaml"))
    for config in (tiny_config, olmo):
        assert config.method.name == "rmu" and config.adapter.kind == "last_k"
        # The paper's shape: the steered layer and the two before it train.
        assert config.adapter.layers == [config.method.layer - 2, config.method.layer - 1, config.method.layer]
    assert olmo.method.layer < 15 and olmo.model.name_or_path


def test_rmu_runs_end_to_end_and_misdirects_the_forget_set_only(small_world, tmp_path, one_thread):
    from utils.experiment.experiment import Experiment
    from utils.experiment.inputs import training_examples
    from utils.experiment.run import run_unlearning

    # Measured (2-layer small world, layer 0 steered and trained): the distance to c * u 2.74 -> 0.59, forget
    # NLL 0.02 -> 2.95, retain NLL 0.02 -> 0.43; the assertions leave room on each side.
    coeff = 6.0
    config = small_world.config(
        "method.name=rmu", "method.layer=0", f"method.steering_coeff={coeff}", "method.retain_weight=1",
        "adapter.kind=last_k", "adapter.layers=[0]", "training.epochs=6", "training.learning_rate=3e-3",
        "training.batch_size=8", "evaluation.subset=1", "evaluation.per_phase_subset=0",
        "evaluation.max_new_tokens=8")
    out = tmp_path / "run"
    results = run_unlearning(config, out, progress=False, log=lambda _: None)
    assert results["method"] == "rmu" and (out / "results.json").is_file()
    assert json.loads((out / "phases.jsonl").read_text().splitlines()[0])["kind"] == "mixed"

    experiment = Experiment(config, out)
    lume = experiment.lume()
    before, tokenizer = experiment.load(experiment.start_model)
    after, _ = experiment.load(str(out / "model"))
    forget = training_examples(lume.forget, "forget", tokenizer, config)
    retain = training_examples(lume.retain, "retain", tokenizer, config)
    target = coeff * unit_direction(before.config.hidden_size, 0)

    def distance(model):  # mean over the forget examples of their mean ||h_t - c u||^2 / d at layer 0
        values = []
        for example in forget:
            hidden = states(model, example, 1)
            values += [float(((hidden[t] - target) ** 2).mean()) for t in labelled(example)]
        return sum(values) / len(values)

    def nll(model, examples):
        with torch.no_grad():
            return float(nll_per_example(model, collate(examples, tokenizer.pad_token_id)).mean())

    moved = (distance(before), distance(after))
    forget_nll, retain_nll = (nll(before, forget), nll(after, forget)), (nll(before, retain), nll(after, retain))
    assert moved[1] < 0.4 * moved[0], moved
    assert forget_nll[1] > forget_nll[0] + 1.5, forget_nll
    assert retain_nll[1] - retain_nll[0] < (forget_nll[1] - forget_nll[0]) / 4, (retain_nll, forget_nll)


def test_a_mixed_phase_carries_the_retain_weight(tiny_tokenizer):
    forget = [pair(tiny_tokenizer, s, "forget") for s in SENTENCES[:3]]
    retain = [pair(tiny_tokenizer, s, "retain") for s in SENTENCES[3:]]
    settings = rmu.Settings(retain_weight=100.0)
    phases = rmu.build_phases(forget, retain, settings, TrainingConfig(epochs=1, batch_size=4), seed=0)
    # 2 forget + 2 retain per batch of 4: weights 2 and 200, so the batch mean is mean(forget) + 100 * mean(retain).
    assert {(e.role, e.weight) for e in phases[0].examples[:4]} == {("forget", 2.0), ("retain", 200.0)}
    with pytest.raises(UserError, match=r"^rmu: the retain set is empty"):
        rmu.build_phases(forget, [], settings, TrainingConfig(), seed=0)
