"""Every third-party module that the package, its tests, benches and scripts import is declared.

The README promises that `bash scripts/setup.sh` alone prepares a machine for the test command. A module imported
somewhere but installed by nobody passes on a machine where it happened to be installed by hand and fails on a
fresh one; this test names it and the file instead.
"""

from __future__ import annotations

import ast
import importlib.metadata as metadata
import re
import sys
import tomllib
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SCANNED = ("src", "tests", "bench", "scripts")


def _normalise(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def _requirement_name(requirement: str) -> str:
    return _normalise(re.split(r"[\s\[<>=!~;(]", requirement.strip(), maxsplit=1)[0])


def declared_distributions() -> set[str]:
    """The distributions pyproject.toml declares (dependencies and every extra) and setup.sh installs by name."""
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    requirements = list(project["dependencies"])
    for extra in project.get("optional-dependencies", {}).values():
        requirements += extra
    names = {_requirement_name(r) for r in requirements}
    setup = (ROOT / "scripts" / "setup.sh").read_text()
    for line in setup.splitlines():
        if "pip install" in line and "-e" not in line.split():
            names |= {_normalise(w) for w in line.split("pip install", 1)[1].split() if not w.startswith(("-", "$", '"'))}
    return names


def _local_modules(folder: Path) -> set[str]:
    """Modules importable by their bare name from scripts, tests and benches (siblings on sys.path)."""
    return {p.stem for p in folder.rglob("*.py")} | {p.name for p in folder.rglob("*") if p.is_dir()}


def imported_modules(root: Path, folders: tuple[str, ...]) -> dict[str, list[str]]:
    """{top-level module: [files importing it]} for absolute imports anywhere in the scanned folders."""
    found: dict[str, list[str]] = {}
    for folder in folders:
        for path in sorted((root / folder).rglob("*.py")):
            tree = ast.parse(path.read_text(), filename=str(path))
            for node in ast.walk(tree):
                if isinstance(node, ast.Import):
                    names = [alias.name for alias in node.names]
                elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                    names = [node.module]
                else:
                    continue
                for name in names:
                    found.setdefault(name.split(".")[0], []).append(str(path.relative_to(root)))
    return found


def undeclared_imports(root: Path, folders: tuple[str, ...], declared: set[str]) -> list[str]:
    """One line per imported third-party module that no declared distribution provides, naming a file."""
    local = {"xray_hf", "__future__"} | set().union(*(_local_modules(root / f) for f in folders))
    distributions = metadata.packages_distributions()
    problems = []
    for module, files in sorted(imported_modules(root, folders).items()):
        if module in sys.stdlib_module_names or module in local:
            continue
        owners = {_normalise(d) for d in distributions.get(module, [])}
        if not owners:
            problems.append(f"{module} (imported in {files[0]}) is not installed by scripts/setup.sh")
        elif not owners & declared:
            problems.append(f"{module} (imported in {files[0]}) comes from {sorted(owners)}, which pyproject.toml "
                            "does not declare")
    return problems


def test_every_imported_third_party_module_is_declared():
    problems = undeclared_imports(ROOT, SCANNED, declared_distributions())
    assert not problems, "undeclared imports:\n" + "\n".join(problems)


def test_an_undeclared_import_is_named_with_its_file(tmp_path):
    """The check itself: an installed module that nothing declares, and one installed by nobody, are both reported,
    even when imported inside a function."""
    (tmp_path / "src").mkdir()
    (tmp_path / "src" / "bad.py").write_text("import numpy\n\ndef f():\n    import not_a_module_anyone_ships\n")
    problems = undeclared_imports(tmp_path, ("src",), declared={"torch"})
    assert problems == [
        "not_a_module_anyone_ships (imported in src/bad.py) is not installed by scripts/setup.sh",
        "numpy (imported in src/bad.py) comes from ['numpy'], which pyproject.toml does not declare",
    ]
    assert undeclared_imports(tmp_path, ("src",), declared={"numpy"})[1:] == []
