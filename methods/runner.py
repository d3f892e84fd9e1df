"""One unlearning run from config to results: load, adapt, unlearn phase by phase, evaluate, plot.

The run folder holds:
  config.yaml        the resolved config (what actually ran)
  log.jsonl          one line per optimiser step
  phases.jsonl       one line per finished chunk/phase: losses and a quick forget/retain check
  checkpoint/        trainable weights + state after the last finished phase (atomic)
  model/             the final model (LoRA merged unless adapter.merge_at_end is false)
  results.json, *_generations.jsonl, mia_nll.json   the final evaluation (utils.evaluation)
  *.png              plots
A killed run restarted with `resume=True` reloads the checkpoint and continues with the next phase.
Every phase is seeded by its index (weights at a phase boundary + the phase index determine the rest),
so a resumed run ends with the same weights as an uninterrupted one.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import shutil
import time
from pathlib import Path
from types import ModuleType

import torch

from methods.adapters import apply_adapter, finalise, trainable_state
from methods.trainer import Phase, Trainer, json_line, make_accelerator
from utils.config import Config, TrainingConfig, save_config, to_dict
from utils.data import Item, LumeData, load_lume, resolve_mia
from utils.errors import UserError
from utils.io import AtomicDirectory, atomic_write_json, atomic_write_text, check_output_location
from utils.memory import PeakMemory
from utils.seeding import seed_everything
from utils.tokenization import Example, encode_item

CHECKPOINT = "checkpoint"
STATE_FILE = "state.json"
WEIGHTS_FILE = "trainable.safetensors"
# What decides the weights a run ends with; a resume must not change any of it.
RESUME_SECTIONS = ("model", "data", "method", "training", "adapter")


def resolve_paths(config: Config) -> tuple[str, str]:
    """(model name or folder, data folder): explicit config values, else the prepared world's."""
    workdir = Path(config.workdir)
    # The gold standard starts from the model before memorisation; every unlearning method from the target.
    default_model = "pretrained" if config.method.name == "gold_standard" else "target"
    model = config.model.name_or_path or str(workdir / default_model)
    data = config.data.path or str(workdir / "data")
    return model, data


def checkpoint_dir(run_dir: Path) -> Path:
    """checkpoint/, or the previous one AtomicDirectory set aside when a kill fell between its two renames."""
    current, previous = run_dir / CHECKPOINT, run_dir / f".{CHECKPOINT}.old"
    if not (current / STATE_FILE).is_file() and (previous / STATE_FILE).is_file():
        return previous
    return current


def resolve_forget_loss_ceiling(config: Config) -> Config:
    """Turn `forget_loss_ceiling: gold_standard` into the number `unlearn prepare` measured.

    The gold standard never saw the forget set, so its NLL on the forget answers is the level an
    unlearned model should reach; ascending past it is what drives MIA AUC below 0.5 (over-forgetting).
    """
    if config.method.forget_loss_ceiling != "gold_standard":
        return config
    report_path = Path(config.workdir) / "prepare_report.json"
    # The answer-level ceiling reads the gold standard's answer NLL; the document-level one its whole-text NLL.
    key = "text_nll" if config.method.forget_loss_ceiling_scope == "document" else "output_nll"
    try:
        level = json.loads(report_path.read_text())["gold_standard"]["forget"][key]
    except (OSError, KeyError, json.JSONDecodeError):
        raise UserError(f"method.forget_loss_ceiling=gold_standard needs {report_path} with the gold standard's "
                        f"forget {key} (run `unlearn prepare`), or give a number") from None
    return dataclasses.replace(config, method=dataclasses.replace(config.method, forget_loss_ceiling=float(level)))


STATE_KEYS = ("phases_done", "phases_total", "global_step", "log_lines")


def load_checkpoint(run_dir: Path) -> dict | None:
    """The checkpoint's state, None when there is none; a damaged one is a one-line UserError."""
    state_path = checkpoint_dir(run_dir) / STATE_FILE
    if not state_path.is_file():
        return None
    try:
        state = json.loads(state_path.read_bytes().decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise UserError(f"{state_path} is damaged ({exc.__class__.__name__}): the run in {run_dir} cannot be "
                        "resumed from it; choose another --out") from None
    if not isinstance(state, dict) or any(not isinstance(state.get(key), int) for key in STATE_KEYS):
        raise UserError(f"{state_path} is incomplete (it needs {', '.join(STATE_KEYS)}): the run in {run_dir} "
                        "cannot be resumed from it; choose another --out")
    return state


def file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def save_checkpoint(model, run_dir: Path, state: dict) -> None:
    """Weights, then their hash and the state, swapped in whole; non-finite weights are never written."""
    from safetensors.torch import save_file

    from methods.trainer import TrainingDiverged, all_finite

    weights = trainable_state(model)
    if not all_finite(weights.values()):
        raise TrainingDiverged(f"the weights are non-finite after phase {state['phases_done']}; the last good "
                               f"checkpoint in {run_dir} is kept (lower the learning rate)")
    with AtomicDirectory(run_dir / CHECKPOINT) as tmp:
        save_file(weights, str(tmp / WEIGHTS_FILE))
        atomic_write_json(tmp / STATE_FILE, {**state, "weights_sha256": file_sha256(tmp / WEIGHTS_FILE)})


def verify_checkpoint(run_dir: Path, state: dict) -> None:
    """The weights are the ones the state was written with (hash), before anything is loaded."""
    weights = checkpoint_dir(run_dir) / WEIGHTS_FILE
    if not weights.is_file():
        raise UserError(f"{weights} is missing: the run in {run_dir} cannot be resumed; choose another --out")
    expected = state.get("weights_sha256")
    if expected is not None and file_sha256(weights) != expected:
        raise UserError(f"{weights} is damaged (its hash differs from the one recorded in {STATE_FILE}): the run "
                        f"in {run_dir} cannot be resumed from it; choose another --out")


def restore_weights(model, run_dir: Path) -> None:
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    path = checkpoint_dir(run_dir) / WEIGHTS_FILE
    try:
        state = load_file(str(path))
    except (SafetensorError, OSError) as exc:
        raise UserError(f"{path} cannot be read ({str(exc).splitlines()[0] if str(exc) else exc.__class__.__name__})"
                        f": the run in {run_dir} cannot be resumed from it; choose another --out") from None
    missing = set(state) - {name for name, _ in model.named_parameters()}
    if missing:
        raise UserError(f"checkpoint in {run_dir} does not fit this model/adapter (e.g. {min(missing)})")
    model.load_state_dict(state, strict=False)


def check_resumable(config: Config, run_dir: Path) -> None:
    """A resumed run must continue the same training: the saved config.yaml has to agree on what trains."""
    import yaml

    saved_path = run_dir / "config.yaml"
    if not saved_path.is_file():
        return
    saved = yaml.safe_load(saved_path.read_text())
    current = to_dict(config)
    for section in RESUME_SECTIONS:
        if saved.get(section) != current[section]:
            key = next((f"{section}.{k}" for k in current[section]
                        if (saved.get(section) or {}).get(k) != current[section][k]), section)
            raise UserError(f"{run_dir} holds a run with a different {key} than this config "
                            f"({saved_path}); resume it with the same settings or choose another --out")
    saved_paths = resolve_paths(Config(workdir=saved.get("workdir", config.workdir), model=config.model,
                                       data=config.data, method=config.method))
    if saved_paths != resolve_paths(config):
        raise UserError(f"{run_dir} holds a run of {saved_paths[0]} on {saved_paths[1]}; "
                        "resume it with the same workdir or choose another --out")


def truncate_lines(path: Path, keep: int) -> None:
    """Drop log lines written after the checkpoint, so a resumed log reads like an uninterrupted one."""
    if path.is_file():
        lines = path.read_text(encoding="utf-8").splitlines(keepends=True)
        atomic_write_text(path, "".join(lines[:keep]))


def count_lines(path: Path) -> int:
    return len(path.read_text(encoding="utf-8").splitlines()) if path.is_file() else 0


def describe_run_folder(run_dir: Path) -> str:
    """What a run folder holds, in a few words, for messages about replacing it."""
    results = run_dir / "results.json"
    if results.is_file():
        try:
            score = json.loads(results.read_bytes().decode("utf-8")).get("final_score")
        except (UnicodeDecodeError, json.JSONDecodeError, AttributeError):
            score = "unreadable"
        return f"a finished run, final_score {score}"
    state_path = checkpoint_dir(run_dir) / STATE_FILE
    if state_path.is_file():
        return "an unfinished run with a checkpoint"
    return f"{sum(1 for _ in run_dir.rglob('*'))} files"


def read_finished_results(path: Path) -> dict:
    try:
        return json.loads(path.read_bytes().decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise UserError(f"{path} is damaged ({exc.__class__.__name__})") from None


def training_examples(items: list[Item], role: str, tokenizer, training: TrainingConfig) -> list[Example]:
    """The items as training examples. Without a tokenizer (a dry run that has none locally): token-less
    stand-ins in the same order, which give the same phases and step counts (those never read tokens)."""
    if tokenizer is None:
        return [Example(input_ids=[], labels=[], item_id=item.id, role=role) for item in items]
    return [encode_item(tokenizer, item, "output", training.max_length, role=role) for item in items]


def build_run_phases(method: ModuleType, config: Config, lume: LumeData, tokenizer) -> list[Phase]:
    """The phases a run of `config` trains, built by the method itself: shared by `run_unlearning` and
    `unlearn run --dry-run`, so the schedule a dry run shows is the one a run trains."""
    training = config.training
    forget = training_examples(lume.forget, "forget", tokenizer, training)
    retain = training_examples(lume.retain, "retain", tokenizer, training)
    return method.build_phases(forget, retain, config.method, training, training.seed)


def run_unlearning(config: Config, out_dir: str | Path, resume: bool = False, progress: bool = True,
                   evaluate: bool = True, accelerator=None, log=print, stop_after_phases: int | None = None,
                   overwrite: bool = False) -> dict:
    """Run the configured method; returns the final results dict (or the state when stopped early).

    A finished run (results.json) is never replaced unless `overwrite`; `resume` on it does nothing.
    """
    from methods.registry import get_method, prepare_reference
    from utils.models import load_model_and_tokenizer

    run_dir = Path(out_dir)
    check_output_location(run_dir, "folder")
    # The saved config holds resolved values (a gold-standard ceiling as its number): compare like with like.
    config = resolve_forget_loss_ceiling(config)
    finished = run_dir / "results.json"
    if finished.is_file() and not overwrite:
        if not resume:
            raise UserError(f"{run_dir} already holds a finished run ({finished}); choose another --out")
        check_resumable(config, run_dir)
        log(f"[run] {run_dir} is already finished ({finished}); nothing to do")
        return read_finished_results(finished)
    accelerator = accelerator or make_accelerator(config.training.mixed_precision)
    state = None if overwrite else load_checkpoint(run_dir)
    if state is not None and not resume:
        raise UserError(f"{run_dir} already holds a run (checkpoint after phase {state['phases_done']}); "
                        "pass --resume to continue it or choose another --out")
    if state is not None:
        check_resumable(config, run_dir)
        verify_checkpoint(run_dir, state)
    if evaluate:
        from utils.commands.evaluate import check_subset

        check_subset(config.evaluation.subset)  # now, not after the whole unlearning
    method = get_method(config.method.name)
    model_name, data_dir = resolve_paths(config)
    lume = load_lume(data_dir, config.data.split)
    _, mia_documents, mia_missing = resolve_mia(config.data.mia_path, data_dir, config.data.split)
    model, tokenizer = load_model_and_tokenizer(model_name, config.model.tokenizer, config.model.dtype,
                                                config.model.trust_remote_code)
    training = config.training
    phases = build_run_phases(method, config, lume, tokenizer)

    # The LoRA matrices are initialised from the global generator: seeded, a run is reproducible and all
    # processes of a distributed run start from the same adapter.
    seed_everything(training.seed)
    model = apply_adapter(model, config.adapter)
    # Before any training (and before a resumed run restores its weights): the reference is the start model.
    reference = prepare_reference(config.method, model, config.adapter.kind, phases, tokenizer,
                                  config.evaluation.nll_batch_size, accelerator.device)
    # Only now, with every input checked, does the run folder get written.
    if accelerator.is_main_process:
        if overwrite and run_dir.is_dir() and any(run_dir.iterdir()):
            log(f"[run] --overwrite: replacing the run in {run_dir} ({describe_run_folder(run_dir)})")
            shutil.rmtree(run_dir)
        run_dir.mkdir(parents=True, exist_ok=True)
        save_config(config, run_dir / "config.yaml")
        if state is None:
            # Lines of an attempt killed before its first checkpoint would otherwise lead the new log.
            truncate_lines(run_dir / "log.jsonl", 0)
            truncate_lines(run_dir / "phases.jsonl", 0)
    loss_fn = method.make_loss(config.method, reference)
    trainer = Trainer(model, tokenizer, training, loss_fn, accelerator=accelerator,
                      log_path=run_dir / "log.jsonl", progress=progress)

    phases_done = 0
    elapsed = 0.0
    if state is not None:
        restore_weights(trainer.unwrapped_model, run_dir)
        phases_done = state["phases_done"]
        elapsed = state.get("seconds", 0.0)
        trainer.global_step = state["global_step"]
        if accelerator.is_main_process:
            truncate_lines(run_dir / "log.jsonl", state["log_lines"])
            truncate_lines(run_dir / "phases.jsonl", phases_done)
        log(f"[run] resuming after phase {phases_done} of {len(phases)}")

    with PeakMemory() as peak_memory:
        bar_desc = f"{config.method.name}: phases"
        from tqdm.auto import tqdm

        for index in tqdm(range(phases_done, len(phases)), desc=bar_desc, initial=phases_done, total=len(phases),
                          disable=not (progress and accelerator.is_main_process), dynamic_ncols=True):
            started = time.perf_counter()
            phase = phases[index]
            result = trainer.train_phase(phase, index)
            elapsed += time.perf_counter() - started
            accelerator.wait_for_everyone()
            if accelerator.is_main_process:
                record = {"phase": index, "name": phase.name, **phase.info, "steps": result.steps,
                          "seconds": result.seconds, "loss": result.mean_loss,
                          "forget_nll": result.forget_nll, "retain_nll": result.retain_nll}
                record.update(_quick_check(trainer.unwrapped_model, tokenizer, lume, config, progress))
                with (run_dir / "phases.jsonl").open("a", encoding="utf-8") as handle:
                    handle.write(json_line(record))
                save_checkpoint(trainer.unwrapped_model, run_dir, {
                    "phases_done": index + 1, "phases_total": len(phases), "global_step": trainer.global_step,
                    "log_lines": count_lines(run_dir / "log.jsonl"), "seconds": elapsed,
                    "method": config.method.name})
            accelerator.wait_for_everyone()
            if stop_after_phases is not None and index + 1 >= stop_after_phases:
                return {"stopped_after_phase": index + 1}

    final = finalise(trainer.unwrapped_model, config.adapter)
    results: dict = {}
    if accelerator.is_main_process:
        from utils.models import save_model

        save_model(final, tokenizer, run_dir / "model")
        if evaluate:
            results = evaluate_run(final, tokenizer, lume, mia_documents, config, run_dir, elapsed, progress,
                                   model_name, data_dir, peak_memory.result(),
                                   warnings=[mia_missing] if mia_missing else [])
        from utils.plotting import plot_run

        plot_run(run_dir)
    accelerator.wait_for_everyone()
    return results


def _quick_check(model, tokenizer, lume, config: Config, progress: bool) -> dict:
    """Mean forget/retain regurgitation and knowledge on a few documents, for the per-chunk curves."""
    subset = config.evaluation.per_phase_subset
    if not subset:
        return {}
    from utils.evaluation import subset_items
    from utils.generation import generate_greedy
    from utils.metrics import knowledge_score, regurgitation_score

    model.eval()
    out = {}
    for split in ("forget", "retain"):
        items = subset_items(lume.split_items(split), subset)
        with torch.inference_mode():
            outputs = generate_greedy(model, tokenizer, [i.input for i in items],
                                      max_new_tokens=config.evaluation.per_phase_max_new_tokens,
                                      batch_size=config.evaluation.batch_size, progress=False)
        regurgitation = [regurgitation_score(i.output, o) for i, o in zip(items, outputs) if i.kind == "sc"]
        knowledge = [knowledge_score(i.output, o) for i, o in zip(items, outputs) if i.kind == "qa"]
        out[f"{split}_regurgitation"] = sum(regurgitation) / max(1, len(regurgitation))
        out[f"{split}_knowledge"] = sum(knowledge) / max(1, len(knowledge))
    model.train()
    return out


def evaluate_run(model, tokenizer, lume, mia_documents, config: Config, run_dir: Path, train_seconds: float,
                 progress: bool, model_name: str, data_dir: str, memory: dict | None = None,
                 warnings: list[str] | None = None) -> dict:
    from utils.commands.evaluate import resolve_utility_spec
    from utils.evaluation import evaluate_model, write_evaluation

    evaluation = evaluate_model(
        model, tokenizer, lume, mia_documents=mia_documents,
        utility_spec=resolve_utility_spec(config.evaluation.utility, config.workdir),
        max_new_tokens=config.evaluation.max_new_tokens, batch_size=config.evaluation.batch_size,
        nll_batch_size=config.evaluation.nll_batch_size, mmlu_shots=config.evaluation.mmlu_shots,
        mmlu_threshold=config.evaluation.mmlu_threshold, subset=config.evaluation.subset,
        evaluated={"model": str(run_dir / "model"), "unlearned_from": model_name, "data": data_dir,
                   "split": config.data.split, "method": config.method.name, "config": to_dict(config)},
        progress=progress, warnings=warnings)
    evaluation.results["method"] = config.method.name
    evaluation.results["timings"]["unlearning"] = train_seconds
    # Measured over the unlearning phases only (not loading, not this evaluation).
    evaluation.results["memory"] = dict(memory or {})
    write_evaluation(evaluation, run_dir)
    return evaluation.results
