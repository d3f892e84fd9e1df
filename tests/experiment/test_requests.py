"""Sequential deletion requests: the documents dealt task by task, each request a run from the previous model,
every request's forget terms and retain scored after each, and a finished sequence read back on --resume."""

from __future__ import annotations

import csv
import itertools
import json

import pytest

from utils.cli.main import main
from utils.data.lume import Item, LumeData, parse_item_id
from utils.errors import UserError
from utils.experiment.requests import split_requests

from .test_resume_and_finished_runs import expect_one_line_error
from .test_run import run_args

pytestmark = pytest.mark.usefixtures("one_thread")


def lume(documents_per_task: int) -> LumeData:
    forget = [Item(f"{task}doc{d}sc1", "p", "a", task, "forget", "sc", 1, f"{task}doc{d}")
              for task in ("Task1", "Task2", "Task3") for d in range(documents_per_task)]
    return LumeData(forget=forget, retain=[], source="test")


def test_documents_are_dealt_task_by_task_so_every_request_gets_every_task():
    plan = split_requests(lume(4), 2)
    assert plan == [["Task1doc0", "Task1doc2", "Task2doc0", "Task2doc2", "Task3doc0", "Task3doc2"],
                    ["Task1doc1", "Task1doc3", "Task2doc1", "Task2doc3", "Task3doc1", "Task3doc3"]]
    three = split_requests(lume(4), 3)
    assert sorted(itertools.chain(*three)) == sorted(itertools.chain(*plan))  # every document once
    assert [len(r) for r in three] == [6, 3, 3]


@pytest.mark.parametrize(("count", "phrase"), [(1, "at least 2"), (13, "only 12 documents")])
def test_a_request_count_that_cannot_be_met_is_refused(count, phrase):
    with pytest.raises(UserError, match=phrase):
        split_requests(lume(4), count)


def test_two_requests_unlearn_in_turn_and_resume_reads_them_back(small_world, tmp_path, capsys):
    out = tmp_path / "requests"
    assert main(run_args(small_world, out, flags=("--requests", "2"))) == 0
    plan = json.loads((out / "requests.json").read_text())["documents"]
    documents = list(itertools.chain(*plan))
    assert len(plan) == 2 and len(documents) == len(set(documents)) == 6  # 2 per task, each in one request
    for number in (1, 2):
        assert (out / f"request_{number}" / "results.json").is_file()
        rows = [json.loads(line) for line in
                (out / "data" / f"request_{number}" / "forget.jsonl").read_text().splitlines()]
        assert {parse_item_id(row["id"])[2] for row in rows} == set(plan[number - 1])
    # Request 2 starts from request 1's model.
    assert str(out / "request_1" / "model") in (out / "request_2" / "config.yaml").read_text()
    with (out / "requests_summary.csv").open() as handle:
        rows = list(csv.DictReader(handle))
    assert [row["after_request"] for row in rows] == ["1", "2"]
    before = json.loads((out / "before_request_scores.json").read_text())
    # Request 1's documents are forgotten after request 1; request 2's only after request 2.
    assert float(rows[0]["forget1_regurgitation"]) < before["forget"]["1"]["regurgitation"] - 0.2
    assert float(rows[1]["forget2_regurgitation"]) < before["forget"]["2"]["regurgitation"] - 0.2
    assert (out / "requests.png").is_file() and (out / "requests_summary.md").is_file()
    finished = (out / "request_1" / "results.json").stat().st_mtime_ns
    capsys.readouterr()
    assert main(run_args(small_world, out, flags=("--requests", "2", "--resume"))) == 0
    assert "finished earlier, read back" in capsys.readouterr().out
    assert (out / "request_1" / "results.json").stat().st_mtime_ns == finished
    line = expect_one_line_error(run_args(small_world, out, flags=("--requests", "2")), capsys)
    assert "holds finished requests" in line
