"""What every shipped config trains: its schedule (the method's phases on token-free stand-in examples) and its
loss on one fixed batch of the tiny test model, as plain data.

`python -m tests.methods.loss_snapshot OUT.json` writes it; tests/methods/data/before_redesign.json holds what
the code gave before the methods became schedules plus loss terms, and tests/methods/test_loss_snapshot.py
regenerates it from the code as it is and compares.
"""

from __future__ import annotations

import copy
import dataclasses
import hashlib
import json
import sys
from pathlib import Path

import torch

from ..conftest import SENTENCES

REPO = Path(__file__).resolve().parents[2]
# A fixed level for configs whose ceiling is the gold standard's (resolved from a prepared world in a run).
GOLD_STANDARD_CEILING = 6.0


def shipped_configs() -> list[Path]:
    """Every config file under configs/ with a `method:` section, directly or through `base:`."""
    from utils.config import read_config_file

    files = sorted(path for path in (REPO / "configs").rglob("*.yaml")
                   if "accelerate" not in path.parts and "experiments" not in path.parts)
    return [path for path in files if "method" in read_config_file(path)]


def load(path: Path):
    """The config at `path` with its method settings typed, a gold-standard ceiling replaced by a fixed level."""
    from methods.registry import typed
    from utils.config import load_config

    config = typed(load_config(path))
    if getattr(config.method, "forget_loss_ceiling", None) == "gold_standard":
        method = dataclasses.replace(config.method, forget_loss_ceiling=GOLD_STANDARD_CEILING)
        config = dataclasses.replace(config, method=method)
    return config


def stand_ins(prefix: str, count: int):
    from utils.data.tokenization import Example

    return [Example([1, 2, 3], [-100, 2, 3], f"{prefix}{i + 1}") for i in range(count)]


def schedule(config) -> list[dict]:
    """The method's phases on 40 forget and 50 retain stand-ins: per phase its examples (a digest of every
    (id, role, weight) in order, their number and the first few), epochs, shuffling and info."""
    from methods.registry import get_method

    training = config.training
    phases = get_method(config.method.name).build_phases(stand_ins("F", 40), stand_ins("R", 50), config.method,
                                                         training, training.seed)
    out = []
    for phase in phases:
        listed = [f"{e.item_id}:{e.role}:{e.weight!r}" for e in phase.examples]
        out.append({"name": phase.name, "epochs": phase.epochs, "shuffle": phase.shuffle,
                    "info": json.loads(json.dumps(phase.info)), "examples": len(listed), "first": listed[:6],
                    "sha256": hashlib.sha256("\n".join(listed).encode()).hexdigest()})
    return out


def tiny_pair():
    """(tokenizer, model with 4 decoder layers) as tests/conftest.py builds them, fixed by seed 0."""
    from utils.models.loading import build_tiny_model, train_tokenizer

    tokenizer = train_tokenizer(SENTENCES * 4, vocab_size=400)
    model = build_tiny_model(tokenizer, hidden_size=32, num_layers=4, num_heads=2, intermediate_size=64,
                             max_position_embeddings=128, seed=0)
    return tokenizer, model


def batch_examples(tokenizer):
    """Three forget rows (each with a paired second answer, for DPO) and three retain rows, one of them
    with weight 0; the first four tokens are prompt."""
    from methods.engine.phases import tagged
    from utils.data.tokenization import Example

    def example(text, item_id):
        ids = tokenizer(text)["input_ids"]
        return Example(ids, [-100] * 4 + ids[4:], item_id)

    forget = []
    for index, weight in enumerate((1.0, 0.5, 2.0)):
        own, pair = example(SENTENCES[index], f"F{index}"), example(SENTENCES[5 - index], "pair")
        forget.append(dataclasses.replace(tagged(own, "forget", weight), pair_input_ids=pair.input_ids,
                                          pair_labels=pair.labels))
    retain = [tagged(example(SENTENCES[3 + i], f"R{i}"), "retain", weight)
              for i, weight in enumerate((1.0, 0.7, 0.0))]
    return [forget[0], retain[0], forget[1], retain[1], forget[2], retain[2]]


def fitted_adapter(adapter, layers: int):
    """The config's adapter on the 4-layer test model: last_k and chosen layers kept within it."""
    changes = {}
    if adapter.kind == "last_k":
        changes["last_k"] = min(adapter.last_k, 2)
    if adapter.layers is not None:
        changes["layers"] = sorted({min(i, layers - 2) for i in adapter.layers})
    return dataclasses.replace(adapter, **changes)


def loss(config, tokenizer, base_model) -> dict:
    """The config's loss (weights applied) on the fixed batch, the reference made as a run makes it."""
    from methods.engine.trainer import Phase
    from methods.registry import make_loss, prepare_reference
    from utils.data.tokenization import collate
    from utils.models.adapters import apply_adapter

    method = config.method
    changes = {}
    if hasattr(method, "layer"):  # RMU steers a layer of the test model
        changes["layer"] = min(method.layer, 2)
    method = dataclasses.replace(method, **changes)
    adapter = fitted_adapter(config.adapter, 4)
    torch.manual_seed(0)
    model = apply_adapter(copy.deepcopy(base_model), adapter)
    if adapter.kind == "lora":  # LoRA's B starts at zero: move it, so model and reference differ
        with torch.no_grad():
            generator = torch.Generator().manual_seed(1)
            for name, parameter in model.named_parameters():
                if "lora_B" in name:
                    parameter.copy_(torch.randn(parameter.shape, generator=generator) * 0.05)
    examples = batch_examples(tokenizer)
    phase = Phase(name="fixed", examples=examples, epochs=1, shuffle=False, info={})
    reference = prepare_reference(method, model, adapter.kind, [phase], tokenizer, batch_size=4)
    loss_fn = make_loss(method, reference)
    if adapter.kind != "lora":  # a frozen reference exists now: move the model away from it
        with torch.no_grad():
            generator = torch.Generator().manual_seed(1)
            for parameter in model.parameters():
                if parameter.requires_grad:
                    parameter.add_(torch.randn(parameter.shape, generator=generator) * 0.02)
    output = loss_fn(model, collate(phase.examples, tokenizer.pad_token_id))
    return {"adapter": adapter.kind, "per_example": output.per_example.detach().tolist(),
            "tokens": None if output.tokens is None else output.tokens.tolist()}


def snapshot() -> dict:
    torch.set_num_threads(1)
    tokenizer, model = tiny_pair()
    records = {}
    for path in shipped_configs():
        config = load(path)
        records[str(path.relative_to(REPO))] = {"method": config.method.name, "schedule": schedule(config),
                                                "loss": loss(config, tokenizer, model)}
    return records


if __name__ == "__main__":
    Path(sys.argv[1]).write_text(json.dumps(snapshot(), indent=1) + "\n")
