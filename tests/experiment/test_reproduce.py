"""`unlearn reproduce`: a finished run rerun from what it recorded comes back inside its bands (exit 0), a changed
data byte stops it before training and names the file (exit 2), a score outside its band is exit 1, and a bad
tolerance file or run folder is a one-line error."""

from __future__ import annotations

import hashlib
import json
import shutil
from pathlib import Path

import pytest

from utils.cli.main import main
from utils.experiment.fingerprints import changed_inputs, file_digest
from utils.experiment.reproduce import compare, read_tolerance

from ..conftest import SmallWorld
from .test_resume_and_finished_runs import expect_one_line_error
from .test_run import run_args

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def world_and_run(small_world, tmp_path_factory) -> tuple[SmallWorld, Path]:
    """A copy of the small world (its data is changed below) and one finished run on it."""
    root = tmp_path_factory.mktemp("reproduce")
    world = SmallWorld(root=Path(shutil.copytree(small_world.root, root / "world")), overrides=small_world.overrides,
                       report=small_world.report)
    run_dir = root / "run"
    assert main(run_args(world, run_dir)) == 0
    return world, run_dir


def test_the_run_records_the_bytes_of_every_input(world_and_run):
    world, run_dir = world_and_run
    inputs = json.loads((run_dir / "results.json").read_text())["inputs"]
    assert set(inputs) >= {"data", "start_model"}
    forget = next(name for name in inputs["data"] if "forget" in Path(name).name)
    assert inputs["data"][forget] == hashlib.sha256(Path(forget).read_bytes()).hexdigest()
    weights = [name for name in inputs["start_model"] if name.endswith(".safetensors")]
    assert weights and all(Path(name).parent == (world.root / "target").resolve() for name in weights)
    assert not any(Path(name).name == "stage.json" for name in inputs["start_model"])


def test_a_run_reproduces_on_the_same_machine(world_and_run, tmp_path, capsys):
    _, run_dir = world_and_run
    again = tmp_path / "again"
    capsys.readouterr()
    assert main(["reproduce", str(run_dir), "--out", str(again), "--quiet"]) == 0
    out = capsys.readouterr().out
    then = json.loads((run_dir / "results.json").read_text())
    now = json.loads((again / "results.json").read_text())
    assert now["final_score"] == then["final_score"] and now["aggregated_terms"] == then["aggregated_terms"]
    assert "scores inside their bands" in out and "outside" not in out.split("[reproduce]")[-1]
    assert "final_score" in out and "environment: the same" in out


def test_a_score_outside_its_band_is_exit_1(world_and_run, tmp_path, capsys):
    """The run's recorded final score moved by 0.5 (as another machine might): the rerun lands outside."""
    _, run_dir = world_and_run
    moved = Path(shutil.copytree(run_dir, tmp_path / "moved"))
    results = json.loads((moved / "results.json").read_text())
    results["final_score"] += 0.5
    (moved / "results.json").write_text(json.dumps(results))
    capsys.readouterr()
    assert main(["reproduce", str(moved), "--out", str(tmp_path / "again"), "--quiet"]) == 1
    assert "outside: final_score" in capsys.readouterr().out


def test_one_changed_data_byte_is_exit_2_naming_the_file_before_anything_runs(world_and_run, tmp_path, capsys):
    _, run_dir = world_and_run
    recorded = json.loads((run_dir / "results.json").read_text())["inputs"]["data"]
    forget = Path(next(name for name in recorded if "forget" in Path(name).name))
    original = forget.read_bytes()
    try:
        forget.write_bytes(original[:10] + bytes([original[10] ^ 1]) + original[11:])
        capsys.readouterr()
        assert main(["reproduce", str(run_dir), "--out", str(tmp_path / "again"), "--quiet"]) == 2
        out = capsys.readouterr().out
        assert f"data: {forget} changed" in out
        assert not (tmp_path / "again").exists()
    finally:
        forget.write_bytes(original)


def test_changed_inputs_names_gone_changed_and_new_files():
    recorded = {"data": {"/d/forget.jsonl": "a", "/d/retain.jsonl": "b"}, "mia": {"/m/member.jsonl": "c"}}
    now = {"data": {"/d/forget.jsonl": "a", "/d/retain.jsonl": "B", "/d/extra.jsonl": "x"}, "mia": {}}
    assert changed_inputs(recorded, now) == ["data: /d/retain.jsonl changed", "data: /d/extra.jsonl is new",
                                             "mia: /m/member.jsonl is gone"]


def test_a_large_file_is_fingerprinted_by_its_size_and_ends(tmp_path, monkeypatch):
    from utils.experiment import fingerprints

    monkeypatch.setattr(fingerprints, "WHOLE_FILE_BYTES", 1000)
    monkeypatch.setattr(fingerprints, "SAMPLE_BYTES", 100)
    big = tmp_path / "big.bin"
    big.write_bytes(bytes(range(256)) * 10)
    first = file_digest(big)
    assert first.startswith("sampled:")
    data = bytearray(big.read_bytes())
    data[1500] ^= 1  # the middle: not read
    big.write_bytes(bytes(data))
    assert file_digest(big) == first
    data[-1] ^= 1  # the last byte: read
    big.write_bytes(bytes(data))
    assert file_digest(big) != first


def test_bands_per_score_and_missing_scores():
    bands = {"default": 0.01, "final_score": 0.05, "term": 0.1}
    then = {"final_score": 0.50, "task_aggregate": 0.40, "mia_auc": 0.6, "aggregated_terms": [0.5] * 12}
    now = {"final_score": 0.54, "task_aggregate": 0.42, "mia_auc": None, "aggregated_terms": [0.59] * 12}
    rows = {row["score"]: row for row in compare(then, now, bands)}
    assert rows["final_score"]["inside"] and rows["final_score"]["difference"] == pytest.approx(0.04)
    assert not rows["task_aggregate"]["inside"]  # 0.02 against the default 0.01
    assert not rows["mia_auc"]["inside"]  # measured then, not now
    assert all(rows[name]["inside"] for name in rows if name.startswith("term "))
    assert rows["mia_score"]["inside"]  # measured in neither


@pytest.mark.parametrize(("text", "phrase"), [
    ("final_score: -0.1\n", "final_score must be a non-negative number"),
    ("finale_score: 0.1\n", "unknown score 'finale_score'"),
    ("final_score: .nan\n", "final_score must be a non-negative number"),
    ("- 0.1\n", "expected a mapping"),
    ("final_score: [0.1\n", "not valid YAML"),
])
def test_a_bad_tolerance_file_is_one_line(tmp_path, text, phrase):
    from utils.errors import UserError

    path = tmp_path / "bands.yaml"
    path.write_text(text)
    with pytest.raises(UserError, match=phrase.replace("[", r"\[").replace("(", r"\(")):
        read_tolerance(path)


def test_a_folder_that_is_not_a_finished_run_is_one_line(tmp_path, capsys):
    (tmp_path / "half").mkdir()
    (tmp_path / "half" / "config.yaml").write_text("workdir: x\n")
    assert "not a finished run" in expect_one_line_error(["reproduce", str(tmp_path / "half")], capsys)
    assert "no such run folder" in expect_one_line_error(["reproduce", str(tmp_path / "nothing")], capsys)
