"""Plots people look at to judge a run: loss curves and forgetting chunk by chunk (PNG, matplotlib)."""

from __future__ import annotations

import json
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
from matplotlib.ticker import MaxNLocator


def _read_jsonl(path: Path) -> list[dict]:
    if not path.is_file():
        return []
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]


def plot_run(run_dir: str | Path) -> list[Path]:
    """Write loss.png (every step) and phases.png (per chunk/phase scores and NLLs) when there is data."""
    run_dir = Path(run_dir)
    written = []
    steps = _read_jsonl(run_dir / "log.jsonl")
    if steps:
        fig, ax = plt.subplots(figsize=(7, 4))
        ax.plot([r["global_step"] for r in steps], [r["loss"] for r in steps], lw=1)
        ax.set_xlabel("optimiser step")
        ax.set_ylabel("training loss (ascent terms negative)")
        ax.set_title(f"{run_dir.name}: loss per step")
        ax.grid(alpha=0.3)
        fig.tight_layout()
        fig.savefig(run_dir / "loss.png", dpi=120)
        plt.close(fig)
        written.append(run_dir / "loss.png")
    phases = _read_jsonl(run_dir / "phases.jsonl")
    if phases:
        x = [p["phase"] + 1 for p in phases]
        fig, (left, right) = plt.subplots(1, 2, figsize=(11, 4))
        for key, style in (("forget_regurgitation", "r-o"), ("forget_knowledge", "r--s"),
                           ("retain_regurgitation", "b-o"), ("retain_knowledge", "b--s")):
            if key in phases[0]:
                left.plot(x, [p[key] for p in phases], style, label=key.replace("_", " "), ms=3)
        left.set_ylim(-0.02, 1.02)
        left.set_xlabel("finished chunk / phase")
        left.set_ylabel("score on the check subset")
        left.set_title("forgetting chunk by chunk")
        left.legend(fontsize=8)
        left.grid(alpha=0.3)
        for key, style in (("forget_nll", "r-o"), ("retain_nll", "b-o")):
            points = [(xi, p[key]) for xi, p in zip(x, phases) if p.get(key) is not None]
            if points:
                right.plot(*zip(*points), style, label=f"{key.split('_')[0]} NLL (phase mean)", ms=3)
        right.set_xlabel("finished chunk / phase")
        right.set_ylabel("mean token NLL during the phase")
        right.set_title("training NLL by role")
        right.legend(fontsize=8)
        right.grid(alpha=0.3)
        for axis in (left, right):
            axis.xaxis.set_major_locator(MaxNLocator(integer=True))
        fig.tight_layout()
        fig.savefig(run_dir / "phases.png", dpi=120)
        plt.close(fig)
        written.append(run_dir / "phases.png")
    return written
