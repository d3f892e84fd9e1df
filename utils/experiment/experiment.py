"""One experiment, resolved once: what the CLI, the notebooks, quickstart and the benchmarks all call.

An `Experiment` is a validated `Config` plus the places it resolves to: the model a run starts from,
the target, the gold standard, the data folder and split, the MIA documents, the utility benchmark
and the run folder. Every entry point goes through it, so they cannot disagree on what "evaluate with
this config" means (the same subset, MMLU shots and threshold, MIA folder and utility set everywhere).

    experiment = Experiment.from_config("configs/sugd.yaml", ["training.epochs=1"], run_dir="runs/sugd")
    experiment.prepare()            # the tiny world (cached); for real checkpoints: checks they are reachable
    results = experiment.run()      # unlearn, checkpoint per phase, evaluate; resumes a killed run
    experiment.evaluate_checkpoint(experiment.gold_standard, "runs/gold")   # any checkpoint, same evaluation
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from utils.config import Config, load_config
from utils.errors import UserError
from utils.project import project_path


def resolve_utility_spec(spec: str | None, workdir: str | Path) -> str | None:
    """An explicit spec, else the prepared world's synthetic set when it exists, else none."""
    if spec:
        kind, _, target = spec.partition(":")
        if kind == "none":
            return None
        if kind not in ("mmlu", "synthetic") or not target:
            raise UserError(f"--utility must be mmlu:DIR, mmlu:hf:ID, synthetic:FILE or none, got {spec!r}")
        if not target.startswith("hf:") and not Path(target).exists():
            raise UserError(f"utility data not found: {target}")
        return spec
    default = Path(workdir) / "data" / "general" / "multiple_choice.jsonl"
    return f"synthetic:{default}" if default.is_file() else None


RUNS = Path("runs")


def timestamped_run_dir(name: str, runs: Path = RUNS) -> Path:
    """runs/<name>-<YYYYmmdd-HHMMSS>, with -2, -3, ... when a run of that name started in the same second."""
    import time

    stem = f"{name}-{time.strftime('%Y%m%d-%H%M%S')}"
    candidate, count = runs / stem, 1
    while candidate.exists():
        count += 1
        candidate = runs / f"{stem}-{count}"
    return candidate


def check_every_term(lume, subset: int | None) -> None:
    """The final evaluation scores all 12 split/task/kind terms (utils.evaluation.metrics.compute_terms refuses an
    empty one): a data set, or a subset of it, lacking one is refused before any model loads or trains."""
    from utils.data.lume import SPLITS, TASKS
    from utils.evaluation.evaluate import subset_items

    for split in SPLITS:
        items = subset_items(lume.split_items(split), subset)
        present = {(item.task, item.kind) for item in items}
        for task in TASKS:
            for kind, what in (("sc", "sentence-completion (sc)"), ("qa", "question (qa)")):
                if (task, kind) not in present:
                    within = "" if subset is None else f" within evaluation.subset={subset}"
                    raise UserError(f"the {split} set has no {what} items for {task}{within}: all 12 split/task/kind "
                                    "terms are needed for the task aggregate")


def claim_run_dir(path: Path) -> Path:
    """Create `path`, or the next free `<path>-N` beside it: of two runs started in the same second, each
    gets a folder of its own (the check in `timestamped_run_dir` comes long before the folder is made)."""
    candidate, count = Path(path), 1
    while True:
        try:
            candidate.mkdir(parents=True)
            return candidate
        except FileExistsError:
            count += 1
            candidate = Path(path).with_name(f"{Path(path).name}-{count}")


def latest_run_dir(name: str, runs: Path = RUNS) -> Path | None:
    """The newest runs/<name>-<time> folder (runs/<name>, the folder of releases before run names, counts
    as the oldest); None when there is none."""
    import re

    if not runs.is_dir():
        return None
    pattern = re.compile(rf"{re.escape(name)}-(\d{{8}}-\d{{6}})(?:-(\d+))?")
    stamped = [(match.group(1), int(match.group(2) or 1), path) for path in runs.iterdir()
               if path.is_dir() and (match := pattern.fullmatch(path.name))]
    if stamped:
        return max(stamped, key=lambda entry: entry[:2])[2]
    return runs / name if (runs / name).is_dir() else None


class Experiment:
    """A config and everything it resolves to; data and MIA documents are read once, on first use."""

    def __init__(self, config: Config, run_dir: str | Path | None = None, *, source: str | Path | None = None,
                 overrides: Sequence[str] = ()):
        self.config = config
        # Where the config came from: a sweep rebuilds each run's config from these.
        self.source = Path(source) if source is not None else None
        # What tells this run apart: experiment.name, else the config file's stem, else the method.
        self.name = config.experiment.name or (self.source.stem if self.source is not None else config.method.name)
        # A run folder nobody named is runs/<name>-<start time>: two runs of a config never collide.
        self.run_dir_given = run_dir is not None
        self.run_dir = Path(run_dir) if run_dir is not None else timestamped_run_dir(self.name)
        self.overrides = list(overrides)
        self.workdir = Path(config.workdir)
        self.target = config.model.name_or_path or str(self.workdir / "target")
        # The gold standard starts from the model before memorisation; every unlearning method from the target.
        self.start_model = (config.model.name_or_path or str(self.workdir / "pretrained")
                            if config.method.name == "gold_standard" else self.target)
        self.gold_standard = config.model.gold_standard or str(self.workdir / "gold_standard")
        self.data_dir = config.data.path or str(self.workdir / "data")
        self.split = config.data.split
        # The LUME items and MIA documents, read on first use (shared with experiments on the same data).
        self.read_inputs: dict = {}

    @classmethod
    def from_config(cls, path: str | Path | None = None, overrides: Sequence[str] = (),
                    run_dir: str | Path | None = None) -> Experiment:
        """Load and validate a config (YAML + `key=value` overrides)."""
        return cls(load_config(path, overrides), run_dir, source=path, overrides=overrides)

    @classmethod
    def in_notebook(cls, config_path: str | Path, overrides: Sequence[str] = (),
                    run_dir: str | Path | None = None) -> Experiment:
        """`from_config` with the config file and the run folder read relative to the project root (the paths
        inside a config always are), so a notebook or a scheduled notebook job works from any current folder."""
        return cls.from_config(project_path(config_path), overrides, None if run_dir is None else project_path(run_dir))

    @property
    def uses_real_model(self) -> bool:
        """Whether the config names its own model: then there is no tiny world to build."""
        return self.config.model.name_or_path is not None

    def with_config(self, config: Config, run_dir: str | Path | None = None,
                    source: str | Path | None = None) -> Experiment:
        """Another config in the same role (a run's resolved config; one method of quickstart's list). The
        data and MIA documents already read are kept when the new config reads the same ones."""
        other = Experiment(config, run_dir if run_dir is not None else self.run_dir,
                           source=source if source is not None else self.source, overrides=self.overrides)
        other.run_dir_given = self.run_dir_given if run_dir is None else True
        if (other.data_dir, other.split, config.data.mia_path) == (self.data_dir, self.split, self.config.data.mia_path):
            other.read_inputs = self.read_inputs
        return other

    # ------------------------------------------------------------------------------------------
    # Inputs, resolved once

    @property
    def utility(self) -> str | None:
        """The utility benchmark spec (checked: a named file that is missing is a UserError)."""
        return resolve_utility_spec(self.config.evaluation.utility, self.workdir)

    def lume(self):
        """The benchmark items of the configured folder and split (read and validated once)."""
        if "lume" not in self.read_inputs:
            from utils.data.lume import load_lume

            self.read_inputs["lume"] = load_lume(self.data_dir, self.split)
        return self.read_inputs["lume"]

    def mia(self) -> tuple[Path | None, dict | None, str | None]:
        """(MIA folder, member/nonmember documents, why the MIA is not measured): `data.mia_path`, 'none',
        or the folder found next to the data."""
        if "mia" not in self.read_inputs:
            from utils.data.lume import resolve_mia

            self.read_inputs["mia"] = resolve_mia(self.config.data.mia_path, self.data_dir, self.split)
        return self.read_inputs["mia"]

    def check_inputs(self) -> None:
        """Read everything a run or an evaluation needs, so a bad input stops it before a model loads."""
        self.utility  # noqa: B018 (resolving the spec checks the file exists)
        lume = self.lume()
        self.mia()
        check_every_term(lume, self.config.evaluation.subset)

    # ------------------------------------------------------------------------------------------
    # Steps

    def prepare(self, out: str | Path | None = None, progress: bool = True, log=print, isolated: bool = False) -> dict:
        """Build (or reuse, from its cache) the tiny world the config describes; for a config whose model is a
        real checkpoint, build nothing: check that its model, tokenizer, gold standard, data, MIA documents and
        utility set are reachable, print them as one table ({"reachable": rows}) and stop at a missing one.

        `isolated` builds it in a child process (`unlearn prepare`): training creates an accelerate state,
        and a notebook that will launch processes with notebook_launcher must not hold one.
        """
        if self.uses_real_model:
            from dataclasses import asdict

            from utils.experiment.doctor import require_reachable

            return {"reachable": [asdict(row) for row in require_reachable(self, log)]}
        if isolated:
            return self._prepare_in_child(out, progress)
        from utils.experiment.world import prepare

        return prepare(self.config, out, progress=progress, log=log)

    def _prepare_in_child(self, out: str | Path | None, progress: bool) -> dict:
        import subprocess
        import sys
        import tempfile

        from utils.config import save_config
        from utils.io import read_json

        workdir = Path(out) if out is not None else self.workdir
        with tempfile.TemporaryDirectory(prefix="prepare-") as scratch:
            resolved = Path(scratch) / "config.yaml"
            save_config(self.config, resolved)  # the resolved config: no --set to re-parse
            command = [sys.executable, "-m", "lume_unlearning", "prepare", "--config", str(resolved),
                       "--out", str(workdir), *([] if progress else ["--quiet"])]
            completed = subprocess.run(command, capture_output=not progress, text=True, check=False)
        if completed.returncode != 0:
            last = (completed.stderr or "").strip().splitlines()[-1:] if completed.stderr else []
            raise UserError(f"unlearn prepare failed in its own process ({last[0] if last else 'see its output'})")
        return read_json(workdir / "prepare_report.json", "prepare report")

    def evaluate(self, model, tokenizer, out: str | Path | None = None, *, evaluated: dict | None = None,
                 progress: bool = True, warnings: Sequence[str] = (), shards=None):
        """Score `model` the official way with this config's evaluation settings; written to `out` if given.
        Under several processes (`shards`, a utils.evaluation.sharding.Shards) each scores its share, every
        process gets the whole evaluation and the first one writes it."""
        from utils.evaluation.evaluate import evaluate_model, write_evaluation
        from utils.evaluation.sharding import ALONE

        shards = shards or ALONE

        settings = self.config.evaluation
        mia_dir, mia_documents, mia_missing = self.mia()
        evaluation = evaluate_model(
            model, tokenizer, self.lume(), mia_documents=mia_documents, utility_spec=self.utility,
            max_new_tokens=settings.max_new_tokens, batch_size=settings.batch_size,
            nll_batch_size=settings.nll_batch_size, mmlu_shots=settings.mmlu_shots,
            mmlu_threshold=settings.mmlu_threshold, subset=settings.subset,
            clean_up_spaces=settings.clean_up_tokenization_spaces, parity=settings.parity,
            evaluated={"data": self.data_dir, "split": self.split,
                       "mia": None if mia_documents is None else str(mia_dir), "utility": self.utility,
                       **(evaluated or {})},
            progress=progress, warnings=[*([mia_missing] if mia_missing else []), *warnings], shards=shards)
        if out is not None and shards.is_main:
            write_evaluation(evaluation, out)
        return evaluation

    def load(self, model_name: str, tokenizer: str | None = None):
        """(model, tokenizer) of a checkpoint with this config's dtype and remote-code setting, on the GPU if any
        (this process's own GPU when a launcher started several)."""
        import os

        import torch

        from utils.models.loading import load_model_and_tokenizer

        # model.revision is a version of the configured model: not of a run's output or another checkpoint.
        revision = self.config.model.revision if model_name in (self.target, self.start_model) else None
        model, tokenizer = load_model_and_tokenizer(model_name, tokenizer, self.config.model.dtype,
                                                    self.config.model.trust_remote_code, revision=revision)
        if torch.cuda.is_available():
            model.to(f"cuda:{int(os.environ.get('LOCAL_RANK', '0'))}")
        return model, tokenizer

    def evaluate_checkpoint(self, model_name: str, out: str | Path | None = None, tokenizer: str | None = None,
                            label: str | None = None, progress: bool = True, target: str | None = None) -> dict:
        """Load a checkpoint (folder, hub name or LoRA adapter) and evaluate it, then run the configured
        robustness attacks on it (`evaluation.attacks`; recovery measured against `target`, default this
        experiment's target); returns results.json's dict."""
        import time

        from utils.evaluation.sharding import Shards

        # Started by `accelerate launch` or torchrun on several processes: each evaluates its share.
        shards = Shards.from_environment()
        self.check_inputs()
        model, loaded_tokenizer = self.load(model_name, tokenizer)
        started = time.perf_counter()  # the evaluation's time, not the load's
        evaluation = self.evaluate(model, loaded_tokenizer, evaluated={"model": model_name}, progress=progress,
                                   shards=shards)
        evaluation.results["timings"]["total"] = time.perf_counter() - started
        if self.config.evaluation.attacks:
            from utils.experiment.robustness import run_attacks

            started = time.perf_counter()
            evaluation.results["robustness"] = run_attacks(self, model, loaded_tokenizer, evaluation, shards,
                                                           progress, target)
            evaluation.results["timings"]["robustness"] = time.perf_counter() - started
        if label is not None:
            evaluation.results["method"] = evaluation.results["name"] = label
        if out is not None and shards.is_main:
            from utils.evaluation.evaluate import write_evaluation

            write_evaluation(evaluation, out)
        return evaluation.results

    def run(self, resume: bool = False, overwrite: bool = False, evaluate: bool = True, progress: bool = True,
            accelerator=None, log=print, stop_after_phases: int | None = None, num_processes: int = 1) -> dict:
        """Unlearn with the configured method into `run_dir`, then evaluate (see utils.experiment.run).

        `num_processes > 1` launches the run on that many processes with accelerate's notebook_launcher
        and returns the results it wrote.
        """
        from utils.experiment.run import run_experiment

        if num_processes > 1:
            from accelerate import notebook_launcher

            # notebook_launcher exports mixed_precision as MIXED_PRECISION, which the Accelerator does not read:
            # the launched processes see no ACCELERATE_MIXED_PRECISION (unless this process had one) and take
            # training.mixed_precision (see make_accelerator), as `unlearn run` does. The config's value is
            # passed anyway, so a launcher that did export it would agree.
            notebook_launcher(run_experiment, (self, resume, progress, evaluate, overwrite),
                              num_processes=num_processes, mixed_precision=self.config.training.mixed_precision)
            return self.finished_results() or {}
        return run_experiment(self, resume=resume, progress=progress, evaluate=evaluate, overwrite=overwrite,
                              accelerator=accelerator, log=log, stop_after_phases=stop_after_phases)

    def plan(self) -> dict:
        """The schedule `run()` would train, without loading a model (`unlearn run --dry-run`)."""
        from utils.experiment.schedule import plan_run

        return plan_run(self)

    def finished_results(self) -> dict | None:
        """The run folder's results.json, None when the run has not finished."""
        from utils.io import read_json

        path = self.run_dir / "results.json"
        return read_json(path, "results file") if path.is_file() else None

    def references(self) -> tuple[dict[str, str], list[str]]:
        """({label: checkpoint} a run is read against, [why a reference is left out]).

        An unlearning run: the gold standard (what perfect unlearning looks like; `model.gold_standard`, else
        `<workdir>/gold_standard` when it exists) and the target (before unlearning). A gold-standard run: on the
        tiny world the target; on a real config the base model it starts from, and an earlier gold standard
        when `model.gold_standard` names one."""
        if self.config.method.name == "gold_standard":
            if not self.uses_real_model:
                return {"target": self.target}, []
            names = {"base": self.start_model}
            if self.config.model.gold_standard is not None:
                names["gold_standard"] = self.gold_standard
            return names, []
        names, left_out = {}, []
        if self.config.model.gold_standard is not None or Path(self.gold_standard).is_dir():
            names["gold_standard"] = self.gold_standard
        else:
            left_out.append(f"gold standard left out: {self.gold_standard} does not exist (set model.gold_standard, "
                            "or train one with a gold-standard config)")
        names["target"] = self.target
        return names, left_out

    def reference_tokenizer(self, checkpoint: str) -> str | None:
        """The tokenizer to load with a reference: its own when its folder holds one, else the config's."""
        from utils.models.loading import TOKENIZER_FILES

        folder = Path(checkpoint).expanduser()
        if folder.is_dir() and any((folder / name).is_file() for name in TOKENIZER_FILES):
            return None
        return self.config.model.tokenizer

    def reference_dir(self, label: str, checkpoint: str) -> Path:
        """Where a reference's evaluation is kept: `<workdir>/references/<label>-<key>`, the key a hash of the
        checkpoint (a local one by its files' sizes and times) and of everything the evaluation reads, so every
        notebook and run of the same setting reuses it and any change evaluates it again."""
        import hashlib
        import json

        from utils.config import to_dict

        folder = Path(checkpoint).expanduser()
        files = sorted((item.name, item.stat().st_size, item.stat().st_mtime_ns)
                       for item in folder.iterdir() if item.is_file()) if folder.is_dir() else []
        settings = to_dict(self.config)
        key = json.dumps([checkpoint, files, self.reference_tokenizer(checkpoint), settings["model"]["dtype"],
                          settings["model"]["revision"] if checkpoint == self.target else None,
                          settings["evaluation"], self.data_dir, self.split, settings["data"]["mia_path"]],
                         sort_keys=True, default=str)
        return self.workdir / "references" / f"{label}-{hashlib.sha256(key.encode()).hexdigest()[:12]}"

    def reference_rows(self, progress: bool = True, num_processes: int = 1, log=print) -> list[dict]:
        """Leaderboard rows of the references (see `references`), each evaluated the way the run is (the same
        evaluation settings and attacks), once per setting (kept under `reference_dir`). With `num_processes > 1`
        each evaluation is launched on that many processes, as the run is: no model is ever loaded into the
        calling process (a notebook that has put a model on a GPU can no longer launch)."""
        from utils.evaluation.leaderboard import row_from_results
        from utils.io import read_json

        names, left_out = self.references()
        for reason in left_out:
            log(reason)
        rows = []
        for label, checkpoint in names.items():
            out = self.reference_dir(label, checkpoint)
            if not (out / "results.json").is_file():
                arguments = (self, checkpoint, out, label, progress)
                if num_processes > 1:
                    from accelerate import notebook_launcher

                    notebook_launcher(evaluate_reference, arguments, num_processes=num_processes)
                else:
                    evaluate_reference(*arguments)
            rows.append(row_from_results(label, read_json(out / "results.json", "reference results")))
        return rows

    def sweep(self, grid: dict[str, list], out: str | Path, progress: bool = True, log=print) -> list[dict]:
        """Every combination of `grid` (config key -> values) as its own resumable run under `out`."""
        from utils.experiment.sweep import GridSweep, run_sweep

        if self.source is None:
            raise UserError("a sweep rebuilds each run's config from its file: create the experiment with "
                            "Experiment.from_config")
        spec = GridSweep(base=self.source, grid=grid, overrides=self.overrides)
        return run_sweep(spec.runs(), out, progress=progress, log=log)


def evaluate_reference(experiment: Experiment, checkpoint: str, out: Path, label: str, progress: bool) -> None:
    """Evaluate one reference into `out` (a launched function: module level, so every process can run it)."""
    experiment.evaluate_checkpoint(checkpoint, out=out, tokenizer=experiment.reference_tokenizer(checkpoint),
                                   label=label, progress=progress)
