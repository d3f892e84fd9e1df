"""Fingerprints of everything a run reads (its data split, MIA documents, utility set, start model and, where the
method reads it, the gold standard), kept in results.json's `inputs` so that `unlearn reproduce` can tell whether
a rerun would read the same bytes."""

from __future__ import annotations

import hashlib
from collections.abc import Mapping
from pathlib import Path

from utils.folders import utility_file

INPUTS_KEY = "inputs"
# A file above this size is fingerprinted by its size and its first and last MiB (a 7B checkpoint's shards would
# take minutes to read whole); every data file is far below it and read whole.
WHOLE_FILE_BYTES = 256 * 2**20
SAMPLE_BYTES = 2**20
MODEL_FILE_SUFFIXES = (".safetensors", ".bin", ".json", ".model", ".txt")
# Files of a model folder that say how it was made, not what it computes (the world's stage record: its seconds).
NOT_MODEL_FILES = {"stage.json"}


def file_digest(path: Path) -> str:
    """sha256 of the file's bytes; above WHOLE_FILE_BYTES, "sampled:" + sha256 of its size, first and last MiB."""
    size = path.stat().st_size
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        if size <= WHOLE_FILE_BYTES:
            for block in iter(lambda: handle.read(2**20), b""):
                digest.update(block)
            return digest.hexdigest()
        digest.update(str(size).encode())
        digest.update(handle.read(SAMPLE_BYTES))
        handle.seek(size - SAMPLE_BYTES)
        digest.update(handle.read(SAMPLE_BYTES))
    return "sampled:" + digest.hexdigest()


def folder_digests(folder: Path, suffixes: tuple[str, ...] | None = None) -> dict[str, str]:
    """{relative path: digest} of the files under `folder` (only those ending in `suffixes` when given)."""
    return {str(path.relative_to(folder)): file_digest(path) for path in sorted(folder.rglob("*"))
            if path.is_file() and (suffixes is None or path.suffix in suffixes)}


def model_digests(name: str, revision: str | None) -> dict[str, str]:
    """A local model folder's own weight, config and tokenizer files (not its subfolders: an evaluation kept
    there is not the model); a hub model by its name and revision."""
    path = Path(name)
    if path.is_dir():
        return {str(file.resolve()): file_digest(file) for file in sorted(path.iterdir())
                if file.is_file() and file.suffix in MODEL_FILE_SUFFIXES and file.name not in NOT_MODEL_FILES}
    return {"hub": f"{name}@{revision or 'main'}"}


def input_fingerprints(experiment) -> dict[str, dict[str, str]]:
    """results.json's `inputs` for a run of `experiment`: {what: {file: digest}}, paths absolute."""
    from utils.data.lume import find_split_files

    config = experiment.config
    out: dict[str, dict[str, str]] = {
        "data": {str(Path(p).resolve()): file_digest(Path(p))
                 for p in find_split_files(experiment.data_dir, experiment.split).values()}}
    mia_folder, _, _ = experiment.mia()
    if mia_folder is not None:
        out["mia"] = {str((Path(mia_folder) / name).resolve()): digest
                      for name, digest in folder_digests(Path(mia_folder), (".jsonl",)).items()}
    utility = utility_file(experiment.utility)
    if utility is not None:
        path = Path(utility)
        out["utility"] = ({str(path.resolve()): file_digest(path)} if path.is_file() else
                          {str((path / name).resolve()): digest for name, digest in folder_digests(path).items()})
    out["start_model"] = model_digests(experiment.start_model, config.model.revision)
    if getattr(config.method, "forget_loss_ceiling", None) == "gold_standard":
        out["gold_standard"] = model_digests(experiment.gold_standard, None)
    return out


def changed_inputs(recorded: Mapping[str, Mapping[str, str]], now: Mapping[str, Mapping[str, str]]) -> list[str]:
    """One line per recorded input file that is gone or has other bytes now, and per new file of an input."""
    lines = []
    for what, files in recorded.items():
        current = now.get(what, {})
        for name, digest in files.items():
            if name not in current:
                lines.append(f"{what}: {name} is gone")
            elif current[name] != digest:
                lines.append(f"{what}: {name} changed")
        for name in sorted(set(current) - set(files)):
            lines.append(f"{what}: {name} is new")
    return lines
