"""Write notebooks/*.ipynb (no outputs): a parameters cell, one call per step into the experiment API, plots.

    python scripts/make_notebooks.py      # then `python -m utils.cli.notebooks` executes them into example-notebooks/

The notebooks are generated so that the four stay the same shape; edit the texts here, not in the .ipynb.
"""

from __future__ import annotations

from pathlib import Path

import nbformat
from nbformat.v4 import new_code_cell, new_markdown_cell, new_notebook

NOTEBOOKS = Path(__file__).resolve().parents[1] / "notebooks"

INTRO = ("Run it top to bottom. The first cell holds the parameters (a scheduled notebook job or papermill sets "
         "them): the config (`configs/olmo-7b/sugd.yaml` for the real model), the work dir (`None`: the config's "
         "own), extra `key=value` overrides (any config key, e.g. `data.path=...`; only what you pass changes), the "
         "run folder, and the number of processes (`notebook_launcher`: the run and the reference evaluations are "
         "launched on that many, and no model is ever loaded into this notebook's own process). Paths are relative "
         "to the project root, wherever the notebook runs. "
         "Each may be given as a string (`papermill -r`, a scheduled job's parameters): the cell after them reads "
         "`\"2\"`, `\"False\"` and `overrides` as `\"a=b c=d\"` or a JSON list into their types.")

METHODS = {
    "Gold-Standard": ("gold_standard", ("# Gold standard: the model that never saw the forget set\n\n"
                      "The base model (before it memorised anything) fine-tuned on the retain set only. It is the "
                      "reference for perfect unlearning: its MIA AUC, not 0.5, is what an unlearned model can reach "
                      "on this data."),
                      "The loss per step of the retain-only fine-tuning.",
                      ("The gold standard next to the target (the model before unlearning): what unlearning should "
                      "change, and what it should leave.")),
    "AGAD": ("agad", ("# AGAD: Alternating Gradient Ascent-Descent\n\n"
             "Chunks of the forget set are unlearned by gradient ascent; after every 1/`interleaving_factor` chunks "
             "an annealing phase of gradient descent on a random `annealing_fraction` of the retain set repairs "
             "collateral damage, and a final annealing on the whole retain set closes the run."),
             ("Each point is a finished phase (ascent or annealing): forget scores should fall in ascent phases and "
             "retain scores recover in annealing phases."),
             ("The same table as the leaderboard: the gold standard (what perfect unlearning looks like) and the "
             "target (before unlearning) next to this run.")),
    "SUGD": ("sugd", ("# SUGD: Sequential Unlearning with Gradient Difference\n\n"
             "The winning method of SemEval-2025 Task 4. The forget set is cut, in file order, into chunks; each "
             "chunk is unlearned on its own (fresh optimiser and schedule) with every forget example followed by "
             "`positive_ratio` retain examples taken cyclically from the retain set, forget weighted -1 and retain "
             "+`positive_factor`."),
             ("Left: forget (red) and retain (blue) scores on a small check subset after every chunk: forgetting "
             "should go down chunk by chunk while retain stays up. Right: the mean NLL of forget and retain "
             "examples during each chunk."),
             ("The same table as the leaderboard: the gold standard (what perfect unlearning looks like) and the "
             "target (before unlearning) next to this run.")),
}


def parameters(lines: list[str]) -> nbformat.NotebookNode:
    cell = new_code_cell("# Parameters\n" + "\n".join(lines))
    cell.metadata["tags"] = ["parameters"]
    return cell


def typed_parameters(names: list[str]) -> nbformat.NotebookNode:
    """The cell right after the parameters (and papermill's injected ones): strings into their types."""
    readers = {"overrides": "as_overrides", "num_processes": "as_count", "show_progress": "as_bool",
               "overwrite": "as_bool", "workdir": "as_optional_text"}
    used = sorted({readers[name] for name in names})
    return new_code_cell("# papermill -r and scheduled notebook jobs pass strings: \"2\" -> 2, \"False\" -> False,\n"
                         "# overrides as a list, a JSON list or \"a=b c=d\".\n"
                         f"from utils.experiment.notebook_parameters import {', '.join(used)}\n\n"
                         + "\n".join(f'{name} = {readers[name]}("{name}", {name})' for name in names))


def method_notebook(method: str, title: str, plots: str, references: str) -> nbformat.NotebookNode:
    return new_notebook(cells=[
        new_markdown_cell(f"{title}\n\n{INTRO}"),
        parameters(["workdir = None  # None: the config's own", "overrides = []", "num_processes = 1",
                    "show_progress = True", f'config_path = "configs/{method}.yaml"',
                    f'run_dir = "runs/notebooks/{method}"',
                    "overwrite = False  # True: replace a finished run in run_dir instead of reusing it"]),
        typed_parameters(["workdir", "overrides", "num_processes", "show_progress", "overwrite"]),
        new_code_cell("from IPython.display import Image, display\n\n"
                      "from utils.evaluation.leaderboard import row_from_results, to_text\n"
                      "from utils.evaluation.metrics import summary_text\n"
                      "from utils.experiment import Experiment\n\n"
                      'given = [f"workdir={workdir}"] if workdir else []  # only what the user passed overrides the config\n'
                      "experiment = Experiment.in_notebook(config_path, [*given, *overrides], run_dir)"),
        new_markdown_cell("## 1. The world\n\nOn the embedded default, `prepare` builds (or reuses, from its cache) "
                          "the data, the tokenizer, the *target* model that memorised forget + retain, and the *gold "
                          "standard* trained on retain only. On a config that names a real model "
                          "(`configs/olmo-7b/...`) it builds nothing: it checks that the model, tokenizer, gold "
                          "standard, data, MIA documents and utility set are reachable, in one table, and stops here "
                          "if one is not."),
        new_code_cell("# Built in its own process when this notebook launches several: notebook_launcher needs a clean one.\n"
                      "report = experiment.prepare(progress=show_progress, isolated=num_processes > 1)\n"
                      'if "reachable" not in report:  # the tiny world: what its target memorised, what its gold standard never saw\n'
                      '    for name in ("target", "gold_standard"):\n'
                      '        print(name, {k: report[name][k] for k in ("forget", "retain", "utility")})'),
        new_markdown_cell("## 2. Unlearn\n\nOne call runs the method on the shared training loop, checkpointing "
                          "after every chunk/phase, then evaluates the result exactly as the official scorer does. "
                          "Re-running this cell continues a killed run and reuses a finished one."),
        new_code_cell("results = experiment.run(resume=True, overwrite=overwrite, progress=show_progress,\n"
                      "                         num_processes=num_processes)"),
        new_markdown_cell("## 3. Results\n\nThe 12 terms, the task aggregate, the MIA attacks and the utility. Read "
                          "the warnings: a collapsed model can look good on MIA."),
        new_code_cell("print(summary_text(results))"),
        new_markdown_cell(f"## 4. Plots\n\n{plots}"),
        new_code_cell('for picture in ("phases.png", "loss.png"):\n'
                      "    if (experiment.run_dir / picture).is_file():\n"
                      "        display(Image(filename=str(experiment.run_dir / picture)))"),
        new_markdown_cell(f"## 5. Against the references\n\n{references}"),
        new_code_cell("# Evaluated once per setting (kept under <workdir>/references), launched like the run.\n"
                      "rows = experiment.reference_rows(progress=False, num_processes=num_processes)\n"
                      "print(to_text([*rows, row_from_results(experiment.config.method.name, results)]))"),
    ])


def experiments_notebook() -> nbformat.NotebookNode:
    return new_notebook(cells=[
        new_markdown_cell("# SUGD experiments: a sweep\n\nA grid over SUGD's settings (chunk size, positive ratio, "
                          "positive factor, learning rate, epochs, LoRA rank or last-k, ...) from a YAML file. Each "
                          "configuration is a full run (unlearn + evaluate) in its own folder; a finished run is "
                          "skipped and a killed one resumed, so re-running this notebook continues a sweep. With "
                          "`num_processes > 1` each run is launched with accelerate's `notebook_launcher`. "
                          "Paths are relative to the project root, wherever the notebook runs, and parameters may be strings "
                          "(`papermill -r`, a scheduled job): the cell after them reads them into their types."),
        parameters(["workdir = None  # None: the config's own", "overrides = []", "num_processes = 1",
                    "show_progress = True", 'sweep_path = "configs/experiments/sugd_grid.yaml"',
                    'sweep_dir = "runs/notebooks/sugd-experiments"']),
        typed_parameters(["workdir", "overrides", "num_processes", "show_progress"]),
        new_code_cell("import pandas as pd\n"
                      "from IPython.display import Image, display\n\n"
                      "from utils.experiment import Experiment\n"
                      "from utils.experiment.sweep import load_sweep, run_sweep\n"
                      "from utils.project import project_path\n\n"
                      "spec = load_sweep(project_path(sweep_path))\n"
                      'runs = spec.runs([*([f"workdir={workdir}"] if workdir else []), *overrides])\n'
                      "out = project_path(sweep_dir)"),
        new_markdown_cell("## 1. The world (cached)"),
        new_code_cell("report = Experiment(runs[0].load()).prepare(progress=show_progress, isolated=num_processes > 1)\n"
                      'print(len(runs), "configurations:", list(spec.grid))'),
        new_markdown_cell("## 2. Run the grid"),
        new_code_cell("records = run_sweep(runs, out, progress=show_progress, num_processes=num_processes)"),
        new_markdown_cell("## 3. Summary\n\n`run_summary.csv` has one row per run: its settings and its scores."),
        new_code_cell('pd.read_csv(out / "run_summary.csv").sort_values("final_score", ascending=False)'),
        new_code_cell('display(Image(filename=str(out / "run_summary.png")))'),
    ])


def main() -> None:
    kernel = {"kernelspec": {"display_name": "Python 3", "language": "python", "name": "python3"},
              "language_info": {"name": "python"}}
    books = {name: method_notebook(*spec) for name, spec in METHODS.items()}
    books["SUGD-Experiments"] = experiments_notebook()
    for name, book in books.items():
        book.metadata.update(kernel)
        nbformat.write(book, NOTEBOOKS / f"{name}.ipynb")
        print(f"wrote notebooks/{name}.ipynb")


if __name__ == "__main__":
    main()
