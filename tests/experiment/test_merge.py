"""`unlearn merge`: TIES and linear against values worked out by hand, two short LoRA runs of the small world (one
saved merged, one as an adapter) merged into weights equal to the base plus the merged task vectors and evaluated
like a run, and the refusals (bad settings, runs of different models or architectures, unfinished runs, a
finished folder)."""

from __future__ import annotations

import json
import math
import shutil
from pathlib import Path

import pytest
import torch
import yaml
from safetensors.torch import load_file, save_file

from utils.cli.main import main
from utils.errors import UserError
from utils.models.merging import check_merge_settings, linear_merge, ties_merge

from ..conftest import REPO

pytestmark = pytest.mark.usefixtures("one_thread")

# --------------------------------------------------------------------------------------------
# The arithmetic, by hand

# Two task vectors of six entries, every magnitude distinct within each, so the trim has one answer.
TAU_A = [0.5, -0.2, 0.1, -0.4, 0.3, 0.05]
TAU_B = [-0.45, 0.6, 0.2, -0.3, -0.05, 0.1]


def tensors(shape=(6,)):
    return [torch.tensor(TAU_A).reshape(shape), torch.tensor(TAU_B).reshape(shape)]


@pytest.mark.parametrize("shape", [(6,), (2, 3)])
def test_ties_trims_elects_and_takes_the_disjoint_mean(shape):
    # density 0.5 keeps 3 of 6 per vector: A -> [.5, 0, 0, -.4, .3, 0], B -> [-.45, .6, 0, -.3, 0, 0].
    # Summed mass per entry: [.05, .6, 0, -.7, .3, 0] -> signs + + (+) - + (+).
    # Entry 0: A's .5 agrees, B's -.45 does not -> .5. Entry 3: both negative -> (-.4 - .3) / 2 = -.35.
    # Entries 2 and 5: nothing kept -> 0.
    merged = ties_merge(tensors(shape), [1.0, 1.0], density=0.5)
    expected = torch.tensor([0.5, 0.6, 0.0, -0.35, 0.3, 0.0]).reshape(shape)
    assert torch.allclose(merged, expected, atol=1e-6, rtol=0), merged


def test_ties_elects_the_sign_by_weighted_mass():
    # Weights (1, 2): B's kept values double to [-.9, 1.2, 0, -.6, 0, 0]; entry 0's mass .5 - .9 < 0 flips its
    # sign to B's (unweighted, A's .5 would win); entry 3: (-.4 - .6) / 2 = -.5.
    merged = ties_merge(tensors(), [1.0, 2.0], density=0.5)
    assert torch.allclose(merged, torch.tensor([-0.9, 1.2, 0.0, -0.5, 0.3, 0.0]), atol=1e-6, rtol=0), merged


def test_ties_at_density_one_keeps_everything():
    # Sums [.05, .4, .3, -.7, .25, .15]: all + but entry 3. Entry 1 keeps B's .6 (A's -.2 disagrees), entry 4
    # A's .3 (B's -.05 disagrees); entries 2 and 5 average both: .15 and .075.
    merged = ties_merge(tensors(), [1.0, 1.0], density=1.0)
    assert torch.allclose(merged, torch.tensor([0.5, 0.6, 0.15, -0.35, 0.3, 0.075]), atol=1e-6, rtol=0), merged


def test_linear_is_the_weighted_sum():
    merged = linear_merge(tensors(), [0.5, 0.5])
    assert torch.allclose(merged, torch.tensor([0.025, 0.2, 0.15, -0.35, 0.125, 0.075]), atol=1e-6, rtol=0)
    merged = linear_merge(tensors(), [1.0, -1.0])
    assert torch.allclose(merged, torch.tensor([0.95, -0.8, -0.1, -0.1, 0.35, -0.05]), atol=1e-6, rtol=0)


def test_default_settings():
    assert check_merge_settings("ties", 2, None, None) == ([1.0, 1.0], 0.8)
    assert check_merge_settings("linear", 4, None, None) == ([0.25] * 4, None)
    assert check_merge_settings("ties", 2, [0.3, 1.5], 1.0) == ([0.3, 1.5], 1.0)


@pytest.mark.parametrize(("how", "count", "weights", "density", "phrase"), [
    ("ties", 2, None, 0.0, "--density must be in (0, 1]"),
    ("ties", 2, None, 1.5, "--density must be in (0, 1]"),
    ("ties", 2, None, math.nan, "--density must be in (0, 1]"),
    ("linear", 2, None, 0.5, "--density trims the task vectors of a TIES merge"),
    ("ties", 2, [1.0], None, "--weights: 1 given for 2 runs"),
    ("linear", 2, [1.0, math.inf], None, "--weights must be finite numbers"),
    ("linear", 2, [0.0, 0.0], None, "--weights are all 0"),
    ("ties", 1, None, None, "a merge needs at least two runs, got 1"),
    ("slerp", 2, None, None, "--how must be one of ties, linear"),
])
def test_bad_settings_are_one_line(how, count, weights, density, phrase):
    with pytest.raises(UserError) as raised:
        check_merge_settings(how, count, weights, density)
    assert phrase in str(raised.value) and "\n" not in str(raised.value)


# --------------------------------------------------------------------------------------------
# Two short LoRA runs of the small world, merged

# One phase each, no per-phase checks, not evaluated: only their weights matter here.
COMMON = ["training.epochs=1", "training.batch_size=4", "training.learning_rate=1e-2", "adapter.kind=lora",
          "adapter.lora_rank=4", "evaluation.subset=1", "evaluation.per_phase_subset=0"]
RUN_A = ["method.chunk_size=20", "method.positive_ratio=1"]  # sugd, LoRA merged into the saved weights
RUN_B = ["adapter.merge_at_end=false"]  # gradient ascent, saved as a LoRA adapter


def run_args(world, config: str, out: Path, extra: list[str]) -> list[str]:
    args = ["run", str(REPO / "configs" / config), "--out", str(out), "--quiet", "--no-eval"]
    for override in [*world.overrides, f"workdir={world.root}", *COMMON, *extra]:
        args += ["--set", override]
    return args


@pytest.fixture(scope="module")
def two_runs(small_world, tmp_path_factory) -> tuple[Path, Path]:
    root = tmp_path_factory.mktemp("merge-runs")
    a, b = root / "sugd", root / "ga"
    assert main(run_args(small_world, "sugd.yaml", a, RUN_A)) == 0
    assert main(run_args(small_world, "ga.yaml", b, RUN_B)) == 0
    assert (a / "model" / "model.safetensors").is_file() and (b / "model" / "adapter_config.json").is_file()
    return a, b


@pytest.fixture(scope="module")
def merged(two_runs, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("merged") / "ties"
    assert main(["merge", *map(str, two_runs), "--density", "0.5", "--out", str(out), "--quiet"]) == 0
    return out


def task_vectors(world, two_runs) -> tuple[dict, list[dict]]:
    """(base weights, [τ_A, τ_B]) computed here without the merging code: A's saved weights minus the base's;
    B's LoRA delta B·A·alpha/r from its adapter file."""
    base = load_file(world.target / "model.safetensors")
    a, b = two_runs
    tau_a = {name: tensor - base[name] for name, tensor in load_file(a / "model" / "model.safetensors").items()}
    adapter = load_file(b / "model" / "adapter_model.safetensors")
    settings = json.loads((b / "model" / "adapter_config.json").read_text())
    scaling = settings["lora_alpha"] / settings["r"]
    tau_b = {name: torch.zeros_like(tensor) for name, tensor in base.items()}
    for key, lora_a in adapter.items():
        if key.endswith(".lora_A.weight"):
            module = key.removeprefix("base_model.model.").removesuffix(".lora_A.weight")
            tau_b[f"{module}.weight"] = adapter[key.replace("lora_A", "lora_B")] @ lora_a * scaling
    assert sum(bool(torch.count_nonzero(t)) for t in tau_b.values()) == 2 * 4  # 2 layers x 4 target modules
    return base, [tau_a, tau_b]


def test_ties_merge_of_two_lora_runs_is_base_plus_merged_deltas_and_is_evaluated(small_world, two_runs, merged):
    results = json.loads((merged / "results.json").read_text())
    assert results["method"] == "merge" and results["name"] == "merge-ties"
    assert {"final_score", "task_aggregate", "mia_auc", "utility", "terms", "environment"} <= set(results)
    assert 0 <= results["final_score"] <= 1
    assert results["merge"]["how"] == "ties" and results["merge"]["density"] == 0.5
    assert results["merge"]["weights"] == [1.0, 1.0]
    assert [run["folder"] for run in results["merge"]["runs"]] == list(map(str, two_runs))
    assert results["evaluated"]["unlearned_from"] == str(small_world.target)
    assert results["evaluated"]["subset_documents_per_task"] == 1  # the runs' evaluation settings
    assert results["evaluated"]["method"] == "merge" and set(results["evaluated"]["config"]) == {
        "workdir", "data", "evaluation"}
    # The runs were saved unevaluated (no unlearning time to add up): the merge's own time only.
    assert results["timings"]["merge"] > 0 and "unlearning" not in results["timings"]
    assert json.loads((merged / "merge.json").read_text())["how"] == "ties"
    card = (merged / "model" / "README.md").read_text()
    assert "merge" in card and "final score" in card and str(two_runs[1]) in card

    base, taus = task_vectors(small_world, two_runs)
    saved = load_file(merged / "model" / "model.safetensors")
    assert set(saved) == set(base)
    changed = 0
    for name, weight in base.items():
        expected = weight + ties_merge([taus[0][name], taus[1][name]], [1.0, 1.0], density=0.5)
        assert torch.allclose(saved[name], expected, atol=1e-6, rtol=0), (name, (saved[name] - expected).abs().max())
        changed += not torch.equal(saved[name], weight)
    assert changed == 8  # the LoRA targets only; everything else is the base's, bit for bit

    from utils.evaluation.leaderboard import rows_from_run_dirs

    (row,) = rows_from_run_dirs([merged])
    assert row["method"] == "merge-ties" and row["final_score"] == results["final_score"]


def test_linear_merge_with_weights(small_world, two_runs, tmp_path):
    out = tmp_path / "linear"
    argv = ["merge", *map(str, two_runs), "--how", "linear", "--weights", "0.7", "-0.2", "--out", str(out),
            "--no-eval", "--quiet", "--set", "experiment.name=npo-linear"]
    assert main(argv) == 0
    assert not (out / "results.json").exists()
    recipe = json.loads((out / "merge.json").read_text())
    assert (recipe["how"], recipe["weights"], recipe["density"]) == ("linear", [0.7, -0.2], None)
    base, taus = task_vectors(small_world, two_runs)
    saved = load_file(out / "model" / "model.safetensors")
    for name, weight in base.items():
        expected = weight + 0.7 * taus[0][name] - 0.2 * taus[1][name]
        assert torch.allclose(saved[name], expected, atol=1e-6, rtol=0), name


def one_line_error(argv: list[str], capsys) -> str:
    capsys.readouterr()
    assert main([*argv, "--quiet"]) == 2  # (without progress bars on stderr)
    err = capsys.readouterr().err
    assert len(err.splitlines()) == 1 and err.startswith("error: "), err
    return err


def copy_run(run: Path, to: Path) -> Path:
    shutil.copytree(run, to)
    return to


def test_runs_of_different_models_are_refused(small_world, two_runs, tmp_path, capsys):
    other = copy_run(two_runs[0], tmp_path / "other")
    config = yaml.safe_load((other / "config.yaml").read_text())
    config["model"]["name_or_path"] = str(small_world.gold_standard)
    (other / "config.yaml").write_text(yaml.safe_dump(config))
    err = one_line_error(["merge", str(two_runs[1]), str(other), "--out", str(tmp_path / "m")], capsys)
    assert "did not start from the same model (model " in err and str(small_world.gold_standard) in err
    config["model"] |= {"name_or_path": None, "dtype": "bfloat16"}  # the same model, saved in another precision
    (other / "config.yaml").write_text(yaml.safe_dump(config))
    err = one_line_error(["merge", str(two_runs[1]), str(other), "--out", str(tmp_path / "m")], capsys)
    assert "did not start from the same model (model.dtype float32 vs bfloat16)" in err
    assert not (tmp_path / "m").exists()


def test_a_run_of_another_architecture_is_refused(two_runs, tmp_path, capsys):
    other = copy_run(two_runs[0], tmp_path / "other")
    weights = load_file(other / "model" / "model.safetensors")
    name = next(key for key in weights if key.endswith("q_proj.weight"))
    weights[name] = weights[name][:-1]  # one row short
    save_file(weights, other / "model" / "model.safetensors", metadata={"format": "pt"})
    err = one_line_error(["merge", str(two_runs[1]), str(other), "--out", str(tmp_path / "m")], capsys)
    assert f"tensor {name} has shape" in err and "not the architecture" in err
    assert not (tmp_path / "m").exists()


def test_unfinished_and_missing_runs_are_refused(two_runs, tmp_path, capsys):
    unfinished = tmp_path / "unfinished"
    unfinished.mkdir()
    shutil.copy(two_runs[0] / "config.yaml", unfinished / "config.yaml")
    err = one_line_error(["merge", str(two_runs[0]), str(unfinished)], capsys)
    assert "has no saved model yet" in err and "--resume" in err
    err = one_line_error(["merge", str(two_runs[0]), str(tmp_path / "nowhere")], capsys)
    assert f"run folder not found: {tmp_path / 'nowhere'}" in err
    err = one_line_error(["merge", str(two_runs[0]), str(two_runs[0])], capsys)
    assert "is given twice" in err


def test_a_finished_folder_and_the_runs_themselves_are_never_replaced(two_runs, merged, capsys):
    before = (merged / "results.json").read_bytes()
    err = one_line_error(["merge", *map(str, two_runs), "--out", str(merged)], capsys)
    assert "already holds a finished run" in err
    assert (merged / "results.json").read_bytes() == before
    err = one_line_error(["merge", *map(str, two_runs), "--out", str(two_runs[0]), "--overwrite"], capsys)
    assert "holds the run" in err and (two_runs[0] / "model").is_dir()
    err = one_line_error(["merge", *map(str, two_runs), "--out", str(two_runs[0].parent), "--overwrite"], capsys)
    assert "holds the run" in err and (two_runs[0] / "model").is_dir()


@pytest.mark.parametrize(("flags", "phrase"), [
    (["--density", "0"], "--density must be in (0, 1]"),
    (["--weights", "1"], "--weights: 1 given for 2 runs"),
    (["--weights", "1", "nan"], "--weights must be finite numbers"),
    (["--how", "slerp"], "argument --how: invalid choice: 'slerp'"),
    (["--set", "training.epochs=2"], "--set training.epochs: a merge takes only evaluation.*"),
    (["--set", "model.dtype=bfloat16"], "--set model.dtype: a merge takes only evaluation.*"),
])
def test_bad_flags_are_one_line(two_runs, tmp_path, flags, phrase, capsys):
    err = one_line_error(["merge", *map(str, two_runs), "--out", str(tmp_path / "m"), *flags], capsys)
    assert phrase in err
    assert not (tmp_path / "m").exists()
