"""The install as users get it: the `unlearn` entry point refuses a shadowing `utils` with one line, a copy
of the packages without the checkout's configs/ says how to install, every subpackage is packaged, the
lock covers the environment, and seeding makes torch deterministic."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tomllib
from pathlib import Path

import torch

from ..conftest import REPO

UNLEARN = Path(sys.executable).with_name("unlearn")


def run(args: list[str], cwd: Path, env_extra: dict | None = None) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONNOUSERSITE": "1", **(env_extra or {})}
    return subprocess.run(args, check=False, cwd=cwd, env=env, capture_output=True, text=True, timeout=300)


def one_line_error(result: subprocess.CompletedProcess) -> str:
    assert result.returncode == 2, (result.returncode, result.stderr)
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), result.stderr
    assert "Traceback" not in result.stderr
    return lines[0]


def test_entry_point_refuses_a_shadowing_utils_package(tmp_path):
    shadow = tmp_path / "shadow"
    (shadow / "utils").mkdir(parents=True)
    (shadow / "utils" / "__init__.py").write_text("")
    assert UNLEARN.is_file(), "the unlearn entry point is not installed in this environment"
    line = one_line_error(run([str(UNLEARN), "--help"], cwd=tmp_path, env_extra={"PYTHONPATH": str(shadow)}))
    assert "shadows" in line and str(shadow / "utils") in line
    # Without the shadow the same entry point works.
    assert run([str(UNLEARN), "--help"], cwd=tmp_path).returncode == 0


def test_a_copy_without_the_checkout_says_how_to_install(tmp_path):
    """A non-editable install carries the packages but not configs/: quickstart says so in one line."""
    site = tmp_path / "site"
    for package in ("utils", "methods", "lume_unlearning"):
        shutil.copytree(REPO / package, site / package, ignore=shutil.ignore_patterns("__pycache__"))
    code = "import sys; from lume_unlearning.cli import main; sys.exit(main(['quickstart', '--quiet']))"
    line = one_line_error(run([sys.executable, "-c", code], cwd=tmp_path, env_extra={"PYTHONPATH": str(site)}))
    assert "configs/" in line and "pip install -e ." in line
    assert not (tmp_path / "artifacts").exists()  # nothing was built before the refusal


def test_every_subpackage_is_in_the_distribution():
    settings = tomllib.loads((REPO / "pyproject.toml").read_text())["tool"]["setuptools"]["packages"]["find"]
    patterns = settings["include"]
    packages = sorted(str(p.parent.relative_to(REPO)).replace(os.sep, ".")
                      for top in ("utils", "methods", "lume_unlearning") for p in (REPO / top).rglob("__init__.py"))
    assert "utils.cli.commands" in packages
    for package in packages:
        assert any(package == pattern.rstrip("*").rstrip(".") or package.startswith(pattern.rstrip("*"))
                   for pattern in patterns), package


def test_lock_pins_every_dependency_exactly():
    from scripts.check_lock import read_lock

    pins = read_lock(REPO / "requirements.lock")
    declared = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    names = [*declared["dependencies"], *declared["optional-dependencies"]["dev"]]
    for requirement in names:
        name = requirement.split(";")[0].split("[")[0]
        for separator in ("==", ">=", "<", "~=", ">"):
            name = name.split(separator)[0]
        assert name.strip().lower().replace("_", "-") in pins, requirement
    assert pins["torch"] == "2.13.0"


def test_seeding_turns_on_deterministic_algorithms():
    from utils.seeding import seed_everything

    before = torch.are_deterministic_algorithms_enabled()
    try:
        seed_everything(3)
        first = torch.rand(4)
        seed_everything(3)
        assert torch.equal(torch.rand(4), first)
        assert torch.are_deterministic_algorithms_enabled()
    finally:
        torch.use_deterministic_algorithms(before)


def test_no_private_names_of_the_hugging_face_libraries():
    """Only public API of transformers, peft and accelerate: no private module or name is imported, and no
    underscore attribute is read off anything but the project's own objects."""
    import ast

    libraries = ("transformers", "peft", "accelerate")
    found = []
    for path in sorted(p for top in ("utils", "methods", "lume_unlearning") for p in (REPO / top).rglob("*.py")):
        tree = ast.parse(path.read_text(encoding="utf-8"))
        for node in ast.walk(tree):
            if isinstance(node, ast.ImportFrom) and (node.module or "").split(".")[0] in libraries:
                parts = node.module.split(".") + [alias.name for alias in node.names]
                found += [f"{path.name}: from {node.module} import {part}" for part in parts if part.startswith("_")]
            elif isinstance(node, ast.Import):
                found += [f"{path.name}: import {a.name}" for a in node.names
                          if a.name.split(".")[0] in libraries and any(p.startswith("_") for p in a.name.split("."))]
            elif isinstance(node, ast.Attribute) and node.attr.startswith("_") and not node.attr.startswith("__"):
                owner = node.value
                if not (isinstance(owner, ast.Name) and owner.id in ("self", "cls", "reference")):
                    found.append(f"{path.name}:{node.lineno}: .{node.attr}")
    assert found == []
