"""Settings around the seed's numerics: the model's own gradient checkpointing (same losses, less memory),
cuBLAS's determinism setting in place before anything can use CUDA, and the precision a notebook's launched
processes really get."""

from __future__ import annotations

import copy
import json
import os
import re
import subprocess
import sys
import textwrap

import pytest
import torch

from methods.engine.trainer import LAUNCHER_PRECISION, Phase, Trainer, launch_precision, nll_loss
from utils.config import AdapterConfig, TrainingConfig
from utils.models.adapters import apply_adapter

from ..conftest import REPO, SENTENCES, pair

pytestmark = pytest.mark.usefixtures("one_thread")


def losses_and_layer_calls(model, tokenizer, adapter: AdapterConfig, checkpointing: bool, tmp_path) -> tuple:
    torch.manual_seed(0)  # the LoRA matrices' initial values
    model = apply_adapter(copy.deepcopy(model), adapter)
    # A module inside the last layer: the layer's forward is what is checkpointed (its own hooks stay outside).
    inner = model.get_decoder().layers[-1].mlp
    calls = []
    inner.register_forward_hook(lambda *args: calls.append(1))
    examples = [pair(tokenizer, s, "retain") for s in SENTENCES]
    log = tmp_path / f"{adapter.kind}-{checkpointing}.jsonl"
    training = TrainingConfig(batch_size=3, learning_rate=1e-2, gradient_checkpointing=checkpointing)
    trainer = Trainer(model, tokenizer, training, nll_loss, log_path=log, progress=False)
    trainer.train_phase(Phase("p", examples, epochs=2, shuffle=True))
    return [json.loads(line)["loss"] for line in log.read_text().splitlines()], len(calls)


@pytest.mark.parametrize("adapter", [AdapterConfig(kind="lora", lora_rank=4, lora_alpha=8),
                                     AdapterConfig(kind="last_k", last_k=1), AdapterConfig(kind="full")],
                         ids=["lora", "last_k", "full"])
def test_gradient_checkpointing_recomputes_the_layers_and_keeps_the_losses(tiny_model, tiny_tokenizer, tmp_path,
                                                                         adapter):
    plain, plain_calls = losses_and_layer_calls(tiny_model, tiny_tokenizer, adapter, False, tmp_path)
    checked, checked_calls = losses_and_layer_calls(tiny_model, tiny_tokenizer, adapter, True, tmp_path)
    assert len(plain) == 4 and plain[0] != plain[-1]  # 4 steps that change the weights
    assert checked == pytest.approx(plain, abs=1e-5)
    # Each step runs the last layer's MLP again in backward: the checkpointing is on, not merely set.
    assert checked_calls == 2 * plain_calls


def test_cublas_is_set_up_when_the_entry_point_is_imported():
    """cuBLAS reads its workspace setting when CUDA first runs a product: the entry point and the library set
    it at import, before any model can reach a GPU; a value the user set is kept."""
    script = textwrap.dedent("""
        import os, sys
        assert "CUBLAS_WORKSPACE_CONFIG" not in os.environ
        from lume_unlearning.cli import main
        try:
            main(["--help"])
        except SystemExit:
            pass
        import torch
        print("VALUE", os.environ.get("CUBLAS_WORKSPACE_CONFIG"), "CUDA", torch.cuda.is_initialized())
    """)
    env = {k: v for k, v in os.environ.items() if k != "CUBLAS_WORKSPACE_CONFIG"}
    done = subprocess.run([sys.executable, "-c", script], cwd=REPO, env=env, capture_output=True, text=True,
                          timeout=120, check=False)
    assert done.returncode == 0, done.stderr[-2000:]
    assert "VALUE :4096:8 CUDA False" in done.stdout
    kept = subprocess.run([sys.executable, "-c", "import os, utils; print(os.environ['CUBLAS_WORKSPACE_CONFIG'])"],
                          cwd=REPO, env={**env, "CUBLAS_WORKSPACE_CONFIG": ":16:8"}, capture_output=True, text=True,
                          timeout=120, check=False)
    assert kept.stdout.strip() == ":16:8", kept.stderr[-2000:]


def test_notebook_launcher_leaves_the_precision_to_the_config():
    """accelerate's notebook_launcher exports its mixed_precision as MIXED_PRECISION, which the Accelerator does
    not read: its processes see no ACCELERATE_MIXED_PRECISION, so make_accelerator gives them the config's."""
    script = textwrap.dedent("""
        import os
        import sys
        from accelerate import notebook_launcher

        def report():
            # One write per line: the two processes share the pipe, and print's separate writes interleave.
            sys.stdout.write(f"RANK {os.environ['RANK']} {os.environ.get('ACCELERATE_MIXED_PRECISION')} "
                             f"{os.environ.get('MIXED_PRECISION')}\\n")
            sys.stdout.flush()

        notebook_launcher(report, num_processes=2, mixed_precision="fp16")
    """)
    env = {k: v for k, v in os.environ.items() if k != LAUNCHER_PRECISION}
    done = subprocess.run([sys.executable, "-c", script], cwd=REPO, env=env, capture_output=True, text=True,
                          timeout=300, check=False)
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-2000:]
    lines = sorted(re.findall(r"RANK \d+ \S+ \S+", done.stdout))
    assert lines == ["RANK 0 None fp16", "RANK 1 None fp16"]
    # What such a process's make_accelerator then chooses on a GPU: training.mixed_precision, with no note.
    assert launch_precision("bf16", {"MIXED_PRECISION": "fp16"}, cuda=True) == ("bf16", "")
