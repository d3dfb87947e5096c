"""`EmbedOptions`: how a checkpoint embeds a dataset's images and clips (batch size, frames per clip and their
stride, loader workers, device, compiled vision tower). One dataclass shared by `run_eval`, `embed_dataset` (semantic
IDs), the search index (`build_index`, `SearchEmbedder`) and the `xray-hf eval` / `index` / `semantic-ids` / `embed`
parsers, which add its arguments with `EmbedOptions.add_arguments`."""

from __future__ import annotations

import argparse
from collections.abc import Mapping
from dataclasses import dataclass, fields, replace
from typing import Any

DEFAULT_NUM_FRAMES = 8  # frames per clip when neither the options nor the checkpoint's video processor say

# the command-line flag and help of each option
HELP = {
    "batch_size": "items per forward pass",
    "num_frames": "frames per video clip (default: the processor's)",
    "stride": "frame stride of video clips",
    "num_workers": "DataLoader workers decoding the samples",
    "device": "torch device (default: where the model loads)",
    "compile": "torch.compile the vision tower (static shapes: one graph per batch shape)",
}


@dataclass(frozen=True)
class EmbedOptions:
    """How a checkpoint embeds items (see the module docstring)."""

    batch_size: int = 64
    num_frames: int | None = None
    stride: int = 2
    num_workers: int = 0
    device: str | None = None
    compile: bool = False

    def __post_init__(self) -> None:
        if self.batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {self.batch_size}")

    def frames(self, video_processor: Any) -> int:
        """Frames per clip: `num_frames`, else the checkpoint's video processor's, else `DEFAULT_NUM_FRAMES`."""
        return int(self.num_frames or getattr(video_processor, "num_frames", None) or DEFAULT_NUM_FRAMES)

    def place(self, model: Any) -> Any:
        """`model` on `device`, its vision tower compiled in place when `compile` is set. A model without parameters
        (an ONNX export folder's onnxruntime sessions) runs where it is: asking to compile it or move it off the CPU
        is an error, not a silent no-op."""
        if next(model.parameters(), None) is None and (self.compile or self.device not in (None, "cpu")):
            raise ValueError(f"{type(model).__name__} has no PyTorch weights to move to {self.device!r} or compile "
                             "(an ONNX export runs in onnxruntime on the CPU): drop --device / --compile, or use the "
                             "checkpoint it was exported from")
        if self.device is not None:
            model = model.to(self.device)
        if self.compile:
            from ..export.compile import compile_for_inference

            compile_for_inference(model)
        return model

    @classmethod
    def merged(cls, options: EmbedOptions | None, keywords: Mapping[str, Any]) -> EmbedOptions:
        """`options` (default: the defaults) with the fields given as keywords; an unknown keyword is a `TypeError`
        naming it, as Python's own for a misspelled argument."""
        names = {f.name for f in fields(cls)}
        unknown = sorted(set(keywords) - names)
        if unknown:
            raise TypeError(f"unexpected keyword arguments {unknown}; embedding options are {sorted(names)}")
        return replace(options or cls(), **keywords)

    @classmethod
    def split(cls, options: Mapping[str, Any]) -> tuple[EmbedOptions, dict[str, Any]]:
        """(the EmbedOptions among flat settings, e.g. a pipeline's evaluation entry, and the other settings)."""
        names = {f.name for f in fields(cls)}
        return (cls(**{k: v for k, v in options.items() if k in names}),
                {k: v for k, v in options.items() if k not in names})

    @classmethod
    def add_arguments(cls, parser: argparse.ArgumentParser, names: tuple[str, ...] | None = None,
                      batch_size_flag: str = "--batch-size", **defaults: Any) -> None:
        """Add the options `names` (default: all) to a command's parser; `defaults` replace the dataclass's, and
        `batch_size_flag` renames the batch size's flag (a command whose `--batch-size` means something else)."""
        base = replace(cls(), **defaults)
        for f in fields(cls):
            if names is not None and f.name not in names:
                continue
            flag = _flag(f.name, batch_size_flag)
            default = getattr(base, f.name)
            if isinstance(default, bool):
                parser.add_argument(flag, action="store_true", help=HELP[f.name])
                continue
            kind = str if f.name == "device" else int
            suffix = f" (default: {default})" if default is not None else ""
            parser.add_argument(flag, type=kind, default=default, help=HELP[f.name] + suffix)

    @classmethod
    def from_args(cls, args: argparse.Namespace, batch_size_flag: str = "--batch-size") -> EmbedOptions:
        """The options a parser built by `add_arguments` read (those it did not add keep their defaults)."""
        values = {f.name: getattr(args, _flag(f.name, batch_size_flag)[2:].replace("-", "_"), None) for f in fields(cls)}
        return cls(**{name: value for name, value in values.items() if value is not None})


def _flag(name: str, batch_size_flag: str) -> str:
    return batch_size_flag if name == "batch_size" else "--" + name.replace("_", "-")


__all__ = ["DEFAULT_NUM_FRAMES", "EmbedOptions"]
