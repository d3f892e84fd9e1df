"""The first GPU day, rehearsed: the notebooks on the real 7B configs with stand-in checkpoints, 2 processes.

benchmarks/journey.py builds the stand-ins (OlmoForCausalLM, the real OLMo tokenizer, a target that memorised a
slice of the real validation split, a gold standard trained on its retain part) and runs each notebook with
papermill's command line from `notebooks/`, every parameter a string, overriding only where the models and the
data are, the split, the epoch budget and the MMLU folder. Skipped where the OLMo assets or ../shared are absent.
"""

from __future__ import annotations

import gc
import json
import subprocess
import sys

import nbformat
import pytest

from benchmarks import journey
from utils.data import olmo_assets

from ..conftest import REPO

pytestmark = pytest.mark.skipif(olmo_assets.find_assets() is None or not (journey.REAL_DATA / "data").is_dir(),
                                reason="needs the OLMo assets (python scripts/olmo_assets.py) and ../shared's LUME data")


@pytest.fixture(scope="module")
def standins():
    # Built once per machine beside the OLMo assets (every stage is cached by a hash of its settings and data,
    # so a change rebuilds what it touches); LUME_STANDINS moves it.
    return journey.build_standins(journey.standin_folder(), log=lambda _: None)


@pytest.fixture(scope="module")
def journey_out(tmp_path_factory):
    # The reference evaluations land in the 7B config's own work folder, as a user's would: the ones the journey
    # adds are removed afterwards, so the checkout keeps only what it had.
    import shutil

    references = REPO / "artifacts" / "olmo-7b" / "references"
    before = set(references.iterdir()) if references.is_dir() else None
    yield tmp_path_factory.mktemp("journey")
    for added in (set(references.iterdir()) - (before or set())) if references.is_dir() else ():
        shutil.rmtree(added, ignore_errors=True)
    for folder in (references, references.parent):  # the folders the journey made, when nothing else is in them
        if before is None and folder.is_dir() and not any(folder.iterdir()):
            folder.rmdir()


def folder_state(path):
    """Every file under `path` with its size and modification time (None when the folder does not exist)."""
    if not path.exists():
        return None
    return sorted((str(item.relative_to(path)), item.stat().st_size, item.stat().st_mtime_ns)
                  for item in path.rglob("*") if item.is_file())


def dry_run_schedule(method, standins, tmp_path):
    schedule = tmp_path / f"{method}-schedule.json"
    overrides = [part for item in journey.overrides_for(method, standins, 1) for part in ("--set", item)]
    done = subprocess.run([sys.executable, "-m", "lume_unlearning", "run", f"configs/olmo-7b/{method}.yaml",
                           "--dry-run", "--schedule-out", str(schedule), *overrides],
                          cwd=REPO, capture_output=True, text=True, check=False)
    assert done.returncode == 0, done.stderr
    return [(phase["name"], phase["steps"]) for phase in json.loads(schedule.read_text())["phases"]]


def test_the_notebooks_run_the_real_configs_on_stand_ins(standins, journey_out, tmp_path):
    default_world = REPO / "artifacts" / "default"
    before = folder_state(default_world)
    for name, method in journey.NOTEBOOKS.items():
        result = journey.run_notebook(name, standins, journey_out, processes=2)
        assert result["returncode"] == 0, result["stderr"]
        run_dir = result["run_dir"]
        results = json.loads((run_dir / "results.json").read_text())
        config = (run_dir / "config.yaml").read_text()
        # The 7B config's own settings, with only the overridden places changed.
        assert "dtype: bfloat16" in config and f"name: {method}" in config
        assert str(standins["data"]) in config and "split: validation" in config
        assert results["final_score"] is not None and results["mia_auc"] is not None
        assert results["utility"]["benchmark"].startswith("mmlu")
        # The references are the stand-ins, evaluated under the launcher (kept under the config's workdir).
        expected = ["base", "gold_standard"] if method == "gold_standard" else ["gold_standard", "target"]
        table = result["outputs"]
        for label in [*expected, method]:
            assert any(line.split()[:1] == [label] for line in table.splitlines()), (label, table)
        references = REPO / "artifacts" / "olmo-7b" / "references"
        assert references.is_dir()
        # What trained is what the dry run showed.
        trained = [(row["name"], row["steps"]) for row in map(json.loads, (run_dir / "phases.jsonl").open())]
        assert trained == dry_run_schedule(method, standins, tmp_path)
    assert folder_state(default_world) == before  # no tiny world built over a real config


def test_the_launch_cell_runs_twice_in_one_kernel_and_no_model_is_loaded_there(standins, journey_out):
    from nbclient import NotebookClient

    executed = journey_out / "SUGD.executed.ipynb"  # papermill's copy, its parameters injected
    if not executed.is_file():
        first = journey.run_notebook("SUGD", standins, journey_out, processes=2)
        assert first["returncode"] == 0, first["stderr"]
    book = nbformat.read(executed, as_version=4)
    launch = next(i for i, cell in enumerate(book.cells) if "experiment.run(" in cell.source)
    probe = nbformat.v4.new_code_cell(
        "import gc\nfrom transformers import PreTrainedModel\n"
        "print('models in this process:', sum(isinstance(o, PreTrainedModel) for o in gc.get_objects()))")
    book.cells.append(probe)
    client = NotebookClient(book, kernel_name="python3", timeout=600,
                            resources={"metadata": {"path": str(REPO / "notebooks")}})
    with client.setup_kernel():
        for index, cell in enumerate(book.cells[:-1]):
            client.execute_cell(cell, index)
        client.execute_cell(book.cells[launch], launch)  # a second launch from the same kernel
        client.execute_cell(probe, len(book.cells) - 1)
    said = "".join(output.get("text", "") for output in probe.outputs)
    assert "models in this process: 0" in said, said
    gc.collect()
