"""Where a cold `unlearn quickstart` spends its time, before and after a change, and whether any number moved.

Each contender is a tree of the project's code: the working tree ("now") and, with `--before REV`, that commit
exported by `git archive`. Each runs `unlearn quickstart` cold (a fresh work folder: the world is built) as its own
process, one after the other, alone, with the same methods. The breakdown comes from what the runs record: the
world's own stage timings (prepare_report.json), each run's results.json timings (unlearning, generation, MIA and
utility, attacks), and the time between the quickstart's progress lines (read as they are printed), so a commit
from before the quickstart wrote its own timings is measured the same way. Then the two leaderboards are compared
on every column but the seconds: they must be equal.

    python benchmarks/quickstart_time.py --before 4a7fd9f                  # the default methods
    python benchmarks/quickstart_time.py --before 4a7fd9f --methods all    # every method
    python benchmarks/quickstart_time.py                                   # only now: the breakdown

Writes benchmarks/results/quickstart_time/{quickstart_time.md, quickstart_time.json}.
"""

from __future__ import annotations

import argparse
import csv
import io
import json
import os
import subprocess
import sys
import tarfile
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from benchmarks import common
from utils.cli.commands.quickstart import ALL_METHODS, DEFAULT_METHODS
from utils.io import atomic_write_json, atomic_write_text

WORLD_STAGES = ["data", "tokenizer", "pretrain", "target", "gold_standard", "report"]
RUN_STAGES = ["unlearning", "generation", "mia_and_utility", "attacks", "other"]
# Columns that measure time: every other leaderboard column must be equal between contenders.
TIME_COLUMNS = {"seconds"}


def export_tree(revision: str, into: Path) -> Path:
    """The project's files at `revision` (git archive), unpacked into `into`."""
    archive = subprocess.run(["git", "-C", str(REPO), "archive", "--format=tar", revision], check=True,
                             capture_output=True).stdout
    with tarfile.open(fileobj=io.BytesIO(archive)) as tar:
        tar.extractall(into, filter="data")
    return into


def run_quickstart(tree: Path, out: Path, methods: list[str], log=print) -> dict:
    """A cold quickstart of the code in `tree` into `out`: wall seconds, and the seconds at which each progress
    line appeared (time since start)."""
    env = {**os.environ, "PYTHONPATH": str(tree), "PYTHONHASHSEED": "0"}
    command = [sys.executable, "-m", "utils.cli", "quickstart", "--out", str(out), "--quiet",
               "--methods", ",".join(methods)]
    started = time.perf_counter()
    lines: list[tuple[float, str]] = []
    with subprocess.Popen(command, cwd=tree, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                          text=True) as child:
        for line in child.stdout:
            lines.append((time.perf_counter() - started, line.rstrip("\n")))
    wall = time.perf_counter() - started
    if child.returncode != 0:
        tail = "\n".join(text for _, text in lines[-20:])
        raise SystemExit(f"quickstart in {tree} failed (exit {child.returncode}):\n{tail}")
    log(f"[quickstart_time] {tree.name}: {wall:.0f} s")
    return {"wall": wall, "lines": lines}


def breakdown(out: Path, lines: list[tuple[float, str]], wall: float, methods: list[str]) -> dict:
    """Seconds per stage of one quickstart: the world's stages, the gold standard's evaluation, per method its wall
    and the parts its results.json records, and the total."""
    report = json.loads((out / "prepare_report.json").read_text(encoding="utf-8"))
    world = {stage: float(report.get("timings", {}).get(stage, 0.0)) for stage in WORLD_STAGES}
    marks = {}
    for at, text in lines:
        if text.startswith("[quickstart] evaluating the gold standard"):
            marks["gold"] = at
        elif text.startswith("[quickstart] running "):
            marks[text.split()[-1]] = at
    # The last method ends where the leaderboard starts (the blank line quickstart prints before it).
    last_end = next((at for at, text in lines if not text.strip() and at > marks[methods[-1]]), wall)
    ends = [marks[m] for m in methods[1:]] + [last_end]
    runs_dir = max((out / "runs").iterdir())
    per_method = {}
    for method, end in zip(methods, ends):
        results = json.loads((runs_dir / method / "results.json").read_text(encoding="utf-8"))
        timings = results.get("timings", {})
        method_wall = end - marks[method]
        parts = {"unlearning": timings.get("unlearning", 0.0), "generation": timings.get("generation", 0.0),
                 "mia_and_utility": timings.get("mia", 0.0) + timings.get("utility", 0.0),
                 "attacks": timings.get("robustness", 0.0)}
        parts["other"] = method_wall - sum(parts.values())
        per_method[method] = {"wall": method_wall, **parts}
    return {"world": world, "world_wall": marks["gold"], "gold_standard_evaluation": marks[methods[0]] - marks["gold"],
            "methods": per_method, "runs": {stage: sum(m[stage] for m in per_method.values()) for stage in RUN_STAGES},
            "total": wall}


def leaderboard(out: Path) -> list[dict]:
    with (out / "leaderboard.csv").open(encoding="utf-8", newline="") as handle:
        return list(csv.DictReader(handle))


def differences(before: list[dict], after: list[dict]) -> list[str]:
    """Every leaderboard cell (but the time columns) that differs between the two tables."""
    if [row["method"] for row in before] != [row["method"] for row in after]:
        return ["the methods differ"]
    found = []
    for old, new in zip(before, after):
        for column in old:
            if column not in TIME_COLUMNS and old[column] != new.get(column):
                found.append(f"{old['method']} {column}: {old[column]} -> {new.get(column)}")
    return found


def table(results: dict[str, dict]) -> str:
    labels = list(results)
    header = "| stage | " + " | ".join(f"{label} (s)" for label in labels) + (" | after / before |" if len(labels) == 2 else " |")
    lines = [header, "|" + "---|" * (len(labels) + 1 + (len(labels) == 2))]

    def row(name: str, values: list[float]) -> None:
        ratio = f" | {values[1] / values[0]:.2f}" if len(values) == 2 and values[0] else (" | " if len(values) == 2 else "")
        lines.append(f"| {name} | " + " | ".join(f"{v:.1f}" for v in values) + ratio + " |")

    for stage in WORLD_STAGES:
        row(f"world: {stage}", [results[label]["world"][stage] for label in labels])
    row("**world built** (to the gold standard's evaluation)", [results[label]["world_wall"] for label in labels])
    row("gold standard evaluated (with attacks)", [results[label]["gold_standard_evaluation"] for label in labels])
    for stage in RUN_STAGES:
        row(f"runs: {stage}", [results[label]["runs"][stage] for label in labels])
    for method in results[labels[0]]["methods"]:
        row(f"method {method} (wall)", [results[label]["methods"][method]["wall"] for label in labels])
    row("**total**", [results[label]["total"] for label in labels])
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--before", default=None, metavar="REV", help="a commit to compare with the working tree")
    parser.add_argument("--methods", default=",".join(DEFAULT_METHODS),
                        help="methods for both quickstarts, or all (default: quickstart's default)")
    parser.add_argument("--out", default=str(common.RESULTS_DIR / "quickstart_time"), help="output folder")
    parser.add_argument("--work", default=None, help="work folders (default: a temporary folder)")
    args = parser.parse_args(argv)
    methods = list(ALL_METHODS) if args.methods == "all" else [m for m in args.methods.split(",") if m]
    out = Path(args.out).resolve()
    with tempfile.TemporaryDirectory(prefix="quickstart_time-") as scratch:
        work = Path(args.work).resolve() if args.work else Path(scratch)
        trees = {}
        if args.before:
            trees["before"] = export_tree(args.before, work / "before-tree")
        trees["now"] = REPO
        results, boards = {}, {}
        for label, tree in trees.items():
            folder = work / f"{label}-world"
            if folder.exists():
                raise SystemExit(f"{folder} exists: a cold quickstart needs a new folder")
            ran = run_quickstart(tree, folder, methods)
            results[label] = breakdown(folder, ran["lines"], ran["wall"], methods)
            boards[label] = leaderboard(folder)
    verdict = None
    if "before" in boards:
        found = differences(boards["before"], boards["now"])
        verdict = "every leaderboard number but the seconds is equal" if not found else \
            f"{len(found)} numbers differ: " + "; ".join(found[:10])
    text = table(results)
    notes = [f"methods: {', '.join(methods)}; each quickstart cold (a new work folder), alone, one after the other"]
    if args.before:
        notes.append(f"before: commit {args.before}; now: the working tree")
    if verdict:
        notes.append(verdict)
    print(text)
    print("\n".join(notes))
    out.mkdir(parents=True, exist_ok=True)
    atomic_write_text(out / "quickstart_time.md", text + "\n\n" + "\n".join(f"- {n}" for n in notes) + "\n")
    atomic_write_json(out / "quickstart_time.json", {"methods": methods, "before": args.before, "results": results,
                                                     "leaderboards": boards, "verdict": verdict,
                                                     "environment": common.environment()})
    return 0 if verdict is None or not verdict[0].isdigit() else 1


if __name__ == "__main__":
    sys.exit(main())
