"""The one experiment API: every entry point evaluates with the same settings, resumes the same way, and the
layers import one way only."""

from __future__ import annotations

import ast
import json
import shutil
from pathlib import Path

import nbformat
import pytest

from utils.cli.main import main
from utils.data.lume import load_lume
from utils.errors import UserError
from utils.experiment import Experiment
from utils.experiment.sweep import SweepRun, run_sweep

REPO = Path(__file__).resolve().parents[2]
QUICK = ["training.epochs=1", "training.batch_size=4", "adapter.kind=lora", "adapter.lora_rank=4"]


def write_mmlu(root: Path) -> Path:
    (root / "test").mkdir(parents=True)
    (root / "dev").mkdir()
    # Eight questions with every letter twice: a model leaning to one letter scores 0.25, and none of these
    # tiny models gets near the 0.99 threshold the test sets (2 questions, once, were both right by chance).
    (root / "test" / "astronomy_test.csv").write_text(
        "What is the Sun?,A star,A planet,A moon,A comet,A\n"
        "Which is largest?,Mars,Jupiter,Venus,Earth,B\n"
        "Which is closest to the Sun?,Venus,Earth,Mercury,Mars,C\n"
        "What orbits the Earth?,Mars,The Sun,Venus,The Moon,D\n"
        "What is Titan?,A moon,A star,A comet,A galaxy,A\n"
        "Which planet has rings most visible?,Mars,Saturn,Venus,Mercury,B\n"
        "What is a light-year?,A time,A speed,A distance,A mass,C\n"
        "Which is a dwarf planet?,Earth,Mars,Venus,Pluto,D\n")
    (root / "dev" / "astronomy_dev.csv").write_text("Closest star?,Sirius,Vega,Rigel,The Sun,D\n")
    return root


def generation_ids(folder: Path) -> list[str]:
    lines = (folder / "forget_generations.jsonl").read_text().splitlines()
    return [json.loads(line)["id"] for line in lines]


def test_quickstart_evaluates_the_gold_standard_like_every_method(tmp_path, small_world):
    """Before the experiment API, quickstart scored the gold standard on every document, without the
    configured MMLU shots or threshold, while each method got the subset and both settings."""
    world = tmp_path / "world"
    shutil.copytree(small_world.root, world)
    mmlu = write_mmlu(tmp_path / "mmlu")
    settings = ["evaluation.subset=1", f"evaluation.utility=mmlu:{mmlu}", "evaluation.mmlu_shots=1",
                "evaluation.mmlu_threshold=0.99", *QUICK]
    argv = ["quickstart", "--out", str(world), "--methods", "ga", "--quiet"]
    for item in [*small_world.overrides, *settings]:
        argv += ["--set", item]
    assert main(argv) == 0
    (runs,) = (world / "runs").iterdir()
    gold, ga = (json.loads((runs / name / "results.json").read_text()) for name in ("gold_standard", "ga"))
    for results in (gold, ga):
        assert results["evaluated"]["subset_documents_per_task"] == 1
        assert results["utility"]["benchmark"] == "mmlu-1shot"
        assert any("threshold 0.99" in warning for warning in results["warnings"])
        # quickstart attacks the gold standard and every run; one document per task leaves relearn nothing
        # to score, which it says rather than scoring.
        robustness = results["robustness"]
        assert set(robustness) >= {"relearn", "quantize_8bit", "quantize_4bit", "mean_recovery"}
        assert robustness["relearn"]["recovery"] is None and "skipped" in robustness["relearn"]
        assert robustness["quantize_8bit"]["items"] > 0
    assert generation_ids(runs / "gold_standard") == generation_ids(runs / "ga")
    all_forget_items = len(load_lume(small_world.data).forget)
    assert len(generation_ids(runs / "ga")) < all_forget_items
    # Every row's runs kept their per-item files: the final score's interval is filled and holds it.
    table = (world / "leaderboard.csv").read_text().splitlines()
    header = table[0].split(",")
    # The fixed columns end with the interval; the attacks' recovery columns come after them.
    low_at = header.index("final_score_low")
    assert header[low_at + 1] == "final_score_high"
    assert all(column.startswith("recovery_") for column in header[low_at + 2:])
    for line in table[1:]:
        final, low, high = (float(line.split(",")[i]) for i in (1, low_at, low_at + 1))
        assert low - 1e-9 <= final <= high + 1e-9


def test_quickstart_gives_each_method_only_the_method_keys_it_declares(tmp_path, small_world):
    world = tmp_path / "world"
    argv = ["quickstart", "--out", str(world), "--methods", "ga,gd", "--set", "method.chunk_size=4"]
    with pytest.raises(UserError, match="method.chunk_size: none of the methods run"):
        from utils.cli.commands.quickstart import method_configs
        from utils.project import config_dir

        method_configs(["ga", "gd"], ["method.chunk_size=4"], config_dir())
    assert main(argv) == 2 and not (world / "runs").exists()


def test_a_sweep_resumes_from_the_checkpoint_a_kill_set_aside(tmp_path, small_world):
    """A kill between the checkpoint's two renames leaves only `.checkpoint.old`; the sweep engine leaves
    finding it to the run, which resumes instead of starting afresh."""
    overrides = [*small_world.overrides, f"workdir={small_world.root}", *QUICK, "method.chunk_size=4",
                 "evaluation.subset=1"]
    out = tmp_path / "sweep"
    run = SweepRun("run_000", REPO / "configs" / "sugd.yaml", overrides, {"training.learning_rate": 1e-3})
    experiment = Experiment(run.load(), out / run.name)
    assert experiment.run(stop_after_phases=1, progress=False) == {"stopped_after_phase": 1}
    (out / run.name / "checkpoint").rename(out / run.name / ".checkpoint.old")
    said: list[str] = []
    (record,) = run_sweep([run], out, progress=False, log=said.append)
    assert any("resuming after phase 1" in line for line in said), said
    assert record["results"]["final_score"] is not None
    assert (out / "run_summary.csv").read_text().splitlines()[1].startswith("run_000,sugd,0.001,")


def test_in_notebook_paths_are_read_from_the_project_root(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    experiment = Experiment.in_notebook("configs/sugd.yaml", [], "runs/notebooks/x")
    assert experiment.workdir == REPO / "artifacts" / "default"
    assert experiment.run_dir == REPO / "runs" / "notebooks" / "x"
    assert experiment.source == REPO / "configs" / "sugd.yaml"


def test_evaluate_flags_are_taken_as_given_not_parsed(tmp_path):
    from utils.config import load_config, replace_keys

    config = replace_keys(load_config(None), {"model.name_or_path": "models/run:1 [a]", "evaluation.subset": 3})
    assert config.model.name_or_path == "models/run:1 [a]" and config.evaluation.subset == 3
    with pytest.raises(UserError, match="evaluation.subset"):
        replace_keys(load_config(None), {"evaluation.subset": 0})


# ----------------------------------------------------------------------------------------------
# The shape of the code: notebooks thin, layers one way


def code_lines(cell) -> list[str]:
    """A cell's lines that are code: not blank, not comments, not imports."""
    lines = [line for line in cell.source.splitlines() if line.strip() and not line.lstrip().startswith("#")]
    return [line for line in lines if not line.startswith(("import ", "from "))]


@pytest.mark.parametrize("path", sorted((REPO / "notebooks").glob("*.ipynb")), ids=lambda p: p.stem)
def test_notebooks_are_one_call_per_step(path):
    notebook = nbformat.read(path, as_version=4)
    for cell in notebook.cells:
        if cell.cell_type != "code" or "parameters" in cell.metadata.get("tags", []):
            continue
        assert len(code_lines(cell)) <= 15, cell.source
        assert "sys.path" not in cell.source and "shutil" not in cell.source
    source = "\n".join(cell.source for cell in notebook.cells)
    assert "utils.cli" not in source and "run_unlearning" not in source


def documented_layers() -> list[tuple[str, tuple[str, ...]]]:
    """The layer list of lume_unlearning/__init__.py's docstring: [(name, module prefixes)], lowest first; a line
    indented past its `name:` continues that layer's prefixes."""
    import lume_unlearning

    layers: list[tuple[str, list[str]]] = []
    for line in lume_unlearning.__doc__.split("lowest first", 1)[1].split("\n\n", 2)[1].splitlines():
        name, colon, prefixes = line.strip().partition(":")
        if colon:
            layers.append((name, prefixes.split()))
        else:
            layers[-1][1].extend(line.split())
    return [(name, tuple(prefixes)) for name, prefixes in layers]


LAYERS = documented_layers()


def layer_of(module: str) -> int:
    best = None
    for index, (_, prefixes) in enumerate(LAYERS):
        for prefix in prefixes:
            inside = module == prefix or module.startswith(prefix + ".")
            if inside and (best is None or len(prefix) > best[1]):
                best = (index, len(prefix))
    assert best is not None, f"{module} belongs to no layer"
    return best[0]


def project_modules():
    for package in ("utils", "methods", "lume_unlearning"):
        for path in sorted((REPO / package).rglob("*.py")):
            parts = path.relative_to(REPO).with_suffix("").parts
            yield ".".join(parts[:-1] if parts[-1] == "__init__" else parts), path


def test_the_documented_layers_name_every_package_once():
    names = [name for name, _ in LAYERS]
    assert names[0] == "infrastructure" and names[-1] == "interfaces" and len(set(names)) == len(names) >= 6
    prefixes = [prefix for _, group in LAYERS for prefix in group]
    assert len(set(prefixes)) == len(prefixes) and "utils.experiment" in prefixes and "utils.cli" in prefixes
    for module, _ in project_modules():
        if module != "utils":  # the bare package: it only sets an environment variable
            layer_of(module)


def test_imports_go_one_way_and_the_library_never_imports_the_cli():
    wrong = []
    for module, path in project_modules():
        for node in ast.walk(ast.parse(path.read_text())):
            targets = []
            if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
                targets = [node.module]
            elif isinstance(node, ast.Import):
                targets = [alias.name for alias in node.names]
            for target in targets:
                if target.split(".")[0] not in ("utils", "methods", "lume_unlearning"):
                    continue
                if layer_of(target) > layer_of(module):
                    wrong.append(f"{module} imports {target} ({LAYERS[layer_of(target)][0]})")
    assert not wrong, "\n".join(wrong)


def import_graph() -> dict[str, set[str]]:
    """{module: the project's modules it imports}, module-level and function-level imports alike; `from pkg import
    name` imports pkg (its __init__ runs) and pkg.name when that is a module."""
    paths = dict(project_modules())

    def owner(name: str) -> str | None:
        while name and name not in paths:
            name = name.rpartition(".")[0]
        return name or None

    graph: dict[str, set[str]] = {module: set() for module in paths}
    for module, path in paths.items():
        package = module if path.name == "__init__.py" else module.rpartition(".")[0]
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Import):
                targets = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom):
                base = node.module or ""
                if node.level:
                    parts = package.split(".")[:len(package.split(".")) - node.level + 1]
                    base = ".".join([*parts, *([base] if base else [])])
                targets = [base, *(f"{base}.{alias.name}" for alias in node.names)]
            else:
                continue
            graph[module] |= {found for target in targets if (found := owner(target)) not in (None, module)}
    return graph


def import_circles(graph: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected components of more than one module (Tarjan's algorithm, without recursion)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    circles = []
    for root, targets in graph.items():
        if root in index:
            continue
        work = [(root, iter(sorted(targets)))]
        index[root] = low[root] = len(index)
        stack.append(root)
        on_stack.add(root)
        while work:
            node, children = work[-1]
            child = next(children, None)
            if child is not None:
                if child not in index:
                    index[child] = low[child] = len(index)
                    stack.append(child)
                    on_stack.add(child)
                    work.append((child, iter(sorted(graph[child]))))
                elif child in on_stack:
                    low[node] = min(low[node], index[child])
                continue
            work.pop()
            if work:
                low[work[-1][0]] = min(low[work[-1][0]], low[node])
            if low[node] == index[node]:
                component = []
                while True:
                    member = stack.pop()
                    on_stack.discard(member)
                    component.append(member)
                    if member == node:
                        break
                if len(component) > 1:
                    circles.append(sorted(component))
    return circles


def test_the_circle_check_finds_a_circle_and_a_straight_line_has_none():
    assert import_circles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]
    assert import_circles({"a": {"b"}, "b": {"c"}, "c": set()}) == []


def test_no_import_circle_among_the_projects_modules():
    graph = import_graph()
    assert "utils.experiment.run" in graph["utils.experiment.experiment"]  # the graph sees the imports
    circles = import_circles(graph)
    assert not circles, "\n".join("circle: " + " -> ".join(circle) for circle in circles)


def test_configs_written_before_per_method_settings_still_load(tmp_path, capsys):
    """`retain_loss: none` on ga and `forget_loss: npo` on npo were once spelled out; they say what the
    method always does, so they load (in the new shape, with one line saying how to write it); another value
    is refused."""
    from methods.losses.nll import NLL
    from methods.losses.npo import NPO
    from methods.registry import typed
    from utils.config import load_config

    ga = tmp_path / "ga.yaml"
    ga.write_text("method:\n  name: ga\n  forget_loss: ascent\n  retain_loss: none\n")
    assert typed(load_config(ga)).method.name == "ga"
    npo = tmp_path / "npo.yaml"
    npo.write_text("method:\n  name: npo\n  forget_loss: npo\n  retain_loss: nll\n")
    method = typed(load_config(npo)).method
    assert (method.name, method.forget, method.retain) == ("gd", NPO(beta=0.1), NLL())
    ga.write_text("method:\n  name: ga\n  retain_loss: nll\n")
    with pytest.raises(UserError, match="method.retain_loss of ga is always 'none', got 'nll'"):
        typed(load_config(ga))
    hints = [line for line in capsys.readouterr().err.splitlines() if "old spelling" in line]
    assert len(hints) == 2 and "write method: {name: gd, forget: npo, retain: nll}" in hints[1]


def test_quickstart_passes_method_keys_to_the_methods_not_the_world(tmp_path, capsys):
    """`--set method.retain_weight=0.5` with `--methods gd` reaches gd; the world's own config (whose
    default method has no such key) does not see it. The command then stops on the --out that is a file,
    after every config was validated."""
    from utils.cli.commands.quickstart import method_configs
    from utils.project import config_dir

    assert method_configs(["gd"], ["method.retain_weight=0.5"], config_dir())["gd"].method.retain_weight == 0.5
    out = tmp_path / "taken.txt"
    out.write_text("not a folder\n")
    argv = ["quickstart", "--out", str(out), "--methods", "gd", "--set", "method.retain_weight=0.5"]
    assert main(argv) == 2
    assert f"output folder {out} exists and is not a folder" in capsys.readouterr().err


@pytest.mark.parametrize("method, setting, expected", [
    ("sugd", None, False), ("ga", None, False), ("agad", None, False), ("gold_standard", None, True),
    ("sugd", True, True), ("gold_standard", False, False),
])
def test_eos_follows_the_seed_unless_set(small_world, method, setting, expected):
    """The seed appends EOS to the gold standard's examples only; ascent on an unlearning example would
    otherwise push the EOS down too. `training.append_eos` overrides it either way."""
    from transformers import AutoTokenizer

    from utils.experiment.inputs import training_examples

    extra = [f"method.name={method}"] + ([] if setting is None else [f"training.append_eos={str(setting).lower()}"])
    config = small_world.config(*extra)
    tokenizer = AutoTokenizer.from_pretrained(small_world.target)
    items = load_lume(small_world.data).forget[:3]
    examples = training_examples(items, "forget", tokenizer, config)
    assert all((e.input_ids[-1] == tokenizer.eos_token_id) is expected for e in examples)
    assert all((e.labels[-1] == tokenizer.eos_token_id) is expected for e in examples)
