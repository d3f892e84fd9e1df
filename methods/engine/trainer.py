"""The one training loop every method runs on.

A method hands the loop *phases*: an ordered list of examples (each with a role and a weight) to be
trained for some epochs with a fresh optimiser and learning-rate schedule, and a *loss function* that
maps a batch to one loss per example. Everything else (batching, distributed sharding, gradient
accumulation, clipping, the schedule, mixed precision, NaN checks, logging, progress) lives here, once.

Batch semantics are global: `training.batch_size` examples make one optimiser step, and the step's
loss is the mean over those examples of each example's loss (`training.loss_reduction: example`), or
the sum of every answer token's weighted loss over the number of answer tokens in the global batch
(`token`), whatever the number of processes and micro-batches. Under DDP each process takes every W-th
example of the global batch, so 1 process and W processes compute the same gradient (up to floating point).
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import logging
import math
import os
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import torch
from tqdm.auto import tqdm

from methods.engine.precision import MasterWeights, wants_master_weights
from utils.config import TrainingConfig
from utils.data.tokenization import Example, collate

logger = logging.getLogger(__name__)
from utils.errors import UserError
from utils.io import finite_or_null


@dataclass
class LossOutput:
    """Per-example loss (what is optimised, weights applied) and per-example mean NLL (for logs).

    `tokens`: each example's answer-token count, given only by a loss whose per-example value is a mean over
    those tokens (weight x mean token loss), so that per_example x tokens is its weighted token sum, what
    `training.loss_reduction: token` adds up. None: a sequence-level loss (NPO, DPO, RMU), which refuses it.
    """

    per_example: torch.Tensor
    nll: torch.Tensor
    tokens: torch.Tensor | None = None
    # Each loss term's own per-example value (before weights, detached) and the rows it was applied to, by name
    # ("forget_npo", "retain_nll"): logged per step beside the total. None: a loss with no separate terms.
    terms: dict[str, tuple[torch.Tensor, torch.Tensor]] | None = None


LossFunction = Callable[[torch.nn.Module, dict], LossOutput]


@dataclass
class Phase:
    """Examples trained together with one fresh optimiser and one LR schedule (a chunk, an annealing step)."""

    name: str
    examples: list[Example]
    epochs: float
    shuffle: bool = False
    info: dict = field(default_factory=dict)


@dataclass
class PhaseResult:
    name: str
    steps: int
    tokens: int
    seconds: float
    mean_loss: float
    forget_nll: float | None
    retain_nll: float | None
    # With training.stop_chunk_at: {"epoch", "forget_nll", "level"} when the phase ended before its last epoch.
    stopped_early: dict | None = None


class TrainingDiverged(UserError):
    """A loss became NaN or infinite; the caller keeps the last good checkpoint."""


# Set by `accelerate launch` (its --mixed_precision flag or config file). Not by notebook_launcher: it exports
# its mixed_precision as MIXED_PRECISION, which the Accelerator does not read.
LAUNCHER_PRECISION = "ACCELERATE_MIXED_PRECISION"


def launch_precision(configured: str, environ=os.environ, cuda: bool | None = None) -> tuple[str | None, str]:
    """(what to pass as the Accelerator's mixed_precision, a note when the config is overruled).

    None leaves it to accelerate: a process started by `accelerate launch` takes the precision the launch was
    given (flag or config file), as accelerate users expect; a plain process, and one started by
    notebook_launcher (which sets no ACCELERATE_MIXED_PRECISION), takes `training.mixed_precision`. A CPU never
    mixes precision here.
    """
    cuda = torch.cuda.is_available() if cuda is None else cuda
    if not cuda:
        return "no", ""
    launched = environ.get(LAUNCHER_PRECISION)
    if launched is None:
        return configured, ""
    note = "" if launched == configured else (
        f"training.mixed_precision is {configured} but accelerate was launched with {launched}: the launch's "
        "setting is used (pass --mixed_precision to accelerate launch, or set it in its config file)")
    return None, note


# Engines that shard weights or optimiser state: the loop's fresh optimiser per phase and its checkpoints of
# the trainable weights read from one process do not hold under them.
SHARDING_ENGINES = ("FSDP", "DEEPSPEED", "MEGATRON")


def check_engine(accelerator) -> None:
    """Refuse, in one line, a launch under accelerate's FSDP, DeepSpeed or Megatron-LM (see SHARDING_ENGINES):
    the loop shards with torch's FSDP2 itself (methods.engine.sharding)."""
    engine = str(getattr(accelerator, "distributed_type", "")).upper()
    if any(name in engine for name in SHARDING_ENGINES):
        raise UserError(f"accelerate was launched with {engine.removeprefix('DISTRIBUTEDTYPE.')}, which this training "
                        "loop does not support (a fresh optimiser per phase, checkpoints read from one process); "
                        "launch with DDP (configs/accelerate/multi_gpu_8.yaml), and set training.sharding: fsdp "
                        "to shard full or last-k training over the processes")


def make_accelerator(mixed_precision: str = "no"):
    """An Accelerator that works on GPUs and, for tests and laptops, on CPU processes (gloo)."""
    from accelerate import Accelerator

    chosen, note = launch_precision(mixed_precision)
    # Without cpu=True, CPU processes started by `accelerate launch` each train alone on all the data.
    accelerator = Accelerator(cpu=not torch.cuda.is_available(),
                              **({} if chosen is None else {"mixed_precision": chosen}))
    if note and accelerator.is_main_process:
        logger.warning(note)
    check_engine(accelerator)
    return accelerator


def lr_lambda(schedule: str, warmup_steps: int, total_steps: int) -> Callable[[int], float]:
    def factor(step: int) -> float:
        if warmup_steps and step < warmup_steps:
            return (step + 1) / warmup_steps
        if schedule == "constant":
            return 1.0
        progress = (step - warmup_steps) / max(1, total_steps - warmup_steps)
        progress = min(max(progress, 0.0), 1.0)
        if schedule == "linear":
            return 1.0 - progress
        return 0.5 * (1.0 + math.cos(math.pi * progress))

    return factor


def nll_per_example(model: torch.nn.Module, batch: dict) -> torch.Tensor:
    """Mean token NLL of each example over its labelled tokens (one forward pass)."""
    logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
    return token_nll_from_logits(logits, batch["labels"])[0]


def token_nll_from_logits(logits: torch.Tensor, labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(mean NLL per example, summed NLL per example, labelled-token count per example)."""
    shift_logits = logits[:, :-1, :].float()
    shift_labels = labels[:, 1:]
    mask = shift_labels != -100
    token_nll = torch.nn.functional.cross_entropy(
        shift_logits.reshape(-1, shift_logits.size(-1)), shift_labels.clamp(min=0).reshape(-1), reduction="none"
    ).view(shift_labels.shape) * mask
    counts = mask.sum(dim=1)
    summed = token_nll.sum(dim=1)
    return summed / counts.clamp(min=1), summed, counts


def text_labels(batch: dict) -> torch.Tensor:
    """Labels that score every real token of the text, prompt included (padding ignored): the whole-text
    NLL the MIA loss attack reads."""
    return batch["input_ids"].masked_fill(batch["attention_mask"] == 0, -100)


def split_by_padded_tokens(examples: list[Example], budget: int) -> list[list[Example]]:
    """Examples sorted by length, cut greedily into micro-batches whose padded size (rows x longest
    row) stays within `budget` tokens; an example longer than the budget goes alone."""
    ranked = sorted(examples, key=lambda e: len(e.input_ids))
    pieces: list[list[Example]] = []
    for example in ranked:
        if pieces and (len(pieces[-1]) + 1) * len(example.input_ids) <= budget:
            pieces[-1].append(example)
        else:
            pieces.append([example])
    return pieces


def global_batches(phase: Phase, phase_index: int, config: TrainingConfig) -> list[list[Example]]:
    """The phase's global batches over all its epochs, shuffled per epoch from a seeded generator: what
    the Trainer trains and what `unlearn run --dry-run` counts, so the two cannot disagree."""
    size = config.batch_size
    per_epoch = math.ceil(len(phase.examples) / size)
    total = math.ceil(phase.epochs * per_epoch)
    batches: list[list[Example]] = []
    epoch = 0
    while len(batches) < total:
        order = list(range(len(phase.examples)))
        if phase.shuffle:
            generator = torch.Generator().manual_seed(config.seed * 1_000_003 + phase_index * 1009 + epoch)
            order = torch.randperm(len(order), generator=generator).tolist()
        if phase.shuffle and config.group_by_length:
            epoch_batches = length_grouped(order, phase.examples, size, generator)
        else:
            epoch_batches = [[phase.examples[i] for i in order[s:s + size]] for s in range(0, len(order), size)]
        batches.extend(epoch_batches)
        epoch += 1
    return batches[:total]


def length_grouped(order: list[int], examples: list[Example], size: int, generator) -> list[list[Example]]:
    """Batches of similar length: the shuffled order is cut into groups of 16 batches, each group
    sorted by length and cut into batches, then the batches are shuffled (long ones not always first)."""
    group = size * 16
    batches = []
    for start in range(0, len(order), group):
        ranked = sorted(order[start:start + group], key=lambda i: len(examples[i].input_ids))
        batches += [[examples[i] for i in ranked[s:s + size]] for s in range(0, len(ranked), size)]
    return [batches[i] for i in torch.randperm(len(batches), generator=generator).tolist()]


class Trainer:
    """Runs phases on a model prepared once with accelerate; optimiser and schedule are per phase."""

    def __init__(self, model, tokenizer, config: TrainingConfig, loss_fn: LossFunction, accelerator=None,
                 log_path: str | Path | None = None, progress: bool = True, trackers=None):
        self.accelerator = accelerator or make_accelerator(config.mixed_precision)
        check_engine(self.accelerator)
        # training.sharding: fsdp on several processes: every weight, gradient and optimiser state split
        # over them (methods.engine.sharding); otherwise DDP (or one process) through accelerate.
        self.sharded = config.sharding == "fsdp" and self.accelerator.num_processes > 1
        if config.gradient_checkpointing:
            enable_gradient_checkpointing(model)
        if self.sharded:
            from methods.engine.sharding import shard_model
            from utils.models.adapters import is_lora

            if is_lora(model):
                raise UserError("training.sharding: fsdp shards full and last-k training; a LoRA run trains "
                                "few weights and needs none (set training.sharding: none)")
            self.model = shard_model(model, self.accelerator.device)
        else:
            self.model = self.accelerator.prepare_model(model)
        self.tokenizer = tokenizer
        self.config = config
        self.loss_fn = loss_fn
        self.log_path = Path(log_path) if log_path else None
        # Anything with log(values, step) (utils.experiment.tracking.Trackers): each step's loss and lr.
        self.trackers = trackers
        self.progress = progress
        self.global_step = 0
        # Called as step_hook(phase_index) after every optimiser step; True ends the phase there (a selection
        # cadence, a patience or a time budget: utils.experiment.selection).
        self.step_hook: Callable[[int], bool] | None = None

    @property
    def unwrapped_model(self):
        """The model without DDP's wrapper; under sharding still sharded (see plain_model)."""
        return self.accelerator.unwrap_model(self.model)

    def plain_model(self):
        """The model with its full weights on this process, to check, save or evaluate: the unwrapped model
        itself, or under sharding an unsharded copy (every process must call it then)."""
        if not self.sharded:
            return self.unwrapped_model
        from methods.engine.sharding import plain_copy

        return plain_copy(self.model, self.accelerator.device)

    def trainable_state(self) -> dict[str, torch.Tensor]:
        """The trainable tensors, full, on the CPU (what a checkpoint holds). Under sharding every process must
        call it, and only the main process gets the tensors (the others an empty dict)."""
        from utils.models.adapters import trainable_state

        if not self.sharded:
            return trainable_state(self.unwrapped_model)
        # Only the trainable tensors are gathered (a collective per tensor, in the same order everywhere),
        # not the frozen rest of the model.
        state = {name: p.detach().full_tensor() for name, p in self.model.named_parameters() if p.requires_grad}
        return {name: t.cpu().clone() for name, t in state.items()} if self.accelerator.is_main_process else {}

    def batches_for(self, phase: Phase, phase_index: int) -> list[list[Example]]:
        """The global batches this trainer runs for `phase` (see `global_batches`)."""
        return global_batches(phase, phase_index, self.config)

    def local_micro_batches(self, batch: list[Example]) -> list[list[Example]]:
        """This process's share of a global batch, split for gradient accumulation.

        A process left without an example gets a zero-weight copy, so every process runs the same
        number of forward/backward passes (DDP needs that) while the gradient is unchanged.
        """
        world, rank = self.accelerator.num_processes, self.accelerator.process_index
        local = batch[rank::world]
        if not local:
            first = batch[0]
            local = [dataclasses.replace(first, weight=0.0)]
        budget = self.config.max_micro_batch_tokens
        if budget:
            pieces = split_by_padded_tokens(local, budget)
            if world > 1:
                # DDP syncs on the last micro-batch: every process must run as many as the busiest one.
                # The extra ones are zero-weight copies of a short example (no gradient, not logged).
                most = max(len(split_by_padded_tokens(batch[r::world] or batch[:1], budget)) for r in range(world))
                pieces += [[dataclasses.replace(pieces[0][0], weight=0.0)]] * (most - len(pieces))
            return pieces
        pieces = max(1, min(self.config.gradient_accumulation_steps, len(local)))
        size = math.ceil(len(local) / pieces)
        return [local[i:i + size] for i in range(0, len(local), size)]

    def train_phase(self, phase: Phase, phase_index: int = 0) -> PhaseResult:
        if not phase.examples:
            raise UserError(f"phase '{phase.name}' has no examples to train on")
        torch.manual_seed(self.config.seed + phase_index)
        batches = self.batches_for(phase, phase_index)
        level = self.config.stop_chunk_at
        if isinstance(level, str):
            raise UserError("training.stop_chunk_at: gold_standard reaches the Trainer as the gold standard's "
                            "forget NLL (utils.experiment.run resolves it); give the Trainer a number")
        # Every epoch holds ceil(examples / batch_size) global batches (global_batches), so its end is known.
        watch = level is not None and any(e.role == "forget" for e in phase.examples)
        per_epoch = math.ceil(len(phase.examples) / self.config.batch_size)
        epoch_forget = [0.0, 0]
        stopped_early = None
        params = [p for p in self.model.parameters() if p.requires_grad]
        if not params:
            raise UserError("the model has no trainable parameters (check the adapter settings)")
        # The optimiser steps fp32 copies of bf16/fp16 trainable weights (see methods.engine.precision).
        master = MasterWeights(params) if wants_master_weights(self.config.master_weights, params) else None
        stepped = master.parameters if master else params
        # On CPU the multi-tensor AdamW is the faster one and gives the same weights to the bit (on CUDA it is
        # torch's default already).
        on_cpu = all(p.device.type == "cpu" for p in stepped)
        optimizer = torch.optim.AdamW(stepped, lr=self.config.learning_rate, weight_decay=self.config.weight_decay,
                                      foreach=True if on_cpu else None)
        scheduler = torch.optim.lr_scheduler.LambdaLR(
            optimizer, lr_lambda(self.config.lr_schedule, self.config.warmup_steps, len(batches)))
        optimizer = self.accelerator.prepare_optimizer(optimizer)
        self.model.train()
        pad_id = self.tokenizer.pad_token_id
        device = self.accelerator.device
        world = self.accelerator.num_processes
        by_token = self.config.loss_reduction == "token"
        started = time.perf_counter()
        tokens = 0
        loss_sum = 0.0
        role_sums = {"forget": [0.0, 0], "retain": [0.0, 0]}
        steps_done = 0
        bar = tqdm(batches, desc=phase.name, leave=False, dynamic_ncols=True,
                   disable=not (self.progress and self.accelerator.is_main_process))
        for step, batch in enumerate(bar):
            micro_batches = self.local_micro_batches(batch)
            # What the summed loss is divided by: the global batch's examples, or its answer tokens (every process
            # holds the whole global batch, so each counts them all alike, with no communication).
            divisor = sum(answer_tokens(e) for e in batch) if by_token else len(batch)
            step_loss = 0.0
            # This process's sums of each loss term and each role's weight over the step (for the log only).
            term_sums: dict[str, list[float]] = {}
            weight_sums = {"forget": [0.0, 0], "retain": [0.0, 0]}
            for micro_index, micro in enumerate(micro_batches):
                tensors = {k: v.to(device) for k, v in collate(micro, pad_id).items()}
                last = micro_index == len(micro_batches) - 1
                if self.sharded:
                    # Gradients are reduce-scattered after the step's last micro-batch only.
                    self.model.set_requires_gradient_sync(last)
                    context = contextlib.nullcontext()
                else:
                    context = self.accelerator.no_sync(self.model) if not last else contextlib.nullcontext()
                with context, self.accelerator.autocast():
                    output = self.loss_fn(self.model, tensors)
                    summed = output.per_example
                    if by_token:
                        if output.tokens is None:
                            raise UserError("training.loss_reduction: token needs a loss averaged over answer tokens, "
                                            "and this method's is not (set training.loss_reduction: example)")
                        summed = summed * output.tokens.to(summed.dtype)
                    # Sum of the losses over the global batch's size (examples or answer tokens); times W because
                    # DDP averages.
                    loss = summed.sum() * (world / max(1, divisor))
                    self.accelerator.backward(loss)
                step_loss += loss.item() / world
                tokens += int(tensors["attention_mask"].sum())
                if "has_pair" in tensors:  # paired sequences (IdkDPO) go through the model too; not the stand-ins
                    tokens += int(tensors["pair_attention_mask"][tensors["has_pair"]].sum())
                nll = output.nll.detach()
                for role, selector in (("forget", tensors["is_forget"]), ("retain", ~tensors["is_forget"])):
                    chosen = nll[selector & (tensors["weight"] != 0)]
                    role_sums[role][0] += float(chosen.sum())
                    role_sums[role][1] += int(chosen.numel())
                    weights = tensors["weight"][selector & (tensors["weight"] != 0)]
                    weight_sums[role][0] += float(weights.sum())
                    weight_sums[role][1] += int(weights.numel())
                    if role == "forget" and watch:
                        epoch_forget[0] += float(chosen.sum())
                        epoch_forget[1] += int(chosen.numel())
                for name, (values, rows) in (output.terms or {}).items():
                    totals = term_sums.setdefault(name, [0.0, 0])
                    totals[0] += float(values[rows].sum())
                    totals[1] += int(rows.sum())
            if world > 1:
                # Each process holds its share of the global batch: the step's loss is the sum of the shares,
                # and every process must see it (a NaN share would otherwise stop its own process only).
                step_loss = self.sum_over_processes([step_loss])[0]
            if not math.isfinite(step_loss):
                raise TrainingDiverged(
                    f"loss became {step_loss} in phase '{phase.name}' at step {step + 1}; "
                    "the last good checkpoint is kept (lower the learning rate or set a forget_loss_ceiling)")
            if master:
                master.take_gradients()
            if self.config.max_grad_norm and self.config.max_grad_norm > 0:
                self.accelerator.clip_grad_norm_(stepped, self.config.max_grad_norm)
            optimizer.step()
            scheduler.step()
            optimizer.zero_grad(set_to_none=True)
            if master:
                master.write_back()
            if not self._all_finite(params):
                raise TrainingDiverged(
                    f"the weights became non-finite in phase '{phase.name}' at step {step + 1} (loss {step_loss:.4g}); "
                    "the last good checkpoint is kept (lower the learning rate or set a forget_loss_ceiling)")
            loss_sum += step_loss
            self.global_step += 1
            bar.set_postfix(loss=f"{step_loss:.3f}")
            record = {"phase": phase_index, "phase_name": phase.name, "step": step + 1,
                      "global_step": self.global_step, "loss": step_loss, "lr": scheduler.get_last_lr()[0],
                      "seconds": time.perf_counter() - started, **phase.info}
            if term_sums:
                record["terms"] = {name: total / count for name, (total, count) in term_sums.items() if count}
            record["weights"] = {role: total / count for role, (total, count) in weight_sums.items() if count}
            self._log(record)
            steps_done += 1
            hook_stops = self.step_hook is not None and self.step_hook(phase_index)
            if watch and steps_done % per_epoch == 0 and steps_done < len(batches):
                # The NLLs measured before each step of the epoch, over every process's share: no extra pass.
                total, count = self.sum_over_processes(epoch_forget) if world > 1 else epoch_forget
                if count and total / count >= level:
                    stopped_early = {"epoch": steps_done // per_epoch, "forget_nll": total / count, "level": level}
                epoch_forget = [0.0, 0]
            if hook_stops or stopped_early:
                break
        bar.close()
        if world > 1:
            totals = self.sum_over_processes([tokens, *role_sums["forget"], *role_sums["retain"]])
            tokens = int(totals[0])
            role_sums = {"forget": [totals[1], int(totals[2])], "retain": [totals[3], int(totals[4])]}
        seconds = time.perf_counter() - started
        return PhaseResult(
            name=phase.name, steps=steps_done, tokens=tokens, seconds=seconds,
            mean_loss=loss_sum / max(1, steps_done),
            forget_nll=role_sums["forget"][0] / role_sums["forget"][1] if role_sums["forget"][1] else None,
            retain_nll=role_sums["retain"][0] / role_sums["retain"][1] if role_sums["retain"][1] else None,
            stopped_early=stopped_early,
        )

    def _all_finite(self, parameters) -> bool:
        """all_finite over every process's weights: under sharding each checks its shards and all agree."""
        if not self.sharded:
            return all_finite(parameters)
        from methods.engine.sharding import local_part

        bad = 0.0 if all_finite([local_part(p) for p in parameters]) else 1.0
        return self.sum_over_processes([bad])[0] == 0.0

    def sum_over_processes(self, values: list[float]) -> list[float]:
        """Each value summed over the launch's processes (the values themselves when alone)."""
        local = torch.tensor(values, dtype=torch.float64, device=self.accelerator.device)
        return self.accelerator.reduce(local, reduction="sum").tolist()

    def _log(self, record: dict) -> None:
        if not self.accelerator.is_main_process:
            return
        if self.trackers is not None:
            values = {"train/loss": record["loss"], "train/lr": record["lr"],
                      **{f"train/term/{name}": value for name, value in record.get("terms", {}).items()},
                      **{f"train/weight/{role}": value for role, value in record.get("weights", {}).items()}}
            self.trackers.log(values, step=record["global_step"])
        if self.log_path is None:
            return
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        with self.log_path.open("a", encoding="utf-8") as handle:
            handle.write(json_line(record))


def answer_tokens(example: Example) -> int:
    """The tokens an example's loss scores: its labelled tokens after the first (each predicted from the ones
    before it; the first has none)."""
    return sum(1 for label in example.labels[1:] if label != -100)


def enable_gradient_checkpointing(model) -> None:
    """Turn on the model's own gradient checkpointing (peft models pass the call to their base model;
    transformers 5 names it activation checkpointing, earlier releases gradient checkpointing).

    Non-reentrant checkpointing gives gradients to the trainable weights inside a checkpointed layer even when
    its input does not require grad (frozen embeddings under LoRA or last-k); the input hook is added anyway, as
    peft and transformers do, for any layer that checkpoints reentrantly.
    """
    options = {"use_reentrant": False}
    if hasattr(model, "activation_checkpointing_enable"):
        model.activation_checkpointing_enable(activation_checkpointing_kwargs=options)
    elif hasattr(model, "gradient_checkpointing_enable"):
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs=options)
    else:
        raise UserError("training.gradient_checkpointing: this model has no gradient checkpointing "
                        "(set training.gradient_checkpointing: false)")
    embeddings = model.get_input_embeddings()
    if not any(p.requires_grad for p in embeddings.parameters()):
        model.enable_input_require_grads()


def json_line(record: dict) -> str:
    """One JSON line; a non-finite number becomes null (JSON has no NaN, and readers reject it)."""
    return json.dumps(finite_or_null(record), allow_nan=False) + "\n"


def all_finite(parameters) -> bool:
    """Whether every value of `parameters` is finite, with one device-to-host sync for all of them.

    A NaN or an infinity makes its tensor's sum non-finite, so one fp32 sum per tensor answers (one pass, several
    times faster than an element-wise test); only finite weights summing past 3e38 would be misread.
    """
    sums = [p.detach().sum(dtype=torch.float32) for p in parameters]
    return bool(torch.isfinite(torch.stack(sums)).all()) if sums else True


def nll_loss(model, batch: dict) -> LossOutput:
    """Plain weighted NLL: fine-tuning, pre-training, and the descent half of gradient difference."""
    logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
    nll, _, counts = token_nll_from_logits(logits, batch["labels"])
    return LossOutput(per_example=nll * batch["weight"], nll=nll, tokens=counts)
