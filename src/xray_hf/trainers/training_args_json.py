"""Training arguments saved as JSON (`training_args.json`) instead of the Trainer's pickled `training_args.bin`."""

from __future__ import annotations

import os

from transformers import TrainingArguments
from transformers.trainer import TRAINING_ARGS_NAME

TRAINING_ARGS_JSON = "training_args.json"


class JSONTrainingArgumentsMixin:
    """For `Trainer` subclasses: save the training arguments as JSON (`training_args.json`) instead of the Trainer's
    pickled `training_args.bin`, so nothing this package writes needs pickle to read. Mix it in before
    `xray_hf.seams.transformers.TrainerSeams`, whose `save_weights` hook it extends."""

    def save_weights(self, output_dir: str | None = None, state_dict: dict | None = None) -> None:
        super().save_weights(output_dir, state_dict)
        if self.args.should_save:
            write_training_args(self.args, output_dir if output_dir is not None else self.args.output_dir)


def write_training_args(args: TrainingArguments, output_dir: str) -> None:
    """`training_args.json` in `output_dir`, and no pickled `training_args.bin` (removed if the Trainer wrote it)."""
    pickled = os.path.join(output_dir, TRAINING_ARGS_NAME)
    if os.path.isfile(pickled):
        os.remove(pickled)
    with open(os.path.join(output_dir, TRAINING_ARGS_JSON), "w", encoding="utf-8") as f:
        f.write(args.to_json_string())


__all__ = ["TRAINING_ARGS_JSON", "JSONTrainingArgumentsMixin", "write_training_args"]
