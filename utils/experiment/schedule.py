"""What a run will train, without training: `unlearn run CONFIG --dry-run`.

The phases come from the method's own `build_phases` (through `inputs.build_run_phases`) and the steps
from the Trainer's own `global_batches`, so the schedule shown is the one a run trains. No model is
loaded, nothing is downloaded and no run folder is written. Token counts need a tokenizer on this
machine; without one the examples are token-less stand-ins in item order, which give the same phases,
steps and examples per step.
"""

from __future__ import annotations

import statistics
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from methods.engine.checkpoint import CHECKPOINT, EARLIER, checkpoint_due
from methods.engine.trainer import Phase, global_batches
from methods.registry import get_method
from utils.config import Config
from utils.errors import UserError
from utils.experiment.inputs import build_run_phases, gold_standard_forget, resolve_forget_loss_ceiling
from utils.experiment.selection import describe_selection
from utils.folders import check_not_input, real
from utils.io import check_output_location, looks_like_local_path
from utils.models.loading import holds_tokenizer, load_tokenizer

if TYPE_CHECKING:
    from transformers import PreTrainedTokenizerBase


@dataclass(frozen=True)
class Spread:
    """min / median / max of one number over a phase's optimiser steps."""

    min: float
    median: float
    max: float

    @staticmethod
    def of(values: list[int]) -> Spread:
        return Spread(min(values), statistics.median(values), max(values))

    def text(self) -> str:
        if self.min == self.max:
            return _number(self.min)
        return f"{_number(self.min)} / {_number(self.median)} / {_number(self.max)}"


@dataclass(frozen=True)
class PhaseSchedule:
    index: int
    name: str
    kind: str
    forget_examples: int
    retain_examples: int
    epochs: float
    shuffled: bool
    steps: int
    examples_per_step: Spread
    tokens_per_step: Spread | None  # None when no tokenizer is available here


@dataclass(frozen=True)
class TokenizerSource:
    """The tokenizer a dry run measured tokens with, or why it could not."""

    path: str | None
    reason: str


def local_tokenizer(config: Config, model_name: str) -> tuple[PreTrainedTokenizerBase | None, TokenizerSource]:
    """The tokenizer a run would use (or None) and where it came from (or why there is none): found
    when it is a folder on this machine (`model.tokenizer`, else the model's folder; for the prepared
    world that is `<workdir>/target`). A hub name is never fetched."""
    source = config.model.tokenizer or model_name
    key = "model.tokenizer" if config.model.tokenizer else "model.name_or_path"
    path = Path(source).expanduser()
    if not path.is_dir():
        what = ("is not a folder" if path.exists() else "was not found" if looks_like_local_path(source)
                else "is a hub name")
        return None, TokenizerSource(None, f"the tokenizer {source} ({key}) {what}, and a dry run downloads "
                                           "nothing (--set model.tokenizer=DIR measures the tokens)")
    if not holds_tokenizer(path):
        return None, TokenizerSource(None, f"the folder {path} ({key}) holds no tokenizer files")
    return load_tokenizer(str(path), config.model.trust_remote_code), TokenizerSource(str(path), "")


def schedule_phase(phase: Phase, index: int, config: Config, measured: bool) -> PhaseSchedule:
    batches = global_batches(phase, index, config.training)
    roles = [example.role for example in phase.examples]
    return PhaseSchedule(
        index=index, name=phase.name, kind=str(phase.info.get("kind", "-")),
        forget_examples=roles.count("forget"), retain_examples=roles.count("retain"),
        epochs=phase.epochs, shuffled=phase.shuffle, steps=len(batches),
        examples_per_step=Spread.of([len(batch) for batch in batches]),
        tokens_per_step=Spread.of([sum(e.token_count for e in batch) for batch in batches]) if measured else None)


def chunk_stop_level(config: Config) -> float | None:
    """The forget answer NLL at which a phase ends early (training.stop_chunk_at), gold_standard read from the
    prepare report; None when off."""
    value = config.training.stop_chunk_at
    if value == "gold_standard":
        return gold_standard_forget(config.workdir, "output_nll", "training.stop_chunk_at: gold_standard",
                                    ", or give a level")
    return value


def describe_chunk_stop(level: float | None, setting) -> str | None:
    """One line on early chunk stops for the dry run (None when off)."""
    if level is None:
        return None
    source = " (the gold standard's forget answer NLL)" if setting == "gold_standard" else ""
    return (f"chunk stop: a phase with forget examples ends after the first epoch whose mean forget answer NLL "
            f"reaches {level:.4g}{source} (training.stop_chunk_at); the steps above are the most it trains")


def plan_run(experiment) -> dict:
    """The schedule of the experiment's run, as a JSON-ready dict; reads only the data files and a local
    tokenizer."""
    # As in a run: a gold-standard ceiling that cannot be resolved stops here, before anything else.
    config = resolve_forget_loss_ceiling(experiment.config)
    stop_level = chunk_stop_level(config)
    method = get_method(config.method.name)
    model_name, data_dir, run_dir = experiment.start_model, experiment.data_dir, experiment.run_dir
    lume = experiment.lume()
    tokenizer, tokenizer_source = local_tokenizer(config, model_name)
    phases = build_run_phases(method, config, lume, tokenizer)
    schedule = [schedule_phase(phase, index, config, measured=tokenizer is not None)
                for index, phase in enumerate(phases)]
    return {
        "method": config.method.name,
        "model": model_name,
        "data": data_dir,
        "split": config.data.split,
        "items": {"forget": len(lume.forget), "retain": len(lume.retain)},
        "batch_size": config.training.batch_size,
        "batch_semantics": "global: the same whatever the number of processes; under W processes each takes "
                           "every W-th example of a step",
        "tokenizer": asdict(tokenizer_source),
        "stand_in_examples": tokenizer is None,
        "phases": [asdict(phase) for phase in schedule],
        "total_steps": sum(phase.steps for phase in schedule),
        "checkpoints": checkpoint_plan(len(schedule), config.training, run_dir),
        "selection": describe_selection(config.training),
        "chunk_stop": describe_chunk_stop(stop_level, config.training.stop_chunk_at),
        "final_model": str(run_dir / "model"),
    }


def checkpoint_plan(phases: int, training, run_dir: Path) -> dict:
    """How many checkpoints a run writes and keeps (training.checkpoint_every, keep_checkpoints)."""
    every, keep = training.checkpoint_every, training.keep_checkpoints
    count = sum(checkpoint_due(done, phases, every) for done in range(1, phases + 1))
    cadence = "one after each phase" if every == 1 else f"one every {every} phases and after the last"
    kept = ("each replacing the one before" if keep == 1 else
            f"the newest in {CHECKPOINT}/ and up to {keep - 1} earlier in {EARLIER}/")
    return {"count": count, "path": str(run_dir / CHECKPOINT), "every": every, "keep": keep,
            "note": f"{cadence}, {kept}"}


def schedule_table(plan: dict) -> str:
    """The plan as the lines `unlearn run --dry-run` prints."""
    items = plan["items"]
    lines = [
        f"dry run of {plan['method']}: nothing trained, no model loaded, no run folder written",
        f"model: {plan['model']} (not loaded)",
        f"data: {plan['data']} ({plan['split']}): {items['forget']} forget, {items['retain']} retain items",
        f"batch: {plan['batch_size']} examples per optimiser step (training.batch_size), {plan['batch_semantics']}",
    ]
    if plan["tokenizer"]["path"]:
        lines.append(f"tokens per step: real tokens of the step's examples (min / median / max), tokenizer "
                     f"{plan['tokenizer']['path']}")
    else:
        lines.append(f"tokens per step: unknown: {plan['tokenizer']['reason']}")
    if plan["stand_in_examples"]:
        lines.append("examples: token-less stand-ins in item order (no local tokenizer); phases, steps and "
                     "examples per step do not depend on tokens")
    header = ("phase", "kind", "forget", "retain", "epochs", "order", "steps", "examples/step", "tokens/step")
    rows = [header] + [
        (p["name"], p["kind"], str(p["forget_examples"]), str(p["retain_examples"]), _number(p["epochs"]),
         "shuffled" if p["shuffled"] else "in order", str(p["steps"]), Spread(**p["examples_per_step"]).text(),
         Spread(**p["tokens_per_step"]).text() if p["tokens_per_step"] else "unknown")
        for p in plan["phases"]]
    widths = [max(len(row[column]) for row in rows) for column in range(len(header))]
    lines += ["  ".join(cell.ljust(width) for cell, width in zip(row, widths)).rstrip() for row in rows]
    checkpoints = plan["checkpoints"]
    lines += [
        f"total: {plan['total_steps']} optimiser steps in {len(plan['phases'])} phase{'' if len(plan['phases']) == 1 else 's'}",
        (f"checkpoints: {checkpoints['count']} ({checkpoints['note']}) in {checkpoints['path']}/; "
         f"the final model in {plan['final_model']}/"),
        plan["selection"],
    ]
    if plan.get("chunk_stop"):
        lines.append(plan["chunk_stop"])
    return "\n".join(lines)


def check_schedule_out(schedule_out: Path, run_dir: Path, inputs: dict[str, str | None] | None = None) -> None:
    """The JSON file may go anywhere writable except into the run folder, which a dry run leaves alone, and
    over or into one of the run's `inputs` (the config file, the data or model folder: utils.folders)."""
    check_output_location(schedule_out, "file")
    if real(run_dir) in real(schedule_out).parents:
        raise UserError(f"--schedule-out {schedule_out} lies in the run folder {run_dir}, which a dry run "
                        "leaves untouched; write it elsewhere")
    check_not_input(schedule_out, inputs or {}, flag="--schedule-out")


def _number(value: float) -> str:
    return str(int(value)) if float(value).is_integer() else f"{value:.1f}"
