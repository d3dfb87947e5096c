"""The package's classes and the transformers Auto classes they load with, as one table.

`register()` (run on `import xray_hf`) registers every row with transformers, so an installed package never needs
`trust_remote_code`; the remote-code export (`xray_hf.remote_code`) reads the same rows to write a checkpoint's
`auto_map`. Adding a model adds a row here, never a branch elsewhere.
"""

from __future__ import annotations

import transformers

from .configuration.adapters import XrayLinearAdapterConfig
from .configuration.clip import XrayCLIPConfig
from .configuration.semantic_ids import XraySemanticIDConfig
from .configuration.text import XrayLLM2CLIPTextConfig, XrayTextConfig
from .configuration.visual import XrayVisualConfig
from .modeling.adapters import XrayLinearAdapter
from .modeling.classification import XrayVisualForImageClassification
from .modeling.clip import XrayCLIPModel
from .modeling.compression import XrayEmbeddingCompression
from .modeling.distillation import XrayVisualForDistillation
from .modeling.hashtag import XrayVisualForHashtagClassification
from .modeling.llm2clip import XrayLLM2CLIPTextForMNTP, XrayLLM2CLIPTextModel
from .modeling.mae import XrayVisualForPreTraining
from .modeling.semantic_ids import XraySemanticIDModel
from .modeling.text import XrayTextModel
from .modeling.visual import XrayVisualModel
from .processing.clip import XrayCLIPProcessor
from .processing.image_processing import XrayVisualImageProcessor
from .processing.video_processing import XrayVisualVideoProcessor

# Every config class: `AutoConfig` knows each by its `model_type`.
CONFIGS: tuple[type, ...] = (
    XrayVisualConfig, XrayLLM2CLIPTextConfig, XrayTextConfig, XrayCLIPConfig, XraySemanticIDConfig,
    XrayLinearAdapterConfig,
)

# (transformers Auto class, config class, the class it loads for that config).
AUTO_CLASSES: tuple[tuple[str, type, type], ...] = (
    # backbone and its processors
    ("AutoModel", XrayVisualConfig, XrayVisualModel),
    ("AutoImageProcessor", XrayVisualConfig, XrayVisualImageProcessor),
    ("AutoVideoProcessor", XrayVisualConfig, XrayVisualVideoProcessor),
    # stage 1 (MAE) and the plain single-label classifier
    ("AutoModelForPreTraining", XrayVisualConfig, XrayVisualForPreTraining),
    ("AutoModelForImageClassification", XrayVisualConfig, XrayVisualForImageClassification),
    # text towers (LLM2CLIP and CLIP-style)
    ("AutoModel", XrayLLM2CLIPTextConfig, XrayLLM2CLIPTextModel),
    ("AutoModel", XrayTextConfig, XrayTextModel),
    # stage 3: CLIP
    ("AutoModel", XrayCLIPConfig, XrayCLIPModel),
    ("AutoModelForZeroShotImageClassification", XrayCLIPConfig, XrayCLIPModel),
    ("AutoProcessor", XrayCLIPConfig, XrayCLIPProcessor),
    ("AutoImageProcessor", XrayCLIPConfig, XrayVisualImageProcessor),
    ("AutoVideoProcessor", XrayCLIPConfig, XrayVisualVideoProcessor),
    # semantic IDs (6.6) and linear adapters (6.2)
    ("AutoModel", XraySemanticIDConfig, XraySemanticIDModel),
    ("AutoModel", XrayLinearAdapterConfig, XrayLinearAdapter),
)

# Classes a checkpoint may name (`architectures`) that have no Auto class: they load by their own class, e.g.
# `XrayVisualForHashtagClassification.from_pretrained` (the stage-2 model is multi-label;
# `AutoModelForImageClassification` is the single-label head). Their code travels with them all the same.
OTHER_CLASSES: tuple[type, ...] = (
    XrayVisualForHashtagClassification, XrayVisualForDistillation, XrayLLM2CLIPTextForMNTP, XrayEmbeddingCompression,
)

def register() -> None:
    """Register every row of `CONFIGS` and `AUTO_CLASSES` with transformers (idempotent)."""
    for config_class in CONFIGS:
        transformers.AutoConfig.register(config_class.model_type, config_class, exist_ok=True)
    for auto_name, config_class, target in AUTO_CLASSES:
        auto = getattr(transformers, auto_name)
        if auto_name == "AutoImageProcessor":
            auto.register(config_class, image_processor_classes={"torchvision": target}, exist_ok=True)
        else:
            auto.register(config_class, target, exist_ok=True)


def config_class(model_type: str | None) -> type | None:
    """The package's config class of `model_type`, or None."""
    return next((cls for cls in CONFIGS if cls.model_type == model_type), None)


def auto_classes(config: type) -> dict[str, type]:
    """Auto class name -> the class it loads for `config`, from `AUTO_CLASSES`."""
    return {auto_name: target for auto_name, config_class_, target in AUTO_CLASSES if config_class_ is config}


def package_class(name: str) -> type | None:
    """The package's class named `name` (a config, model or processor of the table), or None."""
    classes = [*CONFIGS, *(target for _, _, target in AUTO_CLASSES), *OTHER_CLASSES]
    return next((cls for cls in classes if cls.__name__ == name), None)


__all__ = ["AUTO_CLASSES", "CONFIGS", "OTHER_CLASSES", "auto_classes", "config_class", "package_class", "register"]
