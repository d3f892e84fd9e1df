"""Checkpoint selection during a run, from what an unlearning run may see.

The score reads a fixed sample of the run's own training items: up to SAMPLE_SIZE forget and SAMPLE_SIZE retain
items of the split the run trains on (one seeded draw, encoded as training examples with their own answers), and
their mean answer NLLs under the current model, F (forget) and R (retain), against the same sample's NLLs before
unlearning, F0 and R0. It never reads the MIA documents nor the quick check's generations.

    retain term  r = min(1, exp(R0 - R))        1 while retain NLL stays at or below its start
    forget term  f = exp(-|F - G|)              with a gold standard: 1 when F reaches its forget NLL G
                 f = max(0, 1 - exp(F0 - F))    without one: rises from 0 as forget NLL climbs past F0
    score          = f * r                      in [0, 1], higher is better

A difference of mean NLLs is the log of a ratio of the answers' mean per-token probabilities, so r is the share
of the retain answers' per-token probability kept, and f (without a gold standard) the share of the forget
answers' per-token probability removed.

G is the gold standard's answer NLL on the forget set (prepare_report.json), used when the config names the
gold standard (`method.forget_loss_ceiling: gold_standard`). The model before unlearning is the curve's first
point and a candidate like any other.
"""

from __future__ import annotations

import math
import random
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import torch

from methods.engine.trainer import nll_per_example
from utils.config import Config, TrainingConfig
from utils.data.lume import LumeData
from utils.data.tokenization import Example, collate
from utils.experiment.inputs import gold_standard_forget, training_examples

SAMPLE_SIZE = 16
BEST_FILE = "best.safetensors"  # the best-so-far trainable weights, beside the checkpoint's own
SELECTION_FILE = "selection.json"
# Wall clock of the budget; tests replace it.
clock = time.monotonic


def selection_on(training: TrainingConfig) -> bool:
    """Whether a run scores its checkpoints: keep best, a patience, a budget, or a step cadence asks for it."""
    return (training.select.keep == "best" or training.patience is not None or training.budget_minutes is not None
            or training.select.every != "phase")


def describe_selection(training: TrainingConfig) -> str:
    """One line on how a run selects and stops, for the dry run."""
    if not selection_on(training):
        return "selection: off (training.select.keep: last, no patience, no budget); the last weights are kept"
    every = training.select.every
    when = "after every phase" if every == "phase" else f"every {every} optimiser steps and at the end"
    kept = "the best-scoring" if training.select.keep == "best" else "the last"
    parts = [f"selection: score {when} on up to {SAMPLE_SIZE}+{SAMPLE_SIZE} forget/retain training items, "
             + f"keep {kept} weights"]
    if training.patience is not None:
        parts.append(f"stop after {training.patience} scores without improvement")
    if training.budget_minutes is not None:
        parts.append(f"stop when {training.budget_minutes:g} min of training are spent (checked between steps; "
                     "the phases above are the most it trains)")
    return "; ".join(parts)


def gold_forget_nll(config: Config) -> float | None:
    """The gold standard's answer NLL on the forget set when the config names the gold standard, else None."""
    if getattr(config.method, "forget_loss_ceiling", None) != "gold_standard":
        return None
    return gold_standard_forget(config.workdir, "output_nll", "selection against the gold standard")


def selection_sample(lume: LumeData, tokenizer, config: Config, size: int = SAMPLE_SIZE) -> dict[str, list[Example]]:
    """Up to `size` forget and `size` retain items of the run's split (seeded by training.seed), as the run
    encodes training examples."""
    chooser = random.Random(config.training.seed * 7919 + 17)
    sample = {}
    for role, items in (("forget", lume.forget), ("retain", lume.retain)):
        ordered = sorted(items, key=lambda item: item.id)
        chosen = sorted(chooser.sample(range(len(ordered)), min(size, len(ordered))))
        sample[role] = training_examples([ordered[i] for i in chosen], role, tokenizer, config)
    return sample


def mean_nll(model, examples: list[Example], pad_id: int, batch_size: int) -> float | None:
    """The mean per-example answer NLL of `examples` (no gradient); None for none."""
    if not examples:
        return None
    device = next(model.parameters()).device
    was_training = model.training
    model.eval()
    values: list[float] = []
    with torch.no_grad():
        for start in range(0, len(examples), batch_size):
            batch = collate(examples[start:start + batch_size], pad_id)
            values += nll_per_example(model, {k: v.to(device) for k, v in batch.items()}).tolist()
    model.train(was_training)
    return sum(values) / len(values)


def selection_score(forget: float | None, retain: float | None, start: dict, gold: float | None) -> float:
    """The module docstring's score from the sample's NLLs now and at the start (`start`: forget, retain)."""
    retain_term = 1.0
    if retain is not None and start.get("retain") is not None:
        retain_term = math.exp(min(0.0, start["retain"] - retain))
    if forget is None:
        return 0.0
    if gold is not None:
        forget_term = math.exp(-abs(forget - gold))
    else:
        forget_term = max(0.0, 1.0 - math.exp(min(0.0, start["forget"] - forget)))
    return forget_term * retain_term


@dataclass
class Selection:
    """The curve of selection scores, the best point and its weights, and why training stopped (if it did)."""

    training: TrainingConfig
    sample: dict[str, list[Example]]
    pad_id: int
    batch_size: int
    gold: float | None = None
    start: dict = field(default_factory=dict)
    curve: list[dict] = field(default_factory=list)
    best: int | None = None  # index into curve
    best_weights: dict | None = None
    since_best: int = 0
    stop_reason: str | None = None
    seconds: float = 0.0  # training time spent before this process started
    started: float = field(default_factory=lambda: clock())
    # Called as observer(point, model) after each new point (benchmarks measure each checkpoint with it).
    observer: Callable[[dict, object], None] | None = None

    @property
    def every(self) -> int | None:
        every = self.training.select.every
        return None if every == "phase" else every

    def nlls(self, model) -> dict:
        return {role: mean_nll(model, self.sample[role], self.pad_id, self.batch_size) for role in ("forget", "retain")}

    def begin(self, trainer) -> None:
        """The first point: the model before unlearning."""
        self.start = self.nlls(trainer.plain_model())
        self.add_point(trainer, -1, self.start)

    def evaluate(self, trainer, phase: int) -> None:
        """Score the current weights (once per optimiser step) and update the best and the patience count."""
        if self.curve and self.curve[-1]["step"] == trainer.global_step:
            return
        self.add_point(trainer, phase, self.nlls(trainer.plain_model()))

    def add_point(self, trainer, phase: int, nlls: dict) -> None:
        score = selection_score(nlls["forget"], nlls["retain"], self.start, self.gold)
        self.curve.append({"phase": phase, "step": trainer.global_step, "score": score,
                           "forget_nll": nlls["forget"], "retain_nll": nlls["retain"]})
        if self.observer is not None:
            self.observer(self.curve[-1], trainer.plain_model())
        if self.best is None or score > self.curve[self.best]["score"]:
            self.best, self.since_best = len(self.curve) - 1, 0
            if self.training.select.keep == "best":
                self.best_weights = trainer.trainable_state()
        elif phase >= 0:
            self.since_best += 1
            if self.training.patience is not None and self.since_best >= self.training.patience:
                self.stop_reason = self.stop_reason or "patience"

    def spent(self) -> float:
        return self.seconds + clock() - self.started

    def after_step(self, trainer, phase: int) -> bool:
        """The Trainer's hook after each optimiser step: score when due, check the budget; True stops training.
        Every process decides alike (the main process's clock decides the budget)."""
        if self.every is not None and trainer.global_step % self.every == 0:
            self.evaluate(trainer, phase)
        if self.training.budget_minutes is not None and self.stop_reason is None:
            spent = float(self.spent() >= self.training.budget_minutes * 60) if trainer.accelerator.is_main_process \
                else 0.0
            if trainer.accelerator.num_processes > 1:
                spent = trainer.sum_over_processes([spent])[0]
            if spent:
                self.stop_reason = "budget"
                self.evaluate(trainer, phase)
        return self.stop_reason is not None

    def after_phase(self, trainer, phase: int) -> float | None:
        """At a phase's end: score when selecting per phase; the score of the phase's latest point."""
        if self.every is None:
            self.evaluate(trainer, phase)
        latest = self.curve[-1] if self.curve else None
        return latest["score"] if latest is not None and latest["phase"] == phase else None

    def state(self) -> dict:
        """What a checkpoint keeps (the best weights go beside it, BEST_FILE)."""
        return {"start": self.start, "curve": self.curve, "best": self.best, "since_best": self.since_best,
                "stop_reason": self.stop_reason, "seconds": self.spent()}

    def restore(self, state: dict, best_weights: dict | None) -> None:
        self.start, self.curve, self.best = state["start"], state["curve"], state["best"]
        self.since_best, self.stop_reason = state["since_best"], state["stop_reason"]
        self.seconds, self.started = state["seconds"], clock()
        self.best_weights = best_weights

    def choose(self, trainer) -> tuple[dict, dict | None, dict]:
        """At the end: (the chosen point, the weights to load into the model or None for the current ones, the
        `selection` record of results.json). The last weights get a point if they have none."""
        last_phase = max((point["phase"] for point in self.curve), default=-1)
        self.evaluate(trainer, last_phase)
        last = len(self.curve) - 1
        keep_best = self.training.select.keep == "best"
        index = self.best if keep_best else last
        point = self.curve[index]
        if not keep_best:
            reason = "the last weights (training.select.keep: last)"
        elif index == last:
            reason = f"the best selection score of {len(self.curve)} points, at the last weights"
        else:
            reason = f"the best selection score of {len(self.curve)} points"
        if self.stop_reason == "patience":
            reason += f"; training stopped after {self.training.patience} scores without improvement"
        elif self.stop_reason == "budget":
            reason += f"; training stopped when its {self.training.budget_minutes:g} min budget was spent"
        weights = self.best_weights if keep_best and index != last else None
        record = {"score": point["score"], "curve": self.curve,
                  "chosen": {"phase": point["phase"], "step": point["step"], "reason": reason},
                  "stopped": self.stop_reason, "gold_forget_nll": self.gold, "sample": {
                      role: [example.item_id for example in examples] for role, examples in self.sample.items()}}
        return point, weights, record
