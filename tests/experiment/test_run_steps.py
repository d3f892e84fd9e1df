"""The run as named steps (utils/experiment/run.py), the library's child-process entry point
(utils/experiment/child.py) and the evaluation on a subset: each gives what the whole path gives."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pytest

from utils.cli.main import main
from utils.config import EvaluationConfig
from utils.data.lume import load_lume
from utils.entry import child_command, child_environment
from utils.evaluation.evaluate import evaluate_model, item_scores, score_items, subset_items
from utils.experiment.experiment import Experiment
from utils.experiment.resolved import CHILD_MODULE
from utils.experiment.run import build_inputs, finish, open_folder, prepare_model, record_phase, train_phases
from utils.io import looks_like_local_path
from utils.models.loading import load_model_and_tokenizer

from ..conftest import REPO
from ..experiment.test_run import CONFIG, PHASES, RUN_OVERRIDES, STEPS, read_jsonl, run_args

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def whole_run(small_world, tmp_path_factory) -> Path:
    """`unlearn run` of test_run.py's SUGD config: what the steps called one by one must reproduce."""
    out = tmp_path_factory.mktemp("whole") / "sugd"
    assert main(run_args(small_world, out)) == 0
    return out


def without_seconds(lines: list[dict]) -> list[dict]:
    return [{key: value for key, value in line.items() if key != "seconds"} for line in lines]


def test_the_steps_with_an_own_callback_give_the_run_that_unlearn_run_gives(small_world, whole_run, tmp_path):
    """Called one by one, with a callback of its own that also records each phase as a run does, the steps write
    the phases and scores of `unlearn run` on the same config: the hook adds, it changes nothing."""
    overrides = [*small_world.overrides, f"workdir={small_world.root}", *RUN_OVERRIDES]
    experiment = Experiment.from_config(CONFIG, overrides, run_dir=tmp_path / "steps")
    seen: list[tuple[int, int]] = []

    def after_phase(run, index, result) -> None:
        seen.append((index, result.steps))
        record_phase(run, index, result)

    with open_folder(experiment, progress=False, log=lambda _: None) as run:
        assert run.finished is None and run.state is None
        build_inputs(run)
        assert len(run.phases) == PHASES and run.tokenizer is not None
        prepare_model(run)
        memory = train_phases(run, after_phase)
        results = finish(run, memory)

    assert [index for index, _ in seen] == list(range(PHASES)) and sum(steps for _, steps in seen) == STEPS
    out = tmp_path / "steps"
    assert without_seconds(read_jsonl(out / "phases.jsonl")) == without_seconds(read_jsonl(whole_run / "phases.jsonl"))
    reference = json.loads((whole_run / "results.json").read_text())
    for key in ("final_score", "task_aggregate", "mia_auc", "terms", "utility"):
        assert results[key] == reference[key], key
    assert json.loads((out / "results.json").read_text())["final_score"] == reference["final_score"]


def test_a_finished_run_opens_with_its_results_and_resume(whole_run, small_world):
    overrides = [*small_world.overrides, f"workdir={small_world.root}", *RUN_OVERRIDES]
    experiment = Experiment.from_config(CONFIG, overrides, run_dir=whole_run)
    with open_folder(experiment, resume=True, progress=False, log=lambda _: None) as run:
        assert run.finished == json.loads((whole_run / "results.json").read_text())


def test_the_evaluation_on_a_subset_scores_each_item_as_the_whole_evaluation_does(small_world):
    """`score_items` (the attacks' scores, the per-phase check) and `evaluate_model` on the same documents give
    the same per-item scores: one generation and scoring path."""
    model, tokenizer = load_model_and_tokenizer(str(small_world.target))
    lume = load_lume(small_world.data)
    settings = EvaluationConfig(max_new_tokens=24, batch_size=4)
    evaluation = evaluate_model(model, tokenizer, lume, max_new_tokens=24, batch_size=4, subset=1, progress=False)
    items = subset_items(lume.forget, 1) + subset_items(lume.retain, 1)
    rows = {row["id"]: row["model_output"] for split in ("forget", "retain") for row in evaluation.generations[split]}
    whole = item_scores(items, [rows[item.id] for item in items])
    assert score_items(model, tokenizer, items, settings) == whole
    assert len(whole) == len(items) >= 12 and 0.0 < sum(whole.values()) / len(whole) <= 1.0


def child(*arguments: str, cwd: Path) -> subprocess.CompletedProcess:
    return subprocess.run(child_command(CHILD_MODULE, *arguments), cwd=cwd, env=child_environment(),
                          capture_output=True, text=True, check=False, timeout=300)


def test_the_child_entry_point_ends_bad_input_in_one_line_and_exit_code_2(tmp_path):
    done = child("run", str(tmp_path / "missing.yaml"), "--out", str(tmp_path / "run"), "--quiet", cwd=tmp_path)
    assert done.returncode == 2, done.stderr
    assert done.stderr.startswith("error: ") and len(done.stderr.strip().splitlines()) == 1
    assert "missing.yaml" in done.stderr and not (tmp_path / "run").exists()
    usage = child("train", cwd=tmp_path)
    assert usage.returncode == 2 and len(usage.stderr.strip().splitlines()) == 1, usage.stderr


def test_the_child_imports_this_project_even_beside_another_utils(tmp_path):
    """A `utils` package in the working folder (where `python -m` would look first) does not shadow the library."""
    (tmp_path / "utils").mkdir()
    (tmp_path / "utils" / "__init__.py").write_text("raise ImportError('the shadowing utils was imported')\n")
    done = child("prepare", "--config", "missing.yaml", "--quiet", cwd=tmp_path)
    assert done.returncode == 2, done.stderr
    assert "shadowing" not in done.stderr and "missing.yaml" in done.stderr


def test_a_name_is_local_when_it_looks_like_a_path_or_exists_under_the_root(tmp_path):
    (tmp_path / "models" / "mine").mkdir(parents=True)
    assert looks_like_local_path("models/mine", tmp_path) and not looks_like_local_path("models/mine", REPO)
    assert not looks_like_local_path("allenai/OLMo-1B-0724-hf")
    assert all(looks_like_local_path(name) for name in ("./x", "/x", "~/x", "a/b/c"))
