"""What the project writes gets the mode a plain open()/mkdir() gets under the user's umask (0644 files and
0755 folders under 022), so teammates on a shared file system can read a run; a stricter umask is kept.
Mode bits are set and read back as usual when the tests run as root, so these checks hold there too."""

from __future__ import annotations

import contextlib
import os
import stat
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file

from utils import io
from utils.io import AtomicDirectory, atomic_write, atomic_write_json, atomic_write_text

from ..experiment.test_run import CONFIG, RUN_OVERRIDES


@contextlib.contextmanager
def umask(mask: int):
    previous = os.umask(mask)
    try:
        yield
    finally:
        os.umask(previous)


def mode(path: Path) -> int:
    return stat.S_IMODE(path.lstat().st_mode)


@pytest.mark.parametrize("mask, file_mode, folder_mode", [(0o022, 0o644, 0o755), (0o077, 0o600, 0o700),
                                                          (0o002, 0o664, 0o775)])
def test_atomic_files_and_folders_get_the_umask_modes(tmp_path, mask, file_mode, folder_mode):
    with umask(mask):
        (tmp_path / "plain.txt").write_text("x")  # the reference: what open() gives under this umask
        (tmp_path / "plain").mkdir()
        atomic_write_text(tmp_path / "results.json", "{}")
        atomic_write_json(tmp_path / "report.json", {"a": 1})
        atomic_write(tmp_path / "table.bin", lambda tmp: tmp.write_bytes(b"rows"))
        # safetensors 0.8 writes 0600 whatever the umask (its own temporary file, renamed over ours).
        atomic_write(tmp_path / "weights.safetensors", lambda tmp: save_file({"w": torch.zeros(2)}, str(tmp)))
        for _ in range(2):  # a new folder, then one replacing it
            with AtomicDirectory(tmp_path / "model") as tmp:
                save_file({"w": torch.ones(2)}, str(tmp / "model.safetensors"))
                os.close(os.open(tmp / "private.json", os.O_WRONLY | os.O_CREAT, 0o600))
                (tmp / "tokenizer").mkdir(mode=0o700)
                (tmp / "tokenizer" / "vocab.json").write_text("{}")
    assert (mode(tmp_path / "plain.txt"), mode(tmp_path / "plain")) == (file_mode, folder_mode)
    files = ["results.json", "report.json", "table.bin", "weights.safetensors", "model/model.safetensors",
             "model/private.json", "model/tokenizer/vocab.json"]
    assert {name: oct(mode(tmp_path / name)) for name in files} == {name: oct(file_mode) for name in files}
    assert {name: oct(mode(tmp_path / name)) for name in ("model", "model/tokenizer")} == \
        {"model": oct(folder_mode), "model/tokenizer": oct(folder_mode)}
    assert not [p.name for p in tmp_path.iterdir() if p.name.startswith(".")]  # no temporary left


def test_a_taken_temporary_name_is_skipped_and_never_written_through(tmp_path, monkeypatch):
    """A name that exists (here a link planted to another file) is passed over, as mkstemp would."""
    victim = tmp_path / "victim.txt"
    victim.write_text("keep")
    (tmp_path / ".out.json.aaaa.tmp").symlink_to(victim)
    (tmp_path / ".model.aaaa.tmp").mkdir()
    names = iter(["aaaa", "bbbb", "aaaa", "cccc", "dddd"])  # the last for the folder's mode probe
    monkeypatch.setattr(io.secrets, "token_hex", lambda _: next(names))
    atomic_write_text(tmp_path / "out.json", "new")
    with AtomicDirectory(tmp_path / "model") as tmp:
        assert tmp.name == ".model.cccc.tmp"
        (tmp / "weights").write_text("w")
    assert (tmp_path / "out.json").read_text() == "new" and victim.read_text() == "keep"
    assert (tmp_path / "model" / "weights").read_text() == "w"


def test_a_whole_run_folder_is_0644_and_0755_under_umask_022(small_world, tmp_path, one_thread):
    """A SUGD run with evaluation, two phases and two checkpoints kept: model/, results.json, the
    checkpoints (hard-linked copies included) and the plots all readable by group and others."""
    from utils.experiment import Experiment

    out = tmp_path / "run"
    overrides = [*small_world.overrides, f"workdir={small_world.root}", *RUN_OVERRIDES,
                 "method.chunk_size=10", "training.keep_checkpoints=2"]
    with umask(0o022):
        results = Experiment.from_config(str(CONFIG), overrides, out).run(progress=False, log=lambda _: None)
    assert "final_score" in results
    entries = [out, *out.rglob("*")]
    names = {p.relative_to(out).as_posix() for p in entries}
    assert {"model", "model/model.safetensors", "model/README.md", "results.json", "checkpoint",
            "checkpoint/state.json", "checkpoints/after-phase-0001", "loss.png"} <= names, sorted(names)
    wrong = {p.relative_to(tmp_path).as_posix(): oct(mode(p)) for p in entries
             if mode(p) != (0o755 if p.is_dir() else 0o644)}
    assert not wrong
