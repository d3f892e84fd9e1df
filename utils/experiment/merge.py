"""`unlearn merge`: finished runs of one starting model merged into a new run folder, evaluated like any run.

The folder holds:
  merge.json         the recipe: how, density, weights, the runs merged (folder, method, name, score)
  model/             the merged model (full weights, safetensors, tokenizer, a model card)
  results.json, *_generations.jsonl, mia_nll.json   its evaluation, results.json written last

The evaluation settings (data, split, subset, utility, MIA) are the first run's config with `--set` over it, so
the merged model is scored like the runs it came from; results.json says "method": "merge" and carries the
recipe, and `unlearn leaderboard` lists it beside them.
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Sequence
from pathlib import Path

from utils.config import Config, load_config
from utils.errors import UserError
from utils.experiment.experiment import Experiment
from utils.experiment.resolved import claim_run_dir, timestamped_run_dir
from utils.experiment.run import describe_run_folder, evaluate_run
from utils.io import atomic_write_json, check_output_location, read_json

# What a merge's --set may change: how it is evaluated and its name. Model, training, method and adapter keys
# describe the runs (the merge is made in their precision), and a merge trains nothing.
SETTABLE = ("evaluation.", "data.", "experiment.name")
RECIPE_FILE = "merge.json"


# What a run's final evaluation writes before results.json (utils.evaluation.evaluate.write_evaluation).
EVALUATION_FILES = ("forget_generations.jsonl", "retain_generations.jsonl", "mia_nll.json", "mmlu_metrics.json")


@dataclasses.dataclass(frozen=True)
class FinishedRun:
    folder: Path
    config: Config
    start_model: str  # the model it was unlearned from, as its config resolves it
    results: dict | None  # results.json, None for a run saved with --no-eval

    @property
    def model_dir(self) -> Path:
        return self.folder / "model"

    @property
    def label(self) -> str:
        return (self.results or {}).get("name") or self.config.experiment.name or self.config.method.name


def read_finished_run(folder: str | Path) -> FinishedRun:
    """A run folder whose model was saved (the end of its training); anything else is refused in one line."""
    folder = Path(folder)
    if not folder.is_dir():
        raise UserError(f"run folder not found: {folder}")
    if not (folder / "config.yaml").is_file():
        raise UserError(f"{folder} is not a run folder (no config.yaml)")
    model_dir = folder / "model"
    if not ((model_dir / "config.json").is_file() or (model_dir / "adapter_config.json").is_file()):
        raise UserError(f"{folder} has no saved model yet ({describe_run_folder(folder)}): an unfinished run; "
                        "finish it with `unlearn run CONFIG --out "
                        f"{folder} --resume` first")
    results_path = folder / "results.json"
    # A run saved with --no-eval has no results.json and merges; one whose evaluation left files but not
    # results.json (written last) was cut short and is unfinished.
    started = next((name for name in EVALUATION_FILES if (folder / name).is_file()), None)
    if started is not None and not results_path.is_file():
        raise UserError(f"{folder} is unfinished (no results.json; its evaluation was cut short after writing "
                        f"{started}); finish it with `unlearn run CONFIG --out {folder} --resume` first")
    config = load_config(folder / "config.yaml")
    results = read_json(results_path, "results file") if results_path.is_file() else None
    return FinishedRun(folder, config, Experiment(config).start_model, results)


def model_identity(run: FinishedRun) -> dict[str, str | None]:
    """What must agree for runs to merge: the model they started from (a local folder by its real path), its
    revision, the tokenizer the config names, and the precision (a base loaded in another dtype than a run saved
    would count its rounding as part of that run's change)."""
    def where(name: str | None) -> str | None:
        if name is None:
            return None
        path = Path(name).expanduser()
        return str(path.resolve()) if path.exists() else name

    model = run.config.model
    return {"model": where(run.start_model), "model.revision": model.revision,
            "model.tokenizer": where(model.tokenizer), "model.dtype": model.dtype}


def check_same_start(runs: Sequence[FinishedRun]) -> None:
    first = model_identity(runs[0])
    for run in runs[1:]:
        differ = [f"{key} {first[key]} vs {value}" for key, value in model_identity(run).items() if value != first[key]]
        if differ:
            raise UserError(f"{runs[0].folder} and {run.folder} did not start from the same model "
                            f"({'; '.join(differ)}): only runs of one model merge")


def check_same_tokenizer(runs: Sequence[FinishedRun], tokenizer) -> None:
    """Each run's saved tokenizer must be the starting model's: the same vocabulary and special tokens."""
    from utils.models.loading import load_tokenizer

    expected = (tokenizer.get_vocab(), tokenizer.eos_token, tokenizer.pad_token)
    for run in runs:
        saved = load_tokenizer(str(run.model_dir), run.config.model.trust_remote_code)
        if (saved.get_vocab(), saved.eos_token, saved.pad_token) != expected:
            raise UserError(f"{run.model_dir} holds another tokenizer than the starting model's "
                            "(vocabulary or special tokens differ): only runs of one model merge")


def check_same_architecture(runs: Sequence[FinishedRun], model) -> None:
    expected = model.config.model_type
    for run in runs:
        path = run.model_dir / "config.json"
        if path.is_file():
            found = read_json(path, "model config").get("model_type")
            if found != expected:
                raise UserError(f"{run.model_dir} is a {found} model, the starting model a {expected}: only runs "
                                "of one model merge")


def merge_config(first: FinishedRun, overrides: Sequence[str]) -> Config:
    """The first run's config with the --set overrides a merge admits (see SETTABLE)."""
    for override in overrides:
        key = override.split("=", 1)[0].strip()
        if not any(key == allowed or (allowed.endswith(".") and key.startswith(allowed)) for allowed in SETTABLE):
            raise UserError(f"--set {key}: a merge takes only evaluation.*, data.* and experiment.name keys "
                            "(the runs decide the rest)")
    return load_config(first.folder / "config.yaml", list(overrides))


def check_merge_folder(out: Path, runs: Sequence[FinishedRun], overwrite: bool) -> None:
    """The refusals of `unlearn run`: a finished run (results.json) or a run with a checkpoint is replaced only
    with `overwrite`; and never a folder that is, or holds, one of the runs being merged."""
    from methods.engine.checkpoint import STATE_FILE, checkpoint_dir

    check_output_location(out, "folder")
    for run in runs:
        if out.resolve() == run.folder.resolve() or out.resolve() in run.folder.resolve().parents:
            raise UserError(f"--out {out} holds the run {run.folder} being merged; choose another --out")
    if overwrite:
        return
    if (out / "results.json").is_file():
        raise UserError(f"{out} already holds a finished run ({out / 'results.json'}); choose another --out "
                        "(or pass --overwrite)")
    if (checkpoint_dir(out) / STATE_FILE).is_file():
        raise UserError(f"{out} already holds a run (with a checkpoint); choose another --out (or pass --overwrite)")


def merge_runs(run_dirs: Sequence[str | Path], out: str | Path | None = None, how: str = "ties",
               weights: Sequence[float] | None = None, density: float | None = None,
               overrides: Sequence[str] = (), overwrite: bool = False, evaluate: bool = True,
               progress: bool = True, log=print) -> tuple[Path, dict]:
    """Merge the runs into `out` (default runs/<name>-<time>) and evaluate; returns (folder, results) (results
    empty without `evaluate`). Every input is checked before the starting model loads; `out`, never one of the
    runs, is locked while it is written."""
    from utils.folders import check_not_input, check_overwrite, folder_lock, real

    arguments = (run_dirs, out, how, weights, density, overrides, overwrite, evaluate, progress, log)
    if out is None:  # a new runs/<name>-<time> folder, claimed: no other writer can have it
        return _merge_runs(*arguments)
    for folder in run_dirs:
        if Path(folder).exists() and real(folder).is_relative_to(real(out)):
            raise UserError(f"--out {out} holds the run {folder} being merged; choose another --out")
    check_not_input(out, [("run", folder) for folder in run_dirs])  # (the one case left: inside a run)
    if overwrite:
        check_overwrite(out)
    with folder_lock(out, "unlearn merge"):
        return _merge_runs(*arguments)


def _merge_runs(run_dirs: Sequence[str | Path], out: str | Path | None, how: str, weights: Sequence[float] | None,
                density: float | None, overrides: Sequence[str], overwrite: bool, evaluate: bool, progress: bool,
                log) -> tuple[Path, dict]:
    from utils.folders import check_not_input, clear_folder, experiment_inputs
    from utils.memory import PeakMemory
    from utils.models.merging import check_merge_settings, merge_task_vectors

    weights, density = check_merge_settings(how, len(run_dirs), weights, density)
    folders = [Path(folder) for folder in run_dirs]
    repeated = next((f for i, f in enumerate(folders) if f.resolve() in [g.resolve() for g in folders[:i]]), None)
    if repeated is not None:
        raise UserError(f"{repeated} is given twice; to count a run more, give it a larger --weights entry")
    runs = [read_finished_run(folder) for folder in folders]
    check_same_start(runs)
    config = merge_config(runs[0], overrides)
    named = any(o.split("=", 1)[0].strip() == "experiment.name" for o in overrides)
    name = config.experiment.name if named and config.experiment.name else f"merge-{how}"
    config = dataclasses.replace(config, experiment=dataclasses.replace(config.experiment, name=name))
    if out is not None:
        check_merge_folder(Path(out), runs, overwrite)
    experiment = Experiment(config, out)
    if out is not None:
        check_not_input(out, experiment_inputs(experiment, model=runs[0].start_model))
    if evaluate:
        experiment.check_inputs()  # the data, MIA and utility set now, not after the merge
    start = runs[0].start_model
    model, tokenizer = experiment.load(start, config.model.tokenizer)
    check_same_architecture(runs, model)
    check_same_tokenizer(runs, tokenizer)

    started = time.perf_counter()
    with PeakMemory() as peak:
        model, counts = merge_task_vectors(model, [run.model_dir for run in runs], how, weights, density)
    seconds = time.perf_counter() - started
    log(f"[merge] {how} of {len(runs)} runs: {counts['tensors_changed']} of {counts['tensors']} tensors changed")

    # Only now, with every input checked and the merge made, is the folder written.
    run_dir = Path(out) if out is not None else claim_run_dir(timestamped_run_dir(name))
    if overwrite and run_dir.is_dir() and any(run_dir.iterdir()):
        log(f"[merge] --overwrite: replacing {run_dir} ({describe_run_folder(run_dir)})")
        clear_folder(run_dir)  # (its lock and marker stay)
    run_dir.mkdir(parents=True, exist_ok=True)
    recipe = {"how": how, "density": density, "weights": weights, "unlearned_from": start,
              "runs": [{"folder": str(run.folder), "name": run.label, "method": run.config.method.name,
                        "final_score": (run.results or {}).get("final_score")} for run in runs],
              **counts}
    atomic_write_json(run_dir / RECIPE_FILE, recipe)
    from utils.models.loading import save_model

    save_model(model, tokenizer, run_dir / "model")
    results: dict = {}
    evaluation = None
    if evaluate:
        from utils.config import to_dict

        # The merged model cost its runs' unlearning as well as the merge: the leaderboard's seconds say so.
        spent = [((run.results or {}).get("timings") or {}).get("unlearning") for run in runs]
        known = all(isinstance(value, (int, float)) for value in spent)
        # A run's own evaluation (and its robustness attacks, when evaluation.attacks asks for them).
        evaluation = evaluate_run(experiment.with_config(config, run_dir=run_dir), model, tokenizer,
                                  sum(spent) + seconds if known else seconds, peak.result(), progress)
        results = evaluation.results
        results["method"] = "merge"
        results["merge"] = recipe
        results["timings"]["merge"] = seconds
        if not known:
            del results["timings"]["unlearning"]
        # The first run's method and training settings describe that run, not this model: only what scored it.
        settings = to_dict(config)
        results["evaluated"] |= {"method": "merge", "merged_runs": [str(run.folder) for run in runs],
                                 "config": {key: settings[key] for key in ("workdir", "data", "evaluation")}}
    write_merge_card(run_dir / "model", name, config, recipe, results, model)
    if evaluation is not None:
        from utils.evaluation.evaluate import write_evaluation

        # Last: results.json marks the merge finished.
        write_evaluation(evaluation, run_dir)
    return run_dir, results


def merge_card(folder: Path, name: str, config: Config, recipe: dict, results: dict, environment: dict) -> str:
    """The merged model's README.md, in the layout of a run's card (utils/models/model_card.py)."""
    from utils.models.model_card import (
        TASK,
        environment_section,
        is_hub_name,
        loading_section,
        model_index,
        render,
        score_rows,
        table,
    )

    start = recipe["unlearned_from"]
    front: dict = {}
    if is_hub_name(start):
        front["base_model"] = start
    front |= {"library_name": "transformers", "pipeline_tag": "text-generation",
              "tags": ["unlearning", "lume", "merge", recipe["how"]]}
    index = model_index(name, config.data.split, results)
    if index:
        front["model-index"] = index
    how = (f"TIES (trim to density {recipe['density']:g}, elect a sign per weight, disjoint mean)"
           if recipe["how"] == "ties" else "a linear combination of their task vectors")
    intro = (f"# {name}\n\nA causal language model made by merging {len(recipe['runs'])} unlearning runs of "
             f"`{start}` ({TASK}) with {how}: the starting weights plus the merge of what each run changed.\n\n"
             f"- weights in `{config.model.dtype}`\n- made with lume-unlearning (`unlearn merge`); `merge.json` "
             "beside this folder holds the recipe.")
    runs = "## Runs merged\n\n| run | method | weight | its final score |\n| --- | --- | --- | --- |\n" + "\n".join(
        f"| {run['folder']} | {run['method']} | {weight:g} | "
        f"{'-' if run['final_score'] is None else format(run['final_score'], '.4f')} |"
        for run, weight in zip(recipe["runs"], recipe["weights"]))
    scores = score_rows(results)
    evaluation = ("## Evaluation\n\nScored the official way, as the runs were (`results.json` holds every term):\n\n"
                  + table(scores, ("score", "value"), places=4)) if scores else (
        f"## Evaluation\n\nNot evaluated when this card was written (`unlearn evaluate --model {folder}` scores it).")
    return render(front, [intro, runs, evaluation, loading_section(folder, False, config.model.trust_remote_code),
                          environment_section(environment)])


def write_merge_card(folder: Path, name: str, config: Config, recipe: dict, results: dict, model) -> None:
    from utils.environment import describe_environment
    from utils.io import atomic_write_text
    from utils.models.model_card import CARD_FILE

    environment = results.get("environment") or describe_environment(model)
    atomic_write_text(folder / CARD_FILE, merge_card(folder, name, config, recipe, results, environment))
