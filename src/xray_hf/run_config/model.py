"""`model:` blocks of a run config, one per kind of stage, built from the shared parts: a vision backbone
(`VisionSpec`), a text tower (`TextTowerSpec`) and LoRA settings. A `config:` block overrides settings of the
config class it names; a key that class does not take is refused by its path."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from ..configuration.clip import XrayCLIPConfig
from ..configuration.compression import XrayCompressionConfig
from ..configuration.text import XrayLLM2CLIPTextConfig, XrayTextConfig
from ..configuration.visual import XrayVisualConfig
from .block import Block, check_config, dotted

# the config classes a text tower's `config:` overrides, by where the tower comes from
TEXT_CONFIGS: dict[str, tuple[type, ...]] = {
    "from_llm": (XrayLLM2CLIPTextConfig,),
    "preset": (XrayTextConfig,),
    "from_pretrained": (XrayLLM2CLIPTextConfig, XrayTextConfig),
}


@dataclass
class VisionSpec(Block):
    """An XrayVisual model: `model:` of mae and hashtag, `model.vision:` of clip and distill. `from_pretrained` (a
    previous stage's checkpoint, its head dropped) wins over `preset` (random init); `config:` overrides
    `XrayVisualConfig` settings."""

    preset: str = "tiny"
    from_pretrained: str | None = None
    config: dict[str, Any] = field(default_factory=dict)

    def validate(self, path: str) -> None:
        self.config = check_config(self.config, (XrayVisualConfig,), dotted(path, "config"))


@dataclass
class TextTowerSpec(Block):
    """A text tower (`model.text:`), from exactly one of `from_pretrained` (a trained tower), `from_llm` (LLM2CLIP
    around a text model: a folder, a Hub id, `minilm` or `smollm2`) or `preset` (a plain `XrayTextModel` from scratch,
    which needs a `tokenizer`); `config:` overrides the tower's config."""

    from_pretrained: str | None = None
    from_llm: str | None = None
    preset: str | None = None
    tokenizer: str | None = None
    config: dict[str, Any] = field(default_factory=dict)

    def validate(self, path: str) -> None:
        sources = [key for key in TEXT_CONFIGS if getattr(self, key)]
        if len(sources) != 1:
            raise ValueError(f"{path} needs exactly one of from_pretrained, from_llm or preset, got {sources or 'none'}")
        if self.preset and not self.tokenizer:
            raise ValueError(f"{path}.preset (a text tower trained from scratch) needs a tokenizer: (e.g. smollm2)")
        self.config = check_config(self.config, TEXT_CONFIGS[sources[0]], dotted(path, "config"))


@dataclass
class LoRASpec(Block):
    """`model.lora:` of the text stages: `add_lora`'s settings (LLM2Vec's by default)."""

    r: int = 16
    alpha: int = 32
    dropout: float = 0.05


@dataclass
class TextModelSpec(Block):
    """`model:` of mntp and simcse: the text tower to train with LoRA."""

    text: TextTowerSpec | None = None
    lora: LoRASpec = field(default_factory=LoRASpec)

    def validate(self, path: str) -> None:
        if self.text is None:
            raise ValueError(f"{path} needs a text: block ({{from_llm: ...}} or {{from_pretrained: DIR}})")


@dataclass
class CLIPModelSpec(Block):
    """`model:` of clip: `vision:` and `text:` towers with `config:` (`XrayCLIPConfig` settings), or
    `from_pretrained:` a CLIP checkpoint to continue (and its tokenizer, unless `tokenizer:`)."""

    vision: VisionSpec | None = None
    text: TextTowerSpec | None = None
    config: dict[str, Any] = field(default_factory=dict)
    from_pretrained: str | None = None
    tokenizer: str | None = None

    def validate(self, path: str) -> None:
        if not self.from_pretrained and (self.vision is None or self.text is None):
            raise ValueError(f"{path} needs vision: and text: blocks (or from_pretrained: a CLIP checkpoint)")
        if self.from_pretrained and (self.vision is not None or self.text is not None):
            towers = [name for name in ("vision", "text") if getattr(self, name) is not None]
            raise ValueError(f"{path}.from_pretrained (a whole CLIP checkpoint, towers included) leaves no room for "
                             f"{' and '.join(f'{path}.{name}' for name in towers)}: drop them (null over a base: "
                             f"file); {path}.config still sets XrayCLIPConfig settings (slip_weight, ...)")
        self.config = check_config(self.config, (XrayCLIPConfig,), dotted(path, "config"))


@dataclass
class StudentModelSpec(Block):
    """`model:` of distill: the student's backbone (`vision:`), or `from_pretrained:` a student to continue;
    `config:` overrides the student's config (a CLIP model for a CLIP teacher, else an XrayVisual one)."""

    vision: VisionSpec | None = None
    config: dict[str, Any] = field(default_factory=dict)
    from_pretrained: str | None = None

    def validate(self, path: str) -> None:
        if not self.from_pretrained and self.vision is None:
            raise ValueError(f"{path} needs a vision: block (the student's backbone) or from_pretrained: a student")
        self.config = check_config(self.config, (XrayCLIPConfig, XrayVisualConfig), dotted(path, "config"))


@dataclass
class CompressModelSpec(Block):
    """`model:` of compress: the CLIP checkpoint (`from_pretrained`) and its `compression:` settings
    (`XrayCompressionConfig`; left out: the checkpoint's own, or the defaults)."""

    from_pretrained: str | None = None
    compression: dict[str, Any] | None = None

    def validate(self, path: str) -> None:
        if not self.from_pretrained:
            raise ValueError(f"{dotted(path, 'from_pretrained')} must be an existing CLIP checkpoint directory, "
                             "got None")
        if self.compression is not None:
            self.compression = check_config(self.compression, (XrayCompressionConfig,), dotted(path, "compression"))


@dataclass
class TeacherSpec(Block):
    """`teacher:` of distill: an `XrayCLIPModel` checkpoint, or any XrayVisual one (an image-only teacher)."""

    from_pretrained: str | None = None

    def validate(self, path: str) -> None:
        if not self.from_pretrained:
            raise ValueError("the distill stage needs teacher: {from_pretrained: DIR}")


__all__ = [
    "CLIPModelSpec", "CompressModelSpec", "LoRASpec", "StudentModelSpec", "TEXT_CONFIGS", "TeacherSpec",
    "TextModelSpec", "TextTowerSpec", "VisionSpec",
]
