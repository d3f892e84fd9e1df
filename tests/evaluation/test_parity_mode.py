"""`evaluation.parity: strict`: the evaluation generates and takes the MIA losses one item at a time, as the
official scorer did, so its numbers cannot depend on which items shared a padded batch.

On the OLMo-shaped world (OlmoForCausalLM with the real OLMo tokenizer) cast to bf16, where batching flips
near-tie tokens, strict mode's generations equal a loop written the official way item for item, its 12 terms
equal that loop's, and its MIA NLLs are the official per-document losses themselves. Skipped where the real
tokenizer has not been fetched (`python scripts/olmo_assets.py`).
"""

from __future__ import annotations

import json
import re
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch

from utils.data import olmo_assets
from utils.errors import UserError

from ..cli.test_cli_consistency import captured_config  # noqa: F401 (a fixture, used by name)
from ..conftest import torch_threads
from ..models.test_olmo_shaped import QUICK_WORLD

REPO = Path(__file__).resolve().parents[2]
WORLD = REPO / "configs" / "olmo-shaped" / "world.yaml"


@pytest.fixture(scope="module")
def stand_in(tmp_path_factory):
    """(experiment, bf16 model, tokenizer): a randomly initialised OlmoForCausalLM with the real OLMo tokenizer,
    saved in `<workdir>/model` and loaded back in bf16 as every command loads a checkpoint, and the small
    mini-LUME, in strict mode. Random weights at the default initialisation give a different text for every
    prompt (a model trained for a test's budget from scratch repeats one token), and in bf16 their logits hold
    near-ties that batching flips."""
    if olmo_assets.find_assets() is None:
        pytest.skip(olmo_assets.missing_reason())
    from utils.config import load_config
    from utils.data.synthetic import generate_mini_lume
    from utils.experiment import Experiment
    from utils.experiment.world import given_tokenizer
    from utils.models.loading import build_tiny_model, load_tokenizer, save_model

    root = tmp_path_factory.mktemp("parity_mode")
    overrides = [*QUICK_WORLD, f"workdir={root}", "evaluation.utility=none", "evaluation.parity=strict",
                 "model.dtype=bfloat16"]
    config = load_config(WORLD, overrides)
    generate_mini_lume(root / "data", config.synthetic)
    tokenizer = load_tokenizer(str(given_tokenizer(config.model.tiny.tokenizer)))
    tiny = config.model.tiny
    model = build_tiny_model(tokenizer, tiny.hidden_size, tiny.num_layers, tiny.num_heads, tiny.intermediate_size,
                             tiny.max_position_embeddings, seed=0, architecture=tiny.architecture)
    assert type(model).__name__ == "OlmoForCausalLM" and len(tokenizer) == 50280
    save_model(model, tokenizer, root / "model")
    experiment = Experiment.from_config(WORLD, overrides)
    return experiment, *experiment.load(str(root / "model"))


def official_nll(model, tokenizer, documents: list[str]) -> list[float]:
    """The official MIA loss, written out: each document alone, `model(**ids, labels=input_ids).loss`."""
    device = next(model.parameters()).device
    values = []
    with torch.inference_mode():
        for document in documents:
            ids = tokenizer(document, return_tensors="pt").to(device)
            values.append(float(model(**ids, labels=ids["input_ids"]).loss))
    return values


def test_strict_mode_is_the_official_loop_in_bf16(stand_in, tmp_path):
    from benchmarks.eval_speed import official_style
    from utils.evaluation.metrics import aggregated_term_names

    experiment, model, tokenizer = stand_in
    lume = experiment.lume()
    _, mia_documents, _ = experiment.mia()
    with torch_threads(1):
        ours = experiment.evaluate(model, tokenizer, tmp_path / "strict", progress=False)
        official = official_style(model, tokenizer, lume.forget + lume.retain,
                                  experiment.config.evaluation.max_new_tokens)
        nll = {name: official_nll(model, tokenizer, mia_documents[name]) for name in ("member", "nonmember")}
    assert next(model.parameters()).dtype == torch.bfloat16  # evaluated in the precision it was given

    outputs = [row["model_output"] for split in ("forget", "retain") for row in ours.generations[split]]
    assert len(outputs) == len(official["outputs"]) == 40
    for index, (mine, theirs) in enumerate(zip(outputs, official["outputs"])):
        assert mine == theirs, f"item {index}: {mine!r} != {theirs!r}"
    assert len(set(outputs)) >= 30  # not a comparison of empty or repeated strings

    names = aggregated_term_names()
    flat = [ours.results["terms"][s][t][k] for s, t, k in (n.split("/") for n in names)]
    assert flat == [official["terms"][s][t][k] for s, t, k in (n.split("/") for n in names)]
    assert ours.mia_nll == nll  # the official losses themselves, not a recomputation within rounding

    written = json.loads((tmp_path / "strict" / "results.json").read_text())
    assert written["evaluated"]["parity"] == "strict"


def test_the_default_is_batched_and_recorded(stand_in):
    from utils.config import EvaluationConfig
    from utils.experiment import Experiment

    assert EvaluationConfig().parity == "batched"
    experiment, model, tokenizer = stand_in
    overrides = [*QUICK_WORLD, f"workdir={experiment.workdir}", "evaluation.subset=1", "data.mia_path=none",
                 "evaluation.utility=none", "model.dtype=bfloat16"]
    with torch_threads(1):
        results = Experiment.from_config(WORLD, overrides).evaluate(model, tokenizer, progress=False).results
    assert results["evaluated"]["parity"] == "batched"


def test_parity_flag_reaches_its_key_and_a_bad_mode_is_refused(captured_config, tmp_path):  # noqa: F811
    from utils.config import load_config
    from utils.evaluation.generation import generate

    assert captured_config("--parity", "strict")["config"].evaluation.parity == "strict"
    assert captured_config()["config"].evaluation.parity == "batched"
    with pytest.raises(UserError, match="evaluation.parity"):
        load_config(None, ["evaluation.parity=exact"])
    with pytest.raises(UserError, match="evaluation.parity must be one of batched, strict"):
        generate(None, None, ["a"], parity="exact")


def test_strict_mode_under_two_processes_is_the_official_loop(stand_in, tmp_path):
    """`unlearn evaluate`'s path under a launcher of 2 CPU processes in strict mode: each process generates its
    half of the items one at a time, and the gathered generations and MIA losses are the official loop's."""
    from benchmarks.eval_speed import official_style

    experiment, model, tokenizer = stand_in
    lume = experiment.lume()
    _, mia_documents, _ = experiment.mia()
    with torch_threads(1):
        official = official_style(model, tokenizer, lume.forget + lume.retain,
                                  experiment.config.evaluation.max_new_tokens)
        nll = {name: official_nll(model, tokenizer, mia_documents[name]) for name in ("member", "nonmember")}
    overrides = [*QUICK_WORLD, f"workdir={experiment.workdir}", "evaluation.utility=none",
                 "evaluation.parity=strict", "model.dtype=bfloat16"]
    script = textwrap.dedent(f"""
        import os
        import sys

        import torch
        from accelerate import notebook_launcher

        import utils.evaluation.generation as generation
        from utils.experiment import Experiment

        alone = generation.generate_one_at_a_time

        def counted(model, tokenizer, prompts, **kwargs):
            # One write per line: the two processes share the pipe, and print's separate writes interleave.
            sys.stdout.write(f"RANK {{os.environ['RANK']}} PROMPTS {{len(prompts)}}\\n")
            sys.stdout.flush()
            return alone(model, tokenizer, prompts, **kwargs)

        def evaluate():
            torch.set_num_threads(1)
            generation.generate_one_at_a_time = counted
            Experiment.from_config({str(WORLD)!r}, {overrides!r}).evaluate_checkpoint(
                {str(experiment.workdir / 'model')!r}, {str(tmp_path / 'two')!r}, progress=False)

        notebook_launcher(evaluate, num_processes=2)
    """)
    completed = subprocess.run([sys.executable, "-c", script], cwd=REPO, capture_output=True, text=True,
                               timeout=300, check=False)
    assert completed.returncode == 0, completed.stdout[-3000:] + completed.stderr[-3000:]
    assert sorted(re.findall(r"RANK (\d+) PROMPTS (\d+)", completed.stdout)) == [("0", "20"), ("1", "20")]
    rows = [json.loads(line) for split in ("forget", "retain")
            for line in (tmp_path / "two" / f"{split}_generations.jsonl").read_text().splitlines()]
    assert [row["model_output"] for row in rows] == official["outputs"]
    assert json.loads((tmp_path / "two" / "mia_nll.json").read_text()) == nll
    assert json.loads((tmp_path / "two" / "results.json").read_text())["evaluated"]["parity"] == "strict"
