"""Register xray_hf classes with the transformers Auto factories (runs on `import xray_hf`).

An installed package therefore never needs `trust_remote_code`. One block per area.
"""

from transformers import AutoConfig, AutoModel

from .configuration.visual import XrayVisualConfig
from .modeling.visual import XrayVisualModel

# -- backbone --
AutoConfig.register(XrayVisualConfig.model_type, XrayVisualConfig, exist_ok=True)
AutoModel.register(XrayVisualConfig, XrayVisualModel, exist_ok=True)
