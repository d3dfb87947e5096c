"""Register xray_hf classes with the transformers Auto factories (runs on `import xray_hf`).

An installed package therefore never needs `trust_remote_code`. One block per area.
"""

from transformers import AutoConfig, AutoModel

from .configuration.visual import XrayVisualConfig
from .modeling.visual import XrayVisualModel

# -- backbone --
AutoConfig.register(XrayVisualConfig.model_type, XrayVisualConfig, exist_ok=True)
AutoModel.register(XrayVisualConfig, XrayVisualModel, exist_ok=True)

# -- processors --
from transformers import AutoImageProcessor, AutoVideoProcessor  # noqa: E402

from .processing.image_processing import XrayVisualImageProcessor  # noqa: E402
from .processing.video_processing import XrayVisualVideoProcessor  # noqa: E402

AutoImageProcessor.register(
    XrayVisualConfig, image_processor_classes={"torchvision": XrayVisualImageProcessor}, exist_ok=True
)
AutoVideoProcessor.register(XrayVisualConfig, XrayVisualVideoProcessor, exist_ok=True)

# -- text towers (LLM2CLIP and CLIP-style) --
from .configuration.text import XrayLLM2CLIPTextConfig, XrayTextConfig  # noqa: E402
from .modeling.llm2clip import XrayLLM2CLIPTextModel  # noqa: E402
from .modeling.text import XrayTextModel  # noqa: E402

AutoConfig.register(XrayLLM2CLIPTextConfig.model_type, XrayLLM2CLIPTextConfig, exist_ok=True)
AutoModel.register(XrayLLM2CLIPTextConfig, XrayLLM2CLIPTextModel, exist_ok=True)
AutoConfig.register(XrayTextConfig.model_type, XrayTextConfig, exist_ok=True)
AutoModel.register(XrayTextConfig, XrayTextModel, exist_ok=True)

# -- stage 1 (MAE) and the plain image classifier --
# The stage-2 hashtag model (multi-label) has no Auto class: it loads by its own class,
# `XrayVisualForHashtagClassification.from_pretrained`; `AutoModelForImageClassification` is the single-label head.
from transformers import AutoModelForImageClassification, AutoModelForPreTraining  # noqa: E402

from .modeling.classification import XrayVisualForImageClassification  # noqa: E402
from .modeling.mae import XrayVisualForPreTraining  # noqa: E402

AutoModelForPreTraining.register(XrayVisualConfig, XrayVisualForPreTraining, exist_ok=True)
AutoModelForImageClassification.register(XrayVisualConfig, XrayVisualForImageClassification, exist_ok=True)

# -- stage 3: CLIP --
from transformers import AutoModelForZeroShotImageClassification, AutoProcessor  # noqa: E402

from .configuration.clip import XrayCLIPConfig  # noqa: E402
from .modeling.clip import XrayCLIPModel  # noqa: E402
from .processing.clip import XrayCLIPProcessor  # noqa: E402

AutoConfig.register(XrayCLIPConfig.model_type, XrayCLIPConfig, exist_ok=True)
AutoModel.register(XrayCLIPConfig, XrayCLIPModel, exist_ok=True)
AutoModelForZeroShotImageClassification.register(XrayCLIPConfig, XrayCLIPModel, exist_ok=True)
AutoProcessor.register(XrayCLIPConfig, XrayCLIPProcessor, exist_ok=True)
AutoImageProcessor.register(
    XrayCLIPConfig, image_processor_classes={"torchvision": XrayVisualImageProcessor}, exist_ok=True
)
AutoVideoProcessor.register(XrayCLIPConfig, XrayVisualVideoProcessor, exist_ok=True)

# -- semantic IDs (6.6) --
from .configuration.semantic_ids import XraySemanticIDConfig  # noqa: E402
from .modeling.semantic_ids import XraySemanticIDModel  # noqa: E402

AutoConfig.register(XraySemanticIDConfig.model_type, XraySemanticIDConfig, exist_ok=True)
AutoModel.register(XraySemanticIDConfig, XraySemanticIDModel, exist_ok=True)

# -- linear adapters (6.2) --
from .configuration.adapters import XrayLinearAdapterConfig  # noqa: E402
from .modeling.adapters import XrayLinearAdapter  # noqa: E402

AutoConfig.register(XrayLinearAdapterConfig.model_type, XrayLinearAdapterConfig, exist_ok=True)
AutoModel.register(XrayLinearAdapterConfig, XrayLinearAdapter, exist_ok=True)
