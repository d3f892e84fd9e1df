"""The OLMo-shaped world (configs/olmo-shaped/world.yaml): OlmoForCausalLM with the real OLMo tokenizer.

On it the project's evaluation and an independent loop written the way the official scorer works (one
item at a time, the prompt tokenised with default special tokens, greedy `generate`, the new tokens
decoded with `skip_special_tokens=True` and the space clean-up, a loss forward per MIA document) give
the same generations, the same 12 terms and the same MIA AUC. Skipped where the real tokenizer has not
been fetched (`python scripts/olmo_assets.py`).
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from utils.data import olmo_assets

from ..conftest import SMALL_WORLD_OVERRIDES, torch_threads

REPO = Path(__file__).resolve().parents[2]
# Few epochs: these tests need the real tokenizer and architecture, not a model that memorised much.
QUICK_WORLD = [*SMALL_WORLD_OVERRIDES, "prepare.target.epochs=4", "prepare.gold_standard.epochs=4",
               "evaluation.max_new_tokens=24"]


@pytest.fixture(scope="module")
def olmo_world(tmp_path_factory):
    if olmo_assets.find_assets() is None:
        pytest.skip(olmo_assets.missing_reason())
    from utils.experiment import Experiment

    root = tmp_path_factory.mktemp("olmo_shaped")
    experiment = Experiment.from_config(REPO / "configs" / "olmo-shaped" / "world.yaml", [*QUICK_WORLD, f"workdir={root}"])
    with torch_threads(1):
        report = experiment.prepare(progress=False, log=lambda _: None)
    return experiment, report


def test_the_world_is_olmo_1_with_the_real_tokenizer(olmo_world):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    experiment, report = olmo_world
    for name in ("pretrained", "target", "gold_standard"):
        folder = experiment.workdir / name
        config = json.loads((folder / "config.json").read_text())
        assert config["model_type"] == "olmo" and config["architectures"] == ["OlmoForCausalLM"]
        assert (config["vocab_size"], config["eos_token_id"], config["pad_token_id"]) == (50304, 50279, 1)
        assert config.get("bos_token_id") is None
    tokenizer = AutoTokenizer.from_pretrained(experiment.target)
    assert len(tokenizer) == 50280 and tokenizer.bos_token_id is None
    model = AutoModelForCausalLM.from_pretrained(experiment.target)
    assert type(model).__name__ == "OlmoForCausalLM"
    assert 0.0 <= report["target"]["forget"]["regurgitation"] <= 1.0


def test_the_official_way_and_unlearn_evaluate_agree(olmo_world):
    from benchmarks.eval_speed import official_style
    from utils.evaluation.metrics import aggregated_term_names

    experiment, _ = olmo_world
    model, tokenizer = experiment.load(experiment.target)
    lume = experiment.lume()
    _, mia_documents, _ = experiment.mia()
    with torch_threads(1):
        ours = experiment.evaluate(model, tokenizer, progress=False)
        official = official_style(model, tokenizer, lume.forget + lume.retain, experiment.config.evaluation.max_new_tokens,
                                  mia_documents)
    outputs = [row["model_output"] for split in ("forget", "retain") for row in ours.generations[split]]
    assert outputs == official["outputs"]
    assert any(output.strip() for output in outputs)  # the comparison is not between empty strings
    names = aggregated_term_names()
    flat = [ours.results["terms"][s][t][k] for s, t, k in (n.split("/") for n in names)]
    theirs = [official["terms"][s][t][k] for s, t, k in (n.split("/") for n in names)]
    assert flat == theirs
    assert ours.results["mia_auc"] == pytest.approx(official["mia_auc"], abs=1e-12)
