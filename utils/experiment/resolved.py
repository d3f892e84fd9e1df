"""A config resolved once: the places it names and the inputs it reads (the lowest module of the experiment layer).

`ResolvedConfig` is a validated `Config` plus what it resolves to: the model a run starts from, the target, the
gold standard, the data folder and split, the MIA documents, the utility benchmark and the run folder; it loads
a model and evaluates one with the config's settings. The run's steps (`utils.experiment.run`), the sweep and
the robustness attacks work on it; `utils.experiment.experiment.Experiment` adds prepare, run, plan, sweep and
the reference rows on top.
"""

from __future__ import annotations

import os
import re
import time
from collections.abc import Sequence
from pathlib import Path

import torch

from methods.registry import typed
from utils.config import Config, load_config
from utils.data.lume import SPLITS, TASKS, load_lume, resolve_mia
from utils.errors import UserError
from utils.evaluation.evaluate import evaluate_model, subset_items, write_evaluation
from utils.evaluation.sharding import ALONE
from utils.io import read_json
from utils.models.loading import load_model_and_tokenizer
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
# The library's entry point for work in a child process (utils/experiment/child.py, at the top of this layer):
# started by name, never imported from below.
CHILD_MODULE = "utils.experiment.child"


def timestamped_run_dir(name: str, runs: Path = RUNS) -> Path:
    """runs/<name>-<YYYYmmdd-HHMMSS>, with -2, -3, ... when a run of that name started in the same second."""
    stem = f"{name}-{time.strftime('%Y%m%d-%H%M%S')}"
    candidate, count = runs / stem, 1
    while candidate.exists():
        count += 1
        candidate = runs / f"{stem}-{count}"
    return candidate


def check_every_term(lume, subset: int | None) -> None:
    """The final evaluation scores all 12 split/task/kind terms (utils.evaluation.metrics.compute_terms refuses an
    empty one): a data set, or a subset of it, lacking one is refused before any model loads or trains."""
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
    if not runs.is_dir():
        return None
    pattern = re.compile(rf"{re.escape(name)}-(\d{{8}}-\d{{6}})(?:-(\d+))?")
    stamped = [(match.group(1), int(match.group(2) or 1), path) for path in runs.iterdir()
               if path.is_dir() and (match := pattern.fullmatch(path.name))]
    if stamped:
        return max(stamped, key=lambda entry: entry[:2])[2]
    return runs / name if (runs / name).is_dir() else None


class ResolvedConfig:
    """A config and everything it resolves to; data and MIA documents are read once, on first use."""

    def __init__(self, config: Config, run_dir: str | Path | None = None, *, source: str | Path | None = None,
                 overrides: Sequence[str] = ()):
        self.config = config = typed(config)  # the method's own settings, checked before anything runs
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
                    run_dir: str | Path | None = None) -> ResolvedConfig:
        """Load and validate a config (YAML + `key=value` overrides)."""
        return cls(load_config(path, overrides), run_dir, source=path, overrides=overrides)

    @classmethod
    def in_notebook(cls, config_path: str | Path, overrides: Sequence[str] = (),
                    run_dir: str | Path | None = None) -> ResolvedConfig:
        """`from_config` with the config file and the run folder read relative to the project root (the paths
        inside a config always are), so a notebook or a scheduled notebook job works from any current folder."""
        return cls.from_config(project_path(config_path), overrides, None if run_dir is None else project_path(run_dir))

    @property
    def uses_real_model(self) -> bool:
        """Whether the config names its own model: then there is no tiny world to build."""
        return self.config.model.name_or_path is not None

    def with_config(self, config: Config, run_dir: str | Path | None = None,
                    source: str | Path | None = None) -> ResolvedConfig:
        """Another config in the same role (a run's resolved config; one method of quickstart's list). The
        data and MIA documents already read are kept when the new config reads the same ones."""
        other = type(self)(config, run_dir if run_dir is not None else self.run_dir,
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
            self.read_inputs["lume"] = load_lume(self.data_dir, self.split)
        return self.read_inputs["lume"]

    def mia(self) -> tuple[Path | None, dict | None, str | None]:
        """(MIA folder, member/nonmember documents, why the MIA is not measured): `data.mia_path`, 'none',
        or the folder found next to the data."""
        if "mia" not in self.read_inputs:
            self.read_inputs["mia"] = resolve_mia(self.config.data.mia_path, self.data_dir, self.split)
        return self.read_inputs["mia"]

    def check_inputs(self) -> None:
        """Read everything a run or an evaluation needs, so a bad input stops it before a model loads."""
        self.utility  # noqa: B018 (resolving the spec checks the file exists)
        lume = self.lume()
        self.mia()
        check_every_term(lume, self.config.evaluation.subset)

    def evaluate(self, model, tokenizer, out: str | Path | None = None, *, evaluated: dict | None = None,
                 progress: bool = True, warnings: Sequence[str] = (), shards=None):
        """Score `model` the official way with this config's evaluation settings; written to `out` if given.
        Under several processes (`shards`, a utils.evaluation.sharding.Shards) each scores its share, every
        process gets the whole evaluation and the first one writes it."""
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
        # model.revision is a version of the configured model: not of a run's output or another checkpoint.
        revision = self.config.model.revision if model_name in (self.target, self.start_model) else None
        model, tokenizer = load_model_and_tokenizer(model_name, tokenizer, self.config.model.dtype,
                                                    self.config.model.trust_remote_code, revision=revision)
        if torch.cuda.is_available():
            model.to(f"cuda:{int(os.environ.get('LOCAL_RANK', '0'))}")
        return model, tokenizer

    def finished_results(self) -> dict | None:
        """The run folder's results.json, None when the run has not finished."""
        path = self.run_dir / "results.json"
        return read_json(path, "results file") if path.is_file() else None

