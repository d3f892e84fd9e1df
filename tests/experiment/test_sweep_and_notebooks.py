"""Sweeps (run, kill, resume without redoing finished runs) and the notebooks executed end to end."""

from __future__ import annotations

import csv
import json
import os
import shlex
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

REPO = Path(__file__).resolve().parents[2]
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
        # Every run kept its per-item files: its document-bootstrap interval is filled, the last two columns.
        assert list(row)[-2:] == ["final_score_low", "final_score_high"]
        assert float(row["final_score_low"]) <= float(row["final_score_high"])
        assert float(row["final_score_low"]) - 1e-9 <= float(row["final_score"]) <= float(row["final_score_high"]) + 1e-9
    assert (out / "run_summary.png").stat().st_size > 10_000


def papermill(notebook: str, out: Path, cwd: Path, parameters: dict[str, str]) -> subprocess.CompletedProcess:
    """The notebook run as CI and a scheduled job run it: papermill's command line from the venv, every
    parameter a string (`-r`), from a folder outside the repository."""
    command = [str(Path(sys.executable).with_name("papermill")), str(REPO / "notebooks" / f"{notebook}.ipynb"),
               str(out), "-k", "python3", "--cwd", str(cwd), "--no-progress-bar", "--execution-timeout", "600"]
    for name, value in parameters.items():
        command += ["-r", name, value]
    # The venv's own python3 kernel (ipykernel's), never one a user registered in their home folder.
    env = {**os.environ, "JUPYTER_PREFER_ENV_PATH": "1"}
    return subprocess.run(command, cwd=cwd, env=env, capture_output=True, text=True, timeout=900, check=False)


@pytest.mark.parametrize("name", ["Gold-Standard", "AGAD", "SUGD", "SUGD-Experiments"])
def test_notebook_runs_under_papermill_from_outside_the_repo(name, tmp_path, small_world):
    import nbformat

    outside = tmp_path / "elsewhere"
    outside.mkdir()
    # The gold standard has no chunks: each method takes only its own method.* settings.
    overrides = [*small_world.overrides, *(o for o in FAST_RUN if name != "Gold-Standard" or not o.startswith("method."))]
    parameters = {
        "workdir": str(small_world.root),
        # Both string forms a job may send: a JSON list (AGAD) and one shell-like string (the others).
        "overrides": json.dumps(overrides) if name == "AGAD" else " ".join(shlex.quote(o) for o in overrides),
        "num_processes": "1",
        "show_progress": "False",
        "run_dir": str(tmp_path / "run"),
    }
    if name == "SUGD-Experiments":
        del parameters["run_dir"]
        parameters["overrides"] = ""
        parameters["sweep_path"] = str(sweep_file(tmp_path, small_world, {"training.learning_rate": [1e-3, 3e-3]}))
        parameters["sweep_dir"] = str(tmp_path / "sweep")
    else:
        parameters["overwrite"] = "false"
    out = tmp_path / f"{name}.ipynb"
    result = papermill(name, out, outside, parameters)
    assert result.returncode == 0, result.stderr[-3000:]
    notebook = nbformat.read(out, as_version=4)
    injected = next(c for c in notebook.cells if "injected-parameters" in c.metadata.get("tags", []))
    assert 'num_processes = "1"' in injected.source  # the strings really reached the kernel as strings
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
    assert not list(outside.iterdir()), "the notebook wrote into its working folder"


def test_a_bad_string_parameter_stops_the_notebook_naming_it(tmp_path):
    # Stops in the cell after the parameters, before any world or model is touched.
    result = papermill("SUGD", tmp_path / "out.ipynb", tmp_path, {"num_processes": "two", "run_dir": str(tmp_path)})
    assert result.returncode != 0
    assert "notebook parameter num_processes: expected a whole number >= 1, got 'two'" in result.stderr


def test_committed_notebooks_have_no_outputs():
    import nbformat

    for path in (REPO / "notebooks").glob("*.ipynb"):
        notebook = nbformat.read(path, as_version=4)
        assert any("parameters" in c.metadata.get("tags", []) for c in notebook.cells), path.name
        assert all(not c.get("outputs") for c in notebook.cells if c.cell_type == "code"), path.name
