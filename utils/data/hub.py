"""The official LUME files from the Hugging Face hub: `unlearn data download`, and `data.path: hf:ORG/NAME`.

The organisers publish the benchmark as a dataset repository of parquet files (and the MIA JSONL files).
A download lands whole or not at all (a temporary folder moved into place), never over files that are
there already. The token comes from the usual places (`hf auth login`, HF_TOKEN).
"""

from __future__ import annotations

import os
from pathlib import Path

from utils.errors import UserError

# The organisers' public repository, as the task's page names it (--repo when it moves).
OFFICIAL_DATASET = "llmunlearningsemeval2025organization/semeval25-unlearning-dataset-public"
HUB_PREFIX = "hf:"
FILES = ["*.parquet", "*.jsonl", "*.md"]
COMPLETE = ".download-complete"


def is_hub_id(path: str | os.PathLike | None) -> bool:
    return isinstance(path, str) and path.startswith(HUB_PREFIX)


def cache_root() -> Path:
    return Path(os.environ.get("LUME_DATA_CACHE", Path.home() / ".cache" / "lume-unlearning" / "datasets"))


def download_lume(repo_id: str, to: str | os.PathLike, revision: str | None = None) -> Path:
    """The dataset repository's LUME files in `to` (which must not hold anything yet); a one-line UserError
    when the hub cannot be reached or refuses."""
    from huggingface_hub import snapshot_download
    from huggingface_hub.errors import (
        GatedRepoError,
        HfHubHTTPError,
        LocalEntryNotFoundError,
        RepositoryNotFoundError,
    )

    from utils.io import AtomicDirectory

    destination = Path(to)
    if destination.exists() and (not destination.is_dir() or any(destination.iterdir())):
        raise UserError(f"{destination} already holds files: download into a new folder (--to)")
    try:
        with AtomicDirectory(destination) as tmp:
            snapshot_download(repo_id, repo_type="dataset", revision=revision, local_dir=str(tmp),
                              allow_patterns=FILES)
            # The hub client's own bookkeeping is not part of the data.
            for leftover in tmp.glob(".cache"):
                import shutil

                shutil.rmtree(leftover, ignore_errors=True)
            (tmp / COMPLETE).write_text(f"{repo_id}@{revision or 'main'}\n", encoding="utf-8")
    except ValueError as exc:  # the hub client's check of the id (HFValidationError)
        raise UserError(f"dataset {repo_id!r}: not a hub dataset id ({str(exc).splitlines()[0]})") from None
    except (GatedRepoError, RepositoryNotFoundError):
        raise UserError(f"dataset {repo_id}: not found, or this account may not read it (log in with "
                        "`hf auth login` or set HF_TOKEN, and accept the dataset's terms on its page)") from None
    except (LocalEntryNotFoundError, HfHubHTTPError, OSError) as exc:
        reason = str(exc).splitlines()[0] if str(exc) else exc.__class__.__name__
        raise UserError(f"cannot download dataset {repo_id}: the hub is unreachable or offline ({reason})") from None
    return destination


def local_data_dir(path: str | os.PathLike) -> Path:
    """A data folder as a local path: `hf:ORG/NAME[@REVISION]` is downloaded once into the cache
    ($LUME_DATA_CACHE, else ~/.cache/lume-unlearning/datasets) and read from there."""
    if not is_hub_id(path):
        return Path(path)
    repo_id, _, revision = str(path)[len(HUB_PREFIX):].partition("@")
    if repo_id.count("/") != 1 or not all(repo_id.split("/")):
        raise UserError(f"data.path {path!r}: a hub dataset is hf:ORGANISATION/NAME (optionally @REVISION)")
    folder = cache_root() / f"{repo_id.replace('/', '--')}{'@' + revision if revision else ''}"
    if (folder / COMPLETE).is_file():
        return folder
    if int(os.environ.get("WORLD_SIZE", "1")) > 1:
        # Under a launcher the main process downloads while the others wait, then they read its copy.
        from accelerate import PartialState

        with PartialState().main_process_first():
            return folder if (folder / COMPLETE).is_file() else download_lume(repo_id, folder, revision or None)
    return download_lume(repo_id, folder, revision or None)
