"""One unlearning run from config to results, as named steps: open the folder, build the inputs, prepare the
model, train the phases (a callback after each), finish. `unlearn run`, the sweep and the rehearsal benchmark all
call these steps (`run_experiment` in order; `benchmarks/rehearsal.py` one by one, on a shortened schedule).

The run folder holds:
  config.yaml        the resolved config (what actually ran)
  log.jsonl          one line per optimiser step
  phases.jsonl       one line per finished chunk/phase: losses and a quick forget/retain check (and, with
                     training.stop_chunk_at, `stopped_early`: the epoch a phase stopped after, or null)
  before.json        the same check (and NLLs) of the model before unlearning: the plots' first point
  checkpoint/        trainable weights + state after the last finished phase (atomic)
  model/             the final model (LoRA merged unless adapter.merge_at_end is false)
  results.json, *_generations.jsonl, mia_nll.json   the final evaluation (utils.evaluation.evaluate)
  selection.json     with checkpoint selection on (training.select, patience, budget_minutes): the score's curve
                     and the chosen point (utils.experiment.selection)
  *.png              plots
A killed run restarted with `resume=True` reloads the checkpoint and continues with the next phase.
Every phase is seeded by its index (weights at a phase boundary + the phase index determine the rest),
so a resumed run ends with the same weights as an uninterrupted one.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import shutil
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from types import ModuleType

import torch
import yaml
from tqdm.auto import tqdm

from methods.engine.checkpoint import (
    STATE_FILE,
    check_same_phases,
    checkpoint_dir,
    checkpoint_due,
    keep_earlier_checkpoint,
    load_checkpoint,
    phases_fingerprint,
    read_checkpoint_file,
    restore_weights,
    save_checkpoint,
    verify_checkpoint,
)
from methods.engine.trainer import Phase, PhaseResult, Trainer, json_line, make_accelerator, nll_per_example
from methods.registry import get_method, make_loss, prepare_reference
from utils.config import Config, resolve_saved_paths, save_config, to_dict
from utils.data.lume import LumeData
from utils.data.tokenization import collate
from utils.errors import UserError
from utils.evaluation.evaluate import Evaluation, subset_check, write_evaluation
from utils.evaluation.plots import BEFORE_FILE, plot_run, plot_selection
from utils.evaluation.sharding import ALONE, Shards
from utils.experiment.fingerprints import INPUTS_KEY, input_fingerprints
from utils.experiment.inputs import build_run_phases, resolve_forget_loss_ceiling
from utils.experiment.resolved import ResolvedConfig, claim_run_dir
from utils.experiment.robustness import add_robustness
from utils.experiment.schedule import chunk_stop_level
from utils.experiment.selection import (
    BEST_FILE,
    SELECTION_FILE,
    Selection,
    gold_forget_nll,
    selection_on,
    selection_sample,
)
from utils.experiment.tracking import chosen_trackers, open_trackers
from utils.folders import check_not_input, check_overwrite, clear_folder, experiment_inputs, folder_lock
from utils.io import atomic_write_text, check_output_location, read_json
from utils.memory import PeakMemory
from utils.models.adapters import apply_adapter, finalise
from utils.models.loading import save_model
from utils.models.model_card import write_run_card
from utils.seeding import seed_everything

# What decides the weights a run ends with; a resume must not change any of it.
RESUME_SECTIONS = ("model", "data", "method", "training", "adapter")
# Settings in those sections that do not: a resume may change them.
RESUME_FREE = {"training": ("checkpoint_every", "keep_checkpoints", "report_to", "sharding",
                            "gradient_checkpointing")}


def resolve_paths(config: Config) -> tuple[str, str]:
    """(model a run starts from, data folder), as the experiment resolves them."""
    resolved = ResolvedConfig(config)
    return resolved.start_model, resolved.data_dir


def check_resumable(config: Config, run_dir: Path) -> None:
    """A resumed run must continue the same training: the saved config.yaml has to agree on what trains."""
    saved_path = run_dir / "config.yaml"
    if not saved_path.is_file():
        return
    saved = yaml.safe_load(saved_path.read_text())
    if isinstance(saved, dict):
        saved = resolve_saved_paths(saved)
    from methods.registry import saved_method_section

    current = to_dict(config)
    if isinstance(saved, dict) and isinstance(saved.get("method"), dict):
        # A run saved in an older spelling (every method's keys, flat term knobs) is read as it is written now.
        saved["method"] = saved_method_section(saved["method"])
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


# ----------------------------------------------------------------------------------------------
# The steps


@dataclass
class Run:
    """One run between its steps: what `open_folder` found, then what each later step adds."""

    experiment: ResolvedConfig  # with the resolved config (a gold-standard ceiling as its number)
    accelerator: object
    resume: bool
    overwrite: bool
    progress: bool
    evaluate: bool
    log: Callable
    state: dict | None = None  # the checkpoint's state when resuming
    finished: dict | None = None  # results.json of a finished run that `resume` reads back
    # build_inputs
    method: ModuleType | None = None
    lume: LumeData | None = None
    model: object = None
    tokenizer: object = None
    phases: list[Phase] = field(default_factory=list)
    # prepare_model
    trainer: Trainer | None = None
    trackers: object = None
    fingerprint: str = ""
    phases_done: int = 0
    elapsed: float = 0.0
    stopped: bool = False  # by `stop_after_phases`: the run ends there, without `finish`
    shards: Shards = ALONE
    # Checkpoint selection (training.select, patience, budget_minutes); None when off.
    selection: Selection | None = None
    gold_forget_nll: float | None = None
    # training.stop_chunk_at as a number (gold_standard read from the prepare report); None when off.
    chunk_stop_level: float | None = None

    @property
    def config(self) -> Config:
        return self.experiment.config

    @property
    def run_dir(self) -> Path:
        return self.experiment.run_dir

    @property
    def is_main(self) -> bool:
        return self.accelerator.is_main_process


@contextlib.contextmanager
def open_folder(experiment: ResolvedConfig, *, resume: bool = False, overwrite: bool = False, progress: bool = True,
                evaluate: bool = True, accelerator=None, log=print) -> Iterator[Run]:
    """Step 1, open the folder: claim a run folder nobody named, refuse one that is an input or (without
    `overwrite`) holds a run it would replace, hold its lock to the end of the `with`, and check a resume
    against the saved config.yaml and checkpoint. A finished run is never replaced unless `overwrite`; `resume`
    on it yields a Run whose `finished` holds its results. Nothing is written here: the folder's files start
    once every input is checked (`start_folder`, in `prepare_model`)."""
    accelerator = accelerator or make_accelerator(experiment.config.training.mixed_precision)
    if not experiment.run_dir_given:
        # The main process claims the folder (another run of the config started in the same second takes
        # the next one), and every process of the launch takes it.
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
        # The saved config holds resolved values (a gold-standard ceiling as its number): compare like with like.
        config = resolve_forget_loss_ceiling(experiment.config)
        run = Run(experiment.with_config(config), accelerator, resume, overwrite, progress, evaluate, log)
        if selection_on(config.training):
            # Read from the config as written: resolved, its gold-standard ceiling is only a number.
            run.gold_forget_nll = gold_forget_nll(experiment.config)
        run.chunk_stop_level = chunk_stop_level(config)
        run_dir = run.run_dir
        finished = run_dir / "results.json"
        if finished.is_file() and not overwrite:
            if not resume:
                raise UserError(f"{run_dir} already holds a finished run ({finished}); choose another --out")
            check_resumable(config, run_dir)
            log(f"[run] {run_dir} is already finished ({finished}); nothing to do")
            run.finished = read_finished_results(finished)
            yield run
            return
        run.state = None if overwrite else load_checkpoint(run_dir)
        if run.state is not None and not resume:
            raise UserError(f"{run_dir} already holds a run (checkpoint after phase {run.state['phases_done']}); "
                            "pass --resume to continue it or choose another --out")
        if run.state is not None:
            check_resumable(config, run_dir)
            verify_checkpoint(run_dir, run.state)
        yield run


def build_inputs(run: Run) -> None:
    """Step 2, build the inputs: the method, every input a run and its evaluation read (checked now, not after
    unlearning), room on disk, the LUME items, the start model with its tokenizer, and the phases the method
    builds from the items' training examples."""
    config = run.config
    run.method = get_method(config.method.name)
    chosen_trackers(config.training.report_to)  # a tracker that is not installed stops the run here
    if run.evaluate:
        run.experiment.check_inputs()  # the utility set, MIA folder and every scored term now, not after unlearning
    check_free_disk(run.experiment.start_model, run.run_dir, config)
    run.lume = run.experiment.lume()
    run.model, run.tokenizer = run.experiment.load(run.experiment.start_model, config.model.tokenizer)
    run.phases = build_run_phases(run.method, config, run.lume, run.tokenizer)


def prepare_model(run: Run) -> None:
    """Step 3, prepare the model: the adapter, the reference, the folder's first files (`start_folder`), the
    loss, the trackers and the Trainer; a resumed run checks its phases against the checkpoint's and restores its
    weights and counters; a new one writes the starting point (before.json)."""
    config, run_dir, accelerator = run.config, run.run_dir, run.accelerator
    run.fingerprint = phases_fingerprint(run.phases)
    if run.state is not None:
        check_same_phases(run_dir, run.state, run.fingerprint)
    # The LoRA matrices are initialised from the global generator: seeded, a run is reproducible and all
    # processes of a distributed run start from the same adapter.
    seed_everything(config.training.seed)
    model = apply_adapter(run.model, config.adapter)
    # Before any training (and before a resumed run restores its weights): the reference is the start model.
    reference = prepare_reference(config.method, model, config.adapter.kind, run.phases, run.tokenizer,
                                  config.evaluation.nll_batch_size, accelerator.device)
    start_folder(run)
    loss_fn = make_loss(config.method, reference)
    run.trackers = open_trackers(config.training.report_to, run_dir, run.experiment.name, to_dict(config),
                                 run.is_main)
    if run.state is not None:
        # Into the whole model, before the Trainer wraps or shards it.
        restore_weights(model, run_dir)
    # The Trainer takes the chunk-stop level as a number; the saved config keeps it as written.
    training = config.training if run.chunk_stop_level is None else \
        dataclasses.replace(config.training, stop_chunk_at=run.chunk_stop_level)
    run.trainer = Trainer(model, run.tokenizer, training, loss_fn, accelerator=accelerator,
                          log_path=run_dir / "log.jsonl", progress=run.progress, trackers=run.trackers)
    run.model = None  # the Trainer holds it now (trainer.plain_model())
    if selection_on(config.training):
        start_selection(run)
    if run.trainer.sharded and run.is_main:
        run.log(f"[run] training.sharding: fsdp: weights, gradients and optimiser state split over "
                f"{accelerator.num_processes} processes")
    if run.state is not None:
        run.phases_done = run.state["phases_done"]
        run.elapsed = run.state.get("seconds", 0.0)
        run.trainer.global_step = run.state["global_step"]
        if run.is_main:
            truncate_lines(run_dir / "log.jsonl", run.state["log_lines"])
            truncate_lines(run_dir / "phases.jsonl", run.phases_done)
        run.log(f"[run] resuming after phase {run.phases_done} of {len(run.phases)}")
    # The quick checks run on every process, each on its share of the items, so none waits idle at a barrier
    # while the main process checks alone; the main process writes them.
    run.shards = Shards.of(accelerator)
    if run.state is None and config.evaluation.per_phase_subset:
        # The first point of the per-chunk plots: the model before any unlearning.
        before = starting_point(run.trainer.plain_model(), run.tokenizer, run.lume, config, run.phases, run.shards)
        if run.is_main:
            atomic_write_text(run_dir / BEFORE_FILE, json_line(before))
    accelerator.wait_for_everyone()


def start_selection(run: Run) -> None:
    """The run's Selection: restored from the checkpoint when resuming, else scored once before unlearning;
    hooked into the Trainer's step loop."""
    config, trainer = run.config, run.trainer
    if trainer.sharded:
        raise UserError("training.select, patience and budget_minutes keep weights from one process and do not "
                        "support training.sharding: fsdp yet (set training.sharding: none)")
    run.selection = Selection(config.training, selection_sample(run.lume, run.tokenizer, config),
                              run.tokenizer.pad_token_id, config.evaluation.nll_batch_size, gold=run.gold_forget_nll)
    saved = (run.state or {}).get("selection")
    if saved is not None:
        best = read_checkpoint_file(run.run_dir, BEST_FILE) if saved["best"] is not None and \
            config.training.select.keep == "best" else None
        run.selection.restore(saved, best)
    else:
        run.selection.begin(trainer)
    trainer.step_hook = lambda phase: run.selection.after_step(trainer, phase)


def start_folder(run: Run) -> None:
    """The run folder's first writes, once every input is checked: an `--overwrite` clears the folder, the
    resolved config.yaml is saved, and a new run drops the lines of an attempt killed before its first
    checkpoint (main process only)."""
    run_dir = run.run_dir
    if not run.is_main:
        return
    if run.overwrite and run_dir.is_dir() and any(run_dir.iterdir()):
        run.log(f"[run] --overwrite: replacing the run in {run_dir} ({describe_run_folder(run_dir)})")
        clear_folder(run_dir)  # (its lock and marker stay)
    run_dir.mkdir(parents=True, exist_ok=True)
    save_config(run.config, run_dir / "config.yaml")
    if run.state is None:
        truncate_lines(run_dir / "log.jsonl", 0)
        truncate_lines(run_dir / "phases.jsonl", 0)
        (run_dir / BEFORE_FILE).unlink(missing_ok=True)


AfterPhase = Callable[[Run, int, PhaseResult], None]


def record_phase(run: Run, index: int, result: PhaseResult) -> None:
    """The default callback after phase `index`: the quick check, its line in phases.jsonl, the trackers and the
    checkpoint when due. Runs on every process (the check is sharded and gathering weights is a collective);
    the main process writes."""
    config, run_dir, trainer = run.config, run.run_dir, run.trainer
    phase = run.phases[index]
    check = subset_check(trainer.plain_model(), run.tokenizer, run.lume, config.evaluation, run.shards)
    selection = run.selection
    score = selection.after_phase(trainer, index) if selection else None
    # A run that stops early gets a checkpoint now: a resume must not train on.
    due = checkpoint_due(index + 1, len(run.phases), config.training.checkpoint_every) or \
        bool(selection and selection.stop_reason)
    # On every process: under sharding, gathering the weights is a collective.
    weights = trainer.trainable_state() if due else None
    if run.is_main:
        record = {"phase": index, "name": phase.name, **phase.info, "steps": result.steps,
                  "seconds": result.seconds, "loss": result.mean_loss,
                  "forget_nll": result.forget_nll, "retain_nll": result.retain_nll, **check}
        if selection:
            record["selection_score"] = score
        if config.training.stop_chunk_at is not None:
            record["stopped_early"] = result.stopped_early
        with (run_dir / "phases.jsonl").open("a", encoding="utf-8") as handle:
            handle.write(json_line(record))
        if run.trackers:
            run.trackers.log({f"phase/{key}": value for key, value in record.items()
                              if key not in ("phase", "steps")}, step=trainer.global_step)
        if due:
            keep_earlier_checkpoint(run_dir, config.training.keep_checkpoints)
            extra = {BEST_FILE: selection.best_weights} if selection and selection.best_weights else None
            save_checkpoint(weights, run_dir, {
                "phases_done": index + 1, "phases_total": len(run.phases), "global_step": trainer.global_step,
                "log_lines": count_lines(run_dir / "log.jsonl"), "seconds": run.elapsed,
                "method": config.method.name, "phases_sha256": run.fingerprint,
                **({"selection": selection.state()} if selection else {})}, extra)


def train_phases(run: Run, after_phase: AfterPhase = record_phase, stop_after_phases: int | None = None) -> dict:
    """Step 4, train the phases not done yet, each on the one loop, calling `after_phase(run, index, result)`
    after each (default `record_phase`). Returns the peak memory of the phases; after `stop_after_phases`
    phases it stops (trackers closed, `run.stopped` set)."""
    config = run.config
    with PeakMemory() as peak_memory:
        for index in tqdm(range(run.phases_done, len(run.phases)), desc=f"{config.method.name}: phases",
                          initial=run.phases_done, total=len(run.phases),
                          disable=not (run.progress and run.is_main), dynamic_ncols=True):
            if run.selection and run.selection.stop_reason:
                break
            started = time.perf_counter()
            result = run.trainer.train_phase(run.phases[index], index)
            run.elapsed += time.perf_counter() - started
            if result.stopped_early and run.is_main:
                stop = result.stopped_early
                run.log(f"[run] {result.name}: forget NLL {stop['forget_nll']:.3f} reached {stop['level']:.3f} "
                        f"after epoch {stop['epoch']} of {run.phases[index].epochs:g}; next phase")
            after_phase(run, index, result)
            run.accelerator.wait_for_everyone()
            run.phases_done = index + 1
            if run.selection and run.selection.stop_reason:
                run.log(f"[run] training stopped after phase {index} of {len(run.phases)} "
                        f"({run.selection.stop_reason})")
                break
            if stop_after_phases is not None and run.phases_done >= stop_after_phases:
                if run.trackers:
                    run.trackers.finish()
                run.stopped = True
                break
    return peak_memory.result()


def finish(run: Run, memory: dict | None = None) -> dict:
    """Step 5, finish: the final model (LoRA merged unless kept) saved, evaluated with the attacks when the run
    evaluates, the trackers' last values, the model card and plots, and results.json last: it marks the run
    finished, so a kill before it leaves a run `resume` completes. Returns the results ({} without evaluation)."""
    config, run_dir, trainer = run.config, run.run_dir, run.trainer
    model = trainer.plain_model()
    selected = None
    if run.selection:
        _point, weights, selected = run.selection.choose(trainer)
        if weights:
            model.load_state_dict(weights, strict=False)
    final = finalise(model, config.adapter)
    results: dict = {}
    if run.is_main:
        save_model(final, run.tokenizer, run_dir / "model")
    if run.evaluate:
        # Every process evaluates its share (no process idles at a barrier past the collective timeout).
        evaluation = evaluate_run(run.experiment, final, run.tokenizer, run.elapsed, memory, run.progress,
                                  Shards.of(run.accelerator))
        results = evaluation.results
    if run.trackers:
        run.trackers.log({f"final/{key}": results.get(key) for key in ("final_score", "task_aggregate", "mia_auc",
                                                                       "mia_score")}
                         | {"final/utility": (results.get("utility") or {}).get("score"),
                            "final/robustness": (results.get("robustness") or {}).get("mean_recovery")},
                         step=trainer.global_step)
        run.trackers.finish()
    if run.is_main:
        # model/README.md: with the scores when evaluated (results is empty otherwise).
        write_run_card(run_dir / "model", config, run.experiment.start_model, results, final)
        plot_run(run_dir)
        if selected is not None:
            atomic_write_text(run_dir / SELECTION_FILE, json_line(selected))
            plot_selection(selected, run_dir / "selection.png")
        if run.evaluate:
            if selected is not None:
                evaluation.results["selection"] = selected
            write_evaluation(evaluation, run_dir)
    run.accelerator.wait_for_everyone()
    return results


def run_experiment(experiment: ResolvedConfig, resume: bool = False, progress: bool = True, evaluate: bool = True,
                   overwrite: bool = False, accelerator=None, log=print, stop_after_phases: int | None = None,
                   after_phase: AfterPhase = record_phase) -> dict:
    """The steps in order: run the experiment's method into its run folder; returns the final results dict (or
    the state when stopped early). A finished run (results.json) is never replaced unless `overwrite`; `resume`
    on it returns its results; `resume` with no checkpoint starts afresh."""
    with open_folder(experiment, resume=resume, overwrite=overwrite, progress=progress, evaluate=evaluate,
                     accelerator=accelerator, log=log) as run:
        if run.finished is not None:
            return run.finished
        build_inputs(run)
        prepare_model(run)
        memory = train_phases(run, after_phase, stop_after_phases)
        if run.stopped:
            return {"stopped_after_phase": run.phases_done}
        return finish(run, memory)


def launch_run(experiment: ResolvedConfig, num_processes: int, resume: bool = False, progress: bool = True,
               evaluate: bool = True, overwrite: bool = False, log=print) -> dict:
    """`run_experiment` on `num_processes` processes (accelerate's notebook_launcher) when more than one, else in
    this process; returns the results the run wrote ({} when it wrote none)."""
    if num_processes <= 1:
        return run_experiment(experiment, resume=resume, progress=progress, evaluate=evaluate, overwrite=overwrite,
                              log=log)
    from accelerate import notebook_launcher

    # notebook_launcher exports mixed_precision as MIXED_PRECISION, which the Accelerator does not read: the
    # launched processes see no ACCELERATE_MIXED_PRECISION (unless this process had one) and take
    # training.mixed_precision (see make_accelerator), as `unlearn run` does. The config's value is passed anyway,
    # so a launcher that did export it would agree.
    notebook_launcher(run_experiment, (experiment, resume, progress, evaluate, overwrite),
                      num_processes=num_processes, mixed_precision=experiment.config.training.mixed_precision)
    return experiment.finished_results() or {}


def run_unlearning(config: Config, out_dir: str | Path, resume: bool = False, progress: bool = True,
                   evaluate: bool = True, accelerator=None, log=print, stop_after_phases: int | None = None,
                   overwrite: bool = False) -> dict:
    """`run_experiment` for callers that hold a config rather than an experiment."""
    return run_experiment(ResolvedConfig(config, out_dir), resume=resume, progress=progress, evaluate=evaluate,
                          accelerator=accelerator, log=log, stop_after_phases=stop_after_phases, overwrite=overwrite)


def starting_point(model, tokenizer, lume: LumeData, config: Config, phases: list[Phase], shards: Shards = ALONE) -> dict:
    """The quick check and the forget/retain NLLs of the model before any unlearning (before.json): the first
    point of the per-chunk plots. Each NLL is the mean per-example NLL over the examples of the first phase that
    trains on that role, counted as the trainer counts them (weight not 0)."""
    record = {"phase": -1, "name": "before", **subset_check(model, tokenizer, lume, config.evaluation, shards)}
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


def evaluate_run(experiment: ResolvedConfig, model, tokenizer, train_seconds: float, memory: dict | None,
                 progress: bool, shards: Shards = ALONE) -> Evaluation:
    """The final evaluation of a run (an Evaluation, not yet written) with the run's name, method, time and
    memory, and the configured attacks."""
    config = experiment.config
    evaluation = experiment.evaluate(
        model, tokenizer, progress=progress, shards=shards,
        evaluated={"model": str(experiment.run_dir / "model"), "unlearned_from": experiment.start_model,
                   "method": config.method.name, "config": to_dict(config)})
    evaluation.results["method"] = config.method.name
    evaluation.results["name"] = experiment.name
    # What `unlearn reproduce` checks before it reruns the run: the bytes of every input.
    evaluation.results[INPUTS_KEY] = input_fingerprints(experiment)
    evaluation.results["timings"]["unlearning"] = train_seconds
    # Measured over the unlearning phases only (not loading, not this evaluation).
    evaluation.results["memory"] = dict(memory or {})
    # After the sharded evaluation, on every process: each trains and scores its share of the attacks.
    add_robustness(experiment, model, tokenizer, evaluation, shards, progress)
    return evaluation
