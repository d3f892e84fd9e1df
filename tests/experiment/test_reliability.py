"""What a command never does to a user's files: write into one of its inputs (an output that is, holds or lies
inside one is refused), empty a folder it did not make (`--overwrite` needs the marker), share an output folder
with a second writer (the second is refused naming the first; a dead writer's lock is taken over), or leave a
temporary behind (a SIGTERM stops a run in one line; a killed writer's leftovers go at the next start)."""

from __future__ import annotations

import json
import re
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from utils.cli.main import main
from utils.folders import LOCK, MARKER, TEMPORARY

from ..cli.test_hostile_inputs import snapshot, write_lume
from ..conftest import REPO
from .test_run import ENV, run_args

pytestmark = pytest.mark.usefixtures("one_thread")


def refused(argv: list[str], capsys, *roots: Path) -> str:
    """Run `unlearn argv`: exit 2, one `error:` line, every file under `roots` byte-identical; the line."""
    before = snapshot(*roots)
    capsys.readouterr()
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert len(err.splitlines()) == 1 and err.startswith("error: ") and "Traceback" not in err, err
    assert snapshot(*roots) == before
    return err


@pytest.fixture()
def world(small_world, tmp_path) -> Path:
    """A copy of the small world: the cases below aim commands at its models and data."""
    return Path(shutil.copytree(small_world.root, tmp_path / "world"))


def world_args(small_world, world: Path) -> list[str]:
    return [arg for override in [*small_world.overrides, f"workdir={world}"] for arg in ("--set", override)]


def test_prepare_into_its_own_data_folder_is_refused(tmp_path, capsys):
    data = write_lume(tmp_path / "lume")
    err = refused(["prepare", "--out", str(data), "--set", f"data.path={data}", "--quiet"], capsys, tmp_path)
    assert f"--out {data} is the data folder (data.path) ({data})" in err
    assert sorted(p.name for p in data.iterdir()) == ["forget.jsonl", "retain.jsonl"]


def test_an_output_inside_or_holding_the_data_is_refused(small_world, world, tmp_path, capsys):
    inside = world / "data" / "evaluation"
    err = refused(["evaluate", "--model", str(world / "target"), "--out", str(inside), "--quiet",
                   *world_args(small_world, world)], capsys, tmp_path)
    assert "lies inside the data folder" in err and not inside.exists()
    # Through a symlink: the real paths are compared.
    (tmp_path / "link").symlink_to(world, target_is_directory=True)
    err = refused(["evaluate", "--model", str(world / "target"), "--data", str(world / "data"),
                   "--out", str(tmp_path / "link"), "--quiet", *world_args(small_world, world)], capsys, tmp_path)
    assert f"--out {tmp_path / 'link'} holds the model" in err


def test_a_run_into_its_start_model_with_overwrite_is_refused(small_world, world, tmp_path, capsys):
    argv = run_args(small_world, world / "target", flags=("--overwrite",))
    argv[argv.index(f"workdir={small_world.root}")] = f"workdir={world}"
    err = refused(argv, capsys, tmp_path)
    assert f"is the model ({world / 'target'})" in err


def test_overwrite_empties_only_a_folder_this_project_made(small_world, world, tmp_path, capsys):
    mine = tmp_path / "thesis"
    mine.mkdir()
    (mine / "chapter1.tex").write_text("years of work\n")
    argv = run_args(small_world, mine, flags=("--overwrite",))
    argv[argv.index(f"workdir={small_world.root}")] = f"workdir={world}"
    err = refused(argv, capsys, tmp_path)
    assert f"--overwrite: {mine} was not made by this project (no {MARKER} in it)" in err


def test_a_second_writer_is_refused_and_sigterm_stops_the_first_cleanly(small_world, tmp_path, capsys):
    out = tmp_path / "run"
    log = (tmp_path / "first.txt").open("w")
    first = subprocess.Popen([sys.executable, "-m", "utils.cli", *run_args(small_world, out)], cwd=REPO, env=ENV,
                             stdout=log, stderr=subprocess.STDOUT)
    try:
        deadline = time.monotonic() + 120
        while not (out / "checkpoint" / "state.json").is_file():  # the lock is held, a save has been made
            assert first.poll() is None, (tmp_path / "first.txt").read_text()
            assert time.monotonic() < deadline, "no checkpoint within 2 minutes"
            time.sleep(0.01)
        capsys.readouterr()
        assert main(run_args(small_world, out, flags=("--resume",))) == 2
        err = capsys.readouterr().err
        assert len(err.splitlines()) == 1, err
        assert f"{out} is being written by another process (pid {first.pid} on {socket.gethostname()} since " in err
        first.send_signal(signal.SIGTERM)
        first.wait(timeout=120)
    finally:
        first.kill()
        first.wait()
        log.close()
    output = (tmp_path / "first.txt").read_text()
    assert first.returncode == 128 + signal.SIGTERM, output
    assert "Traceback" not in output and output.strip().splitlines()[-1].startswith("stopped by SIGTERM"), output
    left = [p for p in out.rglob("*") if TEMPORARY.match(p.name) or p.name == LOCK or p.name.endswith(".old")]
    assert not left
    assert (out / MARKER).is_file() and not (out / "results.json").exists()


def test_a_dead_writers_lock_and_temporaries_are_cleared_at_the_next_start(small_world, reference_run, tmp_path,
                                                                           capsys):
    """A run folder a SIGKILL left: a lock naming a process that is gone, an atomic write's temporary file, a
    half-saved model folder. The next command on it takes the lock over (saying so) and removes them."""
    out = Path(shutil.copytree(reference_run, tmp_path / "run"))
    gone = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True,
                          check=True)
    (out / LOCK).write_text(json.dumps({"pid": int(gone.stdout), "host": socket.gethostname(),
                                        "since": "2025-01-01T00:00:00+0000"}))
    (out / ".results.json.0123456789ab.tmp").write_text('{"final_score": 0.')
    (out / ".model.ba9876543210.tmp").mkdir()
    (out / ".model.ba9876543210.tmp" / "model.safetensors").write_bytes(b"\0" * 64)
    capsys.readouterr()
    assert main(run_args(small_world, out)) == 2  # a finished run: refused, after the lock was taken
    err = capsys.readouterr().err.splitlines()
    assert err[0] == (f"warning: {out}: taking over the lock of pid {int(gone.stdout)} on {socket.gethostname()} "
                      "since 2025-01-01T00:00:00+0000, which is no longer running")
    assert len(err) == 2 and "already holds a finished run" in err[1]
    assert sorted(p.name for p in out.iterdir() if p.name.startswith(".")) == [MARKER]


@pytest.fixture(scope="module")
def reference_run(small_world, tmp_path_factory) -> Path:
    """A finished run (no evaluation needed: a folder with results.json is finished)."""
    out = tmp_path_factory.mktemp("reliability") / "run"
    assert main(run_args(small_world, out, "method.chunk_size=20", flags=("--no-eval",))) == 0
    (out / "results.json").write_text('{"final_score": 0.5, "evaluated": {}}\n')
    return out


def test_a_read_only_current_folder_is_never_written(small_world, tmp_path):
    """Caches and scratch files go under the output or work folder (or the system's temporary folder), never the
    current one: a command run from a folder it may not write finishes, and the folder stays empty."""
    here = tmp_path / "read-only"
    here.mkdir(mode=0o555)
    argv = ["evaluate", "--model", str(small_world.target), "--out", str(tmp_path / "out"), "--quiet",
            "--subset", "1", "--attacks", "relearn", *world_args(small_world, small_world.root)]
    completed = subprocess.run([sys.executable, "-m", "utils.cli", *argv], cwd=here, env={**ENV, "PYTHONPATH": str(REPO)},
                               capture_output=True, text=True, timeout=300, check=False)
    assert completed.returncode == 0, completed.stderr[-3000:]
    assert list(here.iterdir()) == [] and (tmp_path / "out" / "results.json").is_file()
    assert not re.search(r"Traceback", completed.stderr)
