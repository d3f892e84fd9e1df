"""Execute the notebooks with parameters (papermill-style), for CI and for `example-notebooks/`.

    python -m utils.cli.notebooks                       # notebooks/*.ipynb -> example-notebooks/ with outputs
    python -m utils.cli.notebooks --set workdir=/tmp/w  # parameters for every notebook (Python literals)

The cell tagged `parameters` keeps its defaults; a cell tagged `injected-parameters` is inserted after
it with the given values, as papermill does, so a scheduled notebook job shows what it ran with.
"""

from __future__ import annotations

import argparse
import ast
from pathlib import Path

from utils.project import PROJECT_ROOT as REPO

NOTEBOOKS = ["Gold-Standard", "AGAD", "SUGD", "SUGD-Experiments"]


def inject_parameters(notebook, parameters: dict) -> None:
    from nbformat.v4 import new_code_cell

    index = next((i for i, cell in enumerate(notebook.cells) if "parameters" in cell.metadata.get("tags", [])), None)
    if index is None:
        raise ValueError("the notebook has no cell tagged 'parameters'")
    source = "# Injected parameters\n" + "\n".join(f"{key} = {value!r}" for key, value in parameters.items())
    cell = new_code_cell(source)
    cell.metadata["tags"] = ["injected-parameters"]
    notebook.cells.insert(index + 1, cell)


def execute_notebook(source: str | Path, destination: str | Path | None, parameters: dict | None = None,
                     timeout: int = 1800):
    """Run every cell (in the notebook's own folder); raises on the first cell error."""
    import nbformat
    from nbclient import NotebookClient

    source = Path(source)
    notebook = nbformat.read(source, as_version=4)
    if parameters:
        inject_parameters(notebook, parameters)
    client = NotebookClient(notebook, timeout=timeout, kernel_name="python3",
                            resources={"metadata": {"path": str(source.parent)}})
    client.execute()
    if destination is not None:
        destination = Path(destination)
        destination.parent.mkdir(parents=True, exist_ok=True)
        nbformat.write(notebook, destination)
    return notebook


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", default=str(REPO / "example-notebooks"))
    parser.add_argument("--set", dest="parameters", action="append", default=[], metavar="NAME=VALUE")
    parser.add_argument("--only", default=",".join(NOTEBOOKS))
    args = parser.parse_args()
    parameters = {"show_progress": False}
    for item in args.parameters:
        name, _, value = item.partition("=")
        try:
            parameters[name] = ast.literal_eval(value)
        except (ValueError, SyntaxError):
            parameters[name] = value
    for name in args.only.split(","):
        # Executed from example-notebooks/ itself, so the saved notebook shows the paths it ran with.
        out = Path(args.out) / f"{name}.ipynb"
        print(f"executing {name} -> {out}", flush=True)
        execute_notebook(REPO / "notebooks" / f"{name}.ipynb", out, parameters)


if __name__ == "__main__":
    main()
