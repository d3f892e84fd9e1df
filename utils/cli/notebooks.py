"""Execute the notebooks with papermill into `example-notebooks/` (outputs kept, for readers of the repo).

    python -m utils.cli.notebooks                       # notebooks/*.ipynb -> example-notebooks/ with outputs
    python -m utils.cli.notebooks --set workdir=/tmp/w  # parameters for every notebook (Python literals)
    python -m utils.cli.notebooks --only SUGD,AGAD      # some of them

papermill adds a cell tagged `injected-parameters` after the one tagged `parameters`, so each saved
notebook shows what it ran with. Any single notebook runs the same way with papermill's own command,
from any folder and with string parameters:

    papermill notebooks/SUGD.ipynb out.ipynb -k python3 -r overrides "evaluation.subset=1" -r num_processes 1
"""

from __future__ import annotations

import argparse
import ast
from pathlib import Path

from utils.project import PROJECT_ROOT as REPO

NOTEBOOKS = ["Gold-Standard", "AGAD", "SUGD", "SUGD-Experiments"]
# The kernel the generated notebooks name; ipykernel installs it into the venv, where jupyter finds it
# before a user-wide one (and runs it with the python that runs papermill).
KERNEL = "python3"


def execute_notebook(source: str | Path, destination: str | Path | None, parameters: dict | None = None,
                     timeout: int = 1800, cwd: str | Path | None = None):
    """Run every cell with papermill (in `cwd`, default the notebook's folder); a cell error raises
    papermill's PapermillExecutionError, and the notebook as far as it ran is still written."""
    import papermill

    source = Path(source)
    if destination is not None:
        Path(destination).parent.mkdir(parents=True, exist_ok=True)
    return papermill.execute_notebook(str(source), None if destination is None else str(destination),
                                      parameters=parameters or {}, kernel_name=KERNEL, progress_bar=False,
                                      cwd=str(cwd if cwd is not None else source.parent),
                                      execution_timeout=timeout)


def parse_value(text: str):
    """A Python literal when it is one (`False`, `2`, `["a=b"]`), else the string itself."""
    try:
        return ast.literal_eval(text)
    except (ValueError, SyntaxError):
        return text


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", default=str(REPO / "example-notebooks"))
    parser.add_argument("--set", dest="parameters", action="append", default=[], metavar="NAME=VALUE")
    parser.add_argument("--only", default=",".join(NOTEBOOKS))
    args = parser.parse_args()
    parameters = {"show_progress": False}
    for item in args.parameters:
        name, _, value = item.partition("=")
        parameters[name] = parse_value(value)
    for name in args.only.split(","):
        out = Path(args.out) / f"{name}.ipynb"
        print(f"executing {name} -> {out}", flush=True)
        execute_notebook(REPO / "notebooks" / f"{name}.ipynb", out, parameters)
        relative_paths(out)


def relative_paths(path: Path) -> None:
    """papermill records the absolute input and output paths: keep the repo's notebooks free of this
    machine's folders."""
    import nbformat

    notebook = nbformat.read(path, as_version=4)
    record = notebook.metadata.get("papermill", {})
    for key in ("input_path", "output_path"):
        if key in record and Path(record[key]).is_relative_to(REPO):
            record[key] = str(Path(record[key]).relative_to(REPO))
    nbformat.write(notebook, path)


if __name__ == "__main__":
    main()
