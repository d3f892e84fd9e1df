"""Grid sweeps over any config keys, resumable: a finished run is skipped, a killed one resumed.

A sweep file:

    base: ../sugd.yaml                 # a method config (relative to this file)
    set: [training.epochs=2]           # overrides for every run (optional)
    num_processes: 1                   # >1: each run is launched with accelerate's notebook_launcher
    grid:
      method.chunk_size: [16, 32]
      training.learning_rate: [1.0e-4, 3.0e-4]

Runs go to `OUT/run_NNN/` (numbered in grid order), the table to `OUT/run_summary.csv` (one row per run:
its settings and its scores) and the chart to `OUT/run_summary.png`.
"""

from __future__ import annotations

import csv
import io
import itertools
import json
from dataclasses import dataclass, field
from pathlib import Path

from utils.config import Config, load_config, read_yaml_mapping
from utils.errors import UserError
from utils.io import atomic_write_text

SCORE_COLUMNS = ["final_score", "task_aggregate", "mia_score", "mia_auc", "utility", "forget_regurgitation",
                 "retain_regurgitation", "seconds"]


@dataclass
class SweepSpec:
    base: Path
    grid: dict[str, list]
    overrides: list[str] = field(default_factory=list)
    num_processes: int = 1

    def combinations(self) -> list[dict]:
        keys = list(self.grid)
        return [dict(zip(keys, values)) for values in itertools.product(*(self.grid[k] for k in keys))]

    def config_for(self, combination: dict, extra: list[str] | None = None) -> Config:
        settings = [f"{k}={json.dumps(v) if isinstance(v, (list, dict)) else v}" for k, v in combination.items()]
        return load_config(self.base, self.overrides + list(extra or []) + settings)


def load_sweep(path: str | Path) -> SweepSpec:
    path = Path(path)
    data = read_yaml_mapping(path, "sweep file")
    unknown = set(data) - {"base", "grid", "set", "num_processes"}
    if unknown:
        raise UserError(f"sweep file {path}: unknown key '{min(unknown)}' (allowed: base, grid, set, num_processes)")
    if not isinstance(data.get("base"), str):
        raise UserError(f"sweep file {path}: 'base' must name a config file")
    grid = data.get("grid")
    if not isinstance(grid, dict) or not grid:
        raise UserError(f"sweep file {path}: 'grid' must map config keys to lists of values")
    for key, values in grid.items():
        if not isinstance(values, list) or not values:
            raise UserError(f"sweep file {path}: grid.{key} must be a non-empty list")
    overrides = data.get("set") or []
    if not isinstance(overrides, list) or not all(isinstance(o, str) for o in overrides):
        raise UserError(f"sweep file {path}: 'set' must be a list of key=value strings")
    processes = data.get("num_processes", 1)
    if not isinstance(processes, int) or processes < 1:
        raise UserError(f"sweep file {path}: num_processes must be a positive integer")
    base = (path.parent / data["base"]).resolve()
    spec = SweepSpec(base=base, grid=grid, overrides=overrides, num_processes=processes)
    for combination in spec.combinations():  # every run's config is validated before any run starts
        spec.config_for(combination)
    return spec


def _one_run(config: Config, run_dir: str, resume: bool, progress: bool) -> None:
    """The function each (possibly multi-process) run executes; accelerate is set up inside it."""
    from methods.runner import run_unlearning

    run_unlearning(config, run_dir, resume=resume, progress=progress)


def run_sweep(spec: SweepSpec, out_dir: str | Path, extra: list[str] | None = None, progress: bool = True,
              log=print) -> list[dict]:
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    rows = []
    combinations = spec.combinations()
    for number, combination in enumerate(combinations):
        run_dir = out_dir / f"run_{number:03d}"
        config = spec.config_for(combination, extra)
        if (run_dir / "results.json").is_file():
            log(f"[sweep] run {number + 1}/{len(combinations)} already finished: {combination}")
        else:
            resume = (run_dir / "checkpoint" / "state.json").is_file()
            log(f"[sweep] run {number + 1}/{len(combinations)}{' (resuming)' if resume else ''}: {combination}")
            if spec.num_processes > 1:
                from accelerate import notebook_launcher

                notebook_launcher(_one_run, (config, str(run_dir), resume, progress), num_processes=spec.num_processes)
            else:
                _one_run(config, str(run_dir), resume, progress)
        rows.append(summary_row(number, combination, run_dir))
        write_summary(rows, out_dir, list(spec.grid))  # after every run: a killed sweep keeps its table
    return rows


def summary_row(number: int, combination: dict, run_dir: Path) -> dict:
    from utils.leaderboard import row_from_results

    results = json.loads((run_dir / "results.json").read_text())
    scores = row_from_results(results.get("method", ""), results)
    return {"run": f"run_{number:03d}", **combination, **{c: scores.get(c) for c in SCORE_COLUMNS},
            "method": scores["method"]}


def write_summary(rows: list[dict], out_dir: Path, keys: list[str]) -> None:
    columns = ["run", "method", *keys, *SCORE_COLUMNS]
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=columns, extrasaction="ignore", lineterminator="\n")
    writer.writeheader()
    writer.writerows(rows)
    atomic_write_text(out_dir / "run_summary.csv", buffer.getvalue())
    plot_summary(rows, out_dir / "run_summary.png", keys)


def plot_summary(rows: list[dict], path: Path, keys: list[str]) -> None:
    """Final score and its components per run, labelled by the swept settings."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    labels = ["\n".join(f"{k.split('.')[-1]}={row[k]}" for k in keys) for row in rows]
    fig, ax = plt.subplots(figsize=(max(6, 1.4 * len(rows) + 2), 4.5))
    width = 0.2
    for offset, (key, name) in enumerate([("final_score", "final score"), ("task_aggregate", "task aggregate"),
                                          ("mia_score", "MIA score"), ("utility", "utility")]):
        ax.bar([i + (offset - 1.5) * width for i in range(len(rows))], [r.get(key) or 0.0 for r in rows], width,
               label=name)
    ax.set_xticks(range(len(rows)))
    ax.set_xticklabels(labels, fontsize=7)
    ax.set_ylim(0, 1.05)
    ax.set_ylabel("score (higher is better)")
    ax.set_title("Sweep: scores per configuration")
    ax.legend(fontsize=8, ncol=4)
    ax.grid(axis="y", alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
