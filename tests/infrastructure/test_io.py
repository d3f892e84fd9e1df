"""Output locations are checked before any work, and an atomic write never lands on a folder."""

from __future__ import annotations

import os

import pytest

from utils.errors import UserError
from utils.io import atomic_write, atomic_write_text, check_output_location, is_finite_number, read_json


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


def test_read_json_gives_one_line_for_each_bad_file(tmp_path):
    path = tmp_path / "results.json"
    with pytest.raises(UserError, match=r"^results file not found: .*results.json$"):
        read_json(path, "results file")
    path.write_text('{"a": 1,\n "b": }')
    with pytest.raises(UserError, match=r"results.json: not valid JSON \(Expecting value at line 2\)$"):
        read_json(path, "results file")
    path.write_text("[1, 2]")
    with pytest.raises(UserError, match="results.json: expected a JSON object, found list"):
        read_json(path, "results file")
    path.write_bytes(b'{"a": "caf\xe9"}')
    with pytest.raises(UserError, match=r"not UTF-8 text \(byte 0xe9 at byte offset 10\)"):
        read_json(path, "results file")
    path.write_text('{"a": [1, 2.5]}')
    assert read_json(path, "results file") == {"a": [1, 2.5]}


def test_finite_numbers_exclude_bools_and_non_finite_floats():
    assert all(is_finite_number(v) for v in (0, -3, 2.5, 10**30))
    assert not any(is_finite_number(v) for v in (True, False, float("nan"), float("inf"), "1", None))


def test_an_atomic_write_that_fails_leaves_the_old_file_and_no_temporary(tmp_path):
    path = tmp_path / "out" / "table.bin"
    atomic_write(path, lambda tmp: tmp.write_bytes(b"old"))

    def fail(tmp):
        tmp.write_bytes(b"half")
        raise RuntimeError("disk full")

    with pytest.raises(RuntimeError, match="disk full"):
        atomic_write(path, fail)
    assert path.read_bytes() == b"old"
    assert [p.name for p in path.parent.iterdir()] == ["table.bin"]
