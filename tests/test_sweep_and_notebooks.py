"""Sweeps (run, kill, resume without redoing finished runs) and the notebooks executed end to end."""

from __future__ import annotations

import csv
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

REPO = Path(__file__).resolve().parents[1]
FAST_RUN = ["training.epochs=1", "training.batch_size=4", "method.chunk_size=10", "adapter.kind=lora",
            "adapter.lora_rank=4", "evaluation.subset=1"]


def sweep_file(tmp_path: Path, small_world, grid: dict) -> Path:
    path = tmp_path / "grid.yaml"
    path.write_text(yaml.safe_dump({
        "base": str(REPO / "configs" / "sugd.yaml"),
        "set": [*small_world.overrides, f"workdir={small_world.root}", *FAST_RUN],
        "grid": grid,
    }))
    return path


def read_summary(sweep_dir: Path) -> list[dict]:
    with (sweep_dir / "run_summary.csv").open() as handle:
        return list(csv.DictReader(handle))


def test_sweep_is_killed_and_resumed_without_redoing_finished_runs(tmp_path, small_world):
    grid = {"method.positive_ratio": [1, 2], "training.learning_rate": [1.0e-3, 3.0e-3]}
    path = sweep_file(tmp_path, small_world, grid)
    out = tmp_path / "sweep"
    command = [sys.executable, "-m", "utils.cli", "sweep", str(path), "--out", str(out), "--quiet"]
    process = subprocess.Popen(command, cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                               start_new_session=True)
    deadline = time.time() + 300
    while not (out / "run_001" / "results.json").is_file():
        assert process.poll() is None, "the sweep ended before it could be killed"
        assert time.time() < deadline, "the sweep made no progress"
        time.sleep(0.2)
    os.killpg(process.pid, signal.SIGKILL)
    process.wait()
    finished = {name: (out / name / "results.json").stat().st_mtime_ns for name in ("run_000", "run_001")}
    assert not (out / "run_003" / "results.json").is_file()

    result = subprocess.run(command, cwd=REPO, capture_output=True, text=True, timeout=600, check=False)
    assert result.returncode == 0, result.stderr[-2000:]
    assert "already finished" in result.stdout
    for name, mtime in finished.items():  # finished runs were skipped, not redone
        assert (out / name / "results.json").stat().st_mtime_ns == mtime
    rows = read_summary(out)
    assert [r["run"] for r in rows] == ["run_000", "run_001", "run_002", "run_003"]
    assert [(int(r["method.positive_ratio"]), float(r["training.learning_rate"])) for r in rows] == [
        (1, 1e-3), (1, 3e-3), (2, 1e-3), (2, 3e-3)]
    for row, number in zip(rows, range(4)):
        resolved = yaml.safe_load((out / f"run_{number:03d}" / "config.yaml").read_text())
        assert resolved["method"]["positive_ratio"] == int(row["method.positive_ratio"])
        assert 0.0 <= float(row["final_score"]) <= 1.0
    assert (out / "run_summary.png").stat().st_size > 10_000


@pytest.mark.parametrize("name", ["Gold-Standard", "AGAD", "SUGD", "SUGD-Experiments"])
def test_notebook_executes_without_error(name, tmp_path, small_world):
    from utils.cli.notebooks import execute_notebook

    parameters = {
        "workdir": str(small_world.root),
        # The gold standard has no chunks: each method takes only its own method.* settings.
        "overrides": [*small_world.overrides, *(o for o in FAST_RUN
                                                if name != "Gold-Standard" or not o.startswith("method."))],
        "show_progress": False,
        "run_dir": str(tmp_path / "run"),
    }
    if name == "SUGD-Experiments":
        del parameters["run_dir"]
        parameters["overrides"] = []
        parameters["sweep_path"] = str(sweep_file(tmp_path, small_world, {"training.learning_rate": [1e-3, 3e-3]}))
        parameters["sweep_dir"] = str(tmp_path / "sweep")
    notebook = execute_notebook(REPO / "notebooks" / f"{name}.ipynb", tmp_path / f"{name}.ipynb", parameters,
                                timeout=600)
    outputs = "".join(o.get("text", "") for cell in notebook.cells if cell.cell_type == "code"
                      for o in cell.get("outputs", []))
    if name == "SUGD-Experiments":
        assert len(read_summary(tmp_path / "sweep")) == 2
    else:
        assert "task aggregate" in outputs
        assert (tmp_path / "run" / "results.json").is_file()
        # The last table reads the run against its references: the target always, the gold standard for a
        # method (the Gold-Standard notebook compares the gold standard with the target, not with itself).
        table = "".join(o.get("text", "") for o in notebook.cells[-1].outputs if o.get("name") == "stdout")
        lines = table.splitlines()
        rule = next(i for i, line in enumerate(lines) if line.startswith("---"))
        names = [line.split()[0] for line in lines[rule + 1:] if line.strip()]
        run_name = {"Gold-Standard": "gold_standard", "AGAD": "agad", "SUGD": "sugd"}[name]
        expected = ["target", run_name] if name == "Gold-Standard" else ["gold_standard", "target", run_name]
        assert names == expected, table


def test_committed_notebooks_have_no_outputs():
    import nbformat

    for path in (REPO / "notebooks").glob("*.ipynb"):
        notebook = nbformat.read(path, as_version=4)
        assert any("parameters" in c.metadata.get("tags", []) for c in notebook.cells), path.name
        assert all(not c.get("outputs") for c in notebook.cells if c.cell_type == "code"), path.name
