"""Output locations are checked before any work, and an atomic write never lands on a folder."""

from __future__ import annotations

import os

import pytest

from utils.errors import UserError
from utils.io import atomic_write_text, check_output_location


def test_a_new_or_existing_folder_and_file_are_accepted_and_nothing_is_created(tmp_path):
    (tmp_path / "existing").mkdir()
    (tmp_path / "results.json").write_text("{}")
    for path, kind in [(tmp_path / "existing", "folder"), (tmp_path / "new" / "deeper", "folder"),
                       (tmp_path / "results.json", "file"), (tmp_path / "new" / "results.json", "file")]:
        check_output_location(path, kind)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["existing", "results.json"]
    assert list((tmp_path / "existing").iterdir()) == []  # the write probe is gone


def test_a_file_where_a_folder_goes_and_the_reverse_are_refused(tmp_path):
    (tmp_path / "file").write_text("x")
    (tmp_path / "folder").mkdir()
    with pytest.raises(UserError, match="output folder .*file exists and is not a folder"):
        check_output_location(tmp_path / "file", "folder")
    with pytest.raises(UserError, match="output file .*folder exists and is a folder"):
        check_output_location(tmp_path / "folder", "file")
    with pytest.raises(UserError, match=r"cannot write the output file .*file/results.json: .*file is not a folder"):
        check_output_location(tmp_path / "file" / "results.json", "file")
    with pytest.raises(UserError, match="output file .*folder exists and is a folder"):
        atomic_write_text(tmp_path / "folder", "x")


def test_a_read_only_parent_is_refused(tmp_path):
    if os.geteuid() == 0:
        pytest.skip("running as root: mode bits do not stop writes")
    locked = tmp_path / "locked"
    locked.mkdir()
    locked.chmod(0o500)
    try:
        with pytest.raises(UserError, match="the folder .*locked is not writable"):
            check_output_location(locked / "out", "folder")
    finally:
        locked.chmod(0o700)
