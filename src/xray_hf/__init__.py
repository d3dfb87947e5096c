"""xray_hf: Xray-Visual vision encoders and their training recipe, Hugging Face native.

Importing the package registers every config, model and processor with the
transformers Auto factories, so `AutoModel.from_pretrained` needs no remote code.
"""

__version__ = "0.1.0"

# -- backbone --
from .configuration.visual import XrayVisualConfig
from .modeling.visual import XrayVisualModel, XrayVisualPreTrainedModel

# -- processors --
from .processing.image_processing import XrayVisualImageProcessor
from .processing.transforms import VariableAspectRatioResize
from .processing.video_processing import XrayVisualVideoProcessor

# -- text towers (LLM2CLIP and CLIP-style) --
from .configuration.text import XrayLLM2CLIPTextConfig, XrayTextConfig
from .modeling.llm2clip import XrayLLM2CLIPTextForMNTP, XrayLLM2CLIPTextModel
from .modeling.text import XrayTextModel

# -- stages 1 and 2: MAE and hashtags --
from .modeling.hashtag import HashtagVocabulary, XrayVisualForHashtagClassification
from .modeling.mae import XrayVisualForPreTraining

# -- heads: the plain image classifier (AutoModelForImageClassification) --
from .modeling.classification import XrayVisualForImageClassification

# -- stage 3: CLIP --
from .configuration.clip import XrayCLIPConfig
from .modeling.clip import XrayCLIPModel
from .processing.clip import XrayCLIPProcessor

# -- distillation: the student of an image-only teacher --
from .modeling.distillation import XrayVisualForDistillation

# -- semantic IDs (6.6) --
from .configuration.semantic_ids import XraySemanticIDConfig
from .modeling.semantic_ids import XraySemanticIDModel

# -- linear adapters (6.2) --
from .configuration.adapters import XrayLinearAdapterConfig
from .modeling.adapters import XrayLinearAdapter, list_adapters, load_adapter, save_adapter

# -- compressed embeddings (6.3-6.4): 100-d / Matryoshka projection, int8, binary --
from .configuration.compression import XrayCompressionConfig
from .losses.compression import SimilarityDistillationLoss
from .modeling.compression import XrayEmbeddingCompression

# -- registrations: the Auto classes (one table), and what a push_to_hub upload carries --
from .hub import install_upload_hooks as _install_upload_hooks  # noqa: E402
from .registration import register as _register  # noqa: E402

_register()
_install_upload_hooks()
