"""training.sharding: fsdp (torch's FSDP2 over gloo) on 2 CPU processes: the same training as one process,
checkpoints of full tensors, a resume into a sharded run, and the final model evaluated."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
from safetensors.torch import load_file

from methods.engine.trainer import Trainer, nll_loss
from utils.config import TrainingConfig
from utils.errors import UserError

from ..conftest import REPO
from ..experiment.test_run import CONFIG, ENV, RUN_OVERRIDES, free_port, read_jsonl, run_args

# The last decoder layer trains whole (the case sharding is for), 5 phases of 4 steps at a global batch of 4.
SHARDED = ("adapter.kind=last_k", "adapter.last_k=1", "training.batch_size=4", "training.learning_rate=1e-2",
           "training.report_to=none", "training.sharding=fsdp")


def launch_two(args: list[str]) -> subprocess.CompletedProcess:
    completed = subprocess.run(
        [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_addr", "127.0.0.1",
         "--master_port", str(free_port()), "-m", "utils.cli", *args],
        check=False, cwd=REPO, env=ENV, capture_output=True, text=True, timeout=600)
    assert completed.returncode == 0, completed.stdout[-3000:] + completed.stderr[-3000:]
    return completed


def relative_gap(a: dict, b: dict, start: dict) -> float:
    """Largest difference of two runs' weights over the size of what training changed (b - start)."""
    return max(float((a[k] - b[k]).norm() / (b[k] - start[k]).norm()) for k in b)


@pytest.fixture(scope="module")
def single_run(small_world, tmp_path_factory):
    """The same config on one process (where sharding has nothing to split), uninterrupted."""
    from utils.cli.main import main

    out = tmp_path_factory.mktemp("single") / "run"
    assert main(run_args(small_world, out, *SHARDED)) == 0
    return out


def test_a_sharded_run_on_two_processes_trains_and_evaluates_as_one_process(small_world, single_run, tmp_path):
    sharded = tmp_path / "fsdp"
    completed = launch_two(run_args(small_world, sharded, *SHARDED))
    assert "weights, gradients and optimiser state split over 2 processes" in completed.stdout
    target = load_file(small_world.target / "model.safetensors")
    # The checkpoint holds full tensors (not shards) of the trainable layer only.
    weights = load_file(sharded / "checkpoint" / "trainable.safetensors")
    single_weights = load_file(single_run / "checkpoint" / "trainable.safetensors")
    assert sorted(weights) == sorted(single_weights) and all(n.startswith("model.layers.1.") for n in weights)
    assert all(weights[n].shape == target[n].shape for n in weights)
    # The same training: what moved differs by under 5% of how far it moved (fp sums over 2 shards).
    trained = {n: t for n, t in target.items() if n in weights}
    assert relative_gap(weights, single_weights, trained) < 0.05
    assert [r["loss"] for r in read_jsonl(sharded / "log.jsonl")] == pytest.approx(
        [r["loss"] for r in read_jsonl(single_run / "log.jsonl")], abs=1e-4)
    # The final model is saved whole and was evaluated (on both processes, each its share).
    model = load_file(sharded / "model" / "model.safetensors")
    assert sorted(model) == sorted(target)
    assert relative_gap({n: model[n] for n in weights}, single_weights, trained) < 0.05
    results, single_results = (json.loads((d / "results.json").read_text()) for d in (sharded, single_run))
    assert results["utility"]["score"] > 0 and results["mia_auc"] is not None
    assert results["utility"]["score"] == pytest.approx(single_results["utility"]["score"], abs=0.15)
    assert read_jsonl(sharded / "before.json") == [pytest.approx(read_jsonl(single_run / "before.json")[0],
                                                                 abs=1e-6)]
    assert len(read_jsonl(sharded / "phases.jsonl")) == 5


def test_a_sharded_run_resumes_from_a_checkpoint_to_the_uninterrupted_weights(small_world, single_run, tmp_path):
    from utils.experiment import Experiment

    resumed = tmp_path / "resumed"
    # Stopped after 2 of 5 phases on one process, then resumed on two, sharded.
    overrides = [*small_world.overrides, f"workdir={small_world.root}", *RUN_OVERRIDES, *SHARDED]
    assert Experiment.from_config(str(CONFIG), overrides, resumed).run(
        progress=False, evaluate=False, stop_after_phases=2, log=lambda _: None) == {"stopped_after_phase": 2}
    launch_two(run_args(small_world, resumed, *SHARDED, flags=("--resume", "--no-eval")))
    target = load_file(small_world.target / "model.safetensors")
    single_weights = load_file(single_run / "checkpoint" / "trainable.safetensors")
    weights = load_file(resumed / "checkpoint" / "trainable.safetensors")
    assert relative_gap(weights, single_weights, {n: target[n] for n in weights}) < 0.05
    # 5 phases of 2 steps (8 examples at a global batch of 4): 4 before the stop, 6 after it.
    assert [r["global_step"] for r in read_jsonl(resumed / "log.jsonl")] == list(range(1, 11))


def test_sharding_refuses_lora_in_one_line(tiny_model, tiny_tokenizer):
    from utils.config import AdapterConfig
    from utils.models.adapters import apply_adapter

    class TwoProcesses:
        num_processes, process_index, is_main_process, distributed_type = 2, 0, True, "MULTI_CPU"

    lora = apply_adapter(tiny_model, AdapterConfig(kind="lora", lora_rank=2, target_modules=["q_proj"]))
    with pytest.raises(UserError, match="training.sharding: fsdp shards full and last-k training"):
        Trainer(lora, tiny_tokenizer, TrainingConfig(sharding="fsdp"), nll_loss, accelerator=TwoProcesses(),
                progress=False)
