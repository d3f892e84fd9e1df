"""Reading the LUME benchmark from every layout it was released in, with strict validation.

Layouts accepted for `load_lume(DIR, split)`:
  * `DIR/data/{forget,retain}_{split}-00000-of-00001.parquet` (the Hugging Face release), or the
    same files directly in DIR;
  * `DIR/forget.jsonl` + `DIR/retain.jsonl` (or `.parquet`), or the same under `DIR/data/`
    (the final evaluation's hand-out and the full LUME release).
MIA documents: `member.jsonl` / `nonmember.jsonl` in a folder, found by `find_mia_dir`.

A problem (missing file or column, unknown task, malformed id, empty split) raises `UserError`
with one line naming the file, the row and what is wrong.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass
from pathlib import Path

from utils.errors import UserError, unusable_path
from utils.io import read_jsonl

TASKS = ("Task1", "Task2", "Task3")
SPLITS = ("forget", "retain")
REQUIRED_COLUMNS = ("id", "input", "output", "task")
# Why an empty gold answer is refused: ROUGE-L recall of "" is 0 and exact match of "" almost never
# happens, so every forget term would read 1.0 whatever the model does.
EMPTY_GOLD = "an empty gold answer would score as perfectly forgotten"
# Which QA indices a document of each task carries (docs/benchmark.md, "The task": Task2 has qa0..qa4, the others qa0).
QA_INDICES = {"Task1": {0}, "Task2": {0, 1, 2, 3, 4}, "Task3": {0}}


@dataclass(frozen=True)
class Item:
    """One benchmark row: a sentence completion (`sc`) or a question (`qa`) about a document."""

    id: str
    input: str
    output: str
    task: str
    split: str
    kind: str  # "sc" or "qa"
    index: int  # the digit after sc/qa
    document_id: str

    @property
    def training_text(self) -> str:
        return self.input + " " + self.output


@dataclass
class LumeData:
    forget: list[Item]
    retain: list[Item]
    source: str

    def split_items(self, split: str) -> list[Item]:
        return self.forget if split == "forget" else self.retain


def check_row_fields(path: Path, where: str, row: dict, fields, field_word: str = "column") -> None:
    """A one-line UserError naming `where` ("row 3", "line 3") when the row lacks one of `fields`, one is
    not a string, or its task is unknown: shared by the data files and the generations files."""
    missing = [name for name in fields if name not in row]
    if missing:
        raise UserError(f"{path}: {where} lacks {field_word}(s) {', '.join(missing)}")
    for name in fields:
        if not isinstance(row[name], str):
            raise UserError(f"{path}: {where} {field_word} '{name}' is not a string")
    if row["task"] not in TASKS:
        raise UserError(f"{path}: {where} has unknown task {row['task']!r} (expected Task1, Task2, Task3)")


def parse_item_id(item_id: str) -> tuple[str, int, str]:
    """(kind, index, document_id) from an id, by the official rule `id[:-1].endswith('sc'|'qa')`."""
    if len(item_id) < 4 or not item_id[-1].isdigit():
        raise ValueError(f"id {item_id!r} does not end in sc<digit> or qa<digit>")
    stem = item_id[:-1]
    if stem.endswith("sc"):
        kind = "sc"
    elif stem.endswith("qa"):
        kind = "qa"
    else:
        raise ValueError(f"id {item_id!r} does not end in sc<digit> or qa<digit>")
    return kind, int(item_id[-1]), item_id[:-3]


def _read_rows(path: Path, missing: str, empty: str) -> list[dict]:
    """The rows of a parquet or JSONL file; `missing` and `empty` are the errors for no file and no rows."""
    if not path.is_file():
        raise UserError(missing)
    if path.suffix == ".parquet":
        rows = read_parquet_rows(path)
    else:
        rows = [row for _, row in read_jsonl(path)]
    if not rows:
        raise UserError(empty)
    return rows


def read_parquet_rows(path: Path) -> list[dict]:
    """A parquet file's rows through `datasets` (what the official files are published with), read into memory
    with a throw-away cache: nothing is left in the user's datasets cache, and a changed file is read anew."""
    import tempfile

    import datasets
    import pyarrow as pa
    import pyarrow.parquet as pq
    from datasets.exceptions import DatasetGenerationError

    bars = datasets.is_progress_bar_enabled()
    datasets.disable_progress_bars()
    # datasets logs its own line about a bad file before raising; the UserError below is the one line said.
    verbosity = datasets.logging.get_verbosity()
    datasets.logging.set_verbosity(datasets.logging.CRITICAL)
    try:
        with tempfile.TemporaryDirectory() as cache:
            table = datasets.load_dataset("parquet", data_files=str(path), split="train", cache_dir=cache,
                                          keep_in_memory=True)
            return table.to_list()
    except (DatasetGenerationError, pa.ArrowException, OSError, ValueError) as exc:  # datasets wraps arrow's
        try:  # a valid file of no rows fails inside datasets: it is empty, not unreadable
            empty = pq.ParquetFile(path).metadata.num_rows == 0
        except (pa.ArrowException, OSError):
            empty = False
        if empty:
            return []
        raise UserError(f"{path}: not a readable parquet file ({exc.__class__.__name__})") from None
    finally:
        datasets.logging.set_verbosity(verbosity)
        if bars:
            datasets.enable_progress_bars()


def check_text_present(path: Path, where: str, row: dict, name: str, why: str) -> None:
    """A field that is empty or only whitespace is a one-line UserError saying `why` it matters."""
    if not row[name].strip():
        raise UserError(f"{path}: {where} has an empty '{name}' ({why})")


def read_items(path: Path, split: str) -> list[Item]:
    """Read and validate one split file."""
    rows = _read_rows(path, f"data file not found: {path}", f"{path}: the {split} split is empty (0 rows)")
    items = []
    for row_number, row in enumerate(rows, start=1):
        check_row_fields(path, f"row {row_number}", row, REQUIRED_COLUMNS)
        check_text_present(path, f"row {row_number}", row, "input", "there would be nothing to generate from")
        check_text_present(path, f"row {row_number}", row, "output", EMPTY_GOLD)
        task = row["task"]
        try:
            kind, index, document_id = parse_item_id(row["id"])
        except ValueError as exc:
            raise UserError(f"{path}: row {row_number}: {exc}") from None
        if kind == "sc" and index != 1:
            raise UserError(f"{path}: row {row_number}: sentence completion id {row['id']!r} should end in sc1")
        if kind == "qa" and index not in QA_INDICES[task]:
            raise UserError(f"{path}: row {row_number}: {task} has no question qa{index} (id {row['id']!r})")
        row_split = row.get("split")
        if row_split is not None and row_split != split:
            raise UserError(f"{path}: row {row_number} is marked split {row_split!r} in the {split} file")
        items.append(Item(row["id"], row["input"], row["output"], task, split, kind, index, document_id))
    duplicates = [item_id for item_id, n in Counter(i.id for i in items).items() if n > 1]
    if duplicates:
        raise UserError(f"{path}: id {duplicates[0]!r} occurs more than once")
    return items


def find_split_files(directory: str | Path, split: str = "validation") -> dict[str, Path]:
    """The forget and retain files of `directory` in whichever official layout it uses (a hub dataset,
    `hf:ORG/NAME`, from its downloaded copy)."""
    from utils.data.hub import local_data_dir

    directory = local_data_dir(directory)
    try:
        is_folder, exists = directory.is_dir(), directory.exists()
    except OSError as exc:  # a name too long: the file system refuses to look
        raise unusable_path(directory, exc) from None
    if not exists:
        raise UserError(f"data folder not found: {directory}")
    if not is_folder:
        raise UserError(f"data folder {directory} is not a folder")
    for base in (directory / "data", directory):
        found = {}
        for part in SPLITS:
            candidates = [base / f"{part}_{split}-00000-of-00001.parquet",
                          *sorted(base.glob(f"{part}_{split}-*.parquet"))]
            hit = next((c for c in candidates if c.is_file()), None)
            if hit:
                found[part] = hit
        if len(found) == 2:
            return found
        if len(found) == 1:
            absent = next(p for p in SPLITS if p not in found)
            raise UserError(f"{base}: found {found[next(iter(found))].name} but no {absent}_{split} parquet file")
    for base in (directory, directory / "data"):
        for suffix in (".jsonl", ".parquet"):
            files = {part: base / f"{part}{suffix}" for part in SPLITS}
            present = [p for p in files.values() if p.is_file()]
            if len(present) == 2:
                return files
            if len(present) == 1:
                absent = next(p for p in files.values() if not p.is_file())
                raise UserError(f"data file not found: {absent} (its counterpart {present[0].name} exists)")
    raise UserError(
        f"{directory}: no LUME data found (expected data/forget_{split}-00000-of-00001.parquet and "
        f"retain_{split}, or forget.jsonl and retain.jsonl)")


def load_lume(directory: str | Path, split: str = "validation") -> LumeData:
    files = find_split_files(directory, split)
    forget = read_items(files["forget"], "forget")
    retain = read_items(files["retain"], "retain")
    forget_ids = {item.id for item in forget}
    in_both = next((item.id for item in retain if item.id in forget_ids), None)
    if in_both is not None:
        raise UserError(f"id {in_both!r} is in both {files['forget']} and {files['retain']} "
                        "(each item belongs to one split)")
    return LumeData(forget=forget, retain=retain, source=str(directory))


MIA_FILES = ("member.jsonl", "nonmember.jsonl")


def _mia_candidates(directory: Path, split: str) -> list[Path]:
    return [directory / "mia_data" / split, directory / "mia_data", directory / split, directory]


def find_mia_dir(directory: str | Path, split: str = "validation") -> Path | None:
    """The folder holding member.jsonl and nonmember.jsonl for `directory`, if there is one."""
    from utils.data.hub import local_data_dir

    for candidate in _mia_candidates(local_data_dir(directory), split):
        if all((candidate / name).is_file() for name in MIA_FILES):
            return candidate
    return None


def incomplete_mia_folder(directory: str | Path, split: str = "validation") -> str | None:
    """Why the MIA cannot be measured when a folder next to the data holds only one of its two files.

    None when there is no MIA folder at all (nothing was meant to be measured) or a complete one.
    """
    if find_mia_dir(directory, split) is not None:
        return None
    from utils.data.hub import local_data_dir

    for candidate in _mia_candidates(local_data_dir(directory), split):
        present = [name for name in MIA_FILES if (candidate / name).is_file()]
        if present:
            absent = next(name for name in MIA_FILES if name not in present)
            return f"MIA not measured: {candidate} has {present[0]} but no {absent}"
    return None


def load_mia_documents(directory: str | Path) -> dict[str, list[str]]:
    """{"member": [...], "nonmember": [...]} document texts from a MIA folder."""
    directory = Path(directory)
    out = {}
    for name in ("member", "nonmember"):
        path = directory / f"{name}.jsonl"
        rows = _read_rows(path, f"MIA file not found: {path} (the MIA needs both {' and '.join(MIA_FILES)})",
                          f"{path}: no documents")
        documents = []
        for row_number, row in enumerate(rows, start=1):
            if not isinstance(row.get("document"), str):
                raise UserError(f"{path}: row {row_number} has no 'document' text")
            check_text_present(path, f"row {row_number}", row, "document", "its loss would be undefined")
            documents.append(row["document"])
        out[name] = documents
    return out


def group_by_document(items: list[Item]) -> dict[str, list[Item]]:
    """Items per document id, in file order."""
    groups: dict[str, list[Item]] = {}
    for item in items:
        groups.setdefault(item.document_id, []).append(item)
    return groups


def summary_rows(data: LumeData) -> list[dict]:
    """Rows of the `unlearn data` table: counts per split × task × kind."""
    rows = []
    for split in SPLITS:
        items = data.split_items(split)
        for task in TASKS:
            task_items = [i for i in items if i.task == task]
            rows.append({
                "split": split,
                "task": task,
                "sc": sum(i.kind == "sc" for i in task_items),
                "qa": sum(i.kind == "qa" for i in task_items),
                "rows": len(task_items),
                "documents": len({i.document_id for i in task_items}),
            })
        rows.append({
            "split": split, "task": "all",
            "sc": sum(i.kind == "sc" for i in items), "qa": sum(i.kind == "qa" for i in items),
            "rows": len(items), "documents": len({i.document_id for i in items}),
        })
    return rows


def resolve_mia(source: str | None, data_dir: str, split: str) -> tuple[Path | None, dict | None, str | None]:
    """(folder, documents, why the MIA is not measured) for `--mia DIR|none` / `data.mia_path`.

    A folder the user named must hold both files (a missing one is an error); a folder found next to the
    data with only one of them is not an error, but the reason is carried into the results.
    """
    if source == "none":
        return None, None, None
    if source:
        if not Path(source).is_dir():
            raise UserError(f"MIA folder not found: {source}")
        return Path(source), load_mia_documents(source), None
    found = find_mia_dir(data_dir, split)
    if found is None:
        return None, None, incomplete_mia_folder(data_dir, split)
    return found, load_mia_documents(found), None
