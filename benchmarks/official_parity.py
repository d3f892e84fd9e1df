"""The organisers' scorer, run unchanged, against `unlearn evaluate` on one model: the same generations,
the same 12 terms, the same MIA AUC.

The official `evaluate_generations.py` is the organisers' code, not this project's: give its path
(the copy in the task's data repository, or in the seed's `semeval25-unlearning-data/`). The script
writes the world's benchmark items and MIA documents in the layout the scorer reads (`forget.jsonl`,
`retain.jsonl`, `member.jsonl`, `nonmember.jsonl`), runs the scorer in a child process with
`--keep_files`, evaluates the same model the project's way with `model.dtype: bfloat16` (the scorer
loads bf16), and compares generation by generation, term by term and the MIA AUC. It writes a JSON
report next to the two outputs and exits 1 on any difference.

    python scripts/olmo_assets.py
    unlearn prepare --config configs/olmo-shaped/world.yaml --out artifacts/olmo-shaped
    python benchmarks/official_parity.py --scorer PATH/evaluate_generations.py --workdir artifacts/olmo-shaped
"""

from __future__ import annotations

import argparse
import json
import math
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from benchmarks import common
from utils.io import atomic_write_json, read_jsonl, write_jsonl


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--scorer", required=True, help="the official evaluate_generations.py")
    parser.add_argument("--workdir", default="artifacts/olmo-shaped", help="a prepared world")
    parser.add_argument("--model", default=None, help="model folder (default: the world's target)")
    parser.add_argument("--max-new-tokens", type=int, default=32)
    parser.add_argument("--out", default=None, help="folder for both outputs and the report "
                                                    "(default: benchmarks/results/official_parity)")
    return parser.parse_args(argv)


def write_scorer_inputs(experiment, folder: Path) -> tuple[Path, Path]:
    """The items and MIA documents as the scorer reads them: `<data>/forget.jsonl`, `<mia>/member.jsonl`, ..."""
    lume = experiment.lume()
    data, mia = folder / "data", folder / "mia"
    for split in ("forget", "retain"):
        write_jsonl(data / f"{split}.jsonl", [{"id": i.id, "input": i.input, "output": i.output, "task": i.task}
                                              for i in lume.split_items(split)])
    _, documents, _ = experiment.mia()
    for name in ("member", "nonmember"):
        write_jsonl(mia / f"{name}.jsonl", [{"id": str(n), "document": d} for n, d in enumerate(documents[name])])
    return data, mia


def scorer_generations(folder: Path) -> dict[str, str]:
    """id -> generation from the scorer's CSV files, read back the way the scorer itself reads them."""
    import pandas as pd

    frames = [pd.read_csv(path) for split in ("forget", "retain") for path in sorted(folder.glob(f"{split}_*.csv"))]
    return {row["id"]: str(row["model_output"]) for frame in frames for _, row in frame.iterrows()}


def main(argv=None) -> int:
    args = parse_args(argv)
    from utils.config import load_config
    from utils.evaluation.metrics import aggregated_term_names, aggregated_terms
    from utils.experiment import Experiment

    workdir = Path(args.workdir).resolve()
    out = Path(args.out or common.RESULTS_DIR / "official_parity").resolve()
    experiment = Experiment(load_config(None, [f"workdir={workdir}", "model.dtype=bfloat16", "evaluation.utility=none",
                                               f"evaluation.max_new_tokens={args.max_new_tokens}"]))
    model_dir = Path(args.model).resolve() if args.model else Path(experiment.target).resolve()
    data, mia = write_scorer_inputs(experiment, out / "inputs")

    official_dir = out / "official"
    started = time.perf_counter()
    command = [sys.executable, str(Path(args.scorer).resolve()), "--data_path", f"{data}/", "--checkpoint_path",
               str(model_dir), "--output_dir", str(official_dir), "--mia_data_path", f"{mia}/",
               "--max_new_tokens", str(args.max_new_tokens), "--keep_files"]
    subprocess.run(command, check=True, stdout=subprocess.DEVNULL)
    official_seconds = time.perf_counter() - started
    official = json.loads((official_dir / "evaluation_results.jsonl").read_text().splitlines()[0])

    started = time.perf_counter()
    results = experiment.evaluate_checkpoint(str(model_dir), out / "project", progress=False)
    project_seconds = time.perf_counter() - started
    ours = {row["id"]: row["model_output"] for split in ("forget", "retain")
            for _, row in read_jsonl(out / "project" / f"{split}_generations.jsonl")}

    theirs = scorer_generations(official_dir)
    # The scorer round-trips generations through CSV: an empty one comes back as the string "nan".
    differing = sorted(i for i in theirs if theirs[i] != (ours.get(i) or "nan"))
    terms = aggregated_terms(results["terms"])
    term_gaps = [abs(a - b) for a, b in zip(terms, official["aggregated-terms"])]
    auc_gap = abs(results["mia_auc"] - official["mia_loss_acc"])
    report = {
        "model": str(model_dir), "items": len(theirs), "max_new_tokens": args.max_new_tokens,
        "generations_differing": len(differing), "differing_ids": differing[:20],
        "empty_generations": sum(1 for text in ours.values() if not text),
        "terms": dict(zip(aggregated_term_names(), terms)), "official_terms": official["aggregated-terms"],
        "largest_term_gap": max(term_gaps), "mia_auc": results["mia_auc"], "official_mia_auc": official["mia_loss_acc"],
        "mia_auc_gap": auc_gap,
        "task_aggregate": results["task_aggregate"], "official_task_aggregate": official["harmonic-mean-task-aggregate"],
        "seconds": {"official": official_seconds, "project": project_seconds},
        "environment": common.environment(),
    }
    atomic_write_json(out / "report.json", report)
    same = not differing and len(theirs) == len(ours) and max(term_gaps) <= 1e-9 and auc_gap <= 1e-9 \
        and math.isclose(results["task_aggregate"], official["harmonic-mean-task-aggregate"], abs_tol=1e-9)
    print(f"{len(theirs)} items: {len(differing)} generations differ; largest term gap {max(term_gaps):.3g}; "
          f"MIA AUC {results['mia_auc']:.6f} vs {official['mia_loss_acc']:.6f}; official {official_seconds:.0f} s, "
          f"project {project_seconds:.0f} s")
    print(f"report: {out / 'report.json'}")
    return 0 if same else 1


if __name__ == "__main__":
    sys.exit(main())
