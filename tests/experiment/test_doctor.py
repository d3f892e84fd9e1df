"""`unlearn doctor`: the memory estimate (by hand and against the recorded rehearsal) and the checks."""

from __future__ import annotations

import json

import pytest

from benchmarks import common
from utils.cli.main import main
from utils.config import load_config
from utils.experiment import doctor
from utils.experiment import footprint as fp

GIB = 2**30


def test_known_shapes_give_the_organisers_parameter_counts():
    one_b = fp.known_shape("llmunlearningsemeval2025organization/olmo-1B-model-semeval25-unlearning")
    seven_b = fp.known_shape("llmunlearningsemeval2025organization/olmo-finetuned-semeval25-unlearning")
    # OLMo-1B: the rehearsal's model has exactly this many parameters (tied embeddings, no norm weights).
    assert one_b.parameters() == 1_176_764_416
    # OLMo-7B: 32 x (4 x 4096^2 + 3 x 4096 x 11008) + 2 x 50304 x 4096 (untied).
    assert seven_b.parameters() == 32 * (4 * 4096**2 + 3 * 4096 * 11008) + 2 * 50304 * 4096


def test_estimate_parts_by_hand():
    shape = fp.ModelShape(layers=4, hidden=8, intermediate=16, vocab=10, heads=2, kv_heads=2, tied=True)
    layer = 4 * 8 * 8 + 3 * 8 * 16  # 640
    assert shape.parameters() == 80 + 4 * layer
    config = load_config(None, ["model.name_or_path=/x", "model.dtype=bfloat16", "adapter.kind=last_k",
                                "adapter.last_k=2", "training.master_weights=auto"])
    f = fp.estimate(shape, config, fp.StepShape(0), 1, cpu=False, on_gpu=False)
    trainable = 2 * layer
    assert f.trainable_parameters == trainable
    assert f.parts["weights"] == 2 * shape.parameters()
    assert f.parts["master copies"] == 4 * trainable
    assert f.parts["optimiser"] == 2 * 4 * trainable
    assert f.parts["gradients"] == 2 * trainable and f.parts["fp32 gradients"] == 4 * trainable
    # No tokens: the step (fp32 gradients) is larger than the backward (bf16 gradients).
    assert f.peak == 2 * shape.parameters() + 12 * trainable + 4 * trainable
    assert f.checkpoint_bytes == 2 * trainable
    # master_weights none: AdamW's states take the weights' bf16, no copies.
    none = fp.estimate(shape, load_config(None, ["model.name_or_path=/x", "model.dtype=bfloat16", "adapter.kind=last_k",
                                                 "adapter.last_k=2", "training.master_weights=none"]),
                       fp.StepShape(0), 1, on_gpu=False)
    assert none.parts["master copies"] == 0 and none.parts["optimiser"] == 2 * 2 * trainable
    # fsdp on 4 processes divides weights, gradients and optimiser state.
    sharded = fp.estimate(shape, load_config(None, ["model.name_or_path=/x", "model.dtype=bfloat16", "adapter.kind=full",
                                                    "training.sharding=fsdp"]), fp.StepShape(0), 4, on_gpu=False)
    assert sharded.parts["weights"] == 2 * shape.parameters() // 4
    # LoRA: r x (in + out) per adapted module and layer; OLMo-1B r16 on q, v, up, down = the rehearsal's count.
    lora = load_config(None, ["model.name_or_path=/x"])
    one_b = fp.known_shape("allenai/OLMo-1B-0724-hf")
    assert fp.trainable_parameters(one_b, lora.adapter)[0] == 7_340_032


def test_gradient_checkpointing_shrinks_activations():
    shape = fp.known_shape("allenai/OLMo-1B-0724-hf")
    config = load_config(None, ["model.name_or_path=/x", "model.dtype=bfloat16"])
    plain = fp.estimate(shape, config, fp.StepShape(2048), 1, on_gpu=False)
    config.training.gradient_checkpointing = True  # read with getattr: works before the key exists
    checkpointed = fp.estimate(shape, config, fp.StepShape(2048), 1, on_gpu=False)
    assert checkpointed.parts["activations"] < plain.parts["activations"] / 4


@pytest.mark.skipif(not (common.REAL_DATA / "data").is_dir(), reason="the real LUME validation split is not in ../shared")
def test_estimate_within_15_percent_of_the_recorded_rehearsal():
    from benchmarks.doctor_estimate import RECORDED, estimates
    from utils.data.olmo_assets import find_assets

    if find_assets() is None:
        pytest.skip("the OLMo tokenizer is not extracted (python scripts/olmo_assets.py)")
    recorded = [path for path in RECORDED if path.is_file()]
    rows = estimates(recorded)
    assert len(rows) == sum(len([r for r in json.loads(p.read_text())["rows"] if r["status"] == "ok"]) for p in recorded)
    assert len(rows) >= 8
    for row in rows:
        assert 0.85 <= row["ratio"] <= 1.15, row["config"]


@pytest.fixture()
def no_gpu_no_hub(monkeypatch):
    """This machine as the tests assume it: no GPU, and a hub endpoint that refuses at once."""
    from huggingface_hub import constants

    monkeypatch.setattr(doctor, "local_gpus", list)
    monkeypatch.setattr(constants, "ENDPOINT", "http://127.0.0.1:9")
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)


def test_olmo_7b_on_this_machine_fails_naming_the_gpu_and_the_hub(no_gpu_no_hub, capsys, tmp_path):
    code = main(["doctor", "configs/olmo-7b/sugd.yaml", "--out", str(tmp_path / "run")])
    out = capsys.readouterr().out
    assert code == 2
    rows = {line.split()[0]: line for line in out.splitlines()[1:] if line and not line[0].isdigit()}
    assert " FAIL " in rows["accelerator"] and "no GPU" in rows["accelerator"]
    assert " FAIL " in rows["model"] and "not reachable" in rows["model"]
    assert "llmunlearningsemeval2025organization/olmo-finetuned-semeval25-unlearning" in rows["model"]
    assert "known shape" in rows["accelerator"]
    assert "check(s) failed: accelerator, model" in out


def test_launch_rows():
    lora_fsdp = load_config(None, ["training.sharding=fsdp"])
    assert [r.status for r in doctor.check_launch(lora_fsdp, 2, 2)] == ["FAIL"]
    uneven = load_config(None, ["training.batch_size=6"])
    (row,) = doctor.check_launch(uneven, 4, 4)
    assert row.status == "warn" and "not divisible" in row.detail
    bf16_cpu = load_config(None, ["training.mixed_precision=bf16"])
    assert "ignored on a CPU" in doctor.check_launch(bf16_cpu, 1, 0)[0].detail
    assert doctor.check_launch(load_config(None), 2, 2)[0].status == "ok"


def test_collective_timeout_row():
    footprint = fp.Footprint(checkpoint_bytes=10 * 2**20, model_bytes=100 * GIB)
    row = doctor.timeout_row(footprint, 8)
    # 100 GiB at 50 MiB/s is 2048 s, past NCCL's 600 s default.
    assert row.status == "FAIL" and "final model" in row.detail
    assert doctor.timeout_row(footprint, 1).status == "ok"


def test_a_prepared_world_passes_the_reachability_rows(small_world, no_gpu_no_hub, capsys, tmp_path):
    overrides = [*small_world.overrides, f"workdir={small_world.root}"]
    code = main(["doctor", "configs/gd.yaml", "--out", str(tmp_path / "run"),
                 *[arg for override in overrides for arg in ("--set", override)]])
    out = capsys.readouterr().out
    rows = {line.split()[0]: line.split()[1] for line in out.splitlines()[1:] if line and not line[0].isdigit()}
    assert {rows[name] for name in ("model", "tokenizer", "data", "mia", "utility", "disk")} == {"ok"}, out
    assert rows["accelerator"] == "ok" and code == 0, out


@pytest.mark.parametrize("argv, words", [
    (["doctor", "configs/no-such.yaml"], "not found"),
    (["doctor", "configs/gd.yaml", "--processes", "0"], "--processes must be at least 1"),
])
def test_bad_input_is_one_line(argv, words, capsys):
    assert main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and words in err
