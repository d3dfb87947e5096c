"""A stage resumed any number of times is still one run (`WholeRunMixin`): its logs cover every step, and resuming a
finished run trains nothing."""

from __future__ import annotations

import logging
import os
from typing import Any

from transformers.trainer import TRAINER_STATE_NAME
from transformers.trainer_callback import TrainerState
from transformers.trainer_utils import TrainOutput

from .callbacks import LogEveryStepCoveredCallback
from .resume import checkpoint_step, last_complete_checkpoint, stage_training_loss

logger = logging.getLogger(__name__)


class WholeRunMixin:
    """For `Trainer` subclasses: a run resumed any number of times is still one run.

    - Its logs cover every step (`LogEveryStepCoveredCallback`), so the stage's training loss over all its steps is
      read from `state.log_history` (`stage_training_loss`), not only over the steps since the last resume.
    - Resuming from a checkpoint saved at `max_steps` (a finished run: `--resume last`, or a pipeline rerun after an
      interruption in evaluation or reporting) trains nothing and leaves the model with the checkpoint's weights and
      the Trainer with its state. The Trainer itself would enter its epoch loop and take one more optimizer step
      before checking whether to stop (always with the endless streams, which have no `len()`; with a map-style
      dataset when `max_steps` ends mid-epoch).
    """

    def __init__(self, *args: Any, **kwargs: Any):
        super().__init__(*args, **kwargs)
        self.add_callback(LogEveryStepCoveredCallback())

    def train(self, resume_from_checkpoint: str | bool | None = None, **kwargs: Any):
        checkpoint = resume_from_checkpoint
        if checkpoint is True:
            checkpoint = last_complete_checkpoint(self.args.output_dir)
        if isinstance(checkpoint, (str, os.PathLike)) and self.args.max_steps > 0:
            step = checkpoint_step(checkpoint)
            if step is not None and step >= self.args.max_steps:
                return self._finished_run(os.fspath(checkpoint))
        return super().train(resume_from_checkpoint=resume_from_checkpoint, **kwargs)

    def _finished_run(self, checkpoint: str) -> TrainOutput:
        """Load a finished run's checkpoint (weights and Trainer state) instead of training."""
        logger.warning("%s was saved at step %d of max_steps %d: nothing left to train, the run is its checkpoint",
                       checkpoint, checkpoint_step(checkpoint), self.args.max_steps)
        self.load_checkpoint_weights(checkpoint)
        unshard = getattr(self, "_unshard_model", None)
        if unshard is not None:
            unshard()  # FSDP2 loads into the sharded model: back to a plain one, as after training
        self.state = TrainerState.load_from_json(os.path.join(checkpoint, TRAINER_STATE_NAME))
        loss = stage_training_loss(self.state.log_history)
        loss = float("nan") if loss is None else loss
        return TrainOutput(self.state.global_step, loss, {"train_loss": loss})


__all__ = ["WholeRunMixin"]
