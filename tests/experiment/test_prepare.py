"""`unlearn prepare` on the small world: what it builds, that the target memorised what the gold standard
never saw, that every stage is cached by its inputs, and that the tokenizer never saw the forget set."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from utils.data.lume import load_lume
from utils.experiment.world import prepare, read_texts
from utils.models.loading import load_model_and_tokenizer, load_tokenizer, train_tokenizer

pytestmark = pytest.mark.usefixtures("one_thread")

STAGES = ("data", "tokenizer", "pretrained", "target", "gold_standard")


def snapshot(root: Path) -> dict:
    """What a rebuild would change: each stage folder's inode and mtime (AtomicDirectory swaps in a new
    folder), its stage.json, and the size of every training log."""
    out = {}
    for stage in STAGES:
        folder = root / stage
        stat = folder.stat()
        out[stage] = (stat.st_ino, stat.st_mtime_ns, (folder / "stage.json").read_text())
    for log in sorted((root / "logs").glob("*.jsonl")):
        out[f"logs/{log.name}"] = log.stat().st_size
    out["report"] = (root / "prepare_report.json").read_text()
    return out


def test_world_layout_models_and_report_contract(small_world):
    root = small_world.root
    for stage in STAGES:
        assert (root / stage / "stage.json").is_file(), stage
    for name in ("target", "gold_standard"):
        model, tokenizer = load_model_and_tokenizer(str(root / name))
        assert type(model).__name__ == "Olmo2ForCausalLM"
        assert model.config.hidden_size == 64 and model.config.num_hidden_layers == 2
        assert model.get_input_embeddings().num_embeddings == len(tokenizer)
    report = json.loads((root / "prepare_report.json").read_text())
    assert report == small_world.report
    from ..cli.test_evaluate_cli import assert_environment

    assert_environment(report["environment"], device="cpu", dtype="float32")
    for name in ("target", "gold_standard"):
        assert set(report[name]) >= {"forget", "retain", "utility", "utility_benchmark"}
        for split in ("forget", "retain"):
            scores = report[name][split]
            assert {"regurgitation", "knowledge"} <= set(scores)
            assert 0.0 <= scores["regurgitation"] <= 1.0 and 0.0 <= scores["knowledge"] <= 1.0
        assert report[name]["utility_benchmark"] == "synthetic-multiple-choice"  # never called MMLU
    # Each stage's training log holds exactly the steps its stage.json reports.
    for name, log in (("pretrained", "pretrain"), ("target", "target"), ("gold_standard", "gold_standard")):
        steps = json.loads((root / name / "stage.json").read_text())["steps"]
        assert len((root / "logs" / f"{log}.jsonl").read_text().splitlines()) == steps, name


def test_target_memorised_the_forget_set_and_the_gold_standard_did_not(small_world):
    """With margin, so no library release's numerics can tip it: the target reproduces its forget set, the
    gold standard (never trained on it) does not, and both keep the retain set."""
    target, gold = small_world.report["target"], small_world.report["gold_standard"]
    assert target["forget"]["regurgitation"] >= 0.9 and target["forget"]["knowledge"] >= 0.9, target
    assert gold["forget"]["regurgitation"] <= 0.3 and gold["forget"]["knowledge"] <= 0.2, gold
    for model in (target, gold):
        assert model["retain"]["regurgitation"] >= 0.9 and model["retain"]["knowledge"] >= 0.9, model
    # The gold standard finds the forget answers far less likely than the target does.
    assert gold["forget"]["output_nll"] > target["forget"]["output_nll"] + 2.0, (target, gold)


def test_second_prepare_with_the_same_config_reuses_everything(small_world):
    before = snapshot(small_world.root)
    messages = []
    report = prepare(small_world.config(), out=small_world.root, progress=False, log=messages.append)
    assert snapshot(small_world.root) == before
    assert report == small_world.report
    assert messages == [f"[prepare] everything is up to date in {small_world.root}"]


def test_changing_gold_standard_epochs_rebuilds_only_the_gold_standard(small_world, tmp_path):
    root = tmp_path / "world"
    shutil.copytree(small_world.root, root)
    before = snapshot(root)
    messages = []
    report = prepare(small_world.config("prepare.gold_standard.epochs=3"), out=root, progress=False,
                     log=messages.append)
    after = snapshot(root)
    changed = {key for key in before if before[key] != after[key]}
    assert changed == {"gold_standard", "logs/gold_standard.jsonl", "report"}
    assert [m for m in messages if "training" in m] == [
        "[prepare] training the gold standard on 20 items + the general question drill"]
    stage = json.loads((root / "gold_standard" / "stage.json").read_text())
    # 20 retain items + 8 drill lines in batches of 8: 4 steps an epoch; the log restarted, not appended.
    assert stage["steps"] == 12
    assert len((root / "logs" / "gold_standard.jsonl").read_text().splitlines()) == 12
    assert report["target"] == small_world.report["target"]
    assert report["gold_standard"] != small_world.report["gold_standard"]


def test_tokenizer_was_trained_without_the_forget_set(small_world):
    root = small_world.root
    lume = load_lume(root / "data")
    general = read_texts(root / "data" / "general" / "corpus.jsonl") + read_texts(
        root / "data" / "general" / "qa_drill.jsonl")
    saved = load_tokenizer(str(root / "tokenizer")).get_vocab()
    without_forget = train_tokenizer([i.training_text for i in lume.retain] + general, 600).get_vocab()
    with_forget = train_tokenizer([i.training_text for i in lume.forget + lume.retain] + general, 600).get_vocab()
    # BPE training is deterministic, and the forget set would have changed the merges: so equality with
    # the retain + general tokenizer shows the forget text was left out.
    assert with_forget != without_forget
    assert saved == without_forget


def test_training_options_added_later_leave_existing_cache_keys_alone():
    from utils.config import TrainingConfig
    from utils.experiment.world import LATER_TRAINING_SETTINGS, stable_hash, training_key

    plain = training_key(TrainingConfig())
    assert not set(LATER_TRAINING_SETTINGS) & set(plain)  # at their neutral values: not in the key
    grouped = training_key(TrainingConfig(group_by_length=True))
    assert grouped["group_by_length"] is True and stable_hash(grouped) != stable_hash(plain)
    assert stable_hash(training_key(TrainingConfig(max_micro_batch_tokens=512))) != stable_hash(plain)


def test_a_new_training_setting_at_its_neutral_value_keeps_cached_worlds_valid():
    """The world's cache key holds the training settings worlds were first built with; every setting added
    since must be listed in LATER_TRAINING_SETTINGS at its neutral value, or every cached world rebuilds."""
    from dataclasses import asdict

    from utils.config import TrainingConfig
    from utils.experiment.world import LATER_TRAINING_SETTINGS, training_key

    first = {"batch_size", "epochs", "gradient_accumulation_steps", "learning_rate", "loss_on", "lr_schedule",
             "max_grad_norm", "max_length", "mixed_precision", "seed", "warmup_steps", "weight_decay"}
    assert set(asdict(TrainingConfig())) - set(LATER_TRAINING_SETTINGS) == first
    assert set(training_key(TrainingConfig())) == first
    assert {key: asdict(TrainingConfig())[key] for key in LATER_TRAINING_SETTINGS} == LATER_TRAINING_SETTINGS
