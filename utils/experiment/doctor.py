"""`unlearn doctor`: what this machine lacks for a config, before anyone rents GPU hours.

Each check is one row (check, status, detail); `status` is ok, warn or FAIL. Nothing is loaded or
downloaded: the model's shape comes from its local config.json or, for the organisers' checkpoints, from
a table of known shapes; the hub is probed once with a short timeout.
"""

from __future__ import annotations

import contextlib
import shutil
import threading
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path

import utils.experiment.footprint as fp
from methods.engine.losses import Reference
from methods.registry import get_method, make_loss
from utils.errors import UserError
from utils.experiment.inputs import build_run_phases, resolve_forget_loss_ceiling
from utils.experiment.schedule import local_tokenizer
from utils.io import looks_like_local_path
from utils.models.loading import TOKENIZER_FILES, WEIGHT_FILES, holds_tokenizer

OK, WARN, FAIL = "ok", "warn", "FAIL"
HUB_TIMEOUT_SECONDS = 3.0
# A conservative write speed (network disks, shared file systems) for the rank-0-only writes.
DISK_WRITE_BYTES_PER_SECOND = 50 * 2**20
# NCCL's default collective timeout, for a torch built without NCCL (where the constant is None).
NCCL_DEFAULT_TIMEOUT = timedelta(minutes=10)


@dataclass(frozen=True)
class Check:
    name: str
    status: str
    detail: str


def gib(value: float) -> str:
    return f"{value / fp.GIB:.1f} GiB"


# --------------------------------------------------------------------------------------------
# What the run will hold


def model_shape(experiment) -> fp.ModelShape | None:
    """The start model's shape: its config.json when it is a local folder, the known table for a hub name,
    the embedded default's `model.tiny` before `unlearn prepare` has built it; None when unknown."""
    name = experiment.start_model
    config_json = Path(name).expanduser() / "config.json"
    if config_json.is_file():
        return fp.shape_from_config_json(config_json)
    known = fp.known_shape(name)
    if known is not None:
        return known
    if experiment.config.model.name_or_path is None:
        tiny = experiment.config.model.tiny
        return fp.ModelShape(layers=tiny.num_layers, hidden=tiny.hidden_size, intermediate=tiny.intermediate_size,
                             vocab=tiny.vocab_size, heads=tiny.num_heads, kv_heads=tiny.num_heads, tied=False,
                             source="model.tiny (not prepared yet)", norm_vectors=4)
    return None


def keeps_reference_copy(config) -> bool:
    """Whether the method keeps a frozen copy of the model: asked of the method's own loss, given a
    Reference that records the copy instead of making it."""
    if config.adapter.kind == "lora":
        return False  # the adapter switched off is the reference
    if not get_method(config.method.name).needs_reference(config.method):
        return False

    class CopyProbe(Reference):
        def _make_copy(self) -> None:
            self.mode, self.frozen = "copy", None

        def _maybe_precompute(self) -> None:
            pass

    probe = CopyProbe(None, "precomputed")
    # A loss that reads the (absent) model after asking for its copy fails here: its request is recorded.
    with contextlib.suppress(Exception):
        make_loss(config.method, probe)
    return probe.mode == "copy"


def step_shape(experiment, processes: int) -> fp.StepShape:
    """The largest micro-batch a process trains, from the run's own phases when the data and a tokenizer
    are on this machine (the OLMo tokenizer of `scripts/olmo_assets.py` stands in for an OLMo hub name);
    else the worst case of training.max_length tokens per row."""
    config = experiment.config
    try:
        config = resolve_forget_loss_ceiling(config)
        tokenizer, source = local_tokenizer(config, experiment.start_model)
        where = source.path
        if tokenizer is None and fp.known_shape(config.model.tokenizer or experiment.start_model) is not None:
            from utils.data.olmo_assets import find_assets
            from utils.models.loading import load_tokenizer

            assets = find_assets()
            if assets is not None:
                where = f"the OLMo tokenizer in {assets}"
                tokenizer = load_tokenizer(str(assets / "tokenizer"))
        if tokenizer is None:
            raise UserError(source.reason)
        phases = build_run_phases(get_method(config.method.name), config, experiment.lume(), tokenizer)
    except UserError as exc:
        shape = fp.worst_case_step(config.training, processes)
        return fp.StepShape(shape.padded_tokens, f"{shape.source}; no tokens measured: {exc}")
    shape = fp.largest_step(phases, config.training, processes)
    return fp.StepShape(shape.padded_tokens, f"{shape.source} (tokens by {where})")


# --------------------------------------------------------------------------------------------
# Checks


def check_launch(config, processes: int, gpus: int) -> list[Check]:
    training, rows, notes = config.training, [], []
    if processes > 1 and config.adapter.kind == "lora" and training.sharding == "fsdp":
        rows.append(Check("launch", FAIL, "training.sharding: fsdp with adapter.kind lora: the trainer refuses it "
                                          "(LoRA trains few weights; set training.sharding: none)"))
    if training.sharding == "fsdp" and processes == 1:
        notes.append("training.sharding: fsdp on 1 process shards nothing (launch with --processes N)")
    if gpus == 0 and training.mixed_precision != "no":
        notes.append(f"training.mixed_precision: {training.mixed_precision} is ignored on a CPU (the engine "
                     "mixes precision on GPUs only)")
    if training.batch_size < processes:
        notes.append(f"training.batch_size {training.batch_size} < {processes} processes: some processes train "
                     "zero-weight stand-ins each step")
    elif training.batch_size % processes:
        notes.append(f"training.batch_size {training.batch_size} is not divisible by {processes} processes: "
                     "the shares differ by one example")
    if gpus and processes > gpus:
        rows.append(Check("launch", FAIL, f"--processes {processes} but this machine has {gpus} GPU(s)"))
    if notes:
        rows.append(Check("launch", WARN, "; ".join(notes)))
    if not rows:
        sharding = "fsdp" if training.sharding == "fsdp" and processes > 1 else "DDP" if processes > 1 else "none"
        rows.append(Check("launch", OK, f"{processes} process(es), sharding {sharding}, mixed precision "
                                        f"{training.mixed_precision}, batch {training.batch_size} "
                                        f"({-(-training.batch_size // processes)} per process)"))
    return rows


def needs_gpu(config) -> bool:
    """Configs that ask for bf16/fp16 weights or mixed precision are meant for GPUs (configs/olmo-*)."""
    return config.model.dtype != "float32" or config.training.mixed_precision != "no"


def accelerator_rows(config, footprint_gpu: fp.Footprint | None, footprint_cpu: fp.Footprint | None,
                     memory_text: str, gpus: list[tuple[str, int, int]]) -> list[Check]:
    """`gpus`: (name, free bytes, total bytes) per GPU on this machine."""
    import psutil

    if gpus:
        names = sorted({name for name, _, _ in gpus})
        free = min(f for _, f, _ in gpus)
        where = f"{len(gpus)} x {', '.join(names)} (least free {gib(free)})"
        if footprint_gpu is None:
            return [Check("accelerator", WARN, f"{where}; {memory_text}")]
        status = OK if footprint_gpu.peak <= free else FAIL
        verdict = "fits" if status == OK else "does NOT fit"
        return [Check("accelerator", status, f"{where}: peak {gib(footprint_gpu.peak)} per process {verdict}; "
                                             f"{memory_text}")]
    if needs_gpu(config):
        peak = "" if footprint_gpu is None else f" (on a GPU: peak {gib(footprint_gpu.peak)} per process)"
        return [Check("accelerator", FAIL, f"no GPU on this machine (torch.cuda sees none): this config trains in "
                                           f"{config.model.dtype} / mixed precision "
                                           f"{config.training.mixed_precision} on GPUs{peak}; {memory_text}")]
    available = psutil.virtual_memory().available
    if footprint_cpu is None:
        return [Check("accelerator", WARN, f"no GPU; CPU training; {memory_text}")]
    status = OK if footprint_cpu.peak <= available else FAIL
    return [Check("accelerator", status, f"no GPU: CPU training, peak {gib(footprint_cpu.peak)} per process vs "
                                         f"{gib(available)} RAM available; {memory_text}")]


def local_gpus() -> list[tuple[str, int, int]]:
    import torch

    if not torch.cuda.is_available():
        return []
    found = []
    for index in range(torch.cuda.device_count()):
        free, total = torch.cuda.mem_get_info(index)
        found.append((torch.cuda.get_device_name(index), free, total))
    return found


def disk_row(footprint: fp.Footprint | None, run_dir: Path, keep: int) -> Check:
    place = Path(run_dir).resolve()
    while not place.exists():
        place = place.parent
    free = shutil.disk_usage(place).free
    if footprint is None:
        return Check("disk", WARN, f"{gib(free)} free at {place}; the model's shape is unknown, so the run's size is too")
    needed = fp.disk_needed(footprint, keep)
    status = OK if needed <= free else FAIL
    return Check("disk", status, f"{gib(needed)} needed ({keep} checkpoint(s) of {gib(footprint.checkpoint_bytes)} "
                                 f"+ one being written + the final model {gib(footprint.model_bytes)}), "
                                 f"{gib(free)} free at {place}")


def collective_timeout() -> tuple[timedelta, str]:
    from torch.distributed import constants

    value = getattr(constants, "default_pg_nccl_timeout", None)
    if value is not None:
        return value, "torch.distributed.constants.default_pg_nccl_timeout"
    return NCCL_DEFAULT_TIMEOUT, "NCCL's default (this torch has no NCCL: default_pg_nccl_timeout is None)"


def timeout_row(footprint: fp.Footprint | None, processes: int) -> Check:
    if processes == 1:
        return Check("collective timeout", OK, "1 process: no process waits for rank 0")
    if footprint is None:
        return Check("collective timeout", WARN, "the model's shape is unknown: rank 0's writes cannot be timed")
    timeout, source = collective_timeout()
    writes = {"checkpoint": footprint.checkpoint_bytes, "final model": footprint.model_bytes}
    what, size = max(writes.items(), key=lambda item: item[1])
    seconds = size / DISK_WRITE_BYTES_PER_SECOND
    limit = timeout.total_seconds()
    status = OK if seconds <= limit / 2 else WARN if seconds <= limit else FAIL
    return Check("collective timeout", status,
                 f"rank 0 alone writes the {what} ({gib(size)}): about {seconds:.0f} s at "
                 f"{DISK_WRITE_BYTES_PER_SECOND // 2**20} MiB/s, against the {limit:.0f} s collective timeout "
                 f"({source})")


# --------------------------------------------------------------------------------------------
# Reachability


def hub_probe(timeout: float = HUB_TIMEOUT_SECONDS) -> tuple[bool, str]:
    """(whether the hub answered within `timeout` seconds, why not); never waits longer, DNS included."""
    from huggingface_hub import constants

    if constants.HF_HUB_OFFLINE:
        return False, "HF_HUB_OFFLINE is set"
    outcome: dict = {}

    def attempt() -> None:
        import socket
        from urllib.parse import urlparse

        url = urlparse(constants.ENDPOINT)
        try:
            socket.create_connection((url.hostname, url.port or (443 if url.scheme == "https" else 80)),
                                     timeout=timeout).close()
            outcome["ok"] = True
        except OSError as exc:
            outcome["error"] = str(exc) or type(exc).__name__

    thread = threading.Thread(target=attempt, daemon=True)
    thread.start()
    thread.join(timeout)
    if outcome.get("ok"):
        return True, ""
    return False, outcome.get("error", f"no answer from {constants.ENDPOINT} in {timeout:.0f} s")


def token_present() -> bool:
    from huggingface_hub import get_token

    return bool(get_token())


class Hub:
    """The hub's reachability and the token, probed once for all hub names of a config."""

    def __init__(self, timeout: float = HUB_TIMEOUT_SECONDS):
        self.timeout = timeout
        self._probe: tuple[bool, str] | None = None

    def row(self, check: str, name: str, what: str) -> Check:
        if self._probe is None:
            self._probe = hub_probe(self.timeout)
        reachable, why = self._probe
        token = "a token is present" if token_present() else "no token (HF_TOKEN or `hf auth login`)"
        if not reachable:
            return Check(check, FAIL, f"hub {what} {name}: the hub is not reachable ({why}); {token}")
        from huggingface_hub import model_info

        try:
            if what == "model":
                model_info(name, timeout=self.timeout)
        except Exception as exc:  # noqa: BLE001 (gated, missing, refused: each one line)
            return Check(check, FAIL, f"hub {what} {name}: {type(exc).__name__}: {str(exc).splitlines()[0][:160]}; "
                                      f"{token}")
        return Check(check, OK if token_present() else WARN, f"hub {what} {name}: the hub answers; {token}")


def checkpoint_row(check: str, name: str, hub: Hub, prepared: bool) -> Check:
    """A model folder (config.json and weights) or a hub model; `prepared`: `unlearn prepare` makes it."""
    path = Path(name).expanduser()
    if path.is_dir():
        missing = [] if (path / "config.json").is_file() or (path / "adapter_config.json").is_file() else ["config.json"]
        if not any((path / f).is_file() for f in WEIGHT_FILES):
            missing.append("weights (model.safetensors or an adapter)")
        if missing:
            return Check(check, FAIL, f"{path} lacks {' and '.join(missing)}")
        return Check(check, OK, f"local folder {path}")
    if looks_like_local_path(name) or prepared:
        hint = " (run `unlearn prepare` first)" if prepared else ""
        return Check(check, FAIL, f"model folder not found: {name}{hint}")
    return hub.row(check, name, "model")


def model_row(experiment, hub: Hub) -> Check:
    return checkpoint_row("model", experiment.start_model, hub, experiment.config.model.name_or_path is None)


def gold_standard_row(experiment, hub: Hub) -> Check:
    """The reference an unlearning run is read against; its absence only leaves its row out."""
    if experiment.config.model.gold_standard is None and not Path(experiment.gold_standard).is_dir():
        return Check("gold standard", WARN, f"{experiment.gold_standard} does not exist: its reference row is left "
                                            "out (set model.gold_standard)")
    return checkpoint_row("gold standard", experiment.gold_standard, hub, False)


def tokenizer_row(experiment, hub: Hub) -> Check:
    name = experiment.config.model.tokenizer or experiment.start_model
    path = Path(name).expanduser()
    if path.is_dir():
        if holds_tokenizer(path):
            return Check("tokenizer", OK, f"local folder {path}")
        return Check("tokenizer", FAIL, f"{path} holds no tokenizer files ({', '.join(TOKENIZER_FILES)})")
    if looks_like_local_path(name) or experiment.config.model.name_or_path is None:
        return Check("tokenizer", FAIL, f"tokenizer folder not found: {name}")
    return hub.row("tokenizer", name, "tokenizer")


def data_row(experiment, hub: Hub) -> Check:
    from utils.data.hub import is_hub_id
    from utils.data.lume import find_split_files

    source = experiment.data_dir
    if is_hub_id(source):
        return hub.row("data", source, "dataset")
    try:
        files = find_split_files(source, experiment.split)
    except UserError as exc:
        return Check("data", FAIL, str(exc))
    return Check("data", OK, f"{source} ({experiment.split}): {', '.join(sorted(Path(p).name for p in files.values()))}")


def mia_row(experiment) -> Check:
    try:
        folder, _, missing = experiment.mia()
    except UserError as exc:
        return Check("mia", FAIL, str(exc))
    if folder is None:
        return Check("mia", WARN, f"no MIA documents: {missing or 'data.mia_path is none'} (the MIA is not measured)")
    return Check("mia", OK, f"{folder}")


def utility_row(experiment, hub: Hub) -> Check:
    spec = experiment.config.evaluation.utility
    if spec and spec.startswith("mmlu:hf:"):
        return hub.row("utility", spec.removeprefix("mmlu:hf:"), "dataset")
    try:
        resolved = experiment.utility
    except UserError as exc:
        return Check("utility", FAIL, str(exc))
    if resolved is None:
        return Check("utility", WARN, "no utility benchmark (evaluation.utility none, or the prepared world has none)")
    target = Path(resolved.partition(":")[2])
    if target.is_dir() and not any(target.iterdir()):
        return Check("utility", FAIL, f"{target} is empty")
    return Check("utility", OK, resolved)


# --------------------------------------------------------------------------------------------
# All of it


def run_checks(experiment, processes: int = 1, gpus: list[tuple[str, int, int]] | None = None,
               hub_timeout: float = HUB_TIMEOUT_SECONDS) -> list[Check]:
    """Every check of `unlearn doctor` for `experiment` launched on `processes` processes on this machine."""
    if processes < 1:
        raise UserError(f"--processes must be at least 1, got {processes}")
    config = experiment.config
    gpus = local_gpus() if gpus is None else gpus
    rows = check_launch(config, processes, len(gpus))
    shape = model_shape(experiment)
    footprint_gpu = footprint_cpu = None
    if shape is None:
        memory_text = f"the shape of {experiment.start_model} is unknown (no local config.json, not a known hub name)"
    else:
        step = step_shape(experiment, processes)
        copy = keeps_reference_copy(config)
        footprint_gpu = fp.estimate(shape, config, step, processes, reference_copy=copy, cpu=False, on_gpu=True)
        footprint_cpu = fp.estimate(shape, config, step, processes, reference_copy=copy, cpu=True, on_gpu=False)
        shown = footprint_gpu if (gpus or needs_gpu(config)) else footprint_cpu
        memory_text = (f"estimate per process {gib(shown.peak)} ({shown.text()} GiB; "
                       f"{shown.trainable_parameters:,} trainable) at {step.padded_tokens:,} padded tokens "
                       f"({step.source}); shape: {shape.source}")
    rows += accelerator_rows(config, footprint_gpu, footprint_cpu, memory_text, gpus)
    if shape is not None:
        rows.append(adapter_row(config, shape))
    rows.append(disk_row(footprint_gpu, experiment.run_dir, config.training.keep_checkpoints))
    rows.append(timeout_row(footprint_gpu, processes))
    return rows + reachability_rows(experiment, Hub(hub_timeout))


def adapter_row(config, shape: fp.ModelShape) -> Check:
    """The layers the adapter trains against the model's depth: the run's own check (utils.models.adapters)."""
    from utils.models.adapters import layer_problem

    problem = layer_problem(config.adapter, shape.layers)
    if problem:
        return Check("adapter", FAIL, f"{problem} ({shape.source})")
    return Check("adapter", OK, f"kind {config.adapter.kind} on a model of {shape.layers} decoder layers")


def reachability_rows(experiment, hub: Hub | None = None) -> list[Check]:
    """The inputs of `experiment`, reachable or not: model, tokenizer, gold standard, data, MIA, utility."""
    hub = hub or Hub()
    return [model_row(experiment, hub), tokenizer_row(experiment, hub), gold_standard_row(experiment, hub),
            data_row(experiment, hub), mia_row(experiment), utility_row(experiment, hub)]


def require_reachable(experiment, log=print) -> list[Check]:
    """What `prepare()` does for a config naming a real model: print the inputs' rows; a UserError naming
    every one that fails."""
    rows = reachability_rows(experiment)
    log(table(rows))
    if failed(rows):
        raise UserError("not reachable: " + "; ".join(f"{row.name}: {row.detail}" for row in failed(rows)))
    return rows


def table(rows: list[Check]) -> str:
    """The rows as aligned text: check, status, detail."""
    name_width = max(len("check"), *(len(r.name) for r in rows))
    lines = [f"{'check'.ljust(name_width)}  status  detail"]
    lines += [f"{r.name.ljust(name_width)}  {r.status.ljust(6)}  {r.detail}" for r in rows]
    return "\n".join(lines)


def failed(rows: list[Check]) -> list[Check]:
    return [r for r in rows if r.status == FAIL]

