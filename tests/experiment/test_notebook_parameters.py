"""Notebook parameters as papermill -r and scheduled jobs send them (strings) read into their types."""

from __future__ import annotations

import pytest

from utils.errors import UserError
from utils.experiment.notebook_parameters import as_bool, as_count, as_overrides


def test_overrides_from_a_list_a_json_list_and_a_shell_like_string():
    expected = ["training.epochs=1", "data.path=/data/my files", "evaluation.subset=0.5"]
    assert as_overrides("overrides", expected) == expected
    assert as_overrides("overrides", tuple(expected)) == expected
    assert as_overrides("overrides", '["training.epochs=1", "data.path=/data/my files", "evaluation.subset=0.5"]') \
        == expected
    assert as_overrides("overrides", "  training.epochs=1 'data.path=/data/my files'\nevaluation.subset=0.5 ") \
        == expected
    assert as_overrides("overrides", 'data.path="/data/my files"') == ["data.path=/data/my files"]
    assert as_overrides("overrides", "") == []
    assert as_overrides("overrides", "[]") == []


@pytest.mark.parametrize("value, problem", [
    ('["a=b", ', "not a valid JSON list"),
    ("a=b 'c=d", "No closing quotation"),
    ("training.epochs", "each override is key=value, got 'training.epochs'"),
    ('["a=b", 3]', "each override is key=value, got 3"),
    ("=1", "each override is key=value, got '=1'"),
    (3, "expected key=value overrides"),
    ('{"a": "b"}', "expected key=value overrides"),
])
def test_bad_overrides_name_the_parameter(value, problem):
    with pytest.raises(UserError) as error:
        as_overrides("overrides", value)
    message = str(error.value)
    assert message.startswith("notebook parameter overrides: ") and problem in message, message
    assert "\n" not in message


def test_booleans_from_strings_any_case():
    for text in ("True", "true", " TRUE ", "1", "yes", "on"):
        assert as_bool("show_progress", text) is True, text
    for text in ("False", "false", "0", "no", "Off"):
        assert as_bool("show_progress", text) is False, text
    assert as_bool("overwrite", True) is True and as_bool("overwrite", 0) is False
    for bad in ("", "maybe", "2", 2, None, 0.5):
        with pytest.raises(UserError, match=r"^notebook parameter overwrite: expected true or false, got "):
            as_bool("overwrite", bad)


def test_counts_from_strings_and_numbers():
    assert as_count("num_processes", "2") == 2
    assert as_count("num_processes", " 8 ") == 8
    assert as_count("num_processes", 3) == 3
    assert as_count("num_processes", 4.0) == 4
    for bad in ("0", "-1", "two", "1.5", "", True, 0, 2.5, None):
        with pytest.raises(UserError, match=r"^notebook parameter num_processes: expected a whole number >= 1"):
            as_count("num_processes", bad)
