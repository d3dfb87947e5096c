"""The seam registries as a whole: each private name the package relies on is used only where its seam says, and the
tests named as its guards exist."""

import ast
import functools
import re
from pathlib import Path

import pytest

import xray_hf
from xray_hf.seams import accelerate, huggingface_hub, transformers

ALL = [*transformers.SEAMS, *accelerate.SEAMS, *huggingface_hub.SEAMS]
PACKAGE = Path(xray_hf.__file__).parent
ROOT = PACKAGE.parents[1]


@functools.cache
def _trees() -> tuple[tuple[Path, ast.Module], ...]:
    return tuple((path, ast.parse(path.read_text())) for path in sorted(PACKAGE.rglob("*.py")))


def _uses(name: str) -> dict[str, int]:
    """Package modules (dotted) that name `name` in code (not in strings or comments), with a count."""
    found = {}
    for path, tree in _trees():
        members = [item for cls in ast.walk(tree) if isinstance(cls, ast.ClassDef) for item in cls.body]
        count = sum(1 for node in ast.walk(tree)
                    if (isinstance(node, ast.Attribute) and node.attr == name)
                    or (isinstance(node, ast.Constant) and node.value == name))
        count += sum(1 for item in members  # methods and class attributes of that name
                     if (isinstance(item, ast.FunctionDef) and item.name == name)
                     or (isinstance(item, (ast.Assign, ast.AnnAssign))
                         and any(isinstance(t, ast.Name) and t.id == name
                                 for t in (item.targets if isinstance(item, ast.Assign) else [item.target]))))
        if count:
            module = ".".join(path.relative_to(PACKAGE.parent).with_suffix("").parts).removesuffix(".__init__")
            found[module] = count
    return found


@pytest.mark.parametrize("seam", [s for s in ALL if s.where.startswith("xray_hf.seams.")], ids=lambda s: s.name)
def test_a_seam_kept_in_its_module_is_used_nowhere_else(seam):
    """`TrainerSeams` and the accelerate flag are the only places that name these private attributes: a trainer that
    overrides `_save` itself (or sets the flag by hand) would bypass the seam the tests pin."""
    elsewhere = {module: n for module, n in _uses(seam.name).items() if module != seam.where}
    assert not elsewhere, f"{seam.name} is used outside {seam.where}: {elsewhere}"


@pytest.mark.parametrize("seam", [s for s in ALL if not s.where.startswith("xray_hf.seams.")], ids=lambda s: s.name)
def test_a_seam_outside_the_seams_modules_is_used_where_it_says(seam):
    where = {module for module in _uses(seam.name) if module.startswith(seam.where)}
    assert where, f"{seam.name} is registered for {seam.where} but not used there: drop the seam or fix `where`"


@pytest.mark.parametrize("seam", [s for s in ALL if s.guarded_by], ids=lambda s: s.name)
def test_the_tests_guarding_a_seam_exist(seam):
    for reference in seam.guarded_by:
        path, name = reference.split("::")
        assert re.search(rf"^def {re.escape(name)}\(", (ROOT / path).read_text(), re.MULTILINE), reference
