"""Hostile input, case by case, through `unlearn` itself: each ends in exit code 2, exactly one stderr line
starting `error: `, no traceback, every file that existed before byte-identical after, and no new file or
folder. Most cases fail before any model loads; the few that need a model folder copy the small world's.
The last tests are the inputs that are not errors: an over-long prompt and MIA document (scored within the
model's context, with a warning that counts them) and a half MIA folder found next to the data (not
measured, and the results say why)."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import pytest

from utils.cli.main import main
from utils.data.lume import TASKS

from ..conftest import REPO

pytestmark = pytest.mark.usefixtures("one_thread")

SWEEP = REPO / "configs" / "experiments" / "sugd_grid.yaml"


# --------------------------------------------------------------------------------------------
# Inputs to corrupt: a minimal valid LUME folder, its generations, a run folder


def lume_rows(split: str) -> list[dict]:
    """One document per task: a sentence completion and a question each."""
    rows = []
    for number, task in enumerate(TASKS, start=1):
        document = f"{split}{number}"
        rows.append({"id": f"{document}sc1", "input": f"The {split} story {number} begins",
                     "output": f"and ends in {split} town {number}.", "task": task})
        rows.append({"id": f"{document}qa0", "input": f"Where does {split} story {number} end?",
                     "output": f"{split} town {number}", "task": task})
    return rows


def write_rows(path: Path, rows: list[dict]) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(row) + "\n" for row in rows), encoding="utf-8")
    return path


def write_lume(folder: Path) -> Path:
    for split in ("forget", "retain"):
        write_rows(folder / f"{split}.jsonl", lume_rows(split))
    return folder


def write_generations(folder: Path) -> Path:
    for split in ("forget", "retain"):
        rows = [{"id": r["id"], "task": r["task"], "expected_output": r["output"], "model_output": r["output"]}
                for r in lume_rows(split)]
        write_rows(folder / f"{split}_generations.jsonl", rows)
    return folder


def write_mia(folder: Path, names: tuple[str, ...] = ("member", "nonmember")) -> Path:
    for name in names:
        write_rows(folder / f"{name}.jsonl", [{"id": f"{name}{i}", "document": f"A {name} document number {i}."}
                                              for i in range(2)])
    return folder


def insert_byte(path: Path, after: str, byte: bytes = b"\xff") -> int:
    """Put a byte that is not UTF-8 into `path` right after the text `after`; returns its offset."""
    data = path.read_bytes()
    offset = data.index(after.encode()) + len(after.encode())
    path.write_bytes(data[:offset] + byte + data[offset:])
    return offset


def edit_row(path: Path, index: int, **changes) -> None:
    rows = [json.loads(line) for line in path.read_text().splitlines()]
    rows[index].update(changes)
    write_rows(path, rows)


def write_run(folder: Path) -> Path:
    folder.mkdir(parents=True)
    (folder / "results.json").write_text('{"final_score": 0.5, "method": "sugd"}\n')
    return folder


# --------------------------------------------------------------------------------------------
# The cases: each builds its inputs under `area` (the working folder) and returns (argv, phrase)


@dataclass(frozen=True)
class Case:
    build: Callable[[Path, object], tuple[list[str], str]]
    needs_world: bool = False


def evaluate_on_lume(area: Path, *extra: str, mia: str | None = "none") -> list[str]:
    """`unlearn evaluate` on a LUME folder of its own (no model is ever reached in a hostile case)."""
    data = area / "lume" if (area / "lume").is_dir() else write_lume(area / "lume")
    argv = ["evaluate", "--data", str(data), "--model", str(area / "no-model"), "--out", str(area / "out"),
            "--utility", "none", "--quiet", *extra]
    return argv if mia is None else [*argv, "--mia", mia]


def config_file(area: Path, text: str | bytes) -> Path:
    path = area / "config.yaml"
    path.write_bytes(text if isinstance(text, bytes) else text.encode())
    return path


def case_config_empty(area, world):
    return ["evaluate", "--config", str(config_file(area, "")), "--out", str(area / "out")], "is empty"


def case_config_only_comments(area, world):
    path = config_file(area, "# settings to come\n\n")
    return ["run", str(path), "--out", str(area / "run")], f"config file {path} is empty"


def case_config_yaml_error(area, world):
    path = config_file(area, "training:\n  learning_rate: 1e-4\n  epochs: 2: 3\n")
    return (["prepare", "--config", str(path), "--out", str(area / "world")],
            f"config file {path} is not valid YAML at line 3, column 12")


def case_config_not_utf8(area, world):
    path = config_file(area, "method:\n  name: sugd  # caf\xe9\n".encode("latin-1"))
    offset = path.read_bytes().index(b"\xe9")
    return ["run", str(path), "--out", str(area / "run")], f"{path}: not UTF-8 text (byte 0xe9 at byte offset {offset})"


def case_sweep_empty(area, world):
    path = area / "sweep.yaml"
    path.write_text("# a grid to come\n")
    return ["sweep", str(path), "--out", str(area / "sweep")], f"sweep file {path} is empty"


def case_config_nan_learning_rate(area, world):
    path = config_file(area, "training:\n  learning_rate: .nan\n")
    return (["run", str(path), "--out", str(area / "run")],
            "config: training.learning_rate must be a finite number > 0, got nan")


def set_case(command: str, override: str, phrase: str):
    """A `--set` that is out of range, given to `command` (with its output under the area)."""
    def build(area, world):
        argv = {
            "run": ["run", str(REPO / "configs" / "sugd.yaml"), "--out", str(area / "run")],
            "prepare": ["prepare", "--out", str(area / "world")],
            "evaluate": ["evaluate", "--out", str(area / "out")],
            "quickstart": ["quickstart", "--out", str(area / "world"), "--methods", "ga"],
            "sweep": ["sweep", str(SWEEP), "--out", str(area / "sweep")],
        }[command]
        return [*argv, "--set", override], phrase
    return build


def flag_case(*flags: str, phrase: str):
    def build(area, world):
        return evaluate_on_lume(area, *flags), phrase
    return build


def case_score_threshold(area, world):
    folder = write_generations(area / "generations")
    return ["score", str(folder), "--mmlu-threshold", "2"], "--mmlu-threshold must be a number between 0 and 1"


def case_data_not_utf8(area, world):
    folder = write_lume(area / "lume")
    offset = insert_byte(folder / "retain.jsonl", "The retain story 2")
    return ["data", str(folder)], f"retain.jsonl: not UTF-8 text (byte 0xff at byte offset {offset})"


def case_mia_not_utf8(area, world):
    mia = write_mia(area / "mia")
    offset = insert_byte(mia / "nonmember.jsonl", "A nonmember document")
    return (evaluate_on_lume(area, mia=str(mia)),
            f"nonmember.jsonl: not UTF-8 text (byte 0xff at byte offset {offset})")


def case_generations_not_utf8(area, world):
    folder = write_generations(area / "generations")
    offset = insert_byte(folder / "forget_generations.jsonl", '"model_output": "and ends')
    return ["score", str(folder)], f"forget_generations.jsonl: not UTF-8 text (byte 0xff at byte offset {offset})"


def case_empty_gold_output(area, world):
    folder = write_lume(area / "lume")
    edit_row(folder / "forget.jsonl", 1, output="")
    return ["data", str(folder)], "forget.jsonl: row 2 has an empty 'output' (an empty gold answer would score"


def case_whitespace_gold_output(area, world):
    folder = write_lume(area / "lume")
    edit_row(folder / "retain.jsonl", 4, output=" \t\n")
    return evaluate_on_lume(area), "retain.jsonl: row 5 has an empty 'output'"


def case_empty_input(area, world):
    folder = write_lume(area / "lume")
    edit_row(folder / "forget.jsonl", 0, input="   ")
    return ["data", str(folder)], "forget.jsonl: row 1 has an empty 'input'"


def case_empty_expected_output(area, world):
    folder = write_generations(area / "generations")
    edit_row(folder / "retain_generations.jsonl", 2, expected_output="")
    return ["score", str(folder)], "retain_generations.jsonl: line 3 has an empty 'expected_output'"


def id_in_both_splits(command: str):
    def build(area, world):
        folder = write_lume(area / "lume")
        edit_row(folder / "retain.jsonl", 0, id="forget1sc1")
        argv = {"data": ["data", str(folder)],
                "evaluate": evaluate_on_lume(area),
                "run": ["run", str(REPO / "configs" / "sugd.yaml"), "--out", str(area / "run"),
                        "--set", f"data.path={folder}", "--set", f"workdir={area / 'workdir'}"]}[command]
        return argv, "id 'forget1sc1' is in both"
    return build


def case_mia_flag_without_nonmember(area, world):
    mia = write_mia(area / "mia", ("member",))
    return evaluate_on_lume(area, mia=str(mia)), f"MIA file not found: {mia / 'nonmember.jsonl'}"


def case_mia_path_without_member(area, world):
    mia = write_mia(area / "mia", ("nonmember",))
    argv = evaluate_on_lume(area, "--set", f"data.mia_path={mia}", mia=None)
    return argv, f"MIA file not found: {mia / 'member.jsonl'}"


def copy_of_target(area: Path, world, ignore: tuple[str, ...] = ()) -> Path:
    model = area / "model"
    shutil.copytree(world.target, model, ignore=shutil.ignore_patterns(*ignore) if ignore else None)
    return model


def world_evaluate(area: Path, world, model: Path, *extra: str) -> list[str]:
    return ["evaluate", "--model", str(model), "--out", str(area / "out"), "--set", f"workdir={world.root}",
            "--quiet", *extra]


def case_empty_tokenizer_folder(area, world):
    (area / "tokenizer").mkdir()
    argv = world_evaluate(area, world, world.target, "--tokenizer", str(area / "tokenizer"))
    return argv, f"tokenizer folder {area / 'tokenizer'} has no tokenizer files (expected tokenizer.json"


def case_model_folder_without_tokenizer(area, world):
    model = copy_of_target(area, world, ignore=("tokenizer*", "special_tokens_map.json", "vocab.json", "merges.txt"))
    return world_evaluate(area, world, model), f"tokenizer folder {model} has no tokenizer files"


def case_truncated_safetensors(area, world):
    model = copy_of_target(area, world)
    weights = model / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:100])
    return world_evaluate(area, world, model), f"{weights}: not a complete safetensors file"


def out_is_file(command: str):
    """`--out` naming a file where a folder is written."""
    def build(area, world):
        out = area / "taken.txt"
        out.write_text("not a folder\n")
        argv = {
            "evaluate": evaluate_on_lume(area, "--out", str(out)),
            "prepare": ["prepare", "--out", str(out)],
            "leaderboard": ["leaderboard", str(write_run(area / "run")), "--out", str(out)],
            "quickstart": ["quickstart", "--out", str(out), "--methods", "ga"],
            "sweep": ["sweep", str(SWEEP), "--out", str(out)],
        }[command]
        return argv, f"output folder {out} exists and is not a folder"
    return build


def case_results_not_utf8(area, world):
    run = write_run(area / "run")
    offset = insert_byte(run / "results.json", '"method": "')
    return ["leaderboard", str(run)], f"results.json: not UTF-8 text (byte 0xff at byte offset {offset})"


def case_out_under_a_file(area, world):
    (area / "taken.txt").write_text("not a folder\n")
    out = area / "taken.txt" / "evaluation"
    return (evaluate_on_lume(area, "--out", str(out)),
            f"cannot write the output folder {out}: {area / 'taken.txt'} is not a folder")


def case_score_out_is_folder(area, world):
    folder = write_generations(area / "generations")
    (area / "results").mkdir()
    return ["score", str(folder), "--out", str(area / "results")], f"output file {area / 'results'} exists and is a folder"


# Issue 23: strict model loading, every scored term checked before training, bounded configs.


def model_variant(area: Path, world, **config_changes) -> Path:
    """A copy of the target whose config.json says something its weights do not."""
    model = copy_of_target(area, world)
    config = json.loads((model / "config.json").read_text())
    (model / "config.json").write_text(json.dumps({**config, **config_changes}))
    return model


def case_renamed_tensors(area, world):
    from safetensors.torch import load_file, save_file

    model = copy_of_target(area, world)
    weights = load_file(model / "model.safetensors")
    save_file({name.replace("model.", "transformer.", 1): tensor for name, tensor in weights.items()},
              model / "model.safetensors", metadata={"format": "pt"})
    return world_evaluate(area, world, model), "missing (e.g. model.embed_tokens.weight); 24 not in the model"


def case_wrong_hidden_size(area, world):
    model = model_variant(area, world, hidden_size=32, intermediate_size=128)
    return world_evaluate(area, world, model), "of another shape (e.g. lm_head.weight) tensors; refusing"


def case_wrong_architecture(area, world):
    model = model_variant(area, world, model_type="llama", architectures=["LlamaForCausalLM"])
    return world_evaluate(area, world, model), "its weights do not fit its config.json (LlamaForCausalLM): 2 missing"


def case_unknown_architecture(area, world):
    model = model_variant(area, world, model_type="no-such-model", architectures=["NoSuchForCausalLM"])
    return world_evaluate(area, world, model), "has model type `no-such-model` but Transformers does not recognize"


def case_tokenizer_bigger_than_embedding(area, world):
    from utils.models.loading import load_tokenizer

    model = copy_of_target(area, world)
    tokenizer = load_tokenizer(str(model))
    rows = len(tokenizer)
    tokenizer.add_tokens([f"extra_token_{i}" for i in range(10)])
    tokenizer.save_pretrained(model)
    return world_evaluate(area, world, model), f"has {rows + 10} tokens but model {model} embeds only {rows}"


def case_adapter_for_another_base(area, world):
    """A LoRA adapter trained on a model of half the width, naming the target as its base."""
    from peft import LoraConfig, get_peft_model

    from utils.models.loading import build_tiny_model, load_tokenizer

    tokenizer = load_tokenizer(str(world.target))
    other = build_tiny_model(tokenizer, hidden_size=32, num_layers=2, num_heads=2, intermediate_size=64,
                             max_position_embeddings=64)
    adapter = get_peft_model(other, LoraConfig(r=4, target_modules=["q_proj", "v_proj"]))
    adapter.peft_config["default"].base_model_name_or_path = str(world.target)
    adapter.save_pretrained(area / "adapter")
    return (world_evaluate(area, world, area / "adapter"),
            f"adapter {area / 'adapter'} does not fit its base model {world.target}: ")


def case_task_missing_from_retain(area, world):
    """Refused before any model loads or trains: no run folder, so no config.yaml and no log.jsonl."""
    folder = write_lume(area / "lume")
    write_rows(folder / "retain.jsonl", [row for row in lume_rows("retain") if row["task"] != "Task2"])
    return (["run", str(REPO / "configs" / "sugd.yaml"), "--out", str(area / "run"), "--set", f"data.path={folder}",
             "--set", f"workdir={world.root}", "--set", "evaluation.utility=none", "--quiet"],
            "the retain set has no sentence-completion (sc) items for Task2: all 12")


def case_alias_bomb(area, world):
    lines = ['a: &a ["lol", "lol", "lol", "lol", "lol", "lol", "lol", "lol", "lol"]']
    for name, previous in zip("bcdefghi", "abcdefgh"):
        lines.append(f"{name}: &{name} [{', '.join([f'*{previous}'] * 9)}]")
    path = config_file(area, "\n".join(lines) + "\n")
    assert path.stat().st_size < 1024
    return ["run", str(path), "--out", str(area / "run")], "expands to more than 100000 values"


def case_duplicate_keys(area, world):
    path = config_file(area, "training:\n  learning_rate: 1.0e-4\n  epochs: 2\n  learning_rate: 1.0e-3\n")
    return (["run", str(path), "--out", str(area / "run")],
            f"config file {path} is not valid YAML at line 4, column 3: duplicate key 'learning_rate' (first at line 2)")


def case_deep_nesting(area, world):
    path = config_file(area, "training: " + "[" * 5000 + "]" * 5000 + "\n")
    return ["run", str(path), "--out", str(area / "run")], "nested deeper than 32 levels"


def case_config_too_large(area, world):
    path = config_file(area, "# padding\n" * 120_000 + "training:\n  epochs: 1\n")
    return ["run", str(path), "--out", str(area / "run")], "more than the 1048576 a config may hold"


def case_set_not_yaml(area, world):
    return (["run", str(REPO / "configs" / "sugd.yaml"), "--out", str(area / "run"), "--set",
             "adapter.target_modules=[q_proj, v_proj"],
            "--set adapter.target_modules: the value '[q_proj, v_proj' is not valid YAML")


def case_huge_positive_ratio_dry_run(area, world):
    return (["run", str(REPO / "configs" / "sugd.yaml"), "--dry-run", "--set", "method.positive_ratio=1000000000"],
            "config: method.positive_ratio must be an integer in [0, 1000], got 1000000000")


# Paths the file system refuses to look at, and places that are not what the command reads or writes.
LONG_NAME = "x" * 300  # past the 255 bytes a file name may have


def case_out_symlink_loop(area, world):
    (area / "loop").symlink_to("loop")
    run = write_run(area / "run")
    return ["leaderboard", str(run), "--out", str(area / "loop")], f"cannot use {area / 'loop'}: a symlink loop"


def case_run_out_under_symlink_loop(area, world):
    (area / "loop").symlink_to("loop")
    out = area / "loop" / "run"
    return ["run", str(REPO / "configs" / "ga.yaml"), "--out", str(out)], f"cannot use {out}: a symlink loop"


def case_out_name_too_long(area, world):
    out = area / LONG_NAME
    return evaluate_on_lume(area, "--out", str(out)), f"cannot use {out}: File name too long"


def case_data_name_too_long(area, world):
    return ["data", str(area / LONG_NAME)], f"cannot use {area / LONG_NAME}: File name too long"


def case_config_name_too_long(area, world):
    path = area / f"{LONG_NAME}.yaml"
    return ["run", str(path), "--dry-run"], f"cannot use {path}: File name too long"


def case_config_is_folder(area, world):
    (area / "configs").mkdir()
    return ["run", str(area / "configs"), "--dry-run"], f"config file {area / 'configs'} is a folder, not a config file"


def case_data_is_file(area, world):
    path = write_rows(area / "forget.jsonl", lume_rows("forget"))
    return ["data", str(path)], f"data folder {path} is not a folder"


def case_schedule_out_is_config(area, world):
    path = config_file(area, (REPO / "configs" / "ga.yaml").read_text())
    return (["run", str(path), "--dry-run", "--schedule-out", str(path)],
            f"--schedule-out {path} is the config file ({path}): a command never writes its inputs")


def case_schedule_out_in_data(area, world):
    data = write_lume(area / "lume")
    out = data / "schedule.json"
    return (["run", str(REPO / "configs" / "ga.yaml"), "--dry-run", "--set", f"data.path={data}",
             "--schedule-out", str(out)], f"--schedule-out {out} lies inside the data folder ({data})")


FULL_WITH_LAYERS = "adapter.layers names the layers that train, but adapter.kind full trains every layer"


def adapter_case(command: str, *overrides: str, phrase: str):
    """Adapter settings a run refuses, given to a command that does not train (`--dry-run`, `doctor`)."""
    def build(area, world):
        argv = {"dry-run": ["run", str(REPO / "configs" / "ga.yaml"), "--dry-run"],
                "doctor": ["doctor", str(REPO / "configs" / "ga.yaml"), "--out", str(area / "run")]}[command]
        settings = [*(world.overrides if world else []), *([f"workdir={world.root}"] if world else []), *overrides]
        return [*argv, *[arg for setting in settings for arg in ("--set", setting)]], phrase
    return build


def parquet_case(rows: int | None):
    """The official layout with a forget file that is garbage (`rows` None) or a valid parquet of `rows` rows."""
    def build(area, world):
        import pyarrow as pa
        import pyarrow.parquet as pq

        data = area / "lume" / "data"
        data.mkdir(parents=True)
        forget, retain = data / "forget_validation-00000-of-00001.parquet", data / "retain_validation-00000-of-00001.parquet"
        pq.write_table(pa.Table.from_pylist(lume_rows("retain")), retain)
        if rows is None:
            forget.write_bytes(b"PAR1 this is not a parquet file")
            return ["data", str(area / "lume")], f"{forget}: not a readable parquet file (ArrowInvalid)"
        columns = {name: pa.array([], pa.string()) for name in ("id", "input", "output", "task")}
        pq.write_table(pa.table(columns), forget)
        return ["data", str(area / "lume")], f"{forget}: the forget split is empty (0 rows)"
    return build


def resume_case(make_folder: bool):
    def build(area, world):
        out = area / "run"
        if make_folder:
            out.mkdir()
        return (["run", str(REPO / "configs" / "ga.yaml"), "--resume", "--out", str(out), "--quiet"],
                f"{out} holds no run to resume (no config.yaml or checkpoint); drop --resume to start one")
    return build


def case_merge_run_cut_short(area, world):
    """A run whose evaluation wrote its generations but not results.json (written last): unfinished."""
    runs = []
    for name in ("a", "b"):
        run = area / name
        (run / "model").mkdir(parents=True)
        (run / "model" / "config.json").write_text("{}\n")
        (run / "config.yaml").write_text("method:\n  name: ga\n")
        runs.append(run)
    write_rows(runs[0] / "forget_generations.jsonl", [{"id": "forget1sc1", "model_output": "and ends"}])
    (runs[1] / "results.json").write_text('{"final_score": 0.5}\n')
    return (["merge", str(runs[0]), str(runs[1]), "--no-eval", "--out", str(area / "merged")],
            (f"{runs[0]} is unfinished (no results.json; its evaluation was cut short after writing "
             "forget_generations.jsonl); finish it with `unlearn run CONFIG"))


CASES: dict[str, Case] = {
    # 1. config files
    "config_empty": Case(case_config_empty),
    "config_only_comments": Case(case_config_only_comments),
    "config_yaml_error": Case(case_config_yaml_error),
    "config_not_utf8": Case(case_config_not_utf8),
    "sweep_file_empty": Case(case_sweep_empty),
    # 2. ranges, checked at load time
    "range_nan_learning_rate": Case(case_config_nan_learning_rate),
    "range_epochs_1e9": Case(set_case("run", "training.epochs=1e9", "training.epochs must be a finite number > 0 "
                                      "and at most 10000, got 1000000000.0")),
    "range_epochs_inf": Case(set_case("run", "training.epochs=1e999", "got inf")),
    "range_lora_dropout": Case(set_case("run", "adapter.lora_dropout=1", "adapter.lora_dropout must be a finite "
                                        "number in [0, 1), got 1.0")),
    "range_no_target_modules": Case(set_case("run", "adapter.target_modules=[]", "adapter.target_modules must name")),
    "range_positive_factor": Case(set_case("run", "method.positive_factor=-1", "method.positive_factor must be a "
                                           "finite number >= 0, got -1.0")),
    "foreign_method_key": Case(set_case("run", "method.annealing_fraction=0.5", "method.annealing_fraction is not "
                                        "a setting of sugd (it belongs to agad)")),
    "range_forget_loss_ceiling": Case(set_case("run", "method.forget_loss_ceiling=-1", "method.forget_loss_ceiling")),
    "range_prepare_learning_rate": Case(set_case("prepare", "prepare.target.learning_rate=0",
                                                 "prepare.target.learning_rate must be a finite number > 0")),
    "range_tiny_heads": Case(set_case("prepare", "model.tiny.hidden_size=130", "must be divisible by")),
    "range_synthetic_size": Case(set_case("prepare", "synthetic.general_facts=0", "synthetic.general_facts")),
    "range_eval_batch_size": Case(set_case("evaluate", "evaluation.batch_size=0", "evaluation.batch_size")),
    "range_mmlu_threshold": Case(set_case("evaluate", "evaluation.mmlu_threshold=2", "evaluation.mmlu_threshold")),
    "range_quickstart_max_new_tokens": Case(set_case("quickstart", "evaluation.max_new_tokens=-1",
                                                     "evaluation.max_new_tokens must be a positive integer")),
    "range_sweep_warmup": Case(set_case("sweep", "training.warmup_steps=-1", "training.warmup_steps must be 0")),
    # 3. CLI flags
    "flag_batch_size_negative": Case(flag_case("--batch-size", "-1", phrase="--batch-size must be at least 1, got -1")),
    "flag_batch_size_zero": Case(flag_case("--batch-size", "0", phrase="--batch-size must be at least 1, got 0")),
    "flag_max_new_tokens_negative": Case(flag_case("--max-new-tokens", "-1",
                                                   phrase="--max-new-tokens must be at least 1, got -1")),
    "flag_max_new_tokens_zero": Case(flag_case("--max-new-tokens", "0", phrase="--max-new-tokens must be at least 1")),
    "flag_subset_zero": Case(flag_case("--subset", "0", phrase="--subset / evaluation.subset must be at least 1")),
    "flag_not_a_number": Case(flag_case("--batch-size", "eight", phrase="argument --batch-size: invalid int value")),
    "flag_score_threshold": Case(case_score_threshold),
    # 4. data
    "data_not_utf8": Case(case_data_not_utf8),
    "mia_not_utf8": Case(case_mia_not_utf8),
    "generations_not_utf8": Case(case_generations_not_utf8),
    "results_not_utf8": Case(case_results_not_utf8),
    "data_empty_output": Case(case_empty_gold_output),
    "data_whitespace_output": Case(case_whitespace_gold_output),
    "data_empty_input": Case(case_empty_input),
    "generations_empty_expected_output": Case(case_empty_expected_output),
    "id_in_both_splits_data": Case(id_in_both_splits("data")),
    "id_in_both_splits_evaluate": Case(id_in_both_splits("evaluate")),
    "id_in_both_splits_run": Case(id_in_both_splits("run")),
    "mia_flag_without_nonmember": Case(case_mia_flag_without_nonmember),
    "mia_path_without_member": Case(case_mia_path_without_member),
    # 5. model and tokenizer folders
    "empty_tokenizer_folder": Case(case_empty_tokenizer_folder, needs_world=True),
    "model_folder_without_tokenizer": Case(case_model_folder_without_tokenizer, needs_world=True),
    "truncated_safetensors": Case(case_truncated_safetensors, needs_world=True),
    "model_renamed_tensors": Case(case_renamed_tensors, needs_world=True),
    "model_wrong_hidden_size": Case(case_wrong_hidden_size, needs_world=True),
    "model_wrong_architecture": Case(case_wrong_architecture, needs_world=True),
    "model_unknown_architecture": Case(case_unknown_architecture, needs_world=True),
    "tokenizer_bigger_than_embedding": Case(case_tokenizer_bigger_than_embedding, needs_world=True),
    "adapter_for_another_base": Case(case_adapter_for_another_base, needs_world=True),
    # 6. inputs the final evaluation needs, checked before the first optimiser step
    "task_missing_from_retain": Case(case_task_missing_from_retain, needs_world=True),
    # 8. hostile configs
    "config_alias_bomb": Case(case_alias_bomb),
    "config_duplicate_keys": Case(case_duplicate_keys),
    "config_deep_nesting": Case(case_deep_nesting),
    "config_too_large": Case(case_config_too_large),
    "set_not_yaml": Case(case_set_not_yaml),
    "dry_run_huge_positive_ratio": Case(case_huge_positive_ratio_dry_run),
    # 7. output locations
    "evaluate_out_is_file": Case(out_is_file("evaluate")),
    "prepare_out_is_file": Case(out_is_file("prepare")),
    "leaderboard_out_is_file": Case(out_is_file("leaderboard")),
    "quickstart_out_is_file": Case(out_is_file("quickstart")),
    "sweep_out_is_file": Case(out_is_file("sweep")),
    "out_under_a_file": Case(case_out_under_a_file),
    "score_out_is_folder": Case(case_score_out_is_folder),
    # 9. paths the file system refuses, and a file or folder where the other is wanted
    "out_symlink_loop": Case(case_out_symlink_loop),
    "run_out_under_symlink_loop": Case(case_run_out_under_symlink_loop),
    "out_name_too_long": Case(case_out_name_too_long),
    "data_name_too_long": Case(case_data_name_too_long),
    "config_name_too_long": Case(case_config_name_too_long),
    "config_is_folder": Case(case_config_is_folder),
    "data_is_file": Case(case_data_is_file),
    "schedule_out_is_config": Case(case_schedule_out_is_config),
    "schedule_out_in_data": Case(case_schedule_out_in_data),
    # 10. adapter settings a run refuses are refused without training too
    "dry_run_layers_with_full": Case(adapter_case("dry-run", "adapter.layers=[0]", phrase=f"config: {FULL_WITH_LAYERS}")),
    "doctor_layers_with_full": Case(adapter_case("doctor", "adapter.layers=[0]", phrase=f"config: {FULL_WITH_LAYERS}")),
    "dry_run_layer_out_of_range": Case(adapter_case(
        "dry-run", "adapter.kind=last_k", "adapter.layers=[99]",
        phrase="adapter.layers: this model's decoder layers are 0 to 1, got 99"), needs_world=True),
    "doctor_layer_out_of_range": Case(adapter_case(
        "doctor", "adapter.kind=last_k", "adapter.layers=[99]",
        phrase="adapter: adapter.layers: this model's decoder layers are 0 to 1, got 99"), needs_world=True),
    "dry_run_last_k_deeper_than_model": Case(adapter_case(
        "dry-run", "adapter.kind=last_k", "adapter.last_k=3",
        phrase="adapter.last_k must be between 1 and 2 for this model, got 3"), needs_world=True),
    # 11. damaged parquet files, resuming nothing, merging a run cut short
    "parquet_garbage": Case(parquet_case(None)),
    "parquet_no_rows": Case(parquet_case(0)),
    "resume_missing_folder": Case(resume_case(False)),
    "resume_empty_folder": Case(resume_case(True)),
    "merge_run_cut_short": Case(case_merge_run_cut_short),
}


# --------------------------------------------------------------------------------------------
# The contract


def snapshot(*roots: Path) -> dict[str, str]:
    """Every file and folder under `roots`: a folder maps to "", a file to the hash of its bytes."""
    state = {}
    for root in roots:
        for path in [root, *root.rglob("*")]:
            if path.is_symlink():  # a symlink loop of a case is read as what it points to, never followed
                state[str(path)] = f"-> {os.readlink(path)}"
            else:
                state[str(path)] = "" if path.is_dir() else hashlib.sha256(path.read_bytes()).hexdigest()
    return state


@pytest.mark.parametrize("name", sorted(CASES))
def test_hostile_input(name, tmp_path, monkeypatch, capsys, request):
    case = CASES[name]
    world = request.getfixturevalue("small_world") if case.needs_world else None
    area = tmp_path / "area"
    area.mkdir()
    monkeypatch.chdir(area)  # default outputs (./evaluation, runs/...) would land here and be seen
    argv, phrase = case.build(area, world)
    roots = [area] + ([world.root] if world else [])
    before = snapshot(*roots)
    capsys.readouterr()

    code = main(argv)

    err = capsys.readouterr().err
    assert code == 2, err
    lines = err.splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), err
    assert "Traceback" not in err
    assert phrase in lines[0], lines[0]
    after = snapshot(*roots)
    assert sorted(set(after) - set(before)) == [], "new files or folders appeared"
    assert {path: digest for path, digest in before.items() if after.get(path) != digest} == {}, "inputs changed"


def test_a_folder_that_is_not_writable_is_refused_before_anything(tmp_path, capsys):
    if os.geteuid() == 0:
        pytest.skip("running as root: mode bits do not stop writes")
    locked = tmp_path / "locked"
    locked.mkdir()
    locked.chmod(0o500)
    try:
        assert main(["prepare", "--out", str(locked / "world")]) == 2
    finally:
        locked.chmod(0o700)
    err = capsys.readouterr().err
    assert err.startswith(f"error: cannot write the output folder {locked / 'world'}: the folder {locked} is not "
                          "writable") and err.count("\n") == 1
    assert not (locked / "world").exists()


# --------------------------------------------------------------------------------------------
# Not errors, but never silent


def test_an_over_long_prompt_and_mia_document_are_scored_within_the_context(small_world, tmp_path, capsys):
    """100,000 characters on the small world's 256-position model: evaluated, and the warnings count them."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    data = tmp_path / "data"
    shutil.copytree(small_world.data / "mia_data", data / "mia_data")
    long_text = ("the orange fox of the northern hills sleeps through the winter " * 1600)[:100_000]
    for split in ("forget", "retain"):
        shutil.copy(small_world.data / "data" / f"{split}_validation-00000-of-00001.parquet", data)
    forget = data / "forget_validation-00000-of-00001.parquet"
    rows = pq.read_table(forget).to_pylist()
    prompt_count = len(rows) + pq.read_metadata(data / "retain_validation-00000-of-00001.parquet").num_rows
    rows[0]["input"] = long_text
    pq.write_table(pa.Table.from_pylist(rows), forget)
    members = data / "mia_data" / "validation" / "member.jsonl"
    documents = [json.loads(line) for line in members.read_text().splitlines()]
    documents[0]["document"] = long_text
    write_rows(members, documents)

    out = tmp_path / "evaluation"
    assert main(["evaluate", "--model", str(small_world.target), "--data", str(data), "--out", str(out),
                 "--set", f"workdir={small_world.root}", "--max-new-tokens", "24", "--quiet"]) == 0
    results = json.loads((out / "results.json").read_text())
    prompts = [w for w in results["warnings"] if "prompts are longer than the model's context" in w]
    documents_cut = [w for w in results["warnings"] if w.startswith("MIA: ")]
    assert prompts == [f"1 of {prompt_count} prompts are longer than the model's context (256 positions): "
                       + "each kept its last 232 tokens"]
    assert documents_cut == ["MIA: 1 of 6 documents are longer than the model's context (256 positions): "
                             + "each was scored on its first 256 tokens"]
    assert results["mia_auc"] is not None
    printed = capsys.readouterr().out
    assert f"warning: {prompts[0]}" in printed and f"warning: {documents_cut[0]}" in printed


def test_a_half_mia_folder_next_to_the_data_is_reported_not_silent(small_world, tmp_path, capsys):
    data = tmp_path / "data"
    shutil.copytree(small_world.data / "data", data / "data")
    (data / "mia_data" / "validation").mkdir(parents=True)
    shutil.copy(small_world.data / "mia_data" / "validation" / "member.jsonl", data / "mia_data" / "validation")
    reason = f"MIA not measured: {data / 'mia_data' / 'validation'} has member.jsonl but no nonmember.jsonl"

    assert main(["data", str(data)]) == 0
    assert f"warning: {reason}" in capsys.readouterr().out

    out = tmp_path / "evaluation"
    assert main(["evaluate", "--model", str(small_world.target), "--data", str(data), "--out", str(out),
                 "--set", f"workdir={small_world.root}", "--max-new-tokens", "8", "--subset", "1", "--quiet"]) == 0
    results = json.loads((out / "results.json").read_text())
    assert results["mia_auc"] is None and results["final_score"] is None
    assert reason in results["warnings"]
    assert f"warning: {reason}" in capsys.readouterr().out


def test_a_huge_max_new_tokens_is_capped_at_the_context_and_recorded(small_world, tmp_path, capsys):
    """A million new tokens on the 256-position model: generation stops at the context, and results.json says so."""
    out = tmp_path / "evaluation"
    assert main(["evaluate", "--model", str(small_world.target), "--out", str(out), "--set",
                 f"workdir={small_world.root}", "--max-new-tokens", "1000000", "--subset", "1", "--utility", "none",
                 "--quiet"]) == 0
    results = json.loads((out / "results.json").read_text())
    assert results["evaluated"]["max_new_tokens"] == 1_000_000 and results["evaluated"]["generation_cap"] == 256
    assert ("evaluation.max_new_tokens=1000000 is more than the model's context (256 positions): generations were "
            "capped at 256 new tokens") in results["warnings"]


def test_null_in_a_sweep_grid_is_a_null_setting(tmp_path):
    from utils.experiment.sweep import load_sweep

    sweep = tmp_path / "sweep.yaml"
    sweep.write_text(f"base: {REPO / 'configs' / 'sugd.yaml'}\ngrid:\n  evaluation.subset: [null, 2]\n")
    runs = load_sweep(sweep).runs()
    assert [run.load().evaluation.subset for run in runs] == [None, 2]
    assert runs[0].overrides[-1] == "evaluation.subset=null"


def test_a_damaged_parquet_file_logs_nothing_besides_the_error(tmp_path):
    """datasets logs its own ERROR line about a file it cannot read; the one `error:` line must be all that is
    said, so nothing may reach the datasets logger's handlers while the file is read."""
    import logging

    from utils.data.lume import read_parquet_rows
    from utils.errors import UserError

    path = tmp_path / "forget.parquet"
    path.write_bytes(b"PAR1 this is not a parquet file")
    records = []
    handler = logging.Handler()
    handler.emit = records.append
    logger = logging.getLogger("datasets")
    level = logger.level
    logger.addHandler(handler)
    try:
        with pytest.raises(UserError, match="not a readable parquet file"):
            read_parquet_rows(path)
    finally:
        logger.removeHandler(handler)
    assert records == []
    assert logger.level == level  # the library's verbosity is put back


def test_a_non_finite_final_score_shows_as_n_a(tmp_path, capsys):
    run = tmp_path / "run"
    run.mkdir()
    (run / "results.json").write_text('{"final_score": NaN, "task_aggregate": 0.25, "method": "ga"}\n')
    assert main(["leaderboard", str(run), "--out", str(tmp_path / "board")]) == 0
    out = capsys.readouterr().out
    row = out.splitlines()[2].split()
    assert row[:3] == ["ga", "n/a", "0.2500"] and "nan" not in out.lower().replace("n/a", "")
    markdown = (tmp_path / "board" / "leaderboard.md").read_text()
    assert "| ga | n/a | 0.250 |" in markdown and "nan" not in markdown
    assert (tmp_path / "board" / "leaderboard.csv").read_text().splitlines()[1].startswith("ga,,0.25,")
