"""Where the package depends on the private internals of the frameworks it builds on, one module per framework:
`transformers`, `accelerate`, `huggingface_hub`. A private name can move in any release without notice; kept here,
every such dependency is in one place, forwarded to public-named hooks of the package's own classes, and listed in
the module's `SEAMS` (what it is for, and the public API that would replace it). `tests/seams/` pins each one: the
name still exists with the signature the package relies on, and the override really takes effect.

Some overrides cannot move here: model and processor classes are also exported as self-contained Hub remote code
(`xray_hf.remote_code`), where this package is not installed, so their framework hooks stay in their own modules.
They are listed (with `where`) and pinned all the same.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Seam:
    """One private framework name the package relies on.

    owner: the framework object that defines it (`module:qualified.name`); name: the private attribute;
    parameters: the leading parameter names (after `self`) of the framework's method, which the package passes or
    receives positionally (with `by_keyword`, names it passes by keyword, anywhere in the signature); None for an
    attribute; where: the package module that uses it; purpose: what breaks, and how, if it moves;
    public: the public API that would replace it, or what is missing for one; guarded_by: tests elsewhere that
    show the override at work.
    """

    owner: str
    name: str
    parameters: tuple[str, ...] | None
    where: str
    purpose: str
    public: str
    guarded_by: tuple[str, ...] = ()  # tests (`path::name`) showing the override takes effect, besides tests/seams
    by_keyword: bool = False  # parameters passed by name (anywhere in the signature), not as its leading ones


__all__ = ["Seam"]
