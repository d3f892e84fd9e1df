"""benchmarks/rehearsal.py end to end at `--dims tiny`: an OlmoForCausalLM with the real OLMo tokenizer and
vocabulary but 8 layers of width 64, run through one LoRA config (olmo-1b/ga.yaml) and one last-k config
(olmo-1b/sugd.yaml): 2 steps, checkpoint, resume, save, reload, generate. Skipped where the real tokenizer
has not been fetched (`python scripts/olmo_assets.py`)."""

from __future__ import annotations

import json

import pytest

from utils.data import olmo_assets

from ..conftest import torch_threads

HIDDEN, LAYERS, MLP = 64, 8, 128  # the tiny dimensions, stated again here so the counts are independent


def lora_parameters(rank: int, modules: dict[str, tuple[int, int]], layers: int) -> int:
    """A and B of every adapted (in, out) projection: rank x (in + out) each, in every layer."""
    return layers * sum(rank * (fan_in + fan_out) for fan_in, fan_out in modules.values())


def layer_parameters(hidden: int, mlp: int) -> int:
    """One OLMo 1 decoder layer: q, k, v, o (hidden x hidden), gate, up, down (hidden x mlp), no bias, and
    layer norms without weights."""
    return 4 * hidden * hidden + 3 * hidden * mlp


@pytest.fixture(scope="module")
def rehearsal():
    if olmo_assets.find_assets() is None:
        pytest.skip(olmo_assets.missing_reason())
    from benchmarks import rehearsal

    return rehearsal


def run(rehearsal, tmp_path, *extra: str) -> tuple[int, dict]:
    out = tmp_path / "out"
    argv = ["--dims", "tiny", "--out", str(out), "--scratch", str(tmp_path / "scratch"), "--max-new-tokens", "4",
            "--threads", "1", *extra]
    with torch_threads(1):
        code = rehearsal.main(argv, log=lambda *args, **kwargs: None)
    return code, json.loads((out / "rehearsal.json").read_text())


def test_a_lora_and_a_last_k_config_rehearse_end_to_end(rehearsal, tmp_path):
    code, report = run(rehearsal, tmp_path, "--configs", "ga,sugd")
    assert code == 0
    rows = {row["method"]: row for row in report["rows"]}
    assert set(rows) == {"ga", "sugd"}
    assert report["dims"]["num_layers"] == LAYERS and report["environment"]["torch"]
    expected = {
        # configs/olmo-1b/baseline.yaml: LoRA r16 on q, v, up, down
        "ga": lora_parameters(16, {"q_proj": (HIDDEN, HIDDEN), "v_proj": (HIDDEN, HIDDEN),
                                   "up_proj": (HIDDEN, MLP), "down_proj": (MLP, HIDDEN)}, LAYERS),
        # configs/olmo-1b/sugd_training.yaml: the last 8 decoder layers, whole
        "sugd": 8 * layer_parameters(HIDDEN, MLP),
    }
    for method, row in rows.items():
        assert row["status"] == "ok", row.get("traceback")
        assert row["trainable_parameters"] == expected[method]
        assert row["steps"] == 2 and len(row["step_seconds"]) == 2 and row["seconds_per_step"] > 0
        assert row["resume"] == "match" and row["resume_logit_gap"] == 0.0
        assert row["reload_and_generate"] == "ok" and len(row["generated_ids"]) == 2
        assert isinstance(row["generation_1"], str) and isinstance(row["generation_2"], str)
        # The checkpoint is the trainable tensors and little else: 2 bytes each in bf16, 4 in float32.
        width = {"bfloat16": 2, "float32": 4}[row["trainable_dtype"]]
        assert width <= row["checkpoint_bytes_per_trainable"] < width * 1.1
        # The kernel's peak (ru_maxrss) and the sampled /proc peak count pages slightly differently (a run
        # here had the sampled one 160 KB above): the same peak within 1%.
        assert row["process_peak_rss_bytes"] >= 0.99 * row["peak_rss_bytes"]
        assert row["peak_rss_bytes"] > row["parameter_bytes"] > 0
    assert rows["ga"]["adapter"] == "lora" and rows["sugd"]["adapter"] == "last_k"
    assert 0 < rows["ga"]["moved_share"] <= 1  # training changed the adapter
    written = (tmp_path / "out" / "rehearsal.md").read_text()
    assert "| ga.yaml | ga | lora | ok |" in written and "tie_word_embeddings" in written
    assert (tmp_path / "out" / "rehearsal.csv").read_text().count("\n") == 3


def test_a_config_the_model_cannot_take_is_a_failed_row(rehearsal, tmp_path):
    """Last 8 layers of a 2-layer model: the project refuses it, the table says so, the exit code is 1."""
    code, report = run(rehearsal, tmp_path, "--configs", "sugd", "--layers", "2", "--in-process")
    assert code == 1
    (row,) = report["rows"]
    assert row["status"].startswith("failed at adapter: UserError: adapter.last_k must be between 1 and 2")
    assert "failed at adapter" in (tmp_path / "out" / "rehearsal.md").read_text()
