"""One unlearning run from config to results: load, adapt, unlearn phase by phase, evaluate, plot.

The run folder holds:
  config.yaml        the resolved config (what actually ran)
  log.jsonl          one line per optimiser step
  phases.jsonl       one line per finished chunk/phase: losses and a quick forget/retain check
  before.json        the same check (and NLLs) of the model before unlearning: the plots' first point
  checkpoint/        trainable weights + state after the last finished phase (atomic)
  model/             the final model (LoRA merged unless adapter.merge_at_end is false)
  results.json, *_generations.jsonl, mia_nll.json   the final evaluation (utils.evaluation.evaluate)
  *.png              plots
A killed run restarted with `resume=True` reloads the checkpoint and continues with the next phase.
Every phase is seeded by its index (weights at a phase boundary + the phase index determine the rest),
so a resumed run ends with the same weights as an uninterrupted one.
"""

from __future__ import annotations

import dataclasses
import json
import time
from pathlib import Path
from types import ModuleType

from methods.engine.checkpoint import (
    STATE_FILE,
    check_same_phases,
    checkpoint_dir,
    checkpoint_due,
    keep_earlier_checkpoint,
    load_checkpoint,
    phases_fingerprint,
    restore_weights,
    save_checkpoint,
    verify_checkpoint,
)
from methods.engine.trainer import Phase, Trainer, json_line, make_accelerator
from utils.config import Config, resolve_saved_paths, save_config, to_dict
from utils.data.lume import Item, LumeData
from utils.data.tokenization import Example, encode_item
from utils.errors import UserError
from utils.io import atomic_write_text, check_output_location, read_json
from utils.memory import PeakMemory
from utils.models.adapters import apply_adapter, finalise
from utils.seeding import seed_everything

# What decides the weights a run ends with; a resume must not change any of it.
RESUME_SECTIONS = ("model", "data", "method", "training", "adapter")
# Settings in those sections that do not: a resume may change them.
RESUME_FREE = {"training": ("checkpoint_every", "keep_checkpoints", "report_to", "sharding",
                            "gradient_checkpointing")}


def resolve_paths(config: Config) -> tuple[str, str]:
    """(model a run starts from, data folder), as the experiment resolves them."""
    from utils.experiment.experiment import Experiment

    experiment = Experiment(config)
    return experiment.start_model, experiment.data_dir


def resolve_forget_loss_ceiling(config: Config) -> Config:
    """Turn `forget_loss_ceiling: gold_standard` into the number `unlearn prepare` measured.

    The gold standard never saw the forget set, so its NLL on the forget answers is the level an
    unlearned model should reach; ascending past it is what drives MIA AUC below 0.5 (over-forgetting).
    """
    if getattr(config.method, "forget_loss_ceiling", None) != "gold_standard":  # (only some methods have one)
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


def check_resumable(config: Config, run_dir: Path) -> None:
    """A resumed run must continue the same training: the saved config.yaml has to agree on what trains."""
    import yaml

    saved_path = run_dir / "config.yaml"
    if not saved_path.is_file():
        return
    saved = yaml.safe_load(saved_path.read_text())
    if isinstance(saved, dict):
        saved = resolve_saved_paths(saved)
    current = to_dict(config)
    if isinstance(saved, dict) and isinstance(saved.get("method"), dict):
        # Only the method's own settings decide its training (a run saved before the settings were typed
        # holds every method's keys).
        saved["method"] = {k: v for k, v in saved["method"].items() if k in current["method"]}
    defaults = to_dict(Config())
    if isinstance(saved.get("training"), dict) and "master_weights" not in saved["training"]:
        # Before fp32 master weights, bf16/fp16 last-k and full runs stepped their weights in place ("none");
        # for fp32 weights or LoRA the setting changes nothing, so any value continues such a run.
        low = (saved.get("model") or {}).get("dtype") in ("bfloat16", "float16") and \
            (saved.get("adapter") or {}).get("kind") != "lora"
        saved["training"]["master_weights"] = "none" if low else current["training"]["master_weights"]
    for section in RESUME_SECTIONS:
        if section != "method" and isinstance(saved.get(section), dict):
            # A setting added since the run was saved ran at its default.
            saved[section] = {**{k: v for k, v in defaults[section].items() if k not in saved[section]},
                              **saved[section]}
        for key in RESUME_FREE.get(section, ()):
            for side in (saved.get(section), current[section]):
                if isinstance(side, dict):
                    side.pop(key, None)
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


def check_free_disk(start_model: str, run_dir: Path, config: Config) -> None:
    """Refuse a run whose folder cannot hold what it will write: the final model (the start model's size) and,
    for last-k and full training, its checkpoints (trainable weights, at most the model's size each). A rough
    upper estimate from a local start model's weight files; a hub model's size is not known before download."""
    import shutil

    folder = Path(start_model).expanduser()
    if not folder.is_dir():
        return
    weights = sum(item.stat().st_size for pattern in ("*.safetensors", "*.bin") for item in folder.glob(pattern))
    copies = 1 + (config.training.keep_checkpoints if config.adapter.kind != "lora" else 0)
    needed = weights * copies
    existing = next(parent for parent in (run_dir, *run_dir.parents) if parent.exists())
    free = shutil.disk_usage(existing).free
    if needed > free:
        raise UserError(f"{existing} has {free / 2**30:.1f} GiB free; the run would write about "
                        f"{needed / 2**30:.1f} GiB (the final model and {copies - 1} checkpoint(s) of {start_model})")


def holds_run(run_dir: str | Path) -> bool:
    """Whether `run_dir` holds a run, finished or not (its config, its log, its results or a checkpoint)."""
    run_dir = Path(run_dir)
    return any(path.exists() for path in (run_dir / "config.yaml", run_dir / "log.jsonl", run_dir / "results.json",
                                          checkpoint_dir(run_dir)))


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
    return read_json(path, "results file")


def appends_eos(config: Config) -> bool:
    """Whether a run's examples end in EOS: `training.append_eos`, else the seed's choice (the gold standard
    only; unlearning examples end with their answer)."""
    if config.training.append_eos is not None:
        return config.training.append_eos
    return config.method.name == "gold_standard"


def example_encoder(tokenizer, config: Config):
    """encode(item, role, answer=None) -> Example: the item as a run trains on it, `answer` (when given)
    replacing its own. Without a tokenizer (a dry run that has none locally): a token-less stand-in, which
    gives the same phases and step counts (those never read tokens)."""
    def encode(item: Item, role: str, answer: str | None = None) -> Example:
        if tokenizer is None:
            return Example(input_ids=[], labels=[], item_id=item.id, role=role)
        if answer is not None:
            item = dataclasses.replace(item, output=answer)
        return encode_item(tokenizer, item, "output", config.training.max_length, role=role,
                           add_eos=appends_eos(config))

    return encode


def training_examples(items: list[Item], role: str, tokenizer, config: Config) -> list[Example]:
    """The items as training examples (stand-ins without a tokenizer, see `example_encoder`)."""
    encode = example_encoder(tokenizer, config)
    return [encode(item, role) for item in items]


def build_run_phases(method: ModuleType, config: Config, lume: LumeData, tokenizer) -> list[Phase]:
    """The phases a run of `config` trains, built by the method itself: shared by `run_unlearning` and
    `unlearn run --dry-run`, so the schedule a dry run shows is the one a run trains. A method with its
    own `make_examples` (methods/registry.py) makes its examples from the items."""
    from methods.engine.losses import check_loss_reduction

    training = config.training
    check_loss_reduction(method.NAME, training, *method.loss_kinds(config.method))
    make_examples = getattr(method, "make_examples", None)
    if make_examples is None:
        forget = training_examples(lume.forget, "forget", tokenizer, config)
        retain = training_examples(lume.retain, "retain", tokenizer, config)
    else:
        encode = example_encoder(tokenizer, config)
        forget = make_examples(lume.forget, "forget", encode, config.method, training.seed)
        retain = make_examples(lume.retain, "retain", encode, config.method, training.seed)
    return method.build_phases(forget, retain, config.method, training, training.seed)


def run_unlearning(config: Config, out_dir: str | Path, resume: bool = False, progress: bool = True,
                   evaluate: bool = True, accelerator=None, log=print, stop_after_phases: int | None = None,
                   overwrite: bool = False) -> dict:
    """`Experiment(config, out_dir).run(...)`, for callers that hold a config rather than an experiment."""
    from utils.experiment.experiment import Experiment

    return run_experiment(Experiment(config, out_dir), resume=resume, progress=progress, evaluate=evaluate,
                          accelerator=accelerator, log=log, stop_after_phases=stop_after_phases, overwrite=overwrite)


def run_experiment(experiment, resume: bool = False, progress: bool = True, evaluate: bool = True,
                   overwrite: bool = False, accelerator=None, log=print, stop_after_phases: int | None = None) -> dict:
    """Run the experiment's method into its run folder; returns the final results dict (or the state when
    stopped early). A finished run (results.json) is never replaced unless `overwrite`; `resume` on it
    returns its results; `resume` with no checkpoint starts afresh."""
    from utils.folders import check_not_input, check_overwrite, experiment_inputs, folder_lock

    accelerator = accelerator or make_accelerator(experiment.config.training.mixed_precision)
    if not experiment.run_dir_given:
        # The main process claims the folder (another run of the config started in the same second takes
        # the next one), and every process of the launch takes it.
        from utils.experiment.experiment import claim_run_dir

        chosen = str(claim_run_dir(experiment.run_dir)) if accelerator.is_main_process else None
        if accelerator.num_processes > 1:
            from accelerate.utils import broadcast_object_list

            chosen = broadcast_object_list([chosen])[0]
        experiment = experiment.with_config(experiment.config, run_dir=chosen)
    check_output_location(experiment.run_dir, "folder")
    check_not_input(experiment.run_dir, experiment_inputs(experiment))
    if overwrite:
        check_overwrite(experiment.run_dir)
    # One writer per run folder: the main process holds its lock to the end (the launch's others write through it).
    with folder_lock(experiment.run_dir, "unlearn run", main=accelerator.is_main_process):
        # The others start writing only once the main process holds the lock (and has marked a new folder).
        accelerator.wait_for_everyone()
        return _run_in_folder(experiment, resume, progress, evaluate, overwrite, accelerator, log, stop_after_phases)


def _run_in_folder(experiment, resume: bool, progress: bool, evaluate: bool, overwrite: bool, accelerator, log,
                   stop_after_phases: int | None) -> dict:
    from methods.registry import get_method, make_loss, prepare_reference
    from utils.evaluation.plots import BEFORE_FILE
    from utils.folders import clear_folder

    run_dir = experiment.run_dir
    # The saved config holds resolved values (a gold-standard ceiling as its number): compare like with like.
    config = resolve_forget_loss_ceiling(experiment.config)
    experiment = experiment.with_config(config)
    finished = run_dir / "results.json"
    if finished.is_file() and not overwrite:
        if not resume:
            raise UserError(f"{run_dir} already holds a finished run ({finished}); choose another --out")
        check_resumable(config, run_dir)
        log(f"[run] {run_dir} is already finished ({finished}); nothing to do")
        return read_finished_results(finished)
    state = None if overwrite else load_checkpoint(run_dir)
    if state is not None and not resume:
        raise UserError(f"{run_dir} already holds a run (checkpoint after phase {state['phases_done']}); "
                        "pass --resume to continue it or choose another --out")
    if state is not None:
        check_resumable(config, run_dir)
        verify_checkpoint(run_dir, state)
    method = get_method(config.method.name)
    from utils.experiment.tracking import chosen_trackers, open_trackers

    chosen_trackers(config.training.report_to)  # a tracker that is not installed stops the run here
    if evaluate:
        experiment.check_inputs()  # the utility set, MIA folder and every scored term now, not after unlearning
    check_free_disk(experiment.start_model, run_dir, config)
    lume = experiment.lume()
    model, tokenizer = experiment.load(experiment.start_model, config.model.tokenizer)
    training = config.training
    phases = build_run_phases(method, config, lume, tokenizer)
    fingerprint = phases_fingerprint(phases)
    if state is not None:
        check_same_phases(run_dir, state, fingerprint)

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
            clear_folder(run_dir)  # (its lock and marker stay)
        run_dir.mkdir(parents=True, exist_ok=True)
        save_config(config, run_dir / "config.yaml")
        if state is None:
            # Lines of an attempt killed before its first checkpoint would otherwise lead the new log.
            truncate_lines(run_dir / "log.jsonl", 0)
            truncate_lines(run_dir / "phases.jsonl", 0)
            (run_dir / BEFORE_FILE).unlink(missing_ok=True)
    loss_fn = make_loss(config.method, reference)
    trackers = open_trackers(training.report_to, run_dir, experiment.name, to_dict(config),
                             accelerator.is_main_process)
    if state is not None:
        # Into the whole model, before the Trainer wraps or shards it.
        restore_weights(model, run_dir)
    trainer = Trainer(model, tokenizer, training, loss_fn, accelerator=accelerator,
                      log_path=run_dir / "log.jsonl", progress=progress, trackers=trackers)

    if trainer.sharded and accelerator.is_main_process:
        log(f"[run] training.sharding: fsdp: weights, gradients and optimiser state split over "
            f"{accelerator.num_processes} processes")
    phases_done = 0
    elapsed = 0.0
    if state is not None:
        phases_done = state["phases_done"]
        elapsed = state.get("seconds", 0.0)
        trainer.global_step = state["global_step"]
        if accelerator.is_main_process:
            truncate_lines(run_dir / "log.jsonl", state["log_lines"])
            truncate_lines(run_dir / "phases.jsonl", phases_done)
        log(f"[run] resuming after phase {phases_done} of {len(phases)}")

    # The quick checks below run on every process, each on its share of the items (Shards), so none waits
    # idle at a barrier while the main process checks alone; the main process writes them.
    from utils.evaluation.sharding import Shards

    shards = Shards.of(accelerator)
    if state is None and config.evaluation.per_phase_subset:
        # The first point of the per-chunk plots: the model before any unlearning.
        before = _starting_point(trainer.plain_model(), tokenizer, lume, config, phases, progress, shards)
        if accelerator.is_main_process:
            atomic_write_text(run_dir / BEFORE_FILE, json_line(before))
    accelerator.wait_for_everyone()

    with PeakMemory() as peak_memory:
        from tqdm.auto import tqdm

        for index in tqdm(range(phases_done, len(phases)), desc=f"{config.method.name}: phases", initial=phases_done,
                          total=len(phases), disable=not (progress and accelerator.is_main_process),
                          dynamic_ncols=True):
            started = time.perf_counter()
            phase = phases[index]
            result = trainer.train_phase(phase, index)
            elapsed += time.perf_counter() - started
            check = (_quick_check(trainer.plain_model(), tokenizer, lume, config, progress, shards)
                     if config.evaluation.per_phase_subset else {})
            due = checkpoint_due(index + 1, len(phases), training.checkpoint_every)
            # On every process: under sharding, gathering the weights is a collective.
            weights = trainer.trainable_state() if due else None
            if accelerator.is_main_process:
                record = {"phase": index, "name": phase.name, **phase.info, "steps": result.steps,
                          "seconds": result.seconds, "loss": result.mean_loss,
                          "forget_nll": result.forget_nll, "retain_nll": result.retain_nll, **check}
                with (run_dir / "phases.jsonl").open("a", encoding="utf-8") as handle:
                    handle.write(json_line(record))
                if trackers:
                    trackers.log({f"phase/{key}": value for key, value in record.items()
                                  if key not in ("phase", "steps")}, step=trainer.global_step)
                if due:
                    keep_earlier_checkpoint(run_dir, training.keep_checkpoints)
                    save_checkpoint(weights, run_dir, {
                        "phases_done": index + 1, "phases_total": len(phases), "global_step": trainer.global_step,
                        "log_lines": count_lines(run_dir / "log.jsonl"), "seconds": elapsed,
                        "method": config.method.name, "phases_sha256": fingerprint})
            accelerator.wait_for_everyone()
            if stop_after_phases is not None and index + 1 >= stop_after_phases:
                if trackers:
                    trackers.finish()
                return {"stopped_after_phase": index + 1}

    final = finalise(trainer.plain_model(), config.adapter)
    results: dict = {}
    if accelerator.is_main_process:
        from utils.models.loading import save_model

        save_model(final, tokenizer, run_dir / "model")
    if evaluate:
        # Every process evaluates its share (no process idles at a barrier past the collective timeout).
        evaluation = evaluate_run(experiment, final, tokenizer, elapsed, peak_memory.result(), progress,
                                  Shards.of(accelerator))
        results = evaluation.results
    if trackers:
        trackers.log({f"final/{key}": results.get(key) for key in ("final_score", "task_aggregate", "mia_auc",
                                                                   "mia_score")}
                     | {"final/utility": (results.get("utility") or {}).get("score"),
                        "final/robustness": (results.get("robustness") or {}).get("mean_recovery")},
                     step=trainer.global_step)
        trackers.finish()
    if accelerator.is_main_process:
        from utils.evaluation.plots import plot_run
        from utils.models.model_card import write_run_card

        # model/README.md: with the scores when evaluated (results is empty otherwise).
        write_run_card(run_dir / "model", config, experiment.start_model, results, final)
        plot_run(run_dir)
        if evaluate:
            from utils.evaluation.evaluate import write_evaluation

            # Last: results.json marks the run finished, so a kill before it leaves a run --resume completes.
            write_evaluation(evaluation, run_dir)
    accelerator.wait_for_everyone()
    return results


def _quick_check(model, tokenizer, lume, config: Config, progress: bool, shards=None) -> dict:
    """Mean forget/retain regurgitation and knowledge on a few documents, for the per-chunk curves; under
    several processes each generates its `shards` share (every process must call it)."""
    subset = config.evaluation.per_phase_subset
    if not subset:
        return {}
    from utils.evaluation.evaluate import split_means, subset_items
    from utils.evaluation.sharding import ALONE

    model.eval()
    out = {}
    settings = config.evaluation
    for split in ("forget", "retain"):
        means = split_means(model, tokenizer, subset_items(lume.split_items(split), subset),
                            settings.per_phase_max_new_tokens, settings.batch_size, settings.clean_up_tokenization_spaces,
                            progress=False, shards=shards or ALONE)
        out[f"{split}_regurgitation"], out[f"{split}_knowledge"] = means["regurgitation"], means["knowledge"]
    model.train()
    return out


def _starting_point(model, tokenizer, lume, config: Config, phases: list[Phase], progress: bool,
                    shards=None) -> dict:
    """The quick check and the forget/retain NLLs of the model before any unlearning (before.json): the first
    point of the per-chunk plots. Each NLL is the mean per-example NLL over the examples of the first phase that
    trains on that role, counted as the trainer counts them (weight not 0)."""
    import torch

    from methods.engine.trainer import nll_per_example
    from utils.data.tokenization import collate
    from utils.evaluation.sharding import ALONE

    shards = shards or ALONE
    record = {"phase": -1, "name": "before", **_quick_check(model, tokenizer, lume, config, progress, shards)}
    device = next(model.parameters()).device
    size = config.evaluation.nll_batch_size

    def nlls(examples, _warn) -> list[float]:
        values: list[float] = []
        with torch.inference_mode():
            for start in range(0, len(examples), size):
                batch = collate(examples[start:start + size], tokenizer.pad_token_id)
                values += nll_per_example(model, {k: v.to(device) for k, v in batch.items()}).tolist()
        return values

    model.eval()
    for role, is_role in (("forget", lambda e: e.role == "forget"), ("retain", lambda e: e.role != "forget")):
        chosen = ([e for e in phase.examples if is_role(e) and e.weight != 0] for phase in phases)
        examples = next((found for found in chosen if found), [])
        record[f"{role}_nll"] = sum(shards.map(nlls, examples, lambda _note: None)) / len(examples) if examples else None
    model.train()
    return record


def evaluate_run(experiment, model, tokenizer, train_seconds: float, memory: dict | None, progress: bool,
                 shards=None):
    """The final evaluation of a run (an Evaluation, not yet written) with the run's name, method, time and
    memory."""
    from utils.evaluation.sharding import ALONE

    shards = shards or ALONE
    config = experiment.config
    evaluation = experiment.evaluate(
        model, tokenizer, progress=progress, shards=shards,
        evaluated={"model": str(experiment.run_dir / "model"), "unlearned_from": experiment.start_model,
                   "method": config.method.name, "config": to_dict(config)})
    evaluation.results["method"] = config.method.name
    evaluation.results["name"] = experiment.name
    evaluation.results["timings"]["unlearning"] = train_seconds
    # Measured over the unlearning phases only (not loading, not this evaluation).
    evaluation.results["memory"] = dict(memory or {})
    if config.evaluation.attacks:
        # After the sharded evaluation, on every process: each trains and scores its share of the attacks.
        from utils.experiment.robustness import run_attacks

        started = time.perf_counter()
        evaluation.results["robustness"] = run_attacks(experiment, model, tokenizer, evaluation, shards, progress)
        evaluation.results["timings"]["robustness"] = time.perf_counter() - started
    return evaluation
