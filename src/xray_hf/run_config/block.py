"""The reading of a run-config block: a dataclass filled from a YAML mapping by `Block.from_dict`, which refuses an
unknown key by its dotted path (`model.text.config.freeze_lm`) and a value that does not fit its field's type
(`data.image.batch_size must be int, got str '32'`), parses the nested blocks its fields' types name, and leaves the
defaults to the dataclass."""

from __future__ import annotations

import difflib
import functools
import inspect
import re
import types
import typing
from collections.abc import Iterable, Mapping
from dataclasses import MISSING, fields
from typing import Any, TypeVar

B = TypeVar("B", bound="Block")

# settings every `PreTrainedConfig` takes besides its `__init__` arguments (properties and loading options)
CONFIG_EXTRAS = ("num_labels", "attn_implementation", "torch_dtype", "model_type")


def dotted(path: str, key: Any) -> str:
    return f"{path}.{key}" if path else str(key)


def mapping(value: Any, path: str) -> Mapping[str, Any]:
    """`value` as a mapping (None: empty), or a `ValueError` naming `path`."""
    if value is None:
        return {}
    if not isinstance(value, Mapping):
        raise ValueError(f"{path or 'a run config'} must be a mapping, got {type(value).__name__}: {value!r}")
    return value


def check_keys(values: Mapping[str, Any], known: Iterable[str], path: str, what: str | None = None) -> None:
    """Raise a `ValueError` naming the first key of `values` not in `known` by its dotted path (with the closest
    known key, and the known keys when they are few)."""
    known = sorted(known)
    unknown = [key for key in values if key not in known]
    if not unknown:
        return
    key = unknown[0]
    parts = [f"unknown key {dotted(path, key)!r}"]
    if len(unknown) > 1:
        parts[0] += f" (and {', '.join(repr(dotted(path, k)) for k in unknown[1:])})"
    close = difflib.get_close_matches(str(key), known, n=1)
    if close:
        parts[0] += f" (did you mean {close[0]!r}?)"
    if len(known) <= 16:
        parts.append(f"{what or path or 'a run config'} takes: {', '.join(known)}")
    elif what:
        parts.append(f"not a setting of {what}")
    message = "; ".join(parts)
    raise ValueError(message)


@functools.cache
def config_keys(*classes: type) -> frozenset[str]:
    """The settings that `config:` overrides of these config classes may name: their `__init__` arguments (with
    `PreTrainedConfig`'s own, for a transformers config)."""
    from transformers import PreTrainedConfig

    keys: set[str] = set()
    for cls in classes:
        chain = (cls, PreTrainedConfig) if issubclass(cls, PreTrainedConfig) else (cls,)
        for klass in chain:
            keys |= {name for name, parameter in inspect.signature(klass.__init__).parameters.items()
                     if name != "self" and parameter.kind not in (parameter.VAR_KEYWORD, parameter.VAR_POSITIONAL)}
        if issubclass(cls, PreTrainedConfig):
            keys |= set(CONFIG_EXTRAS)
    return frozenset(keys)


def check_config(overrides: Any, classes: tuple[type, ...], path: str) -> dict[str, Any]:
    """`overrides` (a `config:` block) as a dict, refusing a key that none of the config classes takes."""
    overrides = dict(mapping(overrides, path))
    check_keys(overrides, config_keys(*classes), path, what=" / ".join(cls.__name__ for cls in classes))
    return overrides


@functools.cache
def _hints(cls: type) -> dict[str, Any]:
    return typing.get_type_hints(cls)


def _union_args(hint: Any) -> tuple[Any, ...]:
    return typing.get_args(hint) if typing.get_origin(hint) in (typing.Union, types.UnionType) else (hint,)


def fits(value: Any, hint: Any) -> bool:
    """Whether a YAML value fits a field's type: scalars (an int is a float; a bool is no number), lists of them,
    mappings, `None` and literals are checked; other classes (enums, configs) are left to the code that takes them."""
    if len(_union_args(hint)) > 1:
        return any(fits(value, arg) for arg in _union_args(hint))
    origin = typing.get_origin(hint)
    if hint is Any:
        return True
    if hint is type(None):
        return value is None
    if hint is bool:
        return isinstance(value, bool)
    if hint is int:
        return isinstance(value, int) and not isinstance(value, bool)
    if hint is float:
        return isinstance(value, (int, float)) and not isinstance(value, bool)
    if hint is str:
        return isinstance(value, str)
    if hint is list or origin is list:
        inner = typing.get_args(hint)
        return isinstance(value, list) and (not inner or all(fits(item, inner[0]) for item in value))
    if hint is dict or origin is dict:
        return isinstance(value, Mapping)
    if origin is typing.Literal:
        return value in typing.get_args(hint)
    return True


def describe(hint: Any) -> str:
    """A type as a run config's reader says it: `float`, `int or null`, `a list of float`."""
    if len(_union_args(hint)) > 1:
        return " or ".join(dict.fromkeys(describe(arg) for arg in _union_args(hint)))
    if hint is type(None):
        return "null"
    if typing.get_origin(hint) is list and typing.get_args(hint):
        return f"a list of {describe(typing.get_args(hint)[0])}"
    if typing.get_origin(hint) is typing.Literal:
        return " or ".join(repr(arg) for arg in typing.get_args(hint))
    origin = typing.get_origin(hint) or hint
    return {dict: "a mapping", list: "a list"}.get(origin, getattr(origin, "__name__", str(hint)))


def check_value(value: Any, hint: Any, path: str) -> None:
    """A `ValueError` naming `path` when `value` does not fit the field's type (`fits`)."""
    if fits(value, hint):
        return
    message = f"{path} must be {describe(hint)}, got {type(value).__name__} {value!r}"
    if isinstance(value, str) and fits(1.0, hint):
        if re.fullmatch(r"[+-]?\d+[eE][+-]?\d+", value.strip()):
            message += f" (YAML reads {value} as text, having no dot: write {value.lower().replace('e', '.0e', 1)})"
        elif _is_float(value):
            message += " (a number in quotes is text: unquote it)"
    raise ValueError(message)


def _is_float(text: str) -> bool:
    try:
        float(text)
    except ValueError:
        return False
    return True


NUMBERS = (bool, int, float, type(None))


def check_values(values: Mapping[str, Any], cls: type, path: str, numbers_only: bool = False) -> None:
    """Every value of `values` against the type of the dataclass field of `cls` it names; `numbers_only`: only the
    fields typed as numbers and flags (a class whose other hints are narrower than what it takes: transformers'
    `TrainingArguments` types `fsdp` as `str | None` and takes `True`)."""
    hints = _hints(cls)
    for key, value in values.items():
        if not numbers_only or all(arg in NUMBERS for arg in _union_args(hints[key])):
            check_value(value, hints[key], dotted(path, key))


def _block_types(hint: Any) -> tuple[type | None, type | None]:
    """(a Block class the hint names, a Block class it names as `list[...]`) of a field's type."""
    args = typing.get_args(hint) if typing.get_origin(hint) in (typing.Union, types.UnionType) else (hint,)
    single = next((a for a in args if isinstance(a, type) and issubclass(a, Block)), None)
    listed = None
    for arg in args:
        inner = typing.get_args(arg)
        if typing.get_origin(arg) is list and inner and isinstance(inner[0], type) and issubclass(inner[0], Block):
            listed = inner[0]
    return single, listed


class Block:
    """A run-config block (mix into a dataclass). `from_dict` reads it from a mapping: keys are the fields; a field
    typed with a Block class (or a list of them) is parsed as a nested block; `validate` checks across fields."""

    @classmethod
    def from_dict(cls: type[B], values: Mapping[str, Any] | None, path: str = "") -> B:
        values = mapping(values, path)
        check_keys(values, [f.name for f in fields(cls) if f.init], path)
        missing = [f.name for f in fields(cls) if f.init and f.default is MISSING and f.default_factory is MISSING
                   and f.name not in values]
        if missing:
            raise ValueError(f"{path or 'a run config'} needs {', '.join(f'{name}:' for name in missing)} (got {dict(values)})")
        kwargs = {}
        for key, value in values.items():
            single, listed = _block_types(_hints(cls)[key])
            where = dotted(path, key)
            if value is None and (single or listed):
                continue  # an empty block: its default
            if listed is not None and isinstance(value, list):
                value = [listed.from_dict(item, f"{where}[{index}]") for index, item in enumerate(value)]
            elif single is not None:
                value = single.from_dict(value, where)
            elif listed is not None:
                raise ValueError(f"{where} must be a list, got {type(value).__name__}: {value!r}")
            else:
                check_value(value, _hints(cls)[key], where)
            kwargs[key] = value
        out = cls(**kwargs)
        out.validate(path)
        return out

    def validate(self, path: str) -> None:
        """Checks across the fields, once parsed; `path` names the block in messages."""


__all__ = [
    "Block", "check_config", "check_keys", "check_value", "check_values", "config_keys", "describe", "dotted", "fits",
    "mapping",
]
