"""Experiment tracking through accelerate's trackers: TensorBoard (the default when installed), W&B, MLflow.

A run logs its resolved config once, the loss and learning rate of every optimiser step, the per-chunk
checks and the final scores, all against the global optimiser step. Only the main process logs. The
JSONL logs in the run folder stay the record the project itself reads; trackers are for looking.
"""

from __future__ import annotations

import importlib.util
import math
from pathlib import Path
from typing import Any

from utils.errors import UserError

# The tracker name, the module it needs, and what to install for it.
KNOWN = {"tensorboard": ("tensorboard", "tensorboard"), "wandb": ("wandb", "wandb"), "mlflow": ("mlflow", "mlflow")}
PROJECT = "lume-unlearning"


def installed(module: str) -> bool:
    return importlib.util.find_spec(module) is not None


def chosen_trackers(report_to: str) -> list[str]:
    """The tracker names `training.report_to` asks for: a comma-separated list of tensorboard, wandb and
    mlflow, `none`, or `auto` (TensorBoard when it is installed). A named one that is not installed is a
    one-line error, before anything trains."""
    names = [name.strip().lower() for name in str(report_to).split(",") if name.strip()]
    if names in ([], ["none"]):
        return []
    if names == ["auto"]:
        return ["tensorboard"] if installed("tensorboard") else []
    unknown = [name for name in names if name not in KNOWN]
    if unknown:
        raise UserError(f"training.report_to: unknown tracker {unknown[0]!r} (choose from "
                        f"{', '.join(KNOWN)}, auto or none; several: tensorboard,wandb)")
    for name in names:
        module, package = KNOWN[name]
        if not installed(module):
            raise UserError(f"training.report_to: {name} is not installed (pip install {package}), or choose another")
    return list(dict.fromkeys(names))


def flat_config(values: dict, prefix: str = "") -> dict[str, Any]:
    """A nested config as `section.key` -> a number, string or bool (what trackers take as hyperparameters)."""
    flat: dict[str, Any] = {}
    for key, value in values.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict):
            flat.update(flat_config(value, f"{name}."))
        elif isinstance(value, bool | int | float | str):
            flat[name] = value
        else:
            flat[name] = str(value)  # None and lists, as text
    return flat


class Trackers:
    """The trackers of one run: log() and finish() go to each of them (nothing when there are none)."""

    def __init__(self, names: list[str], run_dir: Path, run_name: str):
        from accelerate.tracking import MLflowTracker, TensorBoardTracker, WandBTracker

        self.names = names
        self.trackers = []
        for name in names:
            if name == "tensorboard":
                tracker = TensorBoardTracker(run_name="", logging_dir=str(run_dir / "tensorboard"))
            elif name == "wandb":
                tracker = WandBTracker(run_name=PROJECT, name=run_name, dir=str(run_dir))
            else:
                tracker = MLflowTracker(experiment_name=PROJECT, run_name=run_name)
            tracker.start()
            self.trackers.append(tracker)

    def store_config(self, config: dict) -> None:
        for tracker in self.trackers:
            tracker.store_init_configuration(flat_config(config))

    def log(self, values: dict, step: int) -> None:
        """Finite numbers only (a missing measurement is left out, not logged as NaN)."""
        numbers = {k: float(v) for k, v in values.items()
                   if isinstance(v, int | float) and not isinstance(v, bool) and math.isfinite(v)}
        if numbers:
            for tracker in self.trackers:
                tracker.log(numbers, step=step)

    def finish(self) -> None:
        for tracker in self.trackers:
            tracker.finish()


def open_trackers(report_to: str, run_dir: Path, run_name: str, config: dict, is_main: bool) -> Trackers | None:
    """The run's trackers on the main process (None elsewhere, or when none are asked for)."""
    names = chosen_trackers(report_to)
    if not names or not is_main:
        return None
    trackers = Trackers(names, run_dir, run_name)
    trackers.store_config(config)
    return trackers
