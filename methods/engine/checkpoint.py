"""A run's checkpoint: the trainable weights after the last finished phase, their hash and the state
to continue from, swapped in whole (a kill never leaves half a checkpoint), verified before a resume."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

from methods.engine.trainer import TrainingDiverged, all_finite
from utils.errors import UserError
from utils.io import AtomicDirectory, atomic_write_json, file_sha256

CHECKPOINT = "checkpoint"
EARLIER = "checkpoints"  # earlier checkpoints kept by training.keep_checkpoints
STATE_FILE = "state.json"
WEIGHTS_FILE = "trainable.safetensors"
STATE_KEYS = ("phases_done", "phases_total", "global_step", "log_lines")


def checkpoint_dir(run_dir: Path) -> Path:
    """checkpoint/, or the previous one AtomicDirectory set aside when a kill fell between its two renames."""
    current, previous = run_dir / CHECKPOINT, run_dir / f".{CHECKPOINT}.old"
    if not (current / STATE_FILE).is_file() and (previous / STATE_FILE).is_file():
        return previous
    return current


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


def save_checkpoint(weights: dict, run_dir: Path, state: dict, extra: dict[str, dict] | None = None) -> None:
    """The trainable weights (Trainer.trainable_state), then their hash and the state, swapped in whole;
    non-finite weights are never written. `extra`: further tensor files (name: tensors) in the same swap."""
    from safetensors.torch import save_file

    if not all_finite(weights.values()):
        raise TrainingDiverged(f"the weights are non-finite after phase {state['phases_done']}; the last good "
                               f"checkpoint in {run_dir} is kept (lower the learning rate)")
    with AtomicDirectory(run_dir / CHECKPOINT) as tmp:
        save_file(weights, str(tmp / WEIGHTS_FILE))
        for name, tensors in (extra or {}).items():
            save_file(tensors, str(tmp / name))
        atomic_write_json(tmp / STATE_FILE, {**state, "weights_sha256": file_sha256(tmp / WEIGHTS_FILE)})


def phases_fingerprint(phases) -> str:
    """A hash of what the phases train on (every example's tokens, labels, role, weight and pair, each phase's
    epochs and order), kept in the checkpoint: a resume whose data, tokenizer or refusals file changed since
    would otherwise mix two runs without any setting of config.yaml differing."""
    import hashlib

    digest = hashlib.sha256()
    for phase in phases:
        # Numbers as floats: a config's epochs may be 3 or 3.0 depending on how it was given.
        digest.update(json.dumps([phase.name, float(phase.epochs), phase.shuffle]).encode())
        for e in phase.examples:
            digest.update(json.dumps([e.input_ids, e.labels, e.role, float(e.weight), e.pair_input_ids,
                                      e.pair_labels]).encode())
    return digest.hexdigest()


def check_same_phases(run_dir: Path, state: dict, fingerprint: str) -> None:
    """Refuse a resume whose phases (their `phases_fingerprint`) differ from those the checkpoint was trained
    on; a checkpoint written before the fingerprint existed is not checked."""
    recorded = state.get("phases_sha256")
    if recorded is not None and recorded != fingerprint:
        raise UserError(f"{run_dir} was trained on other examples than this run would train (the data, the "
                        "tokenizer, a method's input file such as method.refusals, or the code that builds the "
                        "examples changed since); resume it with the same inputs or choose another --out")


def checkpoint_due(phases_done: int, phases_total: int, every: int) -> bool:
    """Whether a checkpoint is written after `phases_done` phases: every `every` phases, and after the last."""
    return phases_done % every == 0 or phases_done == phases_total


def keep_earlier_checkpoint(run_dir: Path, keep: int) -> None:
    """Before a new checkpoint replaces checkpoint/, keep the current one as checkpoints/after-phase-NNNN/
    (hard links, or a copy where the file system has none) and drop the oldest beyond `keep` - 1."""
    current, earlier = run_dir / CHECKPOINT, run_dir / EARLIER
    if keep > 1 and (current / STATE_FILE).is_file():
        kept = earlier / f"after-phase-{load_checkpoint(run_dir)['phases_done']:04d}"
        if not kept.exists():
            with AtomicDirectory(kept) as tmp:  # whole or not at all, like checkpoint/ itself
                for file in current.iterdir():
                    try:
                        os.link(file, tmp / file.name)
                    except OSError:
                        shutil.copy2(file, tmp / file.name)
    if earlier.is_dir():
        # Also when keep_checkpoints was lowered on resume.
        kept_ones = sorted(p for p in earlier.iterdir() if p.name.startswith("after-phase-"))
        for old in kept_ones[:max(0, len(kept_ones) - (keep - 1))]:
            shutil.rmtree(old)


def verify_checkpoint(run_dir: Path, state: dict) -> None:
    """The weights are the ones the state was written with (hash), before anything is loaded."""
    weights = checkpoint_dir(run_dir) / WEIGHTS_FILE
    if not weights.is_file():
        raise UserError(f"{weights} is missing: the run in {run_dir} cannot be resumed; choose another --out")
    expected = state.get("weights_sha256")
    if expected is not None and file_sha256(weights) != expected:
        raise UserError(f"{weights} is damaged (its hash differs from the one recorded in {STATE_FILE}): the run "
                        f"in {run_dir} cannot be resumed from it; choose another --out")


def read_checkpoint_file(run_dir: Path, name: str = WEIGHTS_FILE) -> dict:
    """The tensors of one file of the checkpoint; an unreadable one is a one-line UserError."""
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    path = checkpoint_dir(run_dir) / name
    try:
        return load_file(str(path))
    except (SafetensorError, OSError) as exc:
        raise UserError(f"{path} cannot be read ({str(exc).splitlines()[0] if str(exc) else exc.__class__.__name__})"
                        f": the run in {run_dir} cannot be resumed from it; choose another --out") from None


def restore_weights(model, run_dir: Path) -> None:
    state = read_checkpoint_file(run_dir)
    missing = set(state) - {name for name, _ in model.named_parameters()}
    if missing:
        raise UserError(f"checkpoint in {run_dir} does not fit this model/adapter (e.g. {min(missing)})")
    model.load_state_dict(state, strict=False)
