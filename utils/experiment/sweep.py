"""The one sweep engine: a list of runs, each in its own folder, resumable. `unlearn sweep`, the
SUGD-Experiments notebook and `benchmarks/quality.py` all use it.

A finished run (results.json) is read back, not redone; a killed one is resumed from its checkpoint
(the run itself finds it, including the copy a kill between two renames leaves aside). Runs execute
in this process (`num_processes > 1`: through accelerate's notebook_launcher), or each in a child process
(`python -m utils.experiment.child run`), `jobs` at a time with `threads` torch threads each (peak memory
measured per run, a crash recorded and the sweep going on). After every run the table `run_summary.csv` (one row per
run: its labels and scores) and the chart `run_summary.png` are rewritten, so a killed sweep keeps them.

A grid sweep file:

    base: ../sugd.yaml                 # a method config (relative to this file)
    set: [training.epochs=2]           # overrides for every run (optional)
    num_processes: 1                   # >1: each run is launched with accelerate's notebook_launcher
    grid:
      method.chunk_size: [16, 32]
      training.learning_rate: [1.0e-4, 3.0e-4]

Its runs are `run_NNN` (numbered in grid order), labelled by their grid settings.
"""

from __future__ import annotations

import csv
import io
import itertools
import json
import os
import shutil
import statistics
import subprocess
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from utils.config import Config, load_config, read_yaml_mapping
from utils.entry import child_command, child_environment
from utils.errors import UserError
from utils.evaluation.intervals import bootstrap, paired, read_evaluation
from utils.evaluation.leaderboard import row_from_results, with_error_bar
from utils.evaluation.plots import score_bars
from utils.experiment.resolved import CHILD_MODULE, ResolvedConfig
from utils.experiment.run import holds_run, launch_run
from utils.folders import folder_lock
from utils.io import atomic_write_json, atomic_write_text, read_json

SCORE_COLUMNS = ["final_score", "task_aggregate", "mia_score", "mia_auc", "utility", "forget_regurgitation",
                 "retain_regurgitation", "seconds", "robustness"]
# A run's 95% document-bootstrap interval of its final score, after the score columns (empty for a run that kept
# no per-item evaluation files).
INTERVAL_COLUMNS = ["final_score_low", "final_score_high"]
# A grid over training.seed also gets one row per setting of its other keys: the median over seeds, the range and
# the interval of the seeds' runs together, and how often the setting is above the best one.
SEED_KEY = "training.seed"
GROUPED_FILE = "run_summary_by_setting.csv"
RECORD_FILE = "sweep_record.json"  # wall time and peak memory of a finished run, kept for a resumed sweep
EARLIER_RECORD_FILE = "bench.json"  # the same, as benchmarks/quality.py wrote it before the sweep engine


@dataclass
class SweepRun:
    """One run of a sweep: its folder name, its config file and overrides, and the labels of its row."""

    name: str
    config: Path
    overrides: list[str]
    labels: dict[str, Any] = field(default_factory=dict)

    def load(self) -> Config:
        return load_config(self.config, self.overrides)


@dataclass
class GridSweep:
    base: Path
    grid: dict[str, list]
    overrides: list[str] = field(default_factory=list)
    num_processes: int = 1

    def combinations(self) -> list[dict]:
        keys = list(self.grid)
        return [dict(zip(keys, values)) for values in itertools.product(*(self.grid[k] for k in keys))]

    def runs(self, extra: list[str] | None = None) -> list[SweepRun]:
        runs = []
        for number, combination in enumerate(self.combinations()):
            # As JSON (a subset of YAML) where Python's spelling differs: null, not None; lists and mappings.
            settings = [f"{k}={json.dumps(v) if v is None or isinstance(v, (list, dict)) else v}"
                        for k, v in combination.items()]
            runs.append(SweepRun(f"run_{number:03d}", self.base, [*self.overrides, *(extra or []), *settings],
                                 combination))
        return runs


def load_sweep(path: str | Path) -> GridSweep:
    """A grid sweep file, every run's config validated before any run starts."""
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
    spec = GridSweep(base=(path.parent / data["base"]).resolve(), grid=grid, overrides=overrides,
                     num_processes=processes)
    for run in spec.runs():
        run.load()
    return spec


# ----------------------------------------------------------------------------------------------
# Running


def run_in_subprocess(config: str | Path, run_dir: Path, overrides: list[str], threads: int | None = None,
                      log_path: Path | None = None, flags: tuple[str, ...] = ()) -> dict:
    """`python -m utils.experiment.child run CONFIG --out RUN_DIR --set ... --quiet FLAGS` as a child process.

    Returns {"ok", "wall_seconds", "peak_rss_mb", "results" (results.json or None), "state"
    (checkpoint/state.json: the training seconds), "log"}. The peak RSS is the child's own (wait4), and
    `threads` sets its OMP/MKL threads.
    """
    run_dir.parent.mkdir(parents=True, exist_ok=True)
    command = child_command(CHILD_MODULE, "run", str(config), "--out", str(run_dir), "--quiet", *flags)
    for item in overrides:
        command += ["--set", item]
    env = child_environment()
    if threads:
        env.update(OMP_NUM_THREADS=str(threads), MKL_NUM_THREADS=str(threads))
    log_path = log_path or run_dir.with_name(run_dir.name + ".log")
    started = time.perf_counter()
    with log_path.open("w") as log_file:
        process = subprocess.Popen(command, stdout=log_file, stderr=subprocess.STDOUT, env=env)
        _, status, usage = os.wait4(process.pid, 0)
    record = {"ok": os.waitstatus_to_exitcode(status) == 0, "wall_seconds": time.perf_counter() - started,
              "peak_rss_mb": usage.ru_maxrss / 1024.0, "log": str(log_path)}  # Linux: kilobytes
    results_path, state_path = run_dir / "results.json", run_dir / "checkpoint" / "state.json"
    record["results"] = json.loads(results_path.read_text()) if results_path.is_file() else None
    record["state"] = json.loads(state_path.read_text()) if state_path.is_file() else None
    return record


def _run_one(run: SweepRun, run_dir: Path, progress: bool, num_processes: int, in_subprocess: bool,
             threads: int | None, log=print) -> dict:
    """Run (or resume) one run; its record: labels, results, wall seconds, peak memory or the failure."""
    record: dict[str, Any] = {"run": run.name, **run.labels}
    if in_subprocess:
        # A run begun earlier (killed, or finished and read back) resumes; a new one starts.
        child = run_in_subprocess(run.config, run_dir, run.overrides, threads,
                                  flags=("--resume",) if holds_run(run_dir) else ())
        record["wall_seconds"] = child["wall_seconds"]
        if not child["ok"] or child["results"] is None:
            return {**record, "failed": True, "error": Path(child["log"]).read_text()[-1500:]}
        record.update(results=child["results"], peak_rss_mb=child["peak_rss_mb"])
    else:
        started = time.perf_counter()
        experiment = ResolvedConfig(run.load(), run_dir, source=run.config, overrides=run.overrides)
        record["results"] = launch_run(experiment, num_processes, resume=True, progress=progress, log=log)
        record["wall_seconds"] = time.perf_counter() - started
    atomic_write_json(run_dir / RECORD_FILE, {k: v for k, v in record.items() if k != "results"})
    return record


def run_sweep(runs: list[SweepRun], out_dir: str | Path, *, progress: bool = True, log=print,
              num_processes: int = 1, in_subprocess: bool = False, jobs: int = 1,
              threads: int | None = None, restart_unfinished: bool = False) -> list[dict]:
    """Run every run not finished yet (`jobs` at a time when in subprocesses); returns their records in
    the order given and writes the summary table and chart into `out_dir`.

    A killed run is resumed from its checkpoint, unless `restart_unfinished` (a benchmark that reports
    each run's time and memory wants them whole): then its folder is cleared and it starts afresh.
    """
    out_dir = Path(out_dir)
    if len({run.name for run in runs}) != len(runs):
        raise UserError("a sweep's runs need distinct names (each is a folder)")
    # One sweep per folder at a time (each run also locks its own folder while it runs).
    with folder_lock(out_dir, "unlearn sweep"):
        return _run_sweep(runs, out_dir, progress, log, num_processes, in_subprocess, jobs, threads,
                          restart_unfinished)


def _run_sweep(runs: list[SweepRun], out_dir: Path, progress: bool, log, num_processes: int, in_subprocess: bool,
               jobs: int, threads: int | None, restart_unfinished: bool) -> list[dict]:
    records: dict[str, dict] = {}
    summary_lock = threading.Lock()  # workers finish at once; the table and pyplot want one writer

    def one(position: int, run: SweepRun) -> dict:
        run_dir = out_dir / run.name
        counter = f"{position + 1}/{len(runs)}"
        if (run_dir / "results.json").is_file():
            log(f"[sweep] run {counter} already finished: {run.labels or run.name}")
            record = read_record(run, run_dir)
        else:
            if restart_unfinished and run_dir.exists():
                shutil.rmtree(run_dir)
            resuming = (run_dir / "checkpoint").exists() or (run_dir / ".checkpoint.old").exists()
            log(f"[sweep] run {counter}{' (resuming)' if resuming else ''}: {run.labels or run.name}")
            record = _run_one(run, run_dir, progress, num_processes, in_subprocess, threads, log)
            if record.get("failed"):
                log(f"[sweep] run {counter} failed: {record['error'].strip().splitlines()[-1:]}")
        record.update(run_interval(run_dir, record))
        with summary_lock:
            records[run.name] = record
            write_summary([records[r.name] for r in runs if r.name in records], out_dir, list(runs[0].labels))
        return record

    if in_subprocess and jobs > 1:
        with ThreadPoolExecutor(max_workers=jobs) as pool:
            list(pool.map(lambda pair: one(*pair), enumerate(runs)))
    else:
        for position, run in enumerate(runs):
            one(position, run)
    keys = list(runs[0].labels) if runs else []
    if SEED_KEY in keys:
        write_grouped_summary([records[run.name] for run in runs], out_dir, keys)
    return [records[run.name] for run in runs]


def read_record(run: SweepRun, run_dir: Path) -> dict:
    """The record of a run finished by an earlier call: its results and, when kept, its time and memory."""
    kept = next((run_dir / name for name in (RECORD_FILE, EARLIER_RECORD_FILE) if (run_dir / name).is_file()), None)
    saved = read_json(kept, "sweep record") if kept is not None else {}
    saved = {key: saved[key] for key in ("wall_seconds", "peak_rss_mb") if key in saved}
    return {**saved, "run": run.name, **run.labels, "results": read_json(run_dir / "results.json", "results file"),
            "reused": True}


# ----------------------------------------------------------------------------------------------
# The summary


def run_interval(run_dir: Path, record: dict) -> dict:
    """The run's interval columns, computed once when its record is made (the summary is rewritten often)."""
    final = (record.get("results") or {}).get("final_score")
    evaluation = read_evaluation(run_dir) if final is not None and run_dir.is_dir() else None
    if evaluation is None:
        return {}
    interval = bootstrap([evaluation])
    return {"final_score_low": interval.low, "final_score_high": interval.high}


def summary_row(record: dict, keys: list[str]) -> dict:
    results = record.get("results") or {}
    scores = row_from_results(results.get("method", ""), results) if results else {}
    return {"run": record["run"], "method": scores.get("method", ""), **{k: record.get(k) for k in keys},
            **{c: scores.get(c) for c in SCORE_COLUMNS}, **{c: record.get(c) for c in INTERVAL_COLUMNS}}


def write_summary(records: list[dict], out_dir: Path, keys: list[str]) -> list[dict]:
    rows = [summary_row(record, keys) for record in records]
    columns = ["run", "method", *keys, *SCORE_COLUMNS, *INTERVAL_COLUMNS]
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=columns, extrasaction="ignore", lineterminator="\n")
    writer.writeheader()
    writer.writerows(rows)
    atomic_write_text(out_dir / "run_summary.csv", buffer.getvalue())
    labels = ["\n".join(f"{k.split('.')[-1]}={row[k]}" for k in keys) or row["run"] for row in rows]
    score_bars([with_error_bar(row) for row in rows], out_dir / "run_summary.png", labels, "Sweep: scores per configuration")
    return rows


def grouped_rows(records: list[dict], out_dir: Path, keys: list[str]) -> list[dict]:
    """One row per setting of the grid keys other than the seed, over its finished runs: the median over seeds of
    every score column, the final score's range (`final_score_min`/`_max`), its 95% interval (each draw picks a
    seed's run, then resamples its documents) and `above_best_share`, the share of paired draws in which the
    setting's final score is above the best setting's (by median; empty for the best itself)."""
    others = [key for key in keys if key != SEED_KEY]
    groups: dict[str, list[dict]] = {}
    for record in records:
        if record.get("failed") or not record.get("results"):
            continue
        groups.setdefault(json.dumps([record.get(key) for key in others], default=str), []).append(record)
    rows, saved = [], []
    for members in groups.values():
        finished = [summary_row(record, keys) for record in members]
        row: dict[str, Any] = {key: members[0].get(key) for key in others}
        row["seeds"] = ",".join(str(record.get(SEED_KEY)) for record in members)
        for column in SCORE_COLUMNS:
            values = [r[column] for r in finished if r.get(column) is not None]
            row[column] = statistics.median(values) if values else None
        finals = [r["final_score"] for r in finished if r.get("final_score") is not None]
        row["final_score_min"], row["final_score_max"] = (min(finals), max(finals)) if finals else (None, None)
        evaluations = [read_evaluation(out_dir / record["run"]) for record in members]
        evaluations = evaluations if evaluations and all(e is not None for e in evaluations) else None
        if evaluations:
            interval = bootstrap(evaluations)
            row["final_score_low"], row["final_score_high"] = interval.low, interval.high
        rows.append(row)
        saved.append(evaluations)
    ranked = [i for i, row in enumerate(rows) if row.get("final_score") is not None]
    if ranked:
        best = max(ranked, key=lambda i: rows[i]["final_score"])
        for i, row in enumerate(rows):
            comparison = paired(saved[i], saved[best]) if i != best and saved[i] and saved[best] else None
            row["above_best_share"] = None if comparison is None else comparison["above"]
    return rows


def write_grouped_summary(records: list[dict], out_dir: Path, keys: list[str]) -> list[dict]:
    """`run_summary_by_setting.csv` and `.png` from `grouped_rows`."""
    rows = grouped_rows(records, out_dir, keys)
    others = [key for key in keys if key != SEED_KEY]
    columns = [*others, "seeds", *SCORE_COLUMNS, "final_score_min", "final_score_max", *INTERVAL_COLUMNS,
               "above_best_share"]
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=columns, extrasaction="ignore", lineterminator="\n")
    writer.writeheader()
    writer.writerows(rows)
    atomic_write_text(out_dir / GROUPED_FILE, buffer.getvalue())
    if rows:
        labels = ["\n".join(f"{k.split('.')[-1]}={row[k]}" for k in others) or "all" for row in rows]
        score_bars([with_error_bar(row) for row in rows], out_dir / Path(GROUPED_FILE).with_suffix(".png").name,
                   labels, "Sweep: median over seeds, bars: 95% interval")
    return rows
