"""How SUGD's training time and the evaluation's time grow with the data, and with SUGD's chunk size.

Part 1, data size: the first 1/4, 1/2 and all documents of every task of both splits (file order,
whole documents: the sc item and its questions stay together) are written as a LUME folder; on
each, SUGD unlearns (its config, `--epochs` epochs per chunk, training time only) and the target is
evaluated (generation + official metrics, no MIA or utility: their cost does not depend on the
split). Part 2, chunk size: SUGD on a quarter of the data with chunk sizes 8 to 64.

SUGD's work is (forget items) x (1 + positive_ratio) x epochs examples however the chunks fall, so
its time should grow linearly with the forget set and stay flat across chunk sizes, apart from a
fixed cost per chunk (fresh optimiser and schedule, a checkpoint). The evaluation decodes every
item, so it should grow linearly too. The script fits time = a + b * items by least squares and
calls growth linear when the fit explains at least 98% of the variance and doubling the data costs
between 1.6x and 2.4x the time.

    python benchmarks/scaling.py                    # real split (artifacts/real), about 8 minutes
    python benchmarks/scaling.py --workdir artifacts/default --data mini --chunk-fraction 1
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

import torch

from benchmarks import common
from utils.data.lume import LumeData, load_lume
from utils.io import atomic_write_json, atomic_write_text, write_jsonl

TASKS = ("Task1", "Task2", "Task3")


def fraction_of(lume: LumeData, fraction: float) -> LumeData:
    """The first `fraction` of the documents of every task of both splits, in file order."""
    def cut(items):
        documents: dict[str, list[str]] = {}
        for item in items:
            documents.setdefault(item.task, [])
            if item.document_id not in documents[item.task]:
                documents[item.task].append(item.document_id)
        keep = {doc for task_docs in documents.values() for doc in task_docs[:max(1, round(fraction * len(task_docs)))]}
        return [item for item in items if item.document_id in keep]

    return LumeData(forget=cut(lume.forget), retain=cut(lume.retain), source=f"{lume.source} x{fraction:g}")


def write_lume(lume: LumeData, folder: Path) -> Path:
    """A LUME folder in the hand-out jsonl layout (forget.jsonl / retain.jsonl)."""
    for split in ("forget", "retain"):
        write_jsonl(folder / f"{split}.jsonl", [{"id": i.id, "input": i.input, "output": i.output, "task": i.task,
                                                 "split": split} for i in lume.split_items(split)])
    return folder


def sugd_seconds(workdir: Path, data: Path, chunk_size: int, epochs: float, threads: int, scratch: Path) -> dict:
    run_dir = scratch / f"sugd_{data.name}_chunk{chunk_size}"
    child = common.unlearn_subprocess(REPO / "configs" / "sugd.yaml", run_dir,
                               [f"workdir={workdir}", f"data.path={data}", f"method.chunk_size={chunk_size}",
                                f"training.epochs={epochs}", "evaluation.per_phase_subset=0",
                                # as in benchmarks/quality.py: the same gradient, far less padding
                                "training.max_micro_batch_tokens=1024"], threads,
                               flags=("--no-eval",))
    if not child["ok"] or child["state"] is None:
        raise SystemExit(f"SUGD failed on {data} (chunk {chunk_size}): see {child['log']}")
    phases = [json.loads(line) for line in (run_dir / "phases.jsonl").read_text().splitlines()]
    return {"seconds": child["state"]["seconds"], "chunks": len(phases), "steps": sum(p["steps"] for p in phases)}


def evaluation_seconds(model, tokenizer, workdir: Path, data: Path, repeats: int) -> float:
    """Median seconds of the evaluation every command runs (generation and metrics; no MIA, no utility)."""
    from utils.config import load_config
    from utils.experiment.experiment import Experiment

    experiment = Experiment(load_config(None, [f"workdir={workdir}", f"data.path={data}", "data.mia_path=none",
                                               "evaluation.utility=none"]))
    times = []
    for _ in range(repeats):
        started = time.perf_counter()
        experiment.evaluate(model, tokenizer, progress=False)
        times.append(time.perf_counter() - started)
    return statistics.median(times)


def linear_fit(xs: list[float], ys: list[float]) -> dict:
    """Least squares y = a + b x, its R^2, and the cost of each doubling."""
    n = len(xs)
    mean_x, mean_y = sum(xs) / n, sum(ys) / n
    sxx = sum((x - mean_x) ** 2 for x in xs)
    b = sum((x - mean_x) * (y - mean_y) for x, y in zip(xs, ys)) / sxx if sxx else 0.0
    a = mean_y - b * mean_x
    total = sum((y - mean_y) ** 2 for y in ys)
    residual = sum((y - a - b * x) ** 2 for x, y in zip(xs, ys))
    r2 = 1 - residual / total if total else 1.0
    steps = [ys[i + 1] / ys[i] for i in range(n - 1)]
    linear = r2 >= 0.98 and all(1.6 <= s <= 2.4 for s in steps)
    return {"intercept": a, "slope": b, "r2": r2, "doubling_ratios": steps, "linear": linear}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    common.add_world_arguments(parser)
    parser.add_argument("--fractions", default="0.25,0.5,1")
    parser.add_argument("--chunk-sizes", default="8,16,32,64")
    parser.add_argument("--chunk-fraction", type=float, default=0.25, help="data fraction for the chunk-size part")
    parser.add_argument("--epochs", type=float, default=1.0, help="SUGD epochs per chunk")
    parser.add_argument("--eval-repeats", type=int, default=2)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--out", default=str(common.RESULTS_DIR / "scaling"), help="output folder")
    args = parser.parse_args(argv)

    workdir, data = common.resolve_world(args.workdir, args.data)
    data_dir = data or workdir / "data"
    torch.set_num_threads(args.threads)
    out = Path(args.out).resolve()
    out.mkdir(parents=True, exist_ok=True)
    scratch = Path(tempfile.mkdtemp(prefix="scaling_"))
    lume = load_lume(data_dir)
    fractions = [float(x) for x in args.fractions.split(",")]
    started = time.perf_counter()
    print(f"[scaling] world {workdir}, data {data_dir}: {len(lume.forget)} forget / {len(lume.retain)} retain items")

    from utils.models.loading import load_model_and_tokenizer

    model, tokenizer = load_model_and_tokenizer(str(workdir / "target"))
    model.eval()
    size_rows = []
    for fraction in fractions:
        part = fraction_of(lume, fraction)
        folder = write_lume(part, scratch / f"fraction_{fraction:g}")
        sugd = sugd_seconds(workdir, folder, 32, args.epochs, args.threads, scratch)
        evaluation = evaluation_seconds(model, tokenizer, workdir, folder, args.eval_repeats)
        size_rows.append({"fraction": fraction, "forget items": len(part.forget), "retain items": len(part.retain),
                          "SUGD chunks": sugd["chunks"], "SUGD steps": sugd["steps"], "SUGD s": sugd["seconds"],
                          "eval items": len(part.forget) + len(part.retain), "eval s": evaluation})
        print(f"  fraction {fraction:g}: SUGD {sugd['seconds']:.1f} s ({sugd['steps']} steps), "
              f"evaluation {evaluation:.1f} s", flush=True)

    chunk_rows = []
    part = fraction_of(lume, args.chunk_fraction)
    folder = write_lume(part, scratch / f"fraction_{args.chunk_fraction:g}")
    for chunk in [int(x) for x in args.chunk_sizes.split(",")]:
        sugd = sugd_seconds(workdir, folder, chunk, args.epochs, args.threads, scratch)
        chunk_rows.append({"chunk size": chunk, "chunks": sugd["chunks"], "steps": sugd["steps"],
                           "SUGD s": sugd["seconds"], "s per step": sugd["seconds"] / sugd["steps"]})
        print(f"  chunk {chunk}: {sugd['seconds']:.1f} s, {sugd['chunks']} chunks, {sugd['steps']} steps", flush=True)

    sugd_fit = linear_fit([r["forget items"] for r in size_rows], [r["SUGD s"] for r in size_rows])
    eval_fit = linear_fit([r["eval items"] for r in size_rows], [r["eval s"] for r in size_rows])
    per_step = [r["s per step"] for r in chunk_rows]
    chunk_spread = max(per_step) / min(per_step)

    def md(rows: list[dict]) -> str:
        columns = list(rows[0])
        lines = ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
        for row in rows:
            lines.append("| " + " | ".join(f"{v:.3f}" if isinstance(v, float) and v < 1 else
                                           f"{v:.1f}" if isinstance(v, float) else str(v) for v in row.values()) + " |")
        return "\n".join(lines) + "\n"

    def verdict(name: str, fit: dict, unit: str) -> str:
        ratios = ", ".join(f"{r:.2f}x" for r in fit["doubling_ratios"])
        return (f"{name}: {'linear' if fit['linear'] else 'NOT linear'} (time = {fit['intercept']:.1f} s + "
                f"{fit['slope'] * 1000:.1f} ms per {unit}, R^2 {fit['r2']:.3f}; each doubling of the data: {ratios})")

    notes = [verdict("SUGD training time vs forget items", sugd_fit, "forget item"),
             verdict("evaluation time vs items", eval_fit, "item"),
             (f"SUGD seconds per step across chunk sizes {args.chunk_sizes}: max/min {chunk_spread:.2f}x "
             f"({'flat' if chunk_spread <= 1.25 else 'not flat'}: the per-chunk cost is "
             f"{'small' if chunk_spread <= 1.25 else 'visible'})"),
             (f"world {workdir}; data {data_dir}; SUGD {args.epochs:g} epoch(s) per chunk, chunk 32 in part 1; "
             f"{args.threads} torch thread(s); total {(time.perf_counter() - started) / 60:.1f} min")]
    text = "Data size (SUGD chunk 32):\n\n" + md(size_rows) + "\nChunk size (" + \
        f"{args.chunk_fraction:g} of the data):\n\n" + md(chunk_rows) + "\n" + "\n".join(f"- {n}" for n in notes) + "\n"
    print()
    print(text)
    atomic_write_text(out / "scaling.md", text)
    atomic_write_json(out / "scaling.json", {"sizes": size_rows, "chunks": chunk_rows, "sugd_fit": sugd_fit,
                                             "eval_fit": eval_fit, "notes": notes, "environment": common.environment(),
                                             "arguments": vars(args)})
    return 0


if __name__ == "__main__":
    sys.exit(main())
