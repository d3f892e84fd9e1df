"""Runs you can tell apart: a run folder nobody named is runs/<name>-<start time>, where the name is
experiment.name, else the config file's stem; results.json holds it and the leaderboard labels rows by it."""

from __future__ import annotations

import json
import re

import pytest

from utils.errors import UserError
from utils.evaluation.leaderboard import rows_from_run_dirs
from utils.experiment import Experiment
from utils.experiment.resolved import latest_run_dir, timestamped_run_dir

from ..conftest import REPO
from ..experiment.test_run import RUN_OVERRIDES

pytestmark = pytest.mark.usefixtures("one_thread")

STAMP = r"\d{8}-\d{6}"


def test_two_sugd_variants_get_their_own_folders_names_and_leaderboard_rows(small_world, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    overrides = [*small_world.overrides, f"workdir={small_world.root}", *RUN_OVERRIDES, "evaluation.utility=none"]
    folders = []
    for config in ("sugd.yaml", "sugd_ceiling.yaml"):
        experiment = Experiment.from_config(REPO / "configs" / config, overrides)
        experiment.run(progress=False, log=lambda _: None)
        folders.append(experiment.run_dir)
    assert [re.fullmatch(rf"runs/(\w+)-{STAMP}", str(folder)).group(1) for folder in folders] == \
        ["sugd", "sugd_ceiling"]
    results = [json.loads((folder / "results.json").read_text()) for folder in folders]
    assert [r["name"] for r in results] == ["sugd", "sugd_ceiling"] and {r["method"] for r in results} == {"sugd"}
    # Before run names both rows read "sugd".
    assert [row["method"] for row in rows_from_run_dirs(folders)] == ["sugd", "sugd_ceiling"]
    # The same config twice: the rows take their folders' names, which differ by start time.
    again = Experiment.from_config(REPO / "configs" / "sugd.yaml", overrides)
    assert again.run_dir not in folders and again.name == "sugd"
    twin = tmp_path / "runs" / "sugd-copy"
    twin.mkdir()
    (twin / "results.json").write_text((folders[0] / "results.json").read_text())
    labels = [row["method"] for row in rows_from_run_dirs([folders[0], twin, folders[1]])]
    assert labels == [folders[0].name, "sugd-copy", "sugd_ceiling"]
    assert latest_run_dir("sugd") == folders[0] and latest_run_dir("sugd_ceiling") == folders[1]


def test_experiment_name_names_the_run_and_is_checked(tmp_path):
    named = Experiment.from_config(REPO / "configs" / "sugd.yaml", ["experiment.name=sugd-lr1e-5"])
    assert named.name == "sugd-lr1e-5" and re.fullmatch(rf"runs/sugd-lr1e-5-{STAMP}", str(named.run_dir))
    assert Experiment.from_config(None, ["method.name=gd"]).name == "gd"  # no file: the method
    assert Experiment.from_config(None, [], run_dir=tmp_path / "mine").run_dir == tmp_path / "mine"
    for bad in ("a/b", "../up", "", "x" * 101):
        with pytest.raises(UserError, match="experiment.name must be a folder name"):
            Experiment.from_config(None, [f"experiment.name={bad}"] if bad else ["experiment.name=''"])


def test_a_second_run_in_the_same_second_gets_its_own_folder(tmp_path):
    first = timestamped_run_dir("ga", tmp_path)
    first.mkdir()
    second = timestamped_run_dir("ga", tmp_path)
    assert second != first and second.name.startswith(first.name)
    second.mkdir()
    # Runs of the releases before run names (runs/<method>) count as the oldest.
    (tmp_path / "ga").mkdir()
    assert latest_run_dir("ga", tmp_path) == second and latest_run_dir("g", tmp_path) is None


def test_resume_without_out_continues_the_newest_run_of_the_config(small_world, tmp_path, monkeypatch, capsys):
    from utils.cli.main import main

    monkeypatch.chdir(tmp_path)
    overrides = [*small_world.overrides, f"workdir={small_world.root}", *RUN_OVERRIDES]
    config = REPO / "configs" / "sugd.yaml"
    argv = ["run", str(config), "--resume", "--quiet", "--no-eval"]
    for override in overrides:
        argv += ["--set", override]
    assert main(argv) == 2  # nothing to resume yet: one line, nothing written
    assert "no run of sugd in runs/ to continue" in capsys.readouterr().err and not (tmp_path / "runs").exists()
    killed = Experiment.from_config(config, overrides)
    killed.run(progress=False, evaluate=False, stop_after_phases=2, log=lambda _: None)
    assert main(argv) == 0
    (folder,) = (tmp_path / "runs").iterdir()
    assert folder == tmp_path / killed.run_dir and (folder / "model" / "model.safetensors").is_file()
    assert json.loads((folder / "checkpoint" / "state.json").read_text())["phases_done"] == 5
