"""One experiment, resolved once: what the CLI, the notebooks, quickstart and the benchmarks all call.

An `Experiment` is a `ResolvedConfig` (utils.experiment.resolved: a validated `Config` plus the places it resolves
to: the model a run starts from, the target, the gold standard, the data folder and split, the MIA documents, the
utility benchmark and the run folder) with the steps of an experiment. Every entry point goes through it, so they
cannot disagree on what "evaluate with this config" means (the same subset, MMLU shots and threshold, MIA folder
and utility set everywhere). It is the top of the experiment layer: nothing below imports it.

    experiment = Experiment.from_config("configs/sugd.yaml", ["training.epochs=1"], run_dir="runs/sugd")
    experiment.prepare()            # the tiny world (cached); for real checkpoints: checks they are reachable
    results = experiment.run()      # unlearn, checkpoint per phase, evaluate; resumes a killed run
    experiment.evaluate_checkpoint(experiment.gold_standard, "runs/gold")   # any checkpoint, same evaluation
"""

from __future__ import annotations

import hashlib
import json
import subprocess
import tempfile
import time
from dataclasses import asdict
from pathlib import Path

from utils.config import save_config, to_dict
from utils.entry import child_command, child_environment
from utils.errors import UserError
from utils.evaluation.evaluate import write_evaluation
from utils.evaluation.leaderboard import row_from_results
from utils.evaluation.sharding import Shards
from utils.experiment.doctor import require_reachable
from utils.experiment.resolved import CHILD_MODULE, ResolvedConfig
from utils.experiment.robustness import add_robustness
from utils.experiment.run import launch_run, run_experiment
from utils.experiment.schedule import plan_run
from utils.experiment.sweep import GridSweep, run_sweep
from utils.experiment.world import prepare
from utils.folders import check_not_input, check_overwrite, folder_lock
from utils.io import check_output_location, read_json
from utils.models.loading import holds_tokenizer


class Experiment(ResolvedConfig):
    """The front door: a resolved config with the steps of an experiment (prepare, run, plan, evaluate a
    checkpoint with its attacks, the reference rows, a sweep)."""

    # ------------------------------------------------------------------------------------------
    # Steps

    def prepare(self, out: str | Path | None = None, progress: bool = True, log=print, isolated: bool = False) -> dict:
        """Build (or reuse, from its cache) the tiny world the config describes; for a config whose model is a
        real checkpoint, build nothing: check that its model, tokenizer, gold standard, data, MIA documents and
        utility set are reachable, print them as one table ({"reachable": rows}) and stop at a missing one.

        `isolated` builds it in a child process (`python -m utils.experiment.child prepare`): training creates an
        accelerate state, and a notebook that will launch processes with notebook_launcher must not hold one.
        """
        if self.uses_real_model:
            return {"reachable": [asdict(row) for row in require_reachable(self, log)]}
        if isolated:
            return self._prepare_in_child(out, progress)
        return prepare(self.config, out, progress=progress, log=log)

    def _prepare_in_child(self, out: str | Path | None, progress: bool) -> dict:
        workdir = Path(out) if out is not None else self.workdir
        with tempfile.TemporaryDirectory(prefix="prepare-") as scratch:
            resolved = Path(scratch) / "config.yaml"
            save_config(self.config, resolved)  # the resolved config: no --set to re-parse
            command = child_command(CHILD_MODULE, "prepare", "--config", str(resolved), "--out", str(workdir),
                                    *([] if progress else ["--quiet"]))
            completed = subprocess.run(command, capture_output=not progress, text=True, check=False,
                                       env=child_environment())
        if completed.returncode != 0:
            last = (completed.stderr or "").strip().splitlines()[-1:] if completed.stderr else []
            raise UserError(f"unlearn prepare failed in its own process ({last[0] if last else 'see its output'})")
        return read_json(workdir / "prepare_report.json", "prepare report")

    def evaluate_checkpoint(self, model_name: str, out: str | Path | None = None, tokenizer: str | None = None,
                            label: str | None = None, progress: bool = True, target: str | None = None) -> dict:
        """Load a checkpoint (folder, hub name or LoRA adapter) and evaluate it, then run the configured
        robustness attacks on it (`evaluation.attacks`; recovery measured against `target`, default this
        experiment's target); returns results.json's dict."""
        # Started by `accelerate launch` or torchrun on several processes: each evaluates its share.
        shards = Shards.from_environment()
        self.check_inputs()
        model, loaded_tokenizer = self.load(model_name, tokenizer)
        started = time.perf_counter()  # the evaluation's time, not the load's
        evaluation = self.evaluate(model, loaded_tokenizer, evaluated={"model": model_name}, progress=progress,
                                   shards=shards)
        evaluation.results["timings"]["total"] = time.perf_counter() - started
        add_robustness(self, model, loaded_tokenizer, evaluation, shards, progress, target)
        if label is not None:
            evaluation.results["method"] = evaluation.results["name"] = label
        if out is not None and shards.is_main:
            write_evaluation(evaluation, out)
        return evaluation.results

    def evaluate_into(self, out: Path, inputs: dict[str, str | None], overwrite: bool = False, progress: bool = True,
                      target: str | None = None) -> dict:
        """`unlearn evaluate`'s work: the configured model (`model.name_or_path`) evaluated into `out`, which must
        not be one of `inputs` nor (without `overwrite`) hold finished results; every check before the model
        loads, the folder locked while it is written."""
        check_output_location(out, "folder")
        check_not_input(out, inputs)
        if overwrite:
            check_overwrite(out)
        with folder_lock(out, "unlearn evaluate"):
            # Checked again under the lock: an evaluation that finished meanwhile is not replaced either.
            if (out / "results.json").is_file() and not overwrite:
                raise UserError(f"{out} already holds finished results ({out / 'results.json'}); choose another --out")
            return self.evaluate_checkpoint(self.target, out, tokenizer=self.config.model.tokenizer,
                                            progress=progress, target=target)

    def run(self, resume: bool = False, overwrite: bool = False, evaluate: bool = True, progress: bool = True,
            accelerator=None, log=print, stop_after_phases: int | None = None, num_processes: int = 1) -> dict:
        """Unlearn with the configured method into `run_dir`, then evaluate (see utils.experiment.run).

        `num_processes > 1` launches the run on that many processes with accelerate's notebook_launcher
        and returns the results it wrote.
        """
        if num_processes > 1:
            return launch_run(self, num_processes, resume=resume, progress=progress, evaluate=evaluate,
                              overwrite=overwrite, log=log)
        return run_experiment(self, resume=resume, progress=progress, evaluate=evaluate, overwrite=overwrite,
                              accelerator=accelerator, log=log, stop_after_phases=stop_after_phases)

    def plan(self) -> dict:
        """The schedule `run()` would train, without loading a model (`unlearn run --dry-run`)."""
        return plan_run(self)

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
        return None if holds_tokenizer(Path(checkpoint).expanduser()) else self.config.model.tokenizer

    def reference_dir(self, label: str, checkpoint: str) -> Path:
        """Where a reference's evaluation is kept: `<workdir>/references/<label>-<key>`, the key a hash of the
        checkpoint (a local one by its files' sizes and times) and of everything the evaluation reads, so every
        notebook and run of the same setting reuses it and any change evaluates it again."""
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
        if self.source is None:
            raise UserError("a sweep rebuilds each run's config from its file: create the experiment with "
                            "Experiment.from_config")
        spec = GridSweep(base=self.source, grid=grid, overrides=self.overrides)
        return run_sweep(spec.runs(), out, progress=progress, log=log)


def evaluate_reference(experiment: Experiment, checkpoint: str, out: Path, label: str, progress: bool) -> None:
    """Evaluate one reference into `out` (a launched function: module level, so every process can run it)."""
    experiment.evaluate_checkpoint(checkpoint, out=out, tokenizer=experiment.reference_tokenizer(checkpoint),
                                   label=label, progress=progress)
