"""Parity with the official scorer: every number of `expected_results.json`, to 1e-9.

The vectors live in `../shared/parity/<scenario>/` next to the repository; without them the test
skips rather than fails, so the package still tests cleanly on its own.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from utils.cli.main import main
from utils.evaluation.metrics import official_results_view
from utils.evaluation.scoring import score_directory

PARITY_DIR = Path(__file__).resolve().parents[2].parent / "shared" / "parity"
SCENARIOS = ("memorized", "mixed", "unlearned")
TOLERANCE = 1e-9


def _scenario_dir(name: str) -> Path:
    directory = PARITY_DIR / name
    if not (directory / "expected_results.json").is_file():
        pytest.skip(f"parity vectors not found at {directory}")
    return directory


def assert_matches(actual, expected, path: str = "") -> int:
    """Compare recursively, numbers to TOLERANCE; returns how many numbers were compared."""
    if isinstance(expected, dict):
        assert isinstance(actual, dict), f"{path}: expected an object, got {actual!r}"
        assert set(actual) == set(expected), f"{path}: keys differ: {sorted(set(actual) ^ set(expected))}"
        return sum(assert_matches(actual[key], expected[key], f"{path}/{key}") for key in expected)
    if isinstance(expected, list):
        assert isinstance(actual, list) and len(actual) == len(expected), f"{path}: list length differs"
        return sum(assert_matches(a, e, f"{path}[{i}]") for i, (a, e) in enumerate(zip(actual, expected)))
    assert isinstance(expected, (int, float)) and not isinstance(expected, bool), f"{path}: {expected!r}"
    assert actual is not None, f"{path}: missing (expected {expected})"
    assert abs(actual - expected) <= TOLERANCE, f"{path}: {actual!r} != {expected!r}"
    return 1


@pytest.mark.parametrize("scenario", SCENARIOS)
def test_library_path_matches_official(scenario: str) -> None:
    directory = _scenario_dir(scenario)
    expected = json.loads((directory / "expected_results.json").read_text())
    results = score_directory(directory)
    compared = assert_matches(official_results_view(results), expected)
    # 12 aggregated terms + 2 x (6 task terms + 2 overall) + 5 headline numbers.
    assert compared == 12 + 2 * 8 + 5


@pytest.mark.parametrize("scenario", SCENARIOS)
def test_cli_matches_official(scenario: str, tmp_path: Path, capsys) -> None:
    source = _scenario_dir(scenario)
    directory = tmp_path / scenario
    directory.mkdir()
    for path in source.iterdir():  # copyfile: the shared vectors are read-only, the copy must not be
        if path.name != "expected_results.json":  # the command must not need it
            shutil.copyfile(path, directory / path.name)
    assert main(["score", str(directory)]) == 0
    written = json.loads((directory / "results.json").read_text())
    expected = json.loads((source / "expected_results.json").read_text())
    assert_matches(official_results_view(written), expected)
    output = capsys.readouterr().out
    assert "task aggregate" in output and "final score" in output
