"""trainers: one `transformers.Trainer` subclass per stage, its `TrainingArguments` subclass, and callbacks."""

# -- stages 1 and 2: MAE and hashtags --
from .base import XrayTrainer, XrayTrainingArguments
from ..eval.metrics import hashtag_metrics
from .hashtag import HashtagCollator, HashtagTrainer, HashtagTrainingArguments
from .mae import MAETrainer, MAETrainingArguments

# -- stage 3: CLIP --
from .callbacks import LogitScaleClampCallback, ProgressiveResolutionCallback
from .clip import CLIPCollator, CLIPTrainer, CLIPTrainingArguments
from .grad_cache import cached_backward, cached_encode

# -- distillation --
from .distill import DistillationTrainer, DistillationTrainingArguments

__all__ = [
    "CLIPCollator", "CLIPTrainer", "CLIPTrainingArguments", "DistillationTrainer", "DistillationTrainingArguments",
    "HashtagCollator", "HashtagTrainer",
    "HashtagTrainingArguments", "LogitScaleClampCallback", "MAETrainer", "MAETrainingArguments",
    "ProgressiveResolutionCallback", "XrayTrainer", "XrayTrainingArguments", "cached_backward", "cached_encode",
    "hashtag_metrics",
]
