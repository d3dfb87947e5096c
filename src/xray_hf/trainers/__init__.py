"""trainers: one `transformers.Trainer` subclass per stage, its `TrainingArguments` subclass, and callbacks."""

# -- stages 1 and 2: MAE and hashtags --
from .base import XrayTrainer, XrayTrainingArguments
from .hashtag import HashtagCollator, HashtagTrainer, HashtagTrainingArguments, hashtag_metrics
from .mae import MAETrainer, MAETrainingArguments
