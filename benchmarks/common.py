"""What the benchmark scripts share: the tiny world, the data choice, and side-by-side timing.

The machine these run on is often shared, so no script trusts an absolute time: contenders run
interleaved (A, B, A, B, ...) in one process and the reports are medians and ratios.
"""

from __future__ import annotations

import os
import shutil
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))


from utils.data.lume import find_split_files
from utils.environment import describe_environment
from utils.errors import UserError

REAL_DATA = REPO.parent / "shared" / "semeval25-unlearning-data"
RESULTS_DIR = Path(__file__).resolve().parent / "results"


def ensure_world(workdir: str | Path):
    """The prepared tiny world in `workdir`, built with `unlearn prepare`'s code when it is missing."""
    from utils.experiment.experiment import Experiment
    from utils.experiment.world import World

    world = World(workdir)
    ready = (world.target / "model.safetensors").is_file() and world.report.is_file()
    if not ready:
        print(f"[benchmark] no prepared world in {world.root}: building it (a few minutes on a CPU)",
              flush=True)
        Experiment.from_config(None, [f"workdir={workdir}"]).prepare(progress=False)
    return world


REAL_WORLD = REPO / "artifacts" / "real"  # benchmarks/quality.py's world on the real split


def side_by_side_parser(description: str, data_help: str, repeats: int):
    """The options eval_speed.py and train_loop_speed.py share: the world, the data, the rounds, the
    threads and the output file; each script adds its own."""
    import argparse

    parser = argparse.ArgumentParser(description=description)
    parser.add_argument("--workdir", default="artifacts/default", help="prepared tiny world (built if missing)")
    parser.add_argument("--data", default=None, help=data_help)
    parser.add_argument("--repeats", type=int, default=repeats, help="interleaved rounds")
    parser.add_argument("--threads", type=int, default=1,
                        help="torch threads (default 1: on a shared 2-core machine 2 threads oversubscribe; "
                             "0: torch's choice)")
    parser.add_argument("--out", default=None, help="JSON file for the numbers (a bare name goes to benchmarks/results/)")
    return parser


def add_world_arguments(parser) -> None:
    """--workdir and --data for the scripts that measure on a prepared world (speed.py, scaling.py)."""
    parser.add_argument("--workdir", default=None, help="prepared world (default: artifacts/real when prepared, "
                                                        "else artifacts/default)")
    parser.add_argument("--data", default=None, help="LUME folder or 'mini' (default: the real split with "
                                                     "artifacts/real, else the world's mini-LUME)")


def resolve_world(workdir: str | None, data: str | None) -> tuple[Path, Path | None]:
    """(world folder, data folder or None for the world's own mini-LUME) from --workdir / --data."""
    if workdir is None:
        workdir = REAL_WORLD if (REAL_WORLD / "prepare_report.json").is_file() else REPO / "artifacts" / "default"
    world = Path(workdir).resolve()
    if data == "mini":
        return world, None
    if data:
        return world, Path(data).resolve()
    return world, (REAL_DATA.resolve() if world == REAL_WORLD.resolve() else None)


def choose_data(requested: str | None, world, prefer_real: bool = True) -> Path:
    """The requested data folder; by default the real validation split (if `prefer_real` and present),
    else the world's mini-LUME."""
    candidates = [Path(requested)] if requested else ([REAL_DATA, world.data] if prefer_real else [world.data])
    for candidate in candidates:
        try:
            find_split_files(candidate)
            return candidate
        except UserError:
            if requested:
                raise
    raise UserError(f"no LUME data in {', '.join(str(c) for c in candidates)}")


def interleave(contenders: dict[str, Callable[[], dict]], repeats: int, log=print) -> dict[str, list[dict]]:
    """Run every contender once per round, in a rotating order, `repeats` rounds; results per name.

    Rotating who goes first keeps a slow spell of the shared machine from always hitting the same one.
    """
    names = list(contenders)
    runs: dict[str, list[dict]] = {name: [] for name in names}
    for round_index in range(repeats):
        shift = round_index % len(names)
        for name in names[shift:] + names[:shift]:
            started = time.perf_counter()
            result = contenders[name]()
            result.setdefault("seconds", time.perf_counter() - started)
            runs[name].append(result)
            log(f"  round {round_index + 1}/{repeats}  {name:<14} {result['seconds']:8.3f} s", flush=True)
    return runs


def median(values: list[float]) -> float:
    return float(statistics.median(values))


def environment(model=None) -> dict:
    """The project's environment block (utils.environment), plus the machine's core count."""
    return {**describe_environment(model, device=None if model is not None else "cpu"), "cpu_count": os.cpu_count()}


def write_json(path: str | Path | None, payload: dict) -> Path | None:
    """Write the numbers; a bare file name goes under benchmarks/results/."""
    if not path:
        return None
    target = Path(path)
    if target.parent == Path("."):
        target = RESULTS_DIR / target
    from utils.io import atomic_write_json

    atomic_write_json(target, payload)
    return target


def table(rows: list[dict], columns: list[str]) -> str:
    from utils.evaluation.tables import format_table

    return format_table(rows, columns)


def unlearn_subprocess(config: str | Path, run_dir: Path, overrides: list[str], threads: int | None = None,
                       log_path: Path | None = None, flags: tuple[str, ...] = ()) -> dict:
    """A timed run in a fresh folder: `utils.experiment.sweep.run_in_subprocess` after clearing `run_dir`."""
    from utils.experiment.sweep import run_in_subprocess

    if run_dir.exists():
        shutil.rmtree(run_dir)
    return run_in_subprocess(config, run_dir, overrides, threads, log_path, flags)
