"""`unlearn evaluate` on the small world's target and gold standard: the results contract, re-scoring the
saved generations to the same terms, that the scores tell a memorising model from one that never saw the
forget set, LoRA adapter folders, the real validation files, and bad input that leaves results alone."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import pytest
import torch

from utils.cli.main import main
from utils.data.lume import TASKS, load_lume
from utils.evaluation.metrics import KINDS

pytestmark = pytest.mark.usefixtures("one_thread")

CONTRACT_KEYS = {"final_score", "task_aggregate", "mia_auc", "mia_score", "utility", "terms", "timings",
                 "evaluated"}


def evaluate_args(world, model, out, *extra: str) -> list[str]:
    return ["evaluate", "--model", str(model), "--out", str(out), "--set", f"workdir={world.root}",
            "--max-new-tokens", "24", "--quiet", *extra]


def assert_environment(environment: dict, device: str | None, dtype: str | None) -> None:
    """The block says what made the numbers: this interpreter's library versions, device, dtype, threads."""
    import platform
    from importlib import metadata

    for name in ("torch", "transformers", "peft", "accelerate", "tokenizers", "numpy"):
        assert environment[name] == metadata.version(name), name
    assert environment["python"] == platform.python_version()
    assert environment["device"] == device and environment["dtype"] == dtype
    assert environment["torch_threads"] >= 1
    assert environment["processes"] == int(os.environ.get("WORLD_SIZE", "1"))
    assert environment["project_version"] == metadata.version("lume-unlearning")


def read_json(path: Path) -> dict:
    return json.loads(path.read_text())


def read_jsonl(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()]


@pytest.fixture(scope="module")
def evaluations(small_world, tmp_path_factory) -> dict[str, Path]:
    """The target and the gold standard evaluated once through the CLI (default data: the world's)."""
    out = {}
    for name in ("target", "gold_standard"):
        folder = tmp_path_factory.mktemp(f"evaluate_{name}")
        assert main(evaluate_args(small_world, small_world.root / name, folder)) == 0
        out[name] = folder
    return out


def test_results_contract_and_generations(small_world, evaluations):
    folder = evaluations["target"]
    results = read_json(folder / "results.json")
    assert CONTRACT_KEYS <= set(results)
    assert {"benchmark", "score"} <= set(results["utility"])
    assert results["utility"]["benchmark"] == "synthetic-multiple-choice"
    assert {split: {task: set(results["terms"][split][task]) for task in TASKS} for split in ("forget", "retain")} \
        == {split: {task: set(KINDS) for task in TASKS} for split in ("forget", "retain")}
    assert results["final_score"] == pytest.approx(
        (results["task_aggregate"] + results["mia_score"] + results["utility"]["score"]) / 3)
    assert {"generation", "mia", "utility", "total"} <= set(results["timings"])
    assert results["evaluated"]["model"] == str(small_world.target)
    assert results["evaluated"]["mia"].endswith("mia_data/validation")
    assert_environment(results["environment"], device="cpu", dtype="float32")
    # Every benchmark item was generated for, once, with its expected output.
    lume = load_lume(small_world.data)
    for split in ("forget", "retain"):
        rows = read_jsonl(folder / f"{split}_generations.jsonl")
        assert [(r["id"], r["task"], r["expected_output"]) for r in rows] == \
            [(i.id, i.task, i.output) for i in lume.split_items(split)]
    mia = read_json(folder / "mia_nll.json")
    assert (len(mia["member"]), len(mia["nonmember"])) == (2, 4)


def test_score_rescores_saved_generations_to_the_same_terms(evaluations, tmp_path):
    folder = evaluations["target"]
    assert main(["score", str(folder), "--out", str(tmp_path / "rescored.json")]) == 0
    original, rescored = read_json(folder / "results.json"), read_json(tmp_path / "rescored.json")
    for key in ("terms", "overall", "aggregated_terms", "counts", "task_aggregate", "mia_auc", "mia_score"):
        assert rescored[key] == original[key], key
    assert_environment(rescored["environment"], device=None, dtype=None)  # no model ran for a re-score


def test_scores_tell_the_target_from_the_gold_standard(evaluations):
    target = read_json(evaluations["target"] / "results.json")
    gold = read_json(evaluations["gold_standard"] / "results.json")
    # The target memorised the MIA members (forget Task3 documents); the gold standard never saw them.
    assert target["mia_auc"] > gold["mia_auc"], (target["mia_auc"], gold["mia_auc"])
    assert target["overall"]["forget"]["regurgitation"] > gold["overall"]["forget"]["regurgitation"]
    # Memorised forget answers drive the target's forget terms (1 - score) down, to 0 for exact answers.
    assert target["task_aggregate"] < gold["task_aggregate"], (target["task_aggregate"], gold["task_aggregate"])


def test_lora_adapter_folder_is_evaluated_as_base_plus_adapter(small_world, evaluations, tmp_path):
    from peft import LoraConfig, get_peft_model

    from utils.evaluation.mia import document_nll
    from utils.models.loading import load_model_and_tokenizer

    base, tokenizer = load_model_and_tokenizer(str(small_world.target))
    torch.manual_seed(0)
    # Random A and B, so the adapter visibly changes the model (the default B = 0 would not).
    lora = LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj"], init_lora_weights=False)
    peft_model = get_peft_model(base, lora)
    peft_model.peft_config["default"].base_model_name_or_path = str(small_world.target)
    adapter = tmp_path / "adapter"
    peft_model.save_pretrained(adapter)
    assert not (adapter / "model.safetensors").exists()

    out = tmp_path / "evaluation"
    assert main(evaluate_args(small_world, adapter, out)) == 0
    results = read_json(out / "results.json")
    assert results["evaluated"]["model"] == str(adapter)
    from utils.data.lume import load_mia_documents

    documents = load_mia_documents(small_world.data / "mia_data" / "validation")
    peft_model.eval()
    expected = document_nll(peft_model, tokenizer, documents["member"], progress=False)
    measured = read_json(out / "mia_nll.json")["member"]
    assert measured == pytest.approx(expected, abs=1e-4)  # merged weights = base + adapter
    unadapted = read_json(evaluations["target"] / "mia_nll.json")["member"]
    assert min(abs(a - b) for a, b in zip(measured, unadapted)) > 1e-3


def test_reevaluating_without_mia_leaves_no_stale_mia_losses(small_world, evaluations, tmp_path):
    folder = tmp_path / "evaluation"
    shutil.copytree(evaluations["target"], folder)
    assert main(evaluate_args(small_world, small_world.gold_standard, folder, "--mia", "none", "--overwrite")) == 0
    assert read_json(folder / "results.json")["mia_auc"] is None
    # The target's member losses must not be re-scored as if they were the gold standard's.
    assert not (folder / "mia_nll.json").exists()
    assert main(["score", str(folder), "--out", str(tmp_path / "rescored.json")]) == 0
    assert read_json(tmp_path / "rescored.json")["mia_auc"] is None


def test_real_validation_files_with_the_small_target(small_world, real_data_dir, tmp_path):
    out = tmp_path / "evaluation"
    assert main(["evaluate", "--model", str(small_world.target), "--data", str(real_data_dir), "--out", str(out),
                 "--subset", "2", "--max-new-tokens", "8", "--set", f"workdir={small_world.root}", "--quiet"]) == 0
    results = read_json(out / "results.json")
    # Two documents per task and split: one sc each, one qa for Task1/Task3, up to five for Task2.
    counts = results["counts"]
    assert all(counts[s][t]["regurgitation"] == 2 for s in ("forget", "retain") for t in TASKS)
    assert all(counts[s][t]["knowledge"] == 2 for s in ("forget", "retain") for t in ("Task1", "Task3"))
    assert results["evaluated"]["mia"] == str(real_data_dir / "mia_data" / "validation")
    assert results["mia_auc"] is not None and 0.0 <= results["mia_auc"] <= 1.0
    assert results["evaluated"]["subset_documents_per_task"] == 2


# --------------------------------------------------------------------------------------------
# Bad input: exit 2, one line on stderr, and an existing results.json untouched.


def run_expecting_user_error(argv: list[str], results: Path, capsys) -> str:
    before = results.read_bytes()
    capsys.readouterr()
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert len(err.splitlines()) == 1 and err.startswith("error: "), err
    assert results.read_bytes() == before
    return err


def make_bad_input(kind: str, world, tmp_path: Path) -> tuple[list[str], str]:
    """(extra arguments for `unlearn evaluate`, a phrase the error must contain)."""
    if kind == "model_without_weights":
        model = tmp_path / "no_weights"
        shutil.copytree(world.target, model, ignore=shutil.ignore_patterns("*.safetensors"))
        return ["--model", str(model)], "has no weights"
    if kind == "unknown_data_layout":
        data = tmp_path / "data"
        data.mkdir()
        (data / "forget.csv").write_text("id,input,output\n")
        return ["--data", str(data)], "no LUME data found"
    if kind == "mia_without_document":
        mia = tmp_path / "mia"
        shutil.copytree(world.data / "mia_data" / "validation", mia)
        rows = read_jsonl(mia / "member.jsonl")
        (mia / "member.jsonl").write_text("".join(json.dumps({"id": r["id"], "text": r["document"]}) + "\n"
                                                  for r in rows))
        return ["--mia", str(mia)], "member.jsonl: row 1 has no 'document' text"
    if kind == "zero_subset":
        return ["--subset", "0"], "must be at least 1 document per task"
    raise AssertionError(kind)


@pytest.mark.parametrize("kind", ["model_without_weights", "unknown_data_layout", "mia_without_document",
                                  "zero_subset"])
def test_evaluate_rejects_bad_input_without_touching_results(kind, small_world, tmp_path, capsys):
    out = tmp_path / "out"
    out.mkdir()
    (out / "results.json").write_text('{"final_score": 0.5}\n')
    extra, phrase = make_bad_input(kind, small_world, tmp_path)
    # Even with --overwrite, bad input is found before anything is written.
    argv = evaluate_args(small_world, small_world.target, out, "--overwrite")
    for flag, value in zip(extra[::2], extra[1::2]):
        if flag in argv:
            argv[argv.index(flag) + 1] = value
        else:
            argv += [flag, value]
    err = run_expecting_user_error(argv, out / "results.json", capsys)
    assert phrase in err
    assert sorted(p.name for p in out.iterdir()) == ["results.json"]


def corrupt_generations(kind: str, folder: Path) -> str:
    forget, retain = folder / "forget_generations.jsonl", folder / "retain_generations.jsonl"
    rows = read_jsonl(forget)
    if kind == "malformed_id":
        rows[3]["id"] = rows[3]["id"][:-3] + "xx1"
        phrase = "line 4: id"
    elif kind == "repeated_id":
        rows[5]["id"] = rows[2]["id"]
        phrase = "line 6 repeats id"
    elif kind == "ids_of_the_other_split":
        rows = read_jsonl(retain)
        phrase = "is in both forget_generations.jsonl and retain_generations.jsonl"
    elif kind == "missing_task":
        rows = [r for r in rows if r["task"] != "Task3"]
        phrase = "the forget set has no sentence-completion (sc) items for Task3"
    else:
        raise AssertionError(kind)
    forget.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return phrase


@pytest.mark.parametrize("kind", ["malformed_id", "repeated_id", "ids_of_the_other_split", "missing_task"])
def test_score_rejects_mismatched_generations_without_touching_results(kind, evaluations, tmp_path, capsys):
    folder = tmp_path / "generations"
    shutil.copytree(evaluations["target"], folder)
    phrase = corrupt_generations(kind, folder)
    # Even with --overwrite (the folder holds an evaluation's results), bad input is found before writing.
    err = run_expecting_user_error(["score", str(folder), "--overwrite"], folder / "results.json", capsys)
    assert phrase in err
