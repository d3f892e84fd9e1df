"""How far each score moves between seeds: the tolerance bands `unlearn reproduce` uses by default.

Reads the run folders of a quality benchmark's work folder (`benchmarks/quality.py`: `<method>_lr<lr>_seed<seed>`),
groups the runs of one method at one learning rate, and for every score `unlearn reproduce` compares takes its
spread over the group's seeds (max - min); the band of a score is the upper quartile of those spreads over the
groups with at least two seeds (three groups in four move less between seeds; the 12 terms pooled into one `term`
band, the memorisation metrics likewise). Prints the
bands as the YAML `--tolerance` reads and writes them to `--out`.

    python benchmarks/seed_spread.py --work artifacts/quality_mini --out benchmarks/results/seed_spread.yaml
"""

from __future__ import annotations

import argparse
import json
import re
import statistics
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

import yaml

from utils.experiment.reproduce import scores
from utils.io import atomic_write_text

RUN_NAME = re.compile(r"^(?P<method>.+)_lr(?P<lr>[^_]+)_seed(?P<seed>\d+)$")


def band_name(score: str) -> str:
    if score.startswith("term "):
        return "term"
    for metric in ("exact_memorisation", "extraction_strength"):
        if score.endswith(metric):
            return metric
    return score


def seed_spreads(runs: Path) -> tuple[dict[str, float], int]:
    """({band: median spread}, number of groups with two seeds or more) over the finished runs under `runs`."""
    groups: dict[tuple[str, str], list[dict]] = {}
    for folder in sorted(runs.iterdir()):
        match = RUN_NAME.match(folder.name)
        if match and (folder / "results.json").is_file():
            results = json.loads((folder / "results.json").read_text(encoding="utf-8"))
            groups.setdefault((match["method"], match["lr"]), []).append(scores(results))
    spreads: dict[str, list[float]] = {}
    counted = 0
    for members in groups.values():
        if len(members) < 2:
            continue
        counted += 1
        for score in members[0]:
            values = [m[score] for m in members if m.get(score) is not None]
            if len(values) == len(members):
                spreads.setdefault(band_name(score), []).append(max(values) - min(values))
    return {name: upper_quartile(values) for name, values in sorted(spreads.items())}, counted


def upper_quartile(values: list[float]) -> float:
    return statistics.quantiles(values, n=4, method="inclusive")[2] if len(values) > 1 else values[0]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--work", required=True, help="a quality benchmark's work folder (holding runs/)")
    parser.add_argument("--out", default=None, help="write the bands here as YAML")
    args = parser.parse_args(argv)
    runs = Path(args.work) / "runs"
    if not runs.is_dir():
        parser.error(f"{runs}: no run folders")
    bands, groups = seed_spreads(runs)
    if not groups:
        parser.error(f"{runs}: no method and learning rate with two seeds or more")
    text = (f"# upper quartile over {groups} method/lr groups of each score's spread (max - min) over seeds\n"
            + yaml.safe_dump({name: round(value, 4) for name, value in bands.items()}, sort_keys=True))
    print(text, end="")
    if args.out:
        atomic_write_text(Path(args.out), text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
