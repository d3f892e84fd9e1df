"""One `unlearn` across its commands: `--version`, help text on every argument of every command (read from
`--help`, what a user sees), `--out` a folder everywhere but `score` (a file, said so), `--config`/`--set`
on every command a config key affects, and the flags `unlearn evaluate` maps onto config keys (checked on
the experiment it builds, without loading a model).

The help walk reads each command's `--help` output rather than argparse's parser objects: the parsers list
their arguments only through private attributes (`_actions`, `_subparsers`), and the help is the contract
anyway. Its reader is tested on a parser with a help-less argument, so a change in argparse's layout fails
here instead of passing every command unchecked.
"""

from __future__ import annotations

import argparse
import importlib.metadata
import json
import subprocess
import sys
import tomllib

import pytest
import yaml

from utils.cli.main import COMMAND_MODULES, DISTRIBUTION, main
from utils.experiment.experiment import Experiment

from ..conftest import REPO
from .test_hostile_inputs import write_generations, write_lume, write_mia

SWEEP = REPO / "configs" / "experiments" / "sugd_grid.yaml"
TAKES_CONFIG = {"data", "prepare", "score", "evaluate", "quickstart", "sweep"}  # as --config FILE
TAKES_SET = TAKES_CONFIG | {"run", "merge"}  # run's config is its positional CONFIG.yaml; merge reads its runs'
NO_CONFIG = {"leaderboard", "reproduce"}  # no config key changes what they do (reproduce reruns the run's own)


# --------------------------------------------------------------------------------------------
# Reading --help


def help_of(argv: list[str], monkeypatch, capsys) -> str:
    monkeypatch.setenv("COLUMNS", "100")  # argparse wraps to the terminal's width: one layout for the test
    capsys.readouterr()
    with pytest.raises(SystemExit) as stopped:
        main([*argv, "--help"])
    assert stopped.value.code == 0
    return capsys.readouterr().out


def arguments_in_help(text: str) -> dict[str, str]:
    """{invocation: help text} of every argument listed under 'positional arguments:' and 'options:'.

    An argument's line is indented by two spaces; its help follows after two or more spaces on the same line,
    or on the lines below, indented deeper (a long invocation, or help wrapped over several lines).
    """
    found: dict[str, str] = {}
    section, last = None, None
    for line in text.splitlines():
        if line and not line.startswith(" "):  # "usage: ...", a description or a section heading
            section = line[:-1] if line.endswith(":") else None
            continue
        if section not in ("positional arguments", "options") or not line.strip():
            continue
        if len(line) - len(line.lstrip()) == 2:
            last, _, rest = line.strip().partition("  ")
            found[last] = rest.strip()
        elif last is not None:
            found[last] = f"{found[last]} {line.strip()}".strip()
    return found


def commands_in_help(text: str) -> list[str]:
    """The sub-commands `unlearn --help` lists (indented by four spaces under COMMAND)."""
    names = []
    for line in text.splitlines():
        if line.startswith("    ") and not line.startswith("     "):
            names.append(line.split()[0])
    return names


def test_the_help_reader_sees_an_argument_without_help():
    parser = argparse.ArgumentParser(prog="demo")
    parser.add_argument("path", help="a folder")
    parser.add_argument("--quiet", action="store_true")
    parser.add_argument("--a-very-long-option-name", metavar="SOMETHING_LONG", help="help on the next line")
    parser.add_argument("--wrapped", help="word " * 40)
    found = arguments_in_help(parser.format_help())
    assert found["path"] == "a folder"
    assert found["--quiet"] == ""
    assert found["--a-very-long-option-name SOMETHING_LONG"] == "help on the next line"
    assert found["--wrapped WRAPPED"].split() == ["word"] * 40
    assert found["-h, --help"] == "show this help message and exit"


def test_every_argument_of_every_command_has_help(monkeypatch, capsys):
    commands = commands_in_help(help_of([], monkeypatch, capsys))
    assert sorted(commands) == sorted(module.rsplit(".", 1)[1] for module in COMMAND_MODULES)
    top = arguments_in_help(help_of([], monkeypatch, capsys))
    missing = [f"unlearn {name}" for name, text in top.items() if not text and name != "COMMAND"]
    checked = 0
    for command in commands:
        arguments = arguments_in_help(help_of([command], monkeypatch, capsys))
        assert "-h, --help" in arguments, command
        missing += [f"unlearn {command} {name}" for name, text in arguments.items() if not text]
        checked += len(arguments)
    assert missing == []
    assert checked > 50  # the reader found the arguments, not an empty page


def test_out_is_a_folder_everywhere_but_score(monkeypatch, capsys):
    """One meaning of --out per kind: DIR for the commands that write a folder, FILE for `score` (its
    help says it differs)."""
    kinds = {}
    for command in ("data", "prepare", "score", "evaluate", "run", "quickstart", "leaderboard", "sweep", "merge",
                    "reproduce"):
        arguments = arguments_in_help(help_of([command], monkeypatch, capsys))
        outs = {name: text for name, text in arguments.items() if name.startswith("--out ")}
        if outs:
            (name, text), = outs.items()
            kinds[command] = name.split()[1]
            if command == "score":
                assert "FILE, not a folder" in text
    assert kinds == {"prepare": "DIR", "score": "FILE", "evaluate": "DIR", "run": "DIR", "quickstart": "DIR",
                     "leaderboard": "DIR", "sweep": "DIR", "merge": "DIR", "reproduce": "DIR"}


def test_config_and_set_are_where_a_config_key_matters(monkeypatch, capsys):
    for command in sorted(TAKES_SET | NO_CONFIG):
        arguments = arguments_in_help(help_of([command], monkeypatch, capsys))
        assert ("--config FILE" in arguments) == (command in TAKES_CONFIG), command
        assert ("--set KEY=VALUE" in arguments) == (command in TAKES_SET), command
    assert "config" in arguments_in_help(help_of(["run"], monkeypatch, capsys))  # unlearn run CONFIG.yaml


# --------------------------------------------------------------------------------------------
# --version


def test_version_is_the_installed_distribution(monkeypatch, capsys):
    project = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    assert DISTRIBUTION == project["name"]
    capsys.readouterr()
    with pytest.raises(SystemExit) as stopped:
        main(["--version"])
    assert stopped.value.code == 0
    assert capsys.readouterr().out == f"unlearn {importlib.metadata.version(DISTRIBUTION)}\n"


def test_version_of_a_checkout_that_is_not_installed(monkeypatch, capsys):
    def not_installed(name):
        raise importlib.metadata.PackageNotFoundError(name)

    monkeypatch.setattr(importlib.metadata, "version", not_installed)
    project = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    capsys.readouterr()
    with pytest.raises(SystemExit) as stopped:
        main(["--version"])
    assert stopped.value.code == 0
    out = capsys.readouterr().out
    assert out.startswith(f"unlearn {project['version']} (the checkout at {REPO};")
    assert "is not installed" in out and out.count("\n") == 1


def test_version_through_the_module_entry_point(tmp_path):
    result = subprocess.run([sys.executable, "-m", "lume_unlearning", "--version"], cwd=tmp_path, check=False,
                            capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr
    assert result.stdout == f"unlearn {importlib.metadata.version(DISTRIBUTION)}\n"


# --------------------------------------------------------------------------------------------
# unlearn evaluate: each flag reaches its config key


class Captured(Exception):
    """Raised in place of the model load: the experiment's config has been seen."""


@pytest.fixture()
def captured_config(monkeypatch, tmp_path):
    """Run `unlearn evaluate ARGS` up to the model load; returns the config the evaluation would use."""
    monkeypatch.chdir(tmp_path)
    seen = {}

    def evaluate_checkpoint(self, model_name, out=None, tokenizer=None, label=None, progress=True, target=None):
        seen.update(config=self.config, model=model_name, out=out, tokenizer=tokenizer)
        raise Captured

    monkeypatch.setattr(Experiment, "evaluate_checkpoint", evaluate_checkpoint)

    def evaluate(*argv: str):
        with pytest.raises(Captured):
            main(["evaluate", "--out", str(tmp_path / "out"), "--quiet", *argv])
        return seen

    return evaluate


@pytest.mark.parametrize(("argv", "section", "key", "value"), [
    (["--dtype", "bfloat16"], "model", "dtype", "bfloat16"),
    (["--dtype", "float16"], "model", "dtype", "float16"),
    (["--mmlu-shots", "5"], "evaluation", "mmlu_shots", 5),
    (["--mmlu-shots", "0"], "evaluation", "mmlu_shots", 0),
    (["--batch-size", "3"], "evaluation", "batch_size", 3),
    (["--max-new-tokens", "7"], "evaluation", "max_new_tokens", 7),
    (["--subset", "2"], "evaluation", "subset", 2),
    (["--split", "train"], "data", "split", "train"),
    (["--data", "some/folder"], "data", "path", "some/folder"),
    (["--mia", "none"], "data", "mia_path", "none"),
    (["--utility", "none"], "evaluation", "utility", "none"),
    (["--model", "run:1/model"], "model", "name_or_path", "run:1/model"),
    (["--tokenizer", "tok"], "model", "tokenizer", "tok"),
])
def test_each_evaluate_flag_reaches_its_config_key(captured_config, argv, section, key, value):
    seen = captured_config(*argv)
    assert getattr(getattr(seen["config"], section), key) == value
    if key == "name_or_path":
        assert seen["model"] == value  # the model evaluated is the one named
    if key == "tokenizer":
        assert seen["tokenizer"] == value


def test_evaluate_defaults_are_the_configs(captured_config, tmp_path):
    """Without the flags the config decides (fp32, 0 shots, 64 prompts a batch by default; a config file's
    own values otherwise), and a flag given wins over the file and --set."""
    default = captured_config()["config"]
    assert (default.model.dtype, default.evaluation.mmlu_shots, default.evaluation.batch_size) == ("float32", 0, 64)
    config = tmp_path / "seven.yaml"
    config.write_text(yaml.safe_dump({"model": {"dtype": "bfloat16"}, "evaluation": {"mmlu_shots": 5,
                                                                                      "batch_size": 16}}))
    from_file = captured_config("--config", str(config))["config"]
    assert (from_file.model.dtype, from_file.evaluation.mmlu_shots, from_file.evaluation.batch_size) == (
        "bfloat16", 5, 16)
    flags = captured_config("--config", str(config), "--set", "evaluation.mmlu_shots=3", "--dtype", "float32",
                            "--mmlu-shots", "1", "--batch-size", "2")["config"]
    assert (flags.model.dtype, flags.evaluation.mmlu_shots, flags.evaluation.batch_size) == ("float32", 1, 2)
    by_set = captured_config("--config", str(config), "--set", "evaluation.mmlu_shots=3")["config"]
    assert by_set.evaluation.mmlu_shots == 3


def one_error_line(capsys) -> str:
    err = capsys.readouterr().err
    lines = err.splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and "Traceback" not in err, err
    return lines[0]


@pytest.mark.parametrize(("argv", "phrase"), [
    (["--mmlu-shots", "-1"], "--mmlu-shots must be at least 0, got -1"),
    (["--mmlu-shots", "five"], "argument --mmlu-shots: invalid int value: 'five'"),
    (["--dtype", "float64"], "argument --dtype: invalid choice: 'float64'"),
    (["--batch-size", "0"], "--batch-size must be at least 1, got 0"),
])
def test_bad_evaluate_flags_end_in_one_line(argv, phrase, tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    capsys.readouterr()
    assert main(["evaluate", "--out", str(tmp_path / "out"), "--quiet", *argv]) == 2
    assert phrase in one_error_line(capsys)
    assert list(tmp_path.iterdir()) == []


# --------------------------------------------------------------------------------------------
# unlearn data: the data a config points at


def train_split_folder(tmp_path):
    """A flat LUME folder (both splits read the same files) whose MIA documents are under mia_data/train."""
    folder = write_lume(tmp_path / "lume")
    write_mia(folder / "mia_data" / "train")
    return folder


def test_data_checks_the_folder_and_split_a_config_names(tmp_path, monkeypatch, capsys):
    folder = train_split_folder(tmp_path)
    config = tmp_path / "config.yaml"
    config.write_text(yaml.safe_dump({"data": {"path": str(folder), "split": "train"}}))
    capsys.readouterr()
    assert main(["data", "--config", str(config)]) == 0
    out = capsys.readouterr().out
    assert f"LUME data in {folder} (train)" in out
    assert f"MIA documents in {folder / 'mia_data' / 'train'}: 2 members, 2 non-members" in out

    # --split over the config's split: no MIA folder for the validation split
    assert main(["data", "--config", str(config), "--split", "validation"]) == 0
    out = capsys.readouterr().out
    assert f"LUME data in {folder} (validation)" in out and "MIA documents" not in out

    # --set, and DIR over the config's data.path
    assert main(["data", "--set", f"data.path={folder}", "--set", "data.split=train"]) == 0
    assert f"LUME data in {folder} (train)" in capsys.readouterr().out
    other = write_lume(tmp_path / "other")
    assert main(["data", str(other), "--config", str(config)]) == 0
    assert f"LUME data in {other} (train)" in capsys.readouterr().out


def test_data_reads_the_configs_mia_path(tmp_path, capsys):
    folder = write_lume(tmp_path / "lume")
    mia = write_mia(tmp_path / "elsewhere")
    capsys.readouterr()
    assert main(["data", str(folder), "--set", f"data.mia_path={mia}"]) == 0
    assert f"MIA documents in {mia}: 2 members, 2 non-members" in capsys.readouterr().out
    half = write_mia(tmp_path / "half", ("member",))
    assert main(["data", str(folder), "--set", f"data.mia_path={half}"]) == 2
    assert f"MIA file not found: {half / 'nonmember.jsonl'}" in one_error_line(capsys)


def test_data_without_a_folder_says_how_to_name_one(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    capsys.readouterr()
    assert main(["data", "--set", f"workdir={tmp_path / 'world'}"]) == 2
    line = one_error_line(capsys)
    assert f"no mini-LUME in {tmp_path / 'world' / 'data'}" in line and "unlearn prepare" in line
    assert main(["data", "--set", "data.split=test"]) == 2
    assert "data.split must be one of 'train', 'validation'" in one_error_line(capsys)


# --------------------------------------------------------------------------------------------
# unlearn score: the config's MMLU bar


def scored(tmp_path, capsys, *argv: str) -> dict:
    folder = tmp_path / "generations"
    if not folder.is_dir():
        write_generations(folder)
        (folder / "mmlu_metrics.json").write_text(json.dumps({"average_acc": 0.3}))
    out = tmp_path / "rescored.json"
    assert main(["score", str(folder), "--out", str(out), "--overwrite", *argv]) == 0, capsys.readouterr().err
    results = json.loads(out.read_text())
    return next((w for w in results["warnings"] if w.startswith("MMLU score")), None)


def test_score_takes_the_mmlu_threshold_from_the_config(tmp_path, capsys):
    assert "below the threshold 0.371" in scored(tmp_path, capsys)  # the embedded default
    assert scored(tmp_path, capsys, "--set", "evaluation.mmlu_threshold=0.2") is None
    config = tmp_path / "one-b.yaml"
    config.write_text(yaml.safe_dump({"evaluation": {"mmlu_threshold": 0.25}}))
    assert scored(tmp_path, capsys, "--config", str(config)) is None
    assert "below the threshold 0.32" in scored(tmp_path, capsys, "--config", str(config), "--set",
                                                "evaluation.mmlu_threshold=0.32")
    # the flag wins over the config
    assert "below the threshold 0.5" in scored(tmp_path, capsys, "--config", str(config), "--mmlu-threshold", "0.5")


def test_score_refuses_a_bad_config_before_writing(tmp_path, capsys):
    folder = write_generations(tmp_path / "generations")
    capsys.readouterr()
    assert main(["score", str(folder), "--set", "evaluation.mmlu_threshold=2"]) == 2
    assert "config: evaluation.mmlu_threshold must be a finite number in [0, 1], got 2" in one_error_line(capsys)
    assert not (folder / "results.json").exists()


# --------------------------------------------------------------------------------------------
# unlearn sweep --config: the base every run starts from


@pytest.fixture()
def sweep_calls(monkeypatch, tmp_path):
    """The runs and folder `unlearn sweep` hands to the sweep engine (nothing is trained)."""
    import utils.experiment.sweep as sweep_module

    monkeypatch.chdir(tmp_path)
    calls = []

    def run_sweep(runs, out_dir, **options):
        calls.append((runs, out_dir))
        return []

    monkeypatch.setattr(sweep_module, "run_sweep", run_sweep)
    return calls


def test_sweep_config_replaces_the_base(sweep_calls, tmp_path, capsys):
    base = REPO / "configs" / "olmo-1b" / "sugd.yaml"
    assert main(["sweep", str(SWEEP), "--config", str(base), "--set", "training.epochs=2"]) == 0
    (runs, out), = sweep_calls
    assert [run.config for run in runs] == [base.resolve()] * 4
    assert out == tmp_path.joinpath("runs", "sweeps", "sugd_grid-sugd").relative_to(tmp_path)
    from methods.registry import typed

    config = typed(runs[0].load())  # the method's settings as the run reads them
    assert config.workdir == str(REPO / "artifacts" / "olmo-1b") and config.model.dtype == "bfloat16"  # the 1B config's
    assert config.training.epochs == 2 and config.method.positive_ratio == 3  # --set, then the grid

    assert main(["sweep", str(SWEEP)]) == 0  # without --config: the file's base and folder, as before
    runs, out = sweep_calls[-1]
    assert runs[0].config == (SWEEP.parent / "../sugd.yaml").resolve()
    assert str(out) == "runs/sweeps/sugd_grid"


def test_sweep_config_is_checked_before_any_run(sweep_calls, tmp_path, capsys):
    capsys.readouterr()
    assert main(["sweep", str(SWEEP), "--config", str(tmp_path / "missing.yaml")]) == 2
    assert f"config file not found: {tmp_path / 'missing.yaml'}" in one_error_line(capsys)
    # The grid's method.positive_ratio is SUGD's: with GA as the base every run is refused up front.
    assert main(["sweep", str(SWEEP), "--config", str(REPO / "configs" / "ga.yaml")]) == 2
    assert "method.positive_ratio is not a setting of ga" in one_error_line(capsys)
    assert sweep_calls == [] and not (tmp_path / "runs").exists()
