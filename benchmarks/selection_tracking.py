"""How well the selection score tracks the official final score on held-out documents (issue 25).

Each run (a method's own config at its learning rate, or `--lrs`, on each seed) trains in this process through
the library's run steps (`utils.experiment.run`) with checkpoint selection every N optimiser steps, keeping the
last weights. At every selection point, the start model included, an observer evaluates the current model the
way a finished run is evaluated (the run's evaluation settings, `ResolvedConfig.evaluate`) into a folder of its
own, and recomputes the official final score (task aggregate, MIA score, utility) on held-out documents only:
the reporting half of `benchmarks/quality.py`'s held-out split, minus every document the selection sample reads.
The MIA documents and the utility set are the same for every point (the selection score never reads them).

Reported: the Spearman rank correlation of selection score vs held-out final score pooled over all checkpoints
of all runs, the mean within-run correlation, and per run the regret of the checkpoint the selection score
picks (its held-out final vs the run's best checkpoint, and vs its last one).

    python benchmarks/selection_tracking.py                          # 6 methods, their config lr, seed 0
    python benchmarks/selection_tracking.py --methods gd --every 20   # a quick look
    python benchmarks/selection_tracking.py --methods gd,npo --lrs 3e-4,1e-3 --seeds 0,1

Run folders and the per-point evaluations go to artifacts/selection_tracking (`--work`); a finished run is
reused when the benchmark is called again with the same settings.
"""

from __future__ import annotations

import argparse
import csv
import dataclasses
import io
import json
import math
import sys
import time
from collections.abc import Sequence
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

import torch

from benchmarks import common
from benchmarks.quality import documents_by_stratum, heldout_split
from utils.data.lume import parse_item_id
from utils.errors import UserError
from utils.evaluation.intervals import GROUPS, headline, read_evaluation, restrict
from utils.io import atomic_write_json, atomic_write_text

METHODS = ["ga", "gd", "npo", "simnpo", "sugd", "agad"]
# The automatic cadence cuts a run's optimiser steps into this many stretches: with the start and the last
# weights, enough points for a rank correlation within each run, few enough to evaluate them all.
AUTO_STRETCHES = 5
POINT_COLUMNS = ["run", "method", "lr", "seed", "phase", "step", "score", "forget_nll", "retain_nll",
                 "heldout_final", "heldout_task_aggregate", "heldout_mia_score", "utility", "full_final",
                 "heldout_documents", "eval_seconds"]
RUN_COLUMNS = ["run", "points", "spearman", "picked_step", "picked_final", "best_step", "best_final", "last_final",
               "regret_vs_best", "gain_vs_last"]


# --------------------------------------------------------------------------------------------
# The numbers (pure)


def average_ranks(values: Sequence[float]) -> list[float]:
    """1-based ranks, tied values sharing the mean of the ranks they span."""
    order = sorted(range(len(values)), key=lambda i: values[i])
    ranks = [0.0] * len(values)
    start = 0
    while start < len(order):
        end = start
        while end + 1 < len(order) and values[order[end + 1]] == values[order[start]]:
            end += 1
        for position in range(start, end + 1):
            ranks[order[position]] = (start + end) / 2 + 1
        start = end + 1
    return ranks


def spearman(x: Sequence[float], y: Sequence[float]) -> float | None:
    """Spearman's rank correlation with ties (Pearson's on average ranks); None when it is undefined (fewer
    than two points, or one side constant)."""
    if len(x) != len(y):
        raise ValueError(f"spearman needs paired values, got {len(x)} and {len(y)}")
    if len(x) < 2:
        return None
    rx, ry = average_ranks(x), average_ranks(y)
    mx, my = sum(rx) / len(rx), sum(ry) / len(ry)
    sxy = sum((a - mx) * (b - my) for a, b in zip(rx, ry))
    sxx = sum((a - mx) ** 2 for a in rx)
    syy = sum((b - my) ** 2 for b in ry)
    if sxx == 0 or syy == 0:
        return None
    return sxy / math.sqrt(sxx * syy)


def regret(points: Sequence[dict]) -> dict:
    """For one run's points (in curve order): the point the selection score picks (the first of the highest
    scores, as `Selection` picks), the best held-out point and the last one, with their held-out finals;
    regret_vs_best >= 0 is what picking by the score loses against the best checkpoint, gain_vs_last what it
    gains over keeping the last weights."""
    if not points:
        raise ValueError("regret needs at least one point")
    picked = max(range(len(points)), key=lambda i: (points[i]["score"], -i))
    best = max(range(len(points)), key=lambda i: (points[i]["heldout_final"], -i))
    finals = [point["heldout_final"] for point in points]
    return {"picked_step": points[picked]["step"], "picked_final": finals[picked],
            "best_step": points[best]["step"], "best_final": finals[best], "last_final": finals[-1],
            "regret_vs_best": finals[best] - finals[picked], "gain_vs_last": finals[picked] - finals[-1]}


def heldout_documents(strata: dict[str, list[str]], sample_ids: Sequence[str]) -> set[str]:
    """The reporting half of quality.py's held-out split of `strata` ("split/task" -> document ids) minus the
    documents of the selection sample's items; refused when a stratum is left with none (its terms would be
    undefined)."""
    _tuning, reporting = heldout_split(strata)
    sampled = {parse_item_id(item_id)[2] for item_id in sample_ids}
    kept = reporting - sampled
    for stratum in sorted(strata):
        if not kept & set(strata[stratum]):
            raise UserError(f"no held-out document is left in {stratum}: every document of its reporting half is in "
                            "the selection sample (choose another seed, or data with more documents)")
    return kept


def heldout_scores(folder: Path, documents: set[str]) -> dict:
    """The official final score and its parts of a saved evaluation, on `documents` only."""
    evaluation = read_evaluation(folder)
    if evaluation is None:
        raise UserError(f"{folder}: the evaluation has no generations, MIA losses or utility to score from "
                        "(the world needs MIA documents and a utility set)")
    restricted = restrict(evaluation, documents)
    numbers = headline(restricted)
    return {"heldout_final": numbers["final_score"], "heldout_task_aggregate": numbers["task_aggregate"],
            "heldout_mia_score": numbers["mia_score"], "utility": restricted.utility,
            "heldout_documents": sum(len(restricted.groups[key].documents) for key in GROUPS)}


def summarise(runs: dict[str, list[dict]]) -> dict:
    """The pooled and within-run correlations and the per-run regrets of `runs` (name -> points)."""
    pooled = [point for points in runs.values() for point in points]
    rows = []
    for name, points in runs.items():
        rows.append({"run": name, "points": len(points),
                     "spearman": spearman([p["score"] for p in points], [p["heldout_final"] for p in points]),
                     **regret(points)})
    within = [row["spearman"] for row in rows if row["spearman"] is not None]
    return {"pooled_spearman": spearman([p["score"] for p in pooled], [p["heldout_final"] for p in pooled]),
            "checkpoints": len(pooled), "runs": len(rows),
            "mean_within_spearman": sum(within) / len(within) if within else None, "within_defined": len(within),
            "mean_regret_vs_best": sum(r["regret_vs_best"] for r in rows) / len(rows) if rows else None,
            "mean_gain_vs_last": sum(r["gain_vs_last"] for r in rows) / len(rows) if rows else None,
            "per_run": rows}


# --------------------------------------------------------------------------------------------
# The runs


@dataclasses.dataclass
class Job:
    method: str
    config: Path
    lr: float | None  # None: the config's own
    seed: int

    @property
    def name(self) -> str:
        return f"{self.method}_lr{'config' if self.lr is None else f'{self.lr:g}'}_seed{self.seed}"


def total_steps(phases, training) -> int:
    from methods.engine.trainer import global_batches

    return sum(len(global_batches(phase, index, training)) for index, phase in enumerate(phases))


def with_every(experiment, every: int):
    """The experiment with selection every `every` optimiser steps, the last weights kept."""
    config = experiment.config
    select = dataclasses.replace(config.training.select, every=every, keep="last")
    training = dataclasses.replace(config.training, select=select)
    return experiment.with_config(dataclasses.replace(config, training=training))


def run_job(job: Job, base: list[str], every: int | None, work: Path, log=print) -> dict:
    """One run with an observer at every selection point; returns its record (settings, cadence, points).
    A finished run with the same settings is read back instead."""
    from utils.experiment.experiment import Experiment
    from utils.experiment.run import build_inputs, finish, open_folder, prepare_model, train_phases

    run_dir, evals = work / "runs" / job.name, work / "evaluations" / job.name
    done = work / "records" / f"{job.name}.json"
    # The quick per-phase check generates text the benchmark does not read; selection starts on (the cadence
    # is set once the run's steps are known).
    overrides = [*base, f"training.seed={job.seed}", "evaluation.per_phase_subset=0", "training.select.every=1",
                 "training.select.keep=last", *([f"training.learning_rate={job.lr}"] if job.lr is not None else [])]
    settings = {"config": str(job.config), "overrides": overrides, "every": every}
    if done.is_file():
        record = json.loads(done.read_text())
        if record.get("settings") == settings:
            log(f"[tracking] {job.name}: reused ({len(record['points'])} points)")
            return record
    experiment = Experiment.from_config(job.config, overrides, run_dir=run_dir)
    experiment.check_inputs()  # the run steps below skip the evaluation's inputs (the observer evaluates)
    points: list[dict] = []
    started = time.perf_counter()
    with open_folder(experiment, overwrite=True, progress=False, evaluate=False, log=lambda *_: None) as run:
        build_inputs(run)
        steps = total_steps(run.phases, run.config.training)
        cadence = every or max(1, math.ceil(steps / AUTO_STRETCHES))
        run.experiment = with_every(run.experiment, cadence)
        prepare_model(run)
        selection = run.selection
        sample_ids = [example.item_id for examples in selection.sample.values() for example in examples]
        context: dict = {}

        def observe(point: dict, model) -> None:
            folder = evals / f"step{point['step']:06d}"
            # Evaluation switches to eval mode and may draw random numbers; training goes on exactly as without it.
            was_training, rng = model.training, torch.get_rng_state()
            cuda_rng = torch.cuda.get_rng_state_all() if torch.cuda.is_available() else None
            clock = time.perf_counter()
            evaluation = run.experiment.evaluate(model, run.tokenizer, out=folder, progress=False)
            seconds = time.perf_counter() - clock
            model.train(was_training)
            torch.set_rng_state(rng)
            if cuda_rng is not None:
                torch.cuda.set_rng_state_all(cuda_rng)
            if "documents" not in context:  # the first point fixes the held-out documents of the run
                context["documents"] = heldout_documents(documents_by_stratum(folder), sample_ids)
            points.append({"run": job.name, "method": job.method, "lr": run.config.training.learning_rate,
                           "seed": job.seed, **point, **heldout_scores(folder, context["documents"]),
                           "full_final": evaluation.results.get("final_score"), "eval_seconds": seconds})

        # prepare_model scored the start model before an observer could be set: measured here, untouched.
        observe(selection.curve[0], run.trainer.plain_model())
        selection.observer = observe
        train_phases(run)
        finish(run)  # choose() adds the last weights' point when the cadence missed them
    record = {"settings": settings, "run": job.name, "method": job.method, "lr": points[0]["lr"], "seed": job.seed,
              "steps": steps, "every": cadence, "seconds": time.perf_counter() - started,
              "heldout_documents": sorted(context["documents"]), "sample": sample_ids, "points": points}
    atomic_write_json(done, record)
    scores = ", ".join(f"{p['score']:.2f}" for p in points)
    finals = ", ".join(f"{p['heldout_final']:.3f}" for p in points)
    log(f"[tracking] {job.name}: {steps} steps, a point every {cadence}: {len(points)} points in "
        f"{record['seconds']:.0f} s; scores {scores}; held-out finals {finals}")
    return record


# --------------------------------------------------------------------------------------------
# The reports


def number(value, digits: int = 3) -> str:
    return "n/a" if value is None else f"{value:.{digits}f}"


def markdown(summary: dict, records: list[dict], seconds: float) -> str:
    lines = [
        "# Selection score vs the official final score on held-out documents",
        "",
        (f"{summary['runs']} runs, {summary['checkpoints']} checkpoints (the start model and every selection point). "
        "Held-out: the reporting half of the documents (benchmarks/quality.py's split) minus the documents the "
        "selection sample reads; MIA and utility as evaluated."),
        "",
        f"- Spearman, pooled over all checkpoints: **{number(summary['pooled_spearman'])}**",
        (f"- Spearman within a run, mean over {summary['within_defined']} runs: "
        f"**{number(summary['mean_within_spearman'])}**"),
        (f"- Regret of the picked checkpoint vs the run's best (held-out final, mean): "
        f"**{number(summary['mean_regret_vs_best'])}**"),
        f"- Gain of the picked checkpoint over the last (mean): **{number(summary['mean_gain_vs_last'])}**",
        (f"- Total time: {seconds:.0f} s (the runs' own, reused ones included: "
         f"{sum(r['seconds'] for r in records):.0f} s)"),
        "",
        ("| run | points | Spearman | picked step | picked final | best step | best final | last final | "
        "regret vs best | gain vs last |"),
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for row in summary["per_run"]:
        lines.append(f"| {row['run']} | {row['points']} | {number(row['spearman'])} | {row['picked_step']} | "
                     f"{number(row['picked_final'])} | {row['best_step']} | {number(row['best_final'])} | "
                     f"{number(row['last_final'])} | {number(row['regret_vs_best'])} | {number(row['gain_vs_last'])} |")
    lines += ["", "In selection_tracking.png a line joins each run's points in training order.",
              "", "Cadence per run: " + ", ".join(f"{r['run']} every {r['every']} of {r['steps']} steps"
                                                    for r in records), ""]
    return "\n".join(lines)


def csv_text(points: list[dict]) -> str:
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=POINT_COLUMNS, extrasaction="ignore", lineterminator="\n")
    writer.writeheader()
    writer.writerows(points)
    return buffer.getvalue()


def plot(records: list[dict], summary: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, axes = plt.subplots(figsize=(7, 5))
    for record in records:
        points = record["points"]
        axes.plot([p["score"] for p in points], [p["heldout_final"] for p in points], marker="o", linewidth=0.8,
                  alpha=0.8, label=record["run"])
    axes.set_xlabel("selection score (training items)")
    axes.set_ylabel("official final score (held-out documents)")
    axes.set_title(f"pooled Spearman {number(summary['pooled_spearman'], 2)}, "
                   f"within-run mean {number(summary['mean_within_spearman'], 2)}")
    axes.legend(fontsize=7, loc="best")
    figure.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(path, dpi=120)
    plt.close(figure)


# --------------------------------------------------------------------------------------------


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--workdir", default=str(REPO / "artifacts" / "default"),
                        help="prepared world (built when missing)")
    parser.add_argument("--configs", default=str(REPO / "configs"), help="folder with <method>.yaml")
    parser.add_argument("--methods", default=",".join(METHODS), help="config names in --configs, comma-separated")
    parser.add_argument("--lrs", default=None, help="learning rates for every method (default: each config's)")
    parser.add_argument("--seeds", default="0", help="training seeds, comma-separated")
    parser.add_argument("--every", type=int, default=None,
                        help=f"a selection point every N optimiser steps (default: each run's steps / "
                             f"{AUTO_STRETCHES})")
    parser.add_argument("--threads", type=int, default=1, help="torch threads (0: torch's choice)")
    parser.add_argument("--out", default=str(common.RESULTS_DIR / "selection_tracking"), help="report folder")
    parser.add_argument("--work", default=str(REPO / "artifacts" / "selection_tracking"),
                        help="run folders and per-point evaluations")
    parser.add_argument("--set", dest="extra", action="append", default=[], help="extra override for every run")
    args = parser.parse_args(argv)
    try:
        return report(args)
    except UserError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2


def report(args) -> int:
    started = time.perf_counter()
    if args.every is not None and args.every < 1:
        raise UserError(f"--every must be a positive number of optimiser steps, got {args.every}")
    configs = Path(args.configs).resolve()
    methods = [m for m in args.methods.split(",") if m]
    for method in methods:
        if not (configs / f"{method}.yaml").is_file():
            raise UserError(f"no config for method '{method}' ({configs / method}.yaml)")
    try:
        lrs = [float(x) for x in args.lrs.split(",")] if args.lrs else [None]
        seeds = [int(x) for x in args.seeds.split(",")]
    except ValueError as error:
        raise UserError(f"--lrs and --seeds take comma-separated numbers ({error})") from None
    if args.threads:
        torch.set_num_threads(args.threads)
    workdir = Path(args.workdir).resolve()
    common.ensure_world(workdir)
    out, work = Path(args.out).resolve(), Path(args.work).resolve()
    base = [f"workdir={workdir}", *args.extra]
    jobs = [Job(m, configs / f"{m}.yaml", lr, s) for m in methods for lr in lrs for s in seeds]
    print(f"[tracking] {len(jobs)} runs in {work}, {torch.get_num_threads()} torch thread(s)", flush=True)
    records = [run_job(job, base, args.every, work) for job in jobs]
    summary = summarise({record["run"]: record["points"] for record in records})
    seconds = time.perf_counter() - started
    points = [point for record in records for point in record["points"]]
    out.mkdir(parents=True, exist_ok=True)
    atomic_write_text(out / "selection_tracking.md", markdown(summary, records, seconds))
    atomic_write_text(out / "selection_tracking.csv", csv_text(points))
    atomic_write_json(out / "selection_tracking.json", {
        "summary": summary, "runs": [{k: v for k, v in r.items() if k != "points"} for r in records],
        "points": points, "seconds": seconds, "workdir": str(workdir), "environment": common.environment()})
    plot(records, summary, out / "selection_tracking.png")
    print(f"[tracking] pooled Spearman {number(summary['pooled_spearman'])} over {summary['checkpoints']} "
          f"checkpoints; within-run mean {number(summary['mean_within_spearman'])}; regret vs best "
          f"{number(summary['mean_regret_vs_best'])}, gain vs last {number(summary['mean_gain_vs_last'])}")
    print(f"[tracking] total {seconds:.0f} s (the runs' own, reused ones included: "
          f"{sum(r['seconds'] for r in records):.0f} s); report in {out}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
