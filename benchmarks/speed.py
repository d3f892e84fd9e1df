"""One table of speed and memory ratios, all measured side by side in one run.

1. evaluation: `utils.evaluation.evaluate.evaluate_model` vs the official-style one-item-at-a-time loop
   (benchmarks/eval_speed.py: same generations and scores required);
2. training loop: `methods.engine.trainer.Trainer` vs a bare PyTorch loop on the same batches
   (benchmarks/train_loop_speed.py: same final weights required);
3. methods: SUGD vs AGAD vs GD training time on the same data and epoch budget (each method's own
   config, interleaved rounds, `unlearn run` subprocesses);
4. memory under LoRA: KL and NPO (which also run a reference model, through peft's disabled
   adapter) vs GD, as peak resident memory of the child process and as the growth of resident
   memory during training.

Default world: the real validation split's (artifacts/real, from benchmarks/quality.py) when it is
prepared, else the embedded default's. Every contender runs with one torch thread (`--threads`), so
a second job on a 2-core machine does not oversubscribe the cores.

    python benchmarks/speed.py                      # about 30 minutes on the real split, 2 cores
    python benchmarks/speed.py --workdir artifacts/default --data mini
    python benchmarks/speed.py --parts evaluation   # only part 1
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

from benchmarks import common, eval_speed, train_loop_speed
from utils.io import atomic_write_json, atomic_write_text

PARTS = ("evaluation", "loop", "methods", "memory")
TIMED_METHODS = ["sugd", "agad", "gd"]
MEMORY_METHODS = ["gd", "kl", "npo"]


def method_overrides(workdir: Path, data: Path | None, epochs: float) -> list[str]:
    """Training only, with a cheap evaluation (one document per task, short answers): results.json
    then carries the unlearning time and memory without paying for a full evaluation."""
    return [f"workdir={workdir}", *([f"data.path={data}"] if data else []), f"training.epochs={epochs}",
            "evaluation.per_phase_subset=0", "evaluation.subset=1", "evaluation.max_new_tokens=8",
            "evaluation.utility=none"]


def time_methods(workdir: Path, data: Path | None, epochs: float, repeats: int, threads: int, scratch: Path) -> dict:
    """Training seconds per method, interleaved rounds (the order rotates each round)."""
    seconds: dict[str, list[float]] = {m: [] for m in TIMED_METHODS}
    steps: dict[str, int] = {}
    for round_index in range(repeats):
        shift = round_index % len(TIMED_METHODS)
        for method in TIMED_METHODS[shift:] + TIMED_METHODS[:shift]:
            child = common.unlearn_subprocess(REPO / "configs" / f"{method}.yaml", scratch / f"time_{method}",
                                       method_overrides(workdir, data, epochs), threads)
            if not child["ok"]:
                raise SystemExit(f"{method} failed: see {child['log']}")
            seconds[method].append(child["results"]["timings"]["unlearning"])
            steps[method] = sum(json.loads(line)["steps"] for line in
                                (scratch / f"time_{method}" / "phases.jsonl").read_text().splitlines())
            print(f"  round {round_index + 1}/{repeats}  {method:<5} {seconds[method][-1]:7.1f} s "
                  f"({steps[method]} steps)", flush=True)
    return {"seconds": seconds, "steps": steps,
            "ratio_vs_gd": {m: [a / b for a, b in zip(seconds[m], seconds["gd"])] for m in TIMED_METHODS}}


def lora_memory(workdir: Path, data: Path | None, epochs: float, threads: int, scratch: Path) -> dict:
    """Peak RSS (whole child) and training RSS growth per method, LoRA adapters, one run each."""
    out = {}
    for method in MEMORY_METHODS:
        overrides = method_overrides(workdir, data, epochs) + ["adapter.kind=lora"]
        child = common.unlearn_subprocess(REPO / "configs" / f"{method}.yaml", scratch / f"memory_{method}", overrides, threads)
        if not child["ok"]:
            raise SystemExit(f"{method} (LoRA) failed: see {child['log']}")
        memory = child["results"]["memory"]
        out[method] = {"peak_rss_mb": child["peak_rss_mb"],
                       "training_peak_rss_mb": memory["peak_rss_bytes"] / 2**20,
                       "training_growth_mb": memory["peak_rss_growth_bytes"] / 2**20}
        print(f"  LoRA {method:<4} peak RSS {out[method]['peak_rss_mb']:.0f} MB, training growth "
              f"{out[method]['training_growth_mb']:.1f} MB", flush=True)
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    common.add_world_arguments(parser)
    parser.add_argument("--eval-repeats", type=int, default=3)
    parser.add_argument("--loop-steps", type=int, default=15)
    parser.add_argument("--loop-repeats", type=int, default=3)
    parser.add_argument("--method-epochs", type=float, default=1.0, help="epochs per method for parts 3 and 4")
    parser.add_argument("--method-repeats", type=int, default=2)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--out", default=str(common.RESULTS_DIR / "speed"), help="output folder")
    parser.add_argument("--parts", default=",".join(PARTS),
                        help=f"comma-separated parts to measure, of {','.join(PARTS)} (default: all)")
    args = parser.parse_args(argv)
    parts = [part.strip() for part in args.parts.split(",") if part.strip()]
    unknown = sorted(set(parts) - set(PARTS))
    if unknown or not parts:
        parser.error(f"--parts: unknown part(s) {', '.join(unknown) or '(none given)'}; choose from {', '.join(PARTS)}")

    workdir, data = common.resolve_world(args.workdir, args.data)
    data_dir = data or workdir / "data"
    out = Path(args.out).resolve()
    out.mkdir(parents=True, exist_ok=True)
    scratch = Path(tempfile.mkdtemp(prefix="speed_"))
    started = time.perf_counter()
    print(f"[speed] world {workdir}, data {data_dir}, {args.threads} torch thread(s)")

    rows = []
    evaluation = loop = methods = memory = None
    eval_status = 0

    def spread(values):
        return f"{min(values):.2f}-{max(values):.2f}"

    if "evaluation" in parts:
        print("[speed] evaluation vs the official-style loop")
        eval_json = out / "eval.json"
        eval_status = eval_speed.main(["--workdir", str(workdir), "--data", str(data_dir), "--repeats",
                                       str(args.eval_repeats), "--threads", str(args.threads), "--out", str(eval_json)])
        evaluation = json.loads(eval_json.read_text())
        rows.append(("evaluation: project / official-style loop (speed-up)", evaluation["median_speedup"],
                     spread(evaluation["speedup_per_round"]),
                     f"{evaluation['items']} items; identical generations and terms: {evaluation['identical']}"))
    if "loop" in parts:
        print("[speed] training loop vs a bare PyTorch loop")
        loop_json = out / "train_loop.json"
        train_loop_speed.main(["--workdir", str(workdir), "--data", str(data_dir), "--steps", str(args.loop_steps),
                               "--repeats", str(args.loop_repeats), "--overhead-repeats", "7",
                               "--threads", str(args.threads), "--out", str(loop_json)])
        loop = json.loads(loop_json.read_text())
        rows.append(("training loop / bare PyTorch (tokens/s)", loop["ratio_loop_vs_bare"],
                     spread(loop["target_model"]["loop"]["ratio_per_round"]),
                     f"noise-robust estimate {loop['expected_ratio_from_overhead']:.3f}; {loop['steps']} steps"))
    if "methods" in parts:
        print(f"[speed] SUGD vs AGAD vs GD, {args.method_epochs:g} epoch(s), {args.method_repeats} rounds")
        methods = time_methods(workdir, data, args.method_epochs, args.method_repeats, args.threads, scratch)
        gd_seconds = statistics.median(methods["seconds"]["gd"])
        for method in ("sugd", "agad"):
            ratios = methods["ratio_vs_gd"][method]
            rows.append((f"{method.upper()} / GD training time", statistics.median(ratios), spread(ratios),
                         (f"{statistics.median(methods['seconds'][method]):.1f} s vs {gd_seconds:.1f} s; steps "
                          f"{methods['steps'][method]} vs {methods['steps']['gd']}")))
    if "memory" in parts:
        print("[speed] memory under LoRA: KL and NPO vs GD")
        memory = lora_memory(workdir, data, args.method_epochs, args.threads, scratch)
        for method in ("kl", "npo"):
            ratio = memory[method]["peak_rss_mb"] / memory["gd"]["peak_rss_mb"]
            growth = memory[method]["training_growth_mb"] / max(memory["gd"]["training_growth_mb"], 1e-9)
            rows.append((f"{method.upper()} / GD peak memory, LoRA", ratio, "-",
                         (f"{memory[method]['peak_rss_mb']:.0f} vs {memory['gd']['peak_rss_mb']:.0f} MB peak RSS; "
                          f"training growth {memory[method]['training_growth_mb']:.1f} vs "
                          f"{memory['gd']['training_growth_mb']:.1f} MB ({growth:.2f}x)")))
    lines = ["| comparison | ratio (median) | range over rounds | detail |", "|---|---|---|---|"]
    lines += [f"| {name} | {value:.2f}x | {rng} | {detail} |" for name, value, rng, detail in rows]
    table = "\n".join(lines) + "\n"
    total = time.perf_counter() - started
    print()
    print(table)
    print(f"[speed] total {total / 60:.1f} min")
    atomic_write_text(out / "speed.md", table + f"\n- world {workdir}; data {data_dir}; {args.threads} torch "
                                                f"thread(s); total {total / 60:.1f} min\n")
    atomic_write_json(out / "speed.json", {"rows": [dict(zip(("comparison", "ratio", "range", "detail"), r))
                                                    for r in rows],
                                           "evaluation": evaluation, "loop": loop, "methods": methods,
                                           "lora_memory": memory, "environment": common.environment(),
                                           "arguments": vars(args)})
    return eval_status


if __name__ == "__main__":
    sys.exit(main())
