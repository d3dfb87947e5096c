"""Self-contained remote code for a checkpoint: the package's own modules, flattened into one folder.

transformers' remote-code loader (`transformers.dynamic_module_utils`) fetches the file an `auto_map` entry names,
then, recursively, every file its `from .x import y` lines name (any indentation), all from the repository's top
folder, and requires every absolute import to be installed (`check_imports`, which skips imports inside `try`).
`export_remote_code` therefore starts from the modules of a checkpoint's config, model and processor classes, follows
their `xray_hf` imports (with `ast`, also inside functions, as the loader's regexes do), writes each module as one
flat file (`xray_hf.configuration.clip` -> `configuration_clip.py`, `xray_hf.losses` -> `losses.py`) with its
package imports rewritten to flat relative ones (`from ..losses import x` -> `from .losses_per_sample import x`: names
re-exported by a package `__init__` are imported from the module that defines them, so packages are not dragged in
whole), and writes `auto_map` into `config.json` and the processor configs. The files are generated from the
installed source on every export: there is no second copy to keep in sync.

Loading the result needs torch and transformers (and torchvision for the processors), never `xray_hf`:
`REMOTE_CODE_REQUIREMENTS` lists what the exported imports may need, and the export refuses anything else.
"""

from __future__ import annotations

import ast
import json
import os
import re
import sys
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .registration import auto_classes, config_class, package_class

PACKAGE = "xray_hf"
PACKAGE_ROOT = Path(__file__).resolve().parent
# What a user who loads a checkpoint with `trust_remote_code=True` must have (besides the standard library).
REMOTE_CODE_REQUIREMENTS = frozenset({"torch", "transformers", "safetensors", "huggingface_hub", "numpy", "PIL"})
PROCESSOR_REQUIREMENTS = REMOTE_CODE_REQUIREMENTS | {"torchvision"}  # transformers' torchvision image backend

# Auto classes written into config.json besides AutoConfig / AutoModel, when their class is the checkpoint's own.
TASK_AUTO_CLASSES = ("AutoModelForPreTraining", "AutoModelForImageClassification",
                     "AutoModelForZeroShotImageClassification")


# ---------------------------------------------------------------------------------------------- modules and names
def module_path(module: str) -> Path:
    """The source file of an `xray_hf` module (a package's `__init__.py`)."""
    parts = module.split(".")
    if parts[0] != PACKAGE:
        raise ValueError(f"{module!r} is not a module of {PACKAGE}")
    base = PACKAGE_ROOT.joinpath(*parts[1:])
    if (base / "__init__.py").is_file():
        return base / "__init__.py"
    if base.with_suffix(".py").is_file():
        return base.with_suffix(".py")
    raise ValueError(f"no module {module!r} in {PACKAGE_ROOT}")


def is_module(module: str) -> bool:
    try:
        module_path(module)
    except ValueError:
        return False
    return True


def flat_name(module: str) -> str:
    """The flat file stem of a module: `xray_hf.modeling.visual` -> `modeling_visual`."""
    parts = module.split(".")[1:]
    if not parts:
        raise ValueError(f"the {PACKAGE} package itself cannot be exported: import from its modules")
    return "_".join(parts)


def _package_of(module: str) -> str:
    return module if module_path(module).name == "__init__.py" else module.rsplit(".", 1)[0]


def _absolute_target(module: str, node: ast.ImportFrom) -> str | None:
    """The absolute module an `ImportFrom` in `module` names, if it is inside the package; else None."""
    if node.level == 0:
        name = node.module or ""
        return name if name == PACKAGE or name.startswith(PACKAGE + ".") else None
    base = _package_of(module).split(".")
    if node.level - 1 >= len(base):
        raise ValueError(f"{module}: relative import beyond the package (level {node.level})")
    base = base[: len(base) - (node.level - 1)]
    return ".".join(base + ([node.module] if node.module else []))


def _parse(module: str) -> ast.Module:
    return ast.parse(module_path(module).read_text(encoding="utf-8"), filename=str(module_path(module)))


def _defining_module(package: str, name: str, seen: frozenset[str] = frozenset()) -> str:
    """Where a name imported from `package` comes from: a package `__init__` that re-exports `name` with
    `from .sub import name` is skipped for `sub` (recursively)."""
    if module_path(package).name != "__init__.py" or package in seen:
        return package
    for node in _parse(package).body:
        if isinstance(node, ast.ImportFrom) and node.level > 0:
            target = _absolute_target(package, node)
            for alias in node.names:
                if (alias.asname or alias.name) == name and target is not None:
                    if is_module(f"{target}.{alias.name}"):
                        return package  # `from . import sub`: the name is a module, keep the package
                    return _defining_module(target, alias.name, seen | {package})
    return package


@dataclass(frozen=True)
class _Import:
    """One package import, resolved: names from a module, or a module itself (`from . import sub`)."""

    node: ast.ImportFrom
    groups: tuple[tuple[str, tuple[ast.alias, ...]], ...]  # (source module, names), in order
    submodules: tuple[tuple[str, ast.alias], ...]  # (module, alias)


def _package_imports(module: str) -> list[_Import]:
    imports = []
    for node in ast.walk(_parse(module)):
        if isinstance(node, ast.Import):
            for alias in node.names:
                if alias.name == PACKAGE or alias.name.startswith(PACKAGE + "."):
                    raise ValueError(f"{module}: write `from {alias.name} import ...` instead of `import "
                                     f"{alias.name}` (remote code is flattened from `from` imports)")
        if not isinstance(node, ast.ImportFrom):
            continue
        target = _absolute_target(module, node)
        if target is None:
            continue
        groups: dict[str, list[ast.alias]] = {}
        submodules = []
        for alias in node.names:
            if alias.name == "*":
                raise ValueError(f"{module}: `from {target} import *` cannot be flattened")
            if is_module(f"{target}.{alias.name}"):
                submodules.append((f"{target}.{alias.name}", alias))
            else:
                groups.setdefault(_defining_module(target, alias.name), []).append(alias)
        imports.append(_Import(node, tuple((m, tuple(a)) for m, a in groups.items()), tuple(submodules)))
    return imports


def module_closure(modules: Iterable[str]) -> list[str]:
    """`modules` and every package module they import (at any depth, also inside functions), sorted."""
    todo, seen = list(modules), set()
    while todo:
        module = todo.pop()
        if module in seen:
            continue
        seen.add(module)
        for item in _package_imports(module):
            todo.extend(m for m, _ in item.groups)
            todo.extend(m for m, _ in item.submodules)
    names: dict[str, str] = {}
    for module in seen:
        other = names.setdefault(flat_name(module), module)
        if other != module:
            raise ValueError(f"{other} and {module} would both be flattened to {flat_name(module)}.py")
    return sorted(seen)


# ------------------------------------------------------------------------------------------------ flattening
def _alias_text(alias: ast.alias) -> str:
    return alias.name if alias.asname is None else f"{alias.name} as {alias.asname}"


def _from_line(stem: str, aliases: Iterable[str], indent: str) -> str:
    names = list(aliases)
    line = f"from .{stem} import {', '.join(names)}"
    if len(indent) + len(line) <= 120:
        return line
    inner = "".join(f"{indent}    {name},\n" for name in names)
    return f"from .{stem} import (\n{inner}{indent})"


def flatten_source(module: str) -> str:
    """The source of `module` with its package imports rewritten to flat, same-folder relative imports."""
    source = module_path(module).read_text(encoding="utf-8")
    lines = source.splitlines(keepends=True)
    offsets = [0]
    for line in lines:
        offsets.append(offsets[-1] + len(line))
    replacements = []
    for item in _package_imports(module):
        node = item.node
        start = offsets[node.lineno - 1] + node.col_offset
        end = offsets[node.end_lineno - 1] + node.end_col_offset
        indent = lines[node.lineno - 1][: node.col_offset]
        if indent.strip():
            raise ValueError(f"{module}:{node.lineno}: a package import must start its line to be flattened")
        statements = [_from_line(flat_name(source_module), map(_alias_text, aliases), indent)
                      for source_module, aliases in item.groups]
        for submodule, alias in item.submodules:
            stem = flat_name(submodule)
            # the loader only follows `from .x import` lines: the first one makes it fetch the file
            statements.append(f"from .{stem} import __name__ as _{stem}_module_name  # noqa: F401")
            statements.append(f"from . import {stem} as {alias.asname or alias.name}")
        replacements.append((start, end, f"\n{indent}".join(statements)))
    for start, end, text in sorted(replacements, reverse=True):
        source = source[:start] + text + source[end:]
    header = (f"# Generated by xray_hf.remote_code from {module} (xray_hf source, flattened for Hub remote code).\n"
              f"# Do not edit: `xray-hf push` writes it again from the installed package.\n")
    return header + source


def required_packages(source: str) -> set[str]:
    """Top-level packages that transformers' `check_imports` requires for `source` (standard library left out)."""
    from transformers.dynamic_module_utils import get_imports

    with _temporary_file(source) as path:
        imports = get_imports(path)
    return {name for name in imports if name not in sys.stdlib_module_names}


class _temporary_file:
    def __init__(self, text: str):
        import tempfile

        handle = tempfile.NamedTemporaryFile("w", suffix=".py", delete=False, encoding="utf-8")
        with handle:
            handle.write(text)
        self.path = handle.name

    def __enter__(self) -> str:
        return self.path

    def __exit__(self, *exc: Any) -> None:
        os.unlink(self.path)


# ------------------------------------------------------------------------------------------------ checkpoints
def _class_ref(cls: type) -> str:
    return f"{flat_name(cls.__module__)}.{cls.__name__}"


def _read_json(path: Path) -> dict[str, Any] | None:
    return json.loads(path.read_text(encoding="utf-8")) if path.is_file() else None


def _write_json(path: Path, data: dict[str, Any]) -> None:
    path.write_text(json.dumps(data, indent=2, sort_keys=True) + "\n", encoding="utf-8")


def _package_class(name: str) -> type:
    cls = package_class(name)
    if cls is None:
        raise ValueError(f"{name!r} is not a class of {PACKAGE}; only {PACKAGE} checkpoints get remote code")
    return cls


def model_auto_map(config: dict[str, Any]) -> dict[str, type]:
    """The Auto classes of a checkpoint's `config.json` (from `xray_hf.registration`'s table): AutoConfig, AutoModel,
    and the task classes whose class is one of the checkpoint's `architectures`."""
    model_type = config.get("model_type")
    config_class_ = config_class(model_type)
    if config_class_ is None:
        raise ValueError(f"config.json has model_type {model_type!r}, not one of {PACKAGE}'s")
    architectures = [_package_class(name) for name in config.get("architectures") or []]
    auto_map: dict[str, type] = {"AutoConfig": config_class_}
    for auto_name, model_class in auto_classes(config_class_).items():
        if auto_name == "AutoModel" or (auto_name in TASK_AUTO_CLASSES and model_class in architectures):
            auto_map[auto_name] = model_class
    for cls in architectures:  # e.g. the hashtag model: no Auto class, but its code travels with it
        auto_map.setdefault(f"_architecture_{cls.__name__}", cls)
    return auto_map


def _processor_classes(directory: Path) -> dict[str, tuple[str, type]]:
    """Processor files of a checkpoint -> (auto class name, processor class), from the `*_type` / `processor_class`
    fields transformers writes."""
    found: dict[str, tuple[str, type]] = {}
    processor = _read_json(directory / "processor_config.json")
    if processor and processor.get("processor_class"):
        found["processor_config.json"] = ("AutoProcessor", _package_class(processor["processor_class"]))
    for file_name, key, auto_name in (("preprocessor_config.json", "image_processor_type", "AutoImageProcessor"),
                                      ("video_preprocessor_config.json", "video_processor_type", "AutoVideoProcessor")):
        data = _read_json(directory / file_name)
        if data and data.get(key) and data[key].startswith("Xray"):
            found[file_name] = (auto_name, _package_class(data[key]))
    return found


def export_remote_code(directory: str | os.PathLike, processors_only: bool = False) -> list[str]:
    """Write the flat remote-code modules of the checkpoint in `directory` and their `auto_map` entries (config.json,
    processor_config.json and its nested image / video processors, preprocessor configs).

    With `processors_only` (a processor saved on its own, e.g. by its `push_to_hub`), only the processor files are
    read and only the processing modules written; a `config.json` is neither needed nor touched.

    Returns the names of the code files written. Raises `ValueError` when the checkpoint is not an xray_hf one, or
    when the code would need a package outside `PROCESSOR_REQUIREMENTS` (processors) / `REMOTE_CODE_REQUIREMENTS`.
    """
    directory = Path(directory)
    config = None if processors_only else _read_json(directory / "config.json")
    if config is None and not processors_only:
        raise ValueError(f"{directory} has no config.json: not a model checkpoint")
    model_classes = model_auto_map(config) if config is not None else {}
    processor_files = _processor_classes(directory)
    if processors_only and not processor_files:
        raise ValueError(f"{directory} holds no xray_hf processor configuration")
    roots = [cls.__module__ for cls in model_classes.values()]
    processor_roots = []
    processor = _read_json(directory / "processor_config.json") or {}
    nested = {"image_processor": ("image_processor_type", "AutoImageProcessor"),
              "video_processor": ("video_processor_type", "AutoVideoProcessor")}
    for key, (type_key, _) in nested.items():
        if isinstance(processor.get(key), dict) and str(processor[key].get(type_key, "")).startswith("Xray"):
            processor_roots.append(_package_class(processor[key][type_key]).__module__)
    processor_roots += [cls.__module__ for _, cls in processor_files.values()]

    model_modules = module_closure(roots)
    processor_modules = module_closure(processor_roots) if processor_roots else []
    written = []
    # a model that truly needs more (e.g. the semantic-ID quantiser) says so in `remote_code_requirements`
    declared = {name for cls in model_classes.values() for name in getattr(cls, "remote_code_requirements", ())}
    for module in sorted(set(model_modules) | set(processor_modules)):
        source = flatten_source(module)
        allowed = (REMOTE_CODE_REQUIREMENTS | declared) if module in model_modules else PROCESSOR_REQUIREMENTS
        extra = required_packages(source) - allowed
        if extra:
            raise ValueError(f"{module} imports {sorted(extra)} where transformers' check_imports sees it (module "
                             f"level or inside a function, outside try): remote code may only need {sorted(allowed)}")
        (directory / f"{flat_name(module)}.py").write_text(source, encoding="utf-8")
        written.append(f"{flat_name(module)}.py")

    if config is not None:
        config["auto_map"] = {name: _class_ref(cls) for name, cls in model_classes.items()
                              if not name.startswith("_architecture_")}
        _write_json(directory / "config.json", config)
    for file_name, (auto_name, cls) in processor_files.items():
        data = _read_json(directory / file_name)
        data.setdefault("auto_map", {})[auto_name] = _class_ref(cls)
        if file_name == "processor_config.json":
            for key, (type_key, nested_auto) in nested.items():
                sub = data.get(key)
                if isinstance(sub, dict) and str(sub.get(type_key, "")).startswith("Xray"):
                    sub.setdefault("auto_map", {})[nested_auto] = _class_ref(_package_class(sub[type_key]))
        _write_json(directory / file_name, data)
    _check_loadable(directory, written)
    return written


def _check_loadable(directory: Path, written: list[str]) -> None:
    """Every relative import transformers' regexes find in the written files names a written file (docstrings and
    comments included: the loader reads raw text)."""
    from transformers.dynamic_module_utils import get_relative_imports

    available = {name[:-3] for name in written}
    for name in written:
        for needed in get_relative_imports(directory / name):
            if needed not in available:
                raise ValueError(f"{name}: transformers would fetch {needed}.py, which the export did not write "
                                 f"(a `from .{needed} import` line, maybe in a docstring)")


_GENERATED = re.compile(r"^# Generated by xray_hf\.remote_code from ")


def is_generated_header(first_line: str) -> bool:
    """Whether `first_line` is the header `flatten_source` writes on every generated file."""
    return bool(_GENERATED.match(first_line))


def generated_files(directory: str | os.PathLike) -> list[str]:
    """Remote-code files an earlier export wrote into `directory` (by their header)."""
    found = []
    for path in sorted(Path(directory).glob("*.py")):
        with open(path, encoding="utf-8", errors="replace") as handle:
            if is_generated_header(handle.readline()):
                found.append(path.name)
    return found


__all__ = [
    "REMOTE_CODE_REQUIREMENTS",
    "export_remote_code",
    "flatten_source",
    "generated_files",
    "is_generated_header",
    "model_auto_map",
    "module_closure",
    "required_packages",
]
