"""The memory estimate of `unlearn doctor` against the peaks `benchmarks/rehearsal.py` measured.

For each row of the recorded rehearsals (OLMo-1B's shape, bf16, examples cut to --max-length tokens, the
first phase cut to 2 x batch_size examples, 2 optimiser steps, on a CPU), this rebuilds the same phase
from the same data with the real OLMo tokenizer, takes its largest micro-batch as the Trainer splits it,
and asks `utils.experiment.footprint.estimate` for a CPU process's peak. One addition is the rehearsal's
own: it keeps a copy of the trainable weights through the 2 steps (to measure the share that moved).
Nothing is trained; it takes seconds.

    python scripts/olmo_assets.py          # the real tokenizer, once
    python benchmarks/doctor_estimate.py   # -> benchmarks/results/doctor_estimate/doctor_estimate.{md,json}
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from benchmarks import common

RECORDED = [common.RESULTS_DIR / "rehearsal" / "rehearsal.json", common.RESULTS_DIR / "rehearsal_newer" / "rehearsal.json"]
STEPS = 2  # the rehearsal's optimiser steps per config


def rehearsal_settings(recorded: dict, row: dict) -> list[str]:
    """The overrides that give the config the rehearsal ran: its model shape's settings and data, and the
    master-weights setting its notes record (configs may have changed since)."""
    overrides = [f"data.path={recorded['data_dir']}", "data.split=validation", f"training.max_length={recorded['max_length']}",
                 f"model.dtype={recorded['dtype']}", "workdir=/nonexistent-doctor-estimate"]
    if any("master_weights: auto" in note for note in recorded.get("notes", [])):
        overrides.append("training.master_weights=auto")
    if recorded.get("ceiling") is not None and "ceiling_stand_in" in row:
        overrides.append(f"method.forget_loss_ceiling={recorded['ceiling']}")
    return overrides


def estimate_row(recorded: dict, row: dict, tokenizer_dir: Path) -> dict:
    from methods.registry import get_method
    from utils.experiment import footprint as fp
    from utils.experiment.doctor import keeps_reference_copy
    from utils.experiment.experiment import Experiment
    from utils.experiment.inputs import build_run_phases
    from utils.models.loading import load_tokenizer

    experiment = Experiment.from_config(REPO / row["config"], rehearsal_settings(recorded, row), run_dir="/nonexistent")
    config = experiment.config
    phases = build_run_phases(get_method(config.method.name), config, experiment.lume(), load_tokenizer(str(tokenizer_dir)))
    first = phases[0]
    phase = dataclasses.replace(first, examples=first.examples[:STEPS * config.training.batch_size], epochs=1)
    step = fp.largest_step([phase], config.training, 1)
    dims = recorded["dims"]
    shape = fp.ModelShape(layers=dims["num_layers"], hidden=dims["hidden_size"], intermediate=dims["intermediate_size"],
                          vocab=50304, heads=dims["num_heads"], kv_heads=dims["num_heads"], tied=True,
                          source="the rehearsal's OlmoForCausalLM")
    footprint = fp.estimate(shape, config, step, 1, reference_copy=keeps_reference_copy(config), cpu=True, on_gpu=False)
    snapshot = footprint.checkpoint_bytes  # the rehearsal's copy of the trainable weights, same dtype
    estimate = footprint.peak + snapshot
    measured = row["peak_rss_bytes"]
    return {"config": row["config"], "method": config.method.name, "adapter": config.adapter.kind,
            "batch_size": config.training.batch_size, "padded_tokens": step.padded_tokens,
            "parameters": shape.parameters(), "trainable_parameters": footprint.trainable_parameters,
            "estimate_bytes": estimate, "measured_peak_rss_bytes": measured, "ratio": estimate / measured,
            "rehearsal_snapshot_bytes": snapshot, "parts_bytes": footprint.parts}


def estimates(recorded_paths=RECORDED) -> list[dict]:
    from utils.data.olmo_assets import find_assets, missing_reason

    assets = find_assets()
    if assets is None:
        raise SystemExit(f"error: {missing_reason()}")
    rows = []
    for path in recorded_paths:
        recorded = json.loads(Path(path).read_text(encoding="utf-8"))
        for row in recorded["rows"]:
            if row.get("status") == "ok":
                where = Path(path).resolve()
                shown = where.relative_to(REPO) if where.is_relative_to(REPO) else where
                rows.append({**estimate_row(recorded, row, assets / "tokenizer"), "recorded": str(shown)})
    return rows


def markdown(rows: list[dict]) -> str:
    lines = ["| config | method | adapter | padded tokens | estimate GiB | measured peak RSS GiB | estimate / measured |",
             "|---|---|---|---|---|---|---|"]
    for r in rows:
        lines.append(f"| {Path(r['config']).name} | {r['method']} | {r['adapter']} | {r['padded_tokens']} | "
                     f"{r['estimate_bytes'] / 2**30:.2f} | {r['measured_peak_rss_bytes'] / 2**30:.2f} | {r['ratio']:.3f} |")
    return "\n".join(lines) + "\n"


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", default=str(common.RESULTS_DIR / "doctor_estimate"), help="output folder")
    parser.add_argument("--recorded", nargs="+", default=[str(p) for p in RECORDED],
                        help="rehearsal.json files to compare with (default: the recorded OLMo-1B rehearsals)")
    args = parser.parse_args(argv)
    from utils.experiment import footprint as fp
    from utils.io import atomic_write_text

    rows = estimates(args.recorded)
    ratios = [r["ratio"] for r in rows]
    table = markdown(rows)
    notes = [(f"Estimate: utils.experiment.footprint.estimate(cpu=True) (CPU runtime {fp.CPU_RUNTIME_BYTES / 2**30:.2f} "
              f"GiB, CPU activation factor {fp.CPU_ACTIVATION_FACTOR}) plus the rehearsal's copy of the trainable weights."),
             ("Measured: peak RSS of the rehearsal's 2 training steps (benchmarks/rehearsal.py, recorded in the json files "
              "named per row)."),
             f"Ratio range {min(ratios):.3f} to {max(ratios):.3f} over {len(rows)} configs."]
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    atomic_write_text(out / "doctor_estimate.md", "# unlearn doctor's memory estimate vs the rehearsal\n\n" + table
                      + "\n" + "\n".join(f"- {n}" for n in notes) + "\n")
    common.write_json(out / "doctor_estimate.json", {"rows": rows, "notes": notes, "environment": common.environment(),
                                                     "command": " ".join(sys.argv)})
    print(table)
    print("\n".join(notes))
    return 0


if __name__ == "__main__":
    sys.exit(main())
