"""How much memory one training process and how much disk one run need, before anything is loaded.

The estimate adds up what the engine holds at its worst moment of a step (methods/engine/trainer.py):

    resident   the weights (1/W of them under training.sharding: fsdp), LoRA's fp32 adapter, the fp32
               master copies of bf16/fp16 trainable weights (methods/engine/precision.py), AdamW's two
               states per stepped weight, and the reference's frozen copy when the method needs one
               (methods/engine/losses.py Reference: LoRA's reference is the adapter switched off, free)
    + the larger of
      backward the saved activations of the step's largest micro-batch (padded tokens, rows x longest
               row, pairs included) and the gradients in the trainable weights' dtype
      step     the fp32 gradients of the master copies (the low-precision ones freed one by one)

Activations are counted per padded token: each decoder layer from the first trainable one on saves
its inputs and intermediate products (LoRA adds an fp32 cast of each adapted module's input), and the
loss holds the vocabulary-sized logits in the model's dtype and in fp32 with its log-softmax and their
gradients. With gradient checkpointing a layer keeps only its input, and one layer is recomputed at a time.

`cpu=True` models a CPU process, where the resident set also holds the Python/torch runtime, and the
kernels make fp32 temporaries of bf16 products (CPU_ACTIVATION_FACTOR); README.md (unlearn doctor) says
how the estimate compares with the rehearsal's measured peaks.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

GIB = 2**30
DTYPE_BYTES = {"float32": 4, "bfloat16": 2, "float16": 2}
ADAM_STATES = 2

# The resident set of a training process on a CPU before its first step, the model's pages aside.
CPU_RUNTIME_BYTES = int(0.55 * GIB)
# CPU kernels (bf16 matmuls, softmax) allocate fp32 temporaries and the allocator keeps freed blocks:
# activation memory on a CPU is this much above the tensors the graph saves.
CPU_ACTIVATION_FACTOR = 1.3
# The CUDA context and the kernels' workspace, outside torch's allocator but on the GPU.
GPU_RUNTIME_BYTES = int(1.0 * GIB)

# The organisers' checkpoints (docs/benchmark.md, "Models") and their tokenizers' repositories: their shapes without
# the hub. OLMo-1B ties its input and output embeddings; OLMo-7B does not.
OLMO_7B = {"layers": 32, "hidden": 4096, "intermediate": 11008, "vocab": 50304, "heads": 32, "kv_heads": 32,
           "tied": False}
OLMO_1B = {"layers": 16, "hidden": 2048, "intermediate": 8192, "vocab": 50304, "heads": 16, "kv_heads": 16,
           "tied": True}
KNOWN_SHAPES = {
    "llmunlearningsemeval2025organization/olmo-finetuned-semeval25-unlearning": OLMO_7B,
    "allenai/OLMo-7B-0724-Instruct-hf": OLMO_7B,
    "allenai/OLMo-7B-0724-hf": OLMO_7B,
    "llmunlearningsemeval2025organization/olmo-1B-model-semeval25-unlearning": OLMO_1B,
    "allenai/OLMo-1B-0724-hf": OLMO_1B,
}


@dataclass(frozen=True)
class ModelShape:
    """A decoder-only transformer's dimensions, and where they came from."""

    layers: int
    hidden: int
    intermediate: int
    vocab: int
    heads: int
    kv_heads: int
    tied: bool
    source: str = ""
    # Norm weights per layer (OLMo 1's layer norm has none; Llama/OLMo 2 have a few vectors of width hidden).
    norm_vectors: int = 0

    @property
    def kv_width(self) -> int:
        return self.hidden // self.heads * self.kv_heads

    def module_shapes(self) -> dict[str, tuple[int, int]]:
        """(in, out) features of each linear module of one decoder layer, by the names LoRA targets."""
        h, m, kv = self.hidden, self.intermediate, self.kv_width
        return {"q_proj": (h, h), "k_proj": (h, kv), "v_proj": (h, kv), "o_proj": (h, h),
                "gate_proj": (h, m), "up_proj": (h, m), "down_proj": (m, h)}

    def layer_parameters(self) -> int:
        return sum(i * o for i, o in self.module_shapes().values()) + self.norm_vectors * self.hidden

    def parameters(self) -> int:
        embeddings = self.vocab * self.hidden * (1 if self.tied else 2)
        return embeddings + self.layers * self.layer_parameters()


def shape_from_config_json(path: Path) -> ModelShape:
    """The shape a model folder's config.json gives (Llama/OLMo key names)."""
    data = json.loads(Path(path).read_text(encoding="utf-8"))
    heads = int(data["num_attention_heads"])
    model_type = str(data.get("model_type", ""))
    # OLMo 1: non-parametric layer norm; OLMo 2: q/k norms and two post-norms; Llama-style: two pre-norms.
    norms = 0 if model_type == "olmo" else 4 if model_type.startswith("olmo2") else 2
    return ModelShape(layers=int(data["num_hidden_layers"]), hidden=int(data["hidden_size"]),
                      intermediate=int(data["intermediate_size"]), vocab=int(data["vocab_size"]), heads=heads,
                      kv_heads=int(data.get("num_key_value_heads") or heads),
                      tied=bool(data.get("tie_word_embeddings", False)), source=f"{path}", norm_vectors=norms)


def known_shape(name: str) -> ModelShape | None:
    """The table's shape of an organisers' hub name, or None."""
    shape = KNOWN_SHAPES.get(name)
    return None if shape is None else ModelShape(**shape, source=f"known shape of {name}")


@dataclass(frozen=True)
class StepShape:
    """The largest micro-batch one process puts through the model in a step: padded tokens (rows x longest
    row, plus the pairs' rows x longest pair) and where the number comes from."""

    padded_tokens: int
    source: str = ""


@dataclass
class Footprint:
    """Bytes per process, by part; `peak` is what the process needs at its worst moment."""

    parts: dict[str, int] = field(default_factory=dict)
    resident: list[str] = field(default_factory=list)
    backward: list[str] = field(default_factory=list)
    # Parts of the backward pass never held at once: the largest of them counts.
    backward_in_turn: list[str] = field(default_factory=list)
    step: list[str] = field(default_factory=list)
    trainable_parameters: int = 0
    checkpoint_bytes: int = 0
    model_bytes: int = 0

    def total(self, names: list[str]) -> int:
        return sum(self.parts[name] for name in names)

    @property
    def peak(self) -> int:
        backward = self.total(self.backward) + max((self.parts[name] for name in self.backward_in_turn), default=0)
        return self.total(self.resident) + max(backward, self.total(self.step))

    def text(self) -> str:
        """The parts in GiB, largest first (those of zero size left out)."""
        shown = sorted(((v, k) for k, v in self.parts.items() if v), reverse=True)
        return ", ".join(f"{name} {value / GIB:.1f}" for value, name in shown)


def trainable_parameters(shape: ModelShape, adapter) -> tuple[int, int]:
    """(trainable parameters, the decoder layer the backward pass starts at) for an AdapterConfig."""
    if adapter.kind == "full":
        return shape.parameters(), 0
    layers = sorted(adapter.layers) if adapter.layers else list(range(shape.layers - min(adapter.last_k, shape.layers),
                                                                       shape.layers))
    if adapter.kind == "last_k":
        return len(layers) * shape.layer_parameters(), layers[0]
    if not adapter.layers:
        layers = list(range(shape.layers))
    modules = shape.module_shapes()
    per_layer = sum(adapter.lora_rank * sum(modules[name]) for name in adapter.target_modules if name in modules)
    return per_layer * len(layers), layers[0]


def lora_cast_width(shape: ModelShape, adapter) -> int:
    """Values per token of the fp32 copies peft makes of each adapted module's input, per layer."""
    modules = shape.module_shapes()
    return sum(modules[name][0] for name in adapter.target_modules if name in modules)


def estimate(shape: ModelShape, config, step: StepShape, processes: int = 1, reference_copy: bool = False,
             cpu: bool = False, on_gpu: bool = True) -> Footprint:
    """Peak memory of one of `processes` training processes for `config` (a utils.config.Config).

    `reference_copy`: the method keeps a frozen copy of the model (full / last-k with KL, UNDIAL, RMU).
    `cpu`: a CPU process (runtime, CPU kernels' temporaries; mixed precision is off there, as in the engine);
    `on_gpu`: a GPU process (its CUDA context and, under mixed precision, autocast's copies of fp32 weights).
    """
    training, adapter = config.training, config.adapter
    weight_bytes = DTYPE_BYTES[config.model.dtype]
    gradient_checkpointing = bool(getattr(training, "gradient_checkpointing", False))
    sharded = training.sharding == "fsdp" and processes > 1 and adapter.kind != "lora"
    split = processes if sharded else 1
    parameters = shape.parameters()
    trainable, first_layer = trainable_parameters(shape, adapter)
    lora = adapter.kind == "lora"
    trainable_bytes = 4 if lora else weight_bytes  # peft keeps the adapter in fp32
    master = not lora and weight_bytes < 4 and training.master_weights != "none"
    stepped_bytes = 4 if master else trainable_bytes
    mixed = training.mixed_precision != "no" and not cpu
    compute_bytes = 2 if mixed else weight_bytes

    parts = {
        "weights": parameters * weight_bytes // split,
        "adapter": trainable * 4 if lora else 0,
        "master copies": trainable * 4 // split if master else 0,
        "optimiser": ADAM_STATES * trainable * stepped_bytes // split,
        "reference copy": parameters * weight_bytes if reference_copy else 0,
        "gradients": trainable * trainable_bytes // split,
        "fp32 gradients": trainable * 4 // split if master else 0,
        # autocast keeps a low-precision copy of each fp32 weight it multiplies, for the step
        "autocast copies": parameters * 2 if mixed and weight_bytes == 4 and on_gpu else 0,
        "runtime": CPU_RUNTIME_BYTES if cpu else GPU_RUNTIME_BYTES if on_gpu else 0,
    }
    tokens = step.padded_tokens
    h, m, kv, vocab = shape.hidden, shape.intermediate, shape.kv_width, shape.vocab
    # Saved per token and layer: norms' inputs and outputs, q/k/v (before and after rotary), the attention
    # output, the MLP's gate, up, activation and product (bf16 or the compute dtype).
    layer_values = 8 * h + 4 * kv + 4 * m
    layer_bytes = layer_values * compute_bytes + (lora_cast_width(shape, adapter) * 4 if lora else 0)
    graph_layers = shape.layers - first_layer
    if gradient_checkpointing:
        activation = tokens * (graph_layers * h * compute_bytes + layer_bytes)
    else:
        activation = tokens * graph_layers * layer_bytes
    # The logits (model dtype), their fp32 copy and log-softmax, and in backward their gradients.
    logits = tokens * vocab * (2 * compute_bytes + 3 * 4)
    factor = CPU_ACTIVATION_FACTOR if cpu else 1.0
    parts["activations"] = int(activation * factor)
    parts["logits"] = int(logits * factor)
    footprint = Footprint(parts=parts, trainable_parameters=trainable)
    footprint.resident = ["runtime", "weights", "adapter", "master copies", "optimiser", "reference copy",
                          "autocast copies"]
    footprint.backward = ["activations"]
    # In backward the logits' memory is freed before the trainable weights' gradients grow (the output layer
    # comes first), so the two are counted as whichever is larger, beside the saved activations.
    footprint.backward_in_turn = ["logits", "gradients"]
    footprint.step = ["fp32 gradients"] if master else ["gradients"]
    footprint.checkpoint_bytes = trainable * trainable_bytes
    merged = not lora or adapter.merge_at_end
    footprint.model_bytes = parameters * weight_bytes if merged else trainable * 4
    return footprint


def disk_needed(footprint: Footprint, keep_checkpoints: int) -> int:
    """Bytes a run writes and keeps: `keep_checkpoints` checkpoints, the one being written beside them (a
    checkpoint lands whole, in a temporary folder first) and the final model folder."""
    return footprint.checkpoint_bytes * (keep_checkpoints + 1) + footprint.model_bytes


def micro_batch_tokens(micro: list) -> int:
    """Padded tokens one micro-batch puts through the model: rows x longest row, and the paired sequences
    (IdkDPO's refusals) stacked under them at the same width."""
    pairs = [e.pair_input_ids for e in micro if e.pair_input_ids is not None]
    width = max(len(e.input_ids) for e in [*micro]) if micro else 0
    if pairs:
        width = max(width, *(len(p) for p in pairs))
    return (len(micro) + len(pairs)) * width


def largest_step(phases: list, training, processes: int = 1) -> StepShape:
    """The largest micro-batch any of `processes` processes trains in any step of `phases`, split the way the
    Trainer splits a global batch (its `local_micro_batches`, called with this launch's rank and size)."""
    from types import SimpleNamespace

    from methods.engine.trainer import Trainer, global_batches

    largest = 0
    for index, phase in enumerate(phases):
        for batch in global_batches(phase, index, training):
            for rank in range(processes):
                stand_in = SimpleNamespace(config=training,
                                           accelerator=SimpleNamespace(num_processes=processes, process_index=rank))
                for micro in Trainer.local_micro_batches(stand_in, batch):
                    largest = max(largest, micro_batch_tokens(micro))
    return StepShape(largest, "the longest step's largest micro-batch")


def worst_case_step(training, processes: int = 1) -> StepShape:
    """Without tokens: a process's share of a global batch, as the Trainer cuts it, every row max_length long."""
    share = -(-training.batch_size // processes)
    rows = -(-share // min(training.gradient_accumulation_steps, share))
    tokens = rows * training.max_length
    if training.max_micro_batch_tokens:
        tokens = min(tokens, max(training.max_micro_batch_tokens, training.max_length))
    return StepShape(tokens, f"worst case: {rows} rows x training.max_length {training.max_length}")
