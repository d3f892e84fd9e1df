"""The project's evaluation against an official-style one-item-at-a-time loop: same numbers, how much faster.

Contenders, interleaved round by round, on the same model and the same items:

  project    `utils.evaluation.evaluate.evaluate_model`: `utils.evaluation.generation.generate_greedy` (length-sorted,
             left-padded batches of 64, a hand-written greedy loop over the KV cache in which a row
             leaves the batch at its EOS), then the official metrics.
  official   what the official scorer does, written out independently of `utils.evaluation.generation`: for
             each item, the raw prompt tokenised alone (`tokenizer(prompt, return_tensors="pt")`),
             `model.generate(max_new_tokens=256, do_sample=False)` (one sequence, so it stops at
             EOS), the new tokens decoded with `skip_special_tokens=True`, then a separate forward
             pass with the loss on the item's full text, as the official script also computes one
             per item. Its generations are scored by the same metric code.

The benchmark fails (exit 1) unless both give identical generations, the identical 12 split/task
means and, with `--mia`, MIA AUCs within 1e-6 (batched and single-document forward passes differ in
the last float bits).

    python benchmarks/eval_speed.py --workdir /tmp/w1                  # real validation split
    python benchmarks/eval_speed.py --workdir /tmp/w1 --limit 3        # 3 documents per split/task
    python benchmarks/eval_speed.py --workdir /tmp/w1 --data /tmp/w1/data --repeats 5   # mini-LUME
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
from utils.config import load_config
from utils.data.lume import find_mia_dir, load_lume, load_mia_documents
from utils.data.tokenization import encode_prompt
from utils.evaluation.evaluate import subset_items
from utils.evaluation.metrics import aggregated_term_names, compute_terms, mia_auc
from utils.experiment.experiment import Experiment
from utils.models.loading import load_model_and_tokenizer


@torch.inference_mode()
def official_style(model, tokenizer, items, max_new_tokens: int, mia_documents=None) -> dict:
    """One item at a time, as the official scorer: generate, decode, a loss forward; then the metrics."""
    model.eval()
    device = next(model.parameters()).device
    records = []
    started = time.perf_counter()
    for item in items:
        prompt = tokenizer(item.input, return_tensors="pt").to(device)
        output = model.generate(**prompt, max_new_tokens=max_new_tokens, do_sample=False)
        new_tokens = output[0, prompt["input_ids"].shape[1]:]
        # As the official scorer: skip special tokens, then the space clean-up of its transformers release.
        generation = tokenizer.clean_up_tokenization(tokenizer.decode(new_tokens, skip_special_tokens=True,
                                                                      clean_up_tokenization_spaces=False))
        full = tokenizer(item.input + " " + item.output, return_tensors="pt").to(device)
        model(**full, labels=full["input_ids"]).loss.item()
        records.append({"id": item.id, "task": item.task, "split": item.split,
                        "expected_output": item.output, "model_output": generation})
    generation_seconds = time.perf_counter() - started
    scores = compute_terms(records)
    auc = None
    if mia_documents is not None:
        nll = {}
        for name in ("member", "nonmember"):
            values = []
            for document in mia_documents[name]:
                ids = tokenizer(document, return_tensors="pt").to(device)
                values.append(float(model(**ids, labels=ids["input_ids"]).loss))
            nll[name] = values
        auc = mia_auc(nll["member"], nll["nonmember"])
    return {"terms": scores.terms, "outputs": [r["model_output"] for r in records], "mia_auc": auc,
            "generation_seconds": generation_seconds}


def project_side(model, tokenizer, experiment: Experiment) -> dict:
    """The project's evaluation as every command runs it (utils.experiment.Experiment.evaluate)."""
    evaluation = experiment.evaluate(model, tokenizer, progress=False)
    outputs = [row["model_output"] for split in ("forget", "retain") for row in evaluation.generations[split]]
    return {"terms": evaluation.results["terms"], "outputs": outputs, "mia_auc": evaluation.results["mia_auc"],
            "generation_seconds": evaluation.results["timings"]["generation"]}


def flat_terms(terms) -> list[float]:
    return [float(terms[split][task][kind]) for split, task, kind in
            (name.split("/") for name in aggregated_term_names())]


def parse_args(argv=None) -> argparse.Namespace:
    data_help = "LUME folder (default: ../shared/semeval25-unlearning-data, else the mini-LUME)"
    parser = common.side_by_side_parser(__doc__.split("\n\n")[0], data_help, repeats=3)
    parser.add_argument("--limit", type=int, default=None,
                        help="only the first N documents per split and task (default: all)")
    parser.add_argument("--batch-size", type=int, default=64, help="generation batch size of the project side")
    parser.add_argument("--max-new-tokens", type=int, default=256)
    parser.add_argument("--mia", action="store_true",
                        help="include the MIA on both sides (project: batched, all attacks; official: "
                             "loss per document, one at a time)")
    return parser.parse_args(argv)


def main(argv=None) -> int:
    args = parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    world = common.ensure_world(args.workdir)
    data_dir = common.choose_data(args.data, world)
    model, tokenizer = load_model_and_tokenizer(str(world.target))
    lume = load_lume(data_dir)
    items = subset_items(lume.forget, args.limit) + subset_items(lume.retain, args.limit)
    # The project strips trailing special tokens from prompts; say so if that makes the inputs differ.
    differing = sum(encode_prompt(tokenizer, i.input) != tokenizer(i.input)["input_ids"] for i in items)
    if differing:
        print(f"note: {differing} prompts tokenise differently with encode_prompt (trailing special tokens)")
    mia_documents = None
    if args.mia:
        mia_dir = find_mia_dir(data_dir)
        if mia_dir is None:
            print(f"no MIA files next to {data_dir}: running without MIA")
        else:
            mia_documents = load_mia_documents(mia_dir)
    prompt_tokens = sum(len(tokenizer(i.input)["input_ids"]) for i in items)
    print(f"data {data_dir}: {len(items)} items ({'all' if args.limit is None else args.limit} documents per "
          f"split/task), {prompt_tokens} prompt tokens; max_new_tokens {args.max_new_tokens}; "
          f"torch threads {torch.get_num_threads()}", flush=True)

    settings = [f"workdir={world.root}", f"data.path={data_dir}", "evaluation.utility=none",
                f"evaluation.batch_size={args.batch_size}", f"evaluation.max_new_tokens={args.max_new_tokens}",
                *([f"evaluation.subset={args.limit}"] if args.limit is not None else []),
                *([] if mia_documents is not None else ["data.mia_path=none"])]
    experiment = Experiment(load_config(None, settings))
    contenders = {
        "project": lambda: project_side(model, tokenizer, experiment),
        "official": lambda: official_style(model, tokenizer, items, args.max_new_tokens, mia_documents),
    }
    runs = common.interleave(contenders, args.repeats)

    project, official = runs["project"][0], runs["official"][0]
    ok = True
    names = aggregated_term_names()
    term_rows = []
    for name, a, b in zip(names, flat_terms(project["terms"]), flat_terms(official["terms"])):
        term_rows.append({"term": name, "project": a, "official": b, "equal": "yes" if a == b else "NO"})
        ok &= a == b
    same_outputs = sum(a == b for a, b in zip(project["outputs"], official["outputs"]))
    ok &= same_outputs == len(items)
    # Every round must reproduce the first (greedy decoding is deterministic).
    stable = all(r["outputs"] == project["outputs"] for r in runs["project"]) and \
        all(r["outputs"] == official["outputs"] for r in runs["official"])
    ok &= stable
    mia_difference = None
    if mia_documents is not None:
        mia_difference = abs(project["mia_auc"] - official["mia_auc"])
        ok &= mia_difference <= 1e-6

    times = {name: [r["seconds"] for r in results] for name, results in runs.items()}
    ratios = [o / p for p, o in zip(times["project"], times["official"])]
    generation_ratios = [o["generation_seconds"] / p["generation_seconds"]
                         for p, o in zip(runs["project"], runs["official"])]
    speed_rows = [{"contender": name, "median s": common.median(t), "items/s": len(items) / common.median(t),
                   "min s": min(t), "max s": max(t)} for name, t in times.items()]

    print()
    print(common.table(term_rows, ["term", "project", "official", "equal"]))
    print(f"\nidentical generations: {same_outputs}/{len(items)}; identical across rounds: {stable}")
    if mia_difference is not None:
        print(f"MIA loss AUC: project {project['mia_auc']:.6f}  official {official['mia_auc']:.6f}  "
              f"|diff| {mia_difference:.1e}")
    print()
    print(common.table(speed_rows, ["contender", "median s", "items/s", "min s", "max s"]))
    speedup = common.median(ratios)
    print(f"\nspeed-up official/project (common.median of {args.repeats} per-round ratios): {speedup:.2f}x "
          f"[{min(ratios):.2f}-{max(ratios):.2f}]; generation part alone {common.median(generation_ratios):.2f}x "
          f"(target >= 5x: {'met' if speedup >= 5 else 'NOT met'})")
    print("terms identical: " + ("yes" if ok else "NO"))

    path = common.write_json(args.out, {
        "benchmark": "eval_speed",
        "data": str(data_dir),
        "workdir": str(args.workdir),
        "items": len(items),
        "prompt_tokens": prompt_tokens,
        "arguments": vars(args),
        "environment": common.environment(),
        "seconds": times,
        "generation_seconds": {name: [r["generation_seconds"] for r in results] for name, results in runs.items()},
        "speedup_per_round": ratios,
        "median_speedup": speedup,
        "median_generation_speedup": common.median(generation_ratios),
        "terms": {"names": names, "project": flat_terms(project["terms"]), "official": flat_terms(official["terms"])},
        "identical_generations": same_outputs,
        "mia_auc": {"project": project["mia_auc"], "official": official["mia_auc"]},
        "identical": ok,
        "target_speedup": 5.0,
    })
    if path:
        print(f"wrote {path}")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
