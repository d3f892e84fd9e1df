"""Typed, validated configuration.

One `Config` describes a whole experiment: where the data and the model come from, how the tiny
world is built (`unlearn prepare`), which unlearning method runs with which training settings, and
how it is evaluated. The dataclass defaults *are* the embedded default; a YAML file only states what
differs, and `--set a.b=c` overrides any key. Unknown keys and wrong types end in a `UserError`
naming the full key path, because a silently ignored typo in a learning rate wastes a GPU day.
"""

from __future__ import annotations

import dataclasses
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, Union

import yaml

from utils.errors import UserError


@dataclass
class DataConfig:
    # A folder in any official layout (see utils.data); None means the mini-LUME that
    # `unlearn prepare` generates under `<workdir>/data`.
    path: str | None = None
    split: Literal["train", "validation"] = "validation"
    # A folder with member.jsonl / nonmember.jsonl; None: found next to the data when present.
    mia_path: str | None = None


@dataclass
class SyntheticConfig:
    """Sizes of the generated mini-LUME and of the general-knowledge corpus."""

    seed: int = 0
    documents_per_task: int = 8  # per split (forget and retain each get this many per task)
    mia_nonmembers: int = 8
    general_facts: int = 48  # facts in the general corpus; each gives one multiple-choice question
    general_corpus_repeats: int = 2  # paraphrases per fact in the corpus


@dataclass
class TinyModelConfig:
    """Shape of the Olmo2ForCausalLM built from scratch for the embedded default."""

    vocab_size: int = 2048
    hidden_size: int = 128
    num_layers: int = 4
    num_heads: int = 4
    intermediate_size: int = 512
    max_position_embeddings: int = 512


@dataclass
class ModelConfig:
    # Hub name or local folder of the model to unlearn; None: `<workdir>/target` from prepare.
    name_or_path: str | None = None
    tokenizer: str | None = None  # defaults to name_or_path
    dtype: Literal["float32", "bfloat16", "float16"] = "float32"
    trust_remote_code: bool = False
    tiny: TinyModelConfig = field(default_factory=TinyModelConfig)


@dataclass
class TrainingConfig:
    epochs: float = 1.0
    learning_rate: float = 1e-4
    batch_size: int = 8
    gradient_accumulation_steps: int = 1
    warmup_steps: int = 0
    lr_schedule: Literal["constant", "linear", "cosine"] = "linear"
    max_grad_norm: float = 1.0
    weight_decay: float = 0.0
    mixed_precision: Literal["no", "bf16", "fp16"] = "no"
    seed: int = 0
    # "output": loss on the answer tokens only (the benchmark's setting); "full": on the whole text.
    loss_on: Literal["output", "full"] = "output"
    max_length: int = 512
    # Shuffled phases only: batch examples of similar length together (within shuffled groups of
    # 16 batches), so little compute goes to padding. On the real LUME split, where items run from
    # 5 to 415 tokens, random batches of 8 process 3.3x the real tokens, grouped ones 1.3x.
    group_by_length: bool = False
    # Cut each batch, sorted by length, into micro-batches of at most this many padded tokens
    # (None: one micro-batch, or `gradient_accumulation_steps` equal pieces). The gradient is the same
    # (the loss is a sum of per-example terms over the global batch size); what changes is padding:
    # a SUGD batch of one long forget document and seven short answers no longer pads every answer to
    # the document's length. Also bounds activation memory on a GPU.
    max_micro_batch_tokens: int | None = None


@dataclass
class AdapterConfig:
    kind: Literal["lora", "last_k", "full"] = "lora"
    lora_rank: int = 16
    lora_alpha: int = 32
    lora_dropout: float = 0.0
    target_modules: list[str] = field(default_factory=lambda: ["q_proj", "v_proj", "up_proj", "down_proj"])
    last_k: int = 8
    merge_at_end: bool = True


def _tiny_pretrain() -> TrainingConfig:
    return TrainingConfig(epochs=24, learning_rate=2e-3, batch_size=16, warmup_steps=20,
                          lr_schedule="cosine", loss_on="full")


def _tiny_memorise() -> TrainingConfig:
    return TrainingConfig(epochs=40, learning_rate=2e-3, batch_size=8, warmup_steps=20,
                          lr_schedule="cosine", loss_on="full")


@dataclass
class PrepareConfig:
    """How `unlearn prepare` builds the tiny world: pre-training, then the target and gold standard."""

    pretrain: TrainingConfig = field(default_factory=_tiny_pretrain)
    target: TrainingConfig = field(default_factory=_tiny_memorise)
    gold_standard: TrainingConfig = field(default_factory=_tiny_memorise)
    # Full fine-tuning for the tiny gold standard; on a real OLMo use LoRA r=32, alpha=64.
    gold_standard_adapter: AdapterConfig = field(default_factory=lambda: AdapterConfig(kind="full"))


@dataclass
class MethodConfig:
    """The unlearning method and its knobs; each method reads the ones it needs."""

    name: str = "sugd"
    forget_loss: Literal["ascent", "npo"] = "ascent"
    retain_loss: Literal["nll", "kl", "none"] = "nll"
    retain_weight: float = 1.0  # lambda of gradient difference; also SUGD's positive_factor default
    npo_beta: float = 0.1
    chunk_size: int = 32
    positive_ratio: int = 7
    positive_factor: float = 0.5
    interleaving_factor: float = 1.0
    annealing_fraction: float = 0.25
    final_annealing: bool = True
    # Stop ascending an example once its mean token NLL passes this level (None: no ceiling).
    # "gold_standard": the gold standard's mean forget-answer NLL from <workdir>/prepare_report.json.
    forget_loss_ceiling: float | Literal["gold_standard"] | None = None
    # What the ceiling is a level of. "answer": the example's mean NLL over its answer tokens.
    # "document": the mean NLL over its whole text (prompt + answer), the quantity the MIA loss attack
    # reads; ascent still acts on the answer only. "gold_standard" then means the gold standard's mean
    # whole-text NLL on the forget items.
    forget_loss_ceiling_scope: Literal["answer", "document"] = "answer"


@dataclass
class EvaluationConfig:
    max_new_tokens: int = 256
    batch_size: int = 64  # generation rows per batch (see benchmarks/README.md: 64 beat 32 and 128)
    nll_batch_size: int = 16
    subset: int | None = None  # evaluate only the first N documents per split and task
    # "mmlu:DIR", "synthetic:FILE", "none"; None: the synthetic set of the embedded default.
    utility: str | None = None
    mmlu_shots: int = 0
    mmlu_threshold: float = 0.371
    # After every chunk/phase of an unlearning run: a quick check on the first N documents per task
    # (None or 0: off), with short generations, for the chunk-by-chunk plots.
    per_phase_subset: int | None = 2
    per_phase_max_new_tokens: int = 64


@dataclass
class Config:
    # Where `unlearn prepare` writes the tiny world and where runs look for it.
    workdir: str = "artifacts/default"
    data: DataConfig = field(default_factory=DataConfig)
    synthetic: SyntheticConfig = field(default_factory=SyntheticConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    prepare: PrepareConfig = field(default_factory=PrepareConfig)
    method: MethodConfig = field(default_factory=MethodConfig)
    training: TrainingConfig = field(
        default_factory=lambda: TrainingConfig(epochs=3, learning_rate=1e-4, batch_size=8))
    adapter: AdapterConfig = field(default_factory=AdapterConfig)
    evaluation: EvaluationConfig = field(default_factory=EvaluationConfig)


# --------------------------------------------------------------------------------------------
# Building typed objects from plain data


def from_dict(cls: type, data: Any, path: str = "") -> Any:
    """Build dataclass `cls` from `data`, checking every key and type; errors name the key path."""
    if not isinstance(data, dict):
        raise UserError(f"config: {path or 'top level'} must be a mapping, got {type(data).__name__}")
    hints = typing.get_type_hints(cls)
    known = {f.name for f in dataclasses.fields(cls)}
    for key in data:
        if key not in known:
            where = f"{path}.{key}" if path else str(key)
            raise UserError(f"config: unknown key '{where}' (allowed here: {', '.join(sorted(known))})")
    values = {}
    for key, value in data.items():
        where = f"{path}.{key}" if path else key
        values[key] = _coerce(hints[key], value, where)
    return cls(**values)


def _coerce(tp: Any, value: Any, where: str) -> Any:
    origin = typing.get_origin(tp)
    args = typing.get_args(tp)
    if dataclasses.is_dataclass(tp):
        return from_dict(tp, value, where)
    if origin in (Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        errors = []
        for arg in args:
            if arg is type(None):
                continue
            try:
                return _coerce(arg, value, where)
            except UserError as exc:
                errors.append(str(exc))
        raise UserError(errors[0] if len(errors) == 1 else f"config: {where} has an invalid value {value!r}")
    if origin is Literal:
        if value not in args:
            raise UserError(f"config: {where} must be one of {', '.join(map(repr, args))}, got {value!r}")
        return value
    if origin is list:
        if not isinstance(value, list):
            raise UserError(f"config: {where} must be a list, got {type(value).__name__}")
        return [_coerce(args[0], item, f"{where}[{i}]") for i, item in enumerate(value)]
    if tp is bool:
        if not isinstance(value, bool):
            raise UserError(f"config: {where} must be true or false, got {value!r}")
        return value
    if tp is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise UserError(f"config: {where} must be an integer, got {value!r}")
        return value
    if tp is float:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise UserError(f"config: {where} must be a number, got {value!r}")
        return float(value)
    if tp is str:
        if not isinstance(value, str):
            raise UserError(f"config: {where} must be a string, got {value!r}")
        return value
    raise TypeError(f"unsupported config type {tp!r} at {where}")


def to_dict(config: Any) -> dict:
    return dataclasses.asdict(config)


def apply_overrides(data: dict, overrides: list[str]) -> dict:
    """Apply `a.b=c` strings to a nested dict; values are parsed as YAML (`1e-4`, `true`, `[a, b]`)."""
    for override in overrides:
        if "=" not in override:
            raise UserError(f"--set expects key=value, got '{override}'")
        key, raw = override.split("=", 1)
        parts = key.strip().split(".")
        node = data
        for part in parts[:-1]:
            child = node.setdefault(part, {})
            if not isinstance(child, dict):
                raise UserError(f"--set {key}: '{part}' is not a section")
            node = child
        value = yaml.safe_load(raw) if raw.strip() else ""
        # YAML reads 1e-4 as a string (it wants 1.0e-4); numbers are what people mean.
        if isinstance(value, str):
            try:
                value = float(value) if any(c in value.lower() for c in ".e") else int(value)
            except ValueError:
                pass
        node[parts[-1]] = value
    return data


def load_config(path: str | Path | None = None, overrides: list[str] | None = None) -> Config:
    """Defaults, then the YAML file (if any), then `--set` overrides; validated into a `Config`."""
    data: dict = {}
    if path is not None:
        path = Path(path)
        if not path.is_file():
            raise UserError(f"config file not found: {path}")
        try:
            loaded = yaml.safe_load(path.read_text())
        except yaml.YAMLError as exc:
            raise UserError(f"config file {path} is not valid YAML: {str(exc).splitlines()[0]}") from None
        data = loaded or {}
        if not isinstance(data, dict):
            raise UserError(f"config file {path} must hold a mapping at the top level")
        data = _normalise_yaml_numbers(data)
    data = apply_overrides(data, overrides or [])
    return from_dict(Config, data)


def _normalise_yaml_numbers(value: Any) -> Any:
    """YAML 1.1 reads `1e-5` as a string; turn such strings back into floats."""
    if isinstance(value, dict):
        return {k: _normalise_yaml_numbers(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_normalise_yaml_numbers(v) for v in value]
    if isinstance(value, str):
        try:
            return float(value) if ("e" in value.lower() and value.strip()[0] in "0123456789.-+") else value
        except ValueError:
            return value
    return value


def save_config(config: Config, path: str | Path) -> None:
    from utils.io import atomic_write_text

    atomic_write_text(path, yaml.safe_dump(to_dict(config), sort_keys=False))
