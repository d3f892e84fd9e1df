"""How often the batched evaluation (`evaluation.parity: batched`, the default) differs from the strict one
(`strict`: one item and one MIA document at a time, as the official scorer ran) on a bf16 model.

The model is the OLMo-shaped stand-in: an OlmoForCausalLM with the real OLMo tokenizer (`python
scripts/olmo_assets.py`), trained a little on the mini-LUME (`--weights trained`: one pass of pre-training,
then a few epochs on the benchmark items, built by `unlearn prepare`'s code into --workdir and reused), or
left at its random initialisation (`--weights random`). It is saved, then loaded in bf16 the way every command
loads a checkpoint, and evaluated in both modes on the same items. The report counts the generations that
differ, and gives each of the 12 terms, the task aggregate and the MIA AUC in both modes.

    python benchmarks/parity_modes.py                                   # trained stand-in, mini-LUME
    python benchmarks/parity_modes.py --weights random --out benchmarks/results/parity_modes_random
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

import torch

from benchmarks import common
from utils.data.olmo_assets import find_assets, missing_reason
from utils.evaluation.metrics import aggregated_term_names
from utils.experiment import Experiment
from utils.io import atomic_write_text

WORLD_CONFIG = REPO / "configs" / "olmo-shaped" / "world.yaml"
# A small OLMo-shaped world that trains in a couple of minutes on one CPU core: the 50,304-row output layer
# dominates the cost, so the width and the epochs stay small.
WORLD = ["model.tiny.hidden_size=64", "model.tiny.num_layers=2", "model.tiny.num_heads=2",
         "model.tiny.intermediate_size=256", "model.tiny.max_position_embeddings=512",
         "synthetic.general_facts=8", "synthetic.mia_nonmembers=8",
         "prepare.pretrain.epochs=1", "prepare.pretrain.learning_rate=5e-3", "prepare.pretrain.warmup_steps=3",
         "prepare.target.learning_rate=5e-3", "prepare.target.warmup_steps=5",
         "prepare.gold_standard.epochs=1", "prepare.gold_standard.learning_rate=5e-3",
         "prepare.gold_standard.warmup_steps=3", "evaluation.per_phase_max_new_tokens=16"]


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--workdir", default=str(REPO / "artifacts" / "olmo-shaped-parity"),
                        help="the stand-in's world (built if missing)")
    parser.add_argument("--weights", choices=["trained", "random"], default="trained")
    parser.add_argument("--documents-per-task", type=int, default=8, help="mini-LUME documents per task and split")
    parser.add_argument("--epochs", type=int, default=8, help="target training epochs (--weights trained)")
    parser.add_argument("--max-new-tokens", type=int, default=80)
    parser.add_argument("--batch-size", type=int, default=64, help="generation batch size of the batched mode")
    parser.add_argument("--threads", type=int, default=1, help="torch threads")
    parser.add_argument("--out", default=str(common.RESULTS_DIR / "parity_modes"), help="output folder")
    return parser.parse_args(argv)


def stand_in(args) -> tuple[list[str], str]:
    """(config overrides, model folder) of the stand-in, built when missing."""
    workdir = Path(args.workdir).resolve()
    overrides = [*WORLD, f"workdir={workdir}", f"synthetic.documents_per_task={args.documents_per_task}",
                 f"prepare.target.epochs={args.epochs}", f"evaluation.max_new_tokens={args.max_new_tokens}",
                 f"evaluation.batch_size={args.batch_size}", "evaluation.utility=none"]
    experiment = Experiment.from_config(WORLD_CONFIG, overrides)
    if args.weights == "trained":
        experiment.prepare(progress=False, log=lambda line: print(line, flush=True))
        return overrides, str(experiment.target)
    from utils.config import load_config
    from utils.data.synthetic import generate_mini_lume
    from utils.experiment.world import given_tokenizer
    from utils.models.loading import build_tiny_model, load_tokenizer, save_model

    folder = workdir / "random"
    if not (folder / "model.safetensors").is_file():
        config = load_config(WORLD_CONFIG, overrides)
        if not (workdir / "data" / "manifest.json").is_file():
            generate_mini_lume(workdir / "data", config.synthetic)
        tokenizer = load_tokenizer(str(given_tokenizer(config.model.tiny.tokenizer)))
        tiny = config.model.tiny
        model = build_tiny_model(tokenizer, tiny.hidden_size, tiny.num_layers, tiny.num_heads,
                                 tiny.intermediate_size, tiny.max_position_embeddings, seed=0,
                                 architecture=tiny.architecture)
        save_model(model, tokenizer, folder)
    return overrides, str(folder)


def main(argv=None) -> int:
    args = parse_args(argv)
    if find_assets() is None:
        print(f"[parity_modes] {missing_reason()}", file=sys.stderr)
        return 2
    if args.threads:
        torch.set_num_threads(args.threads)
    overrides, model_folder = stand_in(args)
    modes: dict[str, dict] = {}
    model = None
    for parity in ("batched", "strict"):
        experiment = Experiment.from_config(WORLD_CONFIG, [*overrides, "model.dtype=bfloat16",
                                                           f"evaluation.parity={parity}"])
        if model is None:
            model, tokenizer = experiment.load(model_folder)
        started = time.perf_counter()
        evaluation = experiment.evaluate(model, tokenizer, progress=False)
        modes[parity] = {"seconds": time.perf_counter() - started, "results": evaluation.results,
                         "outputs": [row["model_output"] for split in ("forget", "retain")
                                     for row in evaluation.generations[split]],
                         "mia_nll": evaluation.mia_nll}
        print(f"[parity_modes] {parity}: {modes[parity]['seconds']:.1f} s", flush=True)
    batched, strict = modes["batched"], modes["strict"]
    differ = [i for i, (a, b) in enumerate(zip(batched["outputs"], strict["outputs"])) if a != b]
    names = aggregated_term_names()
    terms = []
    for name in names:
        split, task, kind = name.split("/")
        values = [float(mode["results"]["terms"][split][task][kind]) for mode in (batched, strict)]
        terms.append({"term": name, "batched": values[0], "strict": values[1], "change": values[0] - values[1]})
    summary = {name: {"batched": batched["results"].get(name), "strict": strict["results"].get(name)}
               for name in ("task_aggregate", "mia_auc", "mia_score")}
    nll_change = max(abs(a - b) for kind in ("member", "nonmember")
                     for a, b in zip(batched["mia_nll"][kind], strict["mia_nll"][kind]))
    payload = {
        "command": "python benchmarks/parity_modes.py " + " ".join(argv if argv is not None else sys.argv[1:]),
        "weights": args.weights, "model": model_folder, "dtype": "bfloat16", "max_new_tokens": args.max_new_tokens,
        "batch_size": args.batch_size, "generations": len(strict["outputs"]),
        "distinct_strict_generations": len(set(strict["outputs"])),
        "generations_that_differ": len(differ), "differing_items": differ,
        "terms": terms, "summary": summary, "mia_nll_max_abs_change": nll_change,
        "seconds": {"batched": batched["seconds"], "strict": strict["seconds"]},
        "examples": [{"item": i, "batched": batched["outputs"][i], "strict": strict["outputs"][i]} for i in differ[:3]],
        "environment": common.environment(model),
    }
    out = Path(args.out)
    common.write_json(out / "parity_modes.json", payload)
    rows = [{"term": t["term"], "batched": f"{t['batched']:.4f}", "strict": f"{t['strict']:.4f}",
             "change": f"{t['change']:+.4f}"} for t in terms]
    rows += [{"term": name, "batched": f"{v['batched']:.4f}", "strict": f"{v['strict']:.4f}",
              "change": f"{v['batched'] - v['strict']:+.4f}"} for name, v in summary.items()
             if v["batched"] is not None and v["strict"] is not None]
    text = (f"{payload['command']}\n\nstand-in: {args.weights} OlmoForCausalLM with the real OLMo tokenizer, bf16, "
            f"max_new_tokens {args.max_new_tokens}, batch size {args.batch_size}\n\n"
            f"generations that differ (batched vs strict): {len(differ)} of {len(strict['outputs'])} "
            f"({payload['distinct_strict_generations']} distinct strict generations); largest MIA NLL change "
            f"{nll_change:.2e}; seconds batched {batched['seconds']:.1f}, strict {strict['seconds']:.1f}\n\n"
            f"{common.table(rows, ['term', 'batched', 'strict', 'change'])}\n")
    atomic_write_text(out / "parity_modes.md", text)
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
