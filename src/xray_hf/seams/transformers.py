"""transformers' private names the package relies on (see `xray_hf.seams`).

`TrainerSeams` holds every private `Trainer` method the package's trainers override; each forwards to a
public-named hook (`save_weights`, `before_checkpoint_save`, ...) that the trainers override instead, calling
`super()`. Mix it in last, right before `Trainer` (`xray_hf.trainers.base.XrayTrainerMixin` does). The model and processor
hooks are listed in `SEAMS` but live in their classes, which also run as Hub remote code.
"""

from __future__ import annotations

import os
from typing import Any

from torch import nn

from . import Seam

TRAINER = "transformers.trainer:Trainer"

SEAMS = (
    # --- Trainer: overridden in TrainerSeams, forwarded to the public hooks below
    Seam(TRAINER, "_save", ("output_dir", "state_dict"), "xray_hf.seams.transformers",
         "save_weights: FSDP2 gathers the full state dict, training_args.json replaces the pickled training_args.bin; "
         "if it moves, sharded models save shards and every save writes a pickle again",
         "a save hook (Trainer.save_model calls _save; save_model itself is public but also runs for checkpoints)",
         ("tests/trainers/test_run.py::test_cli_trains_mae_then_hashtag_from_its_checkpoint",)),
    Seam(TRAINER, "_save_checkpoint", ("model", "trial"), "xray_hf.seams.transformers",
         "before_checkpoint_save: every rank's data position is written before trainer_state.json; if it moves, "
         "checkpoints carry no data position and a resume restarts the stream",
         "TrainerCallback.on_save runs after trainer_state.json (too late: a kill in between leaves a complete-looking "
         "checkpoint without data position); a pre-save callback event would do",
         ("tests/trainers/test_resume.py::test_a_save_killed_before_the_trainer_state_is_skipped_by_resume_last",)),
    Seam(TRAINER, "_get_output_dir", ("trial",), "xray_hf.seams.transformers",
         "the folder a checkpoint is written to, for the data position written before it",
         "TrainingArguments.output_dir, when hyper-parameter search (trial folders) is not used"),
    Seam(TRAINER, "_push_from_checkpoint", ("checkpoint_folder",), "xray_hf.seams.transformers",
         "push_checkpoint: with push_to_hub=True each checkpoint goes up as xray-hf push uploads it; if it moves, the "
         "Trainer's own push uploads the pickled training_args.bin, logs and caches, without remote code or card",
         "a push callback or a Trainer argument naming the upload function",
         ("tests/hub/test_push.py::test_trainer_pushes_each_checkpoint_like_xray_hf_push",)),
    Seam(TRAINER, "_load_from_checkpoint", ("resume_from_checkpoint", "model"), "xray_hf.seams.transformers",
         "load_checkpoint_weights: FSDP2 resumes read on rank 0 and broadcast; the compress stage resumes its module "
         "from a CLIP checkpoint; a finished run loads its checkpoint; if it moves, those resumes load the wrong weights",
         "none",
         ("tests/trainers/test_compression.py::test_compress_stage_resumes_to_the_uninterrupted_losses",
          "tests/trainers/test_resume.py::test_resuming_a_finished_stage_trains_nothing_and_reports_the_whole_stage")),
    Seam(TRAINER, "_load_optimizer_and_scheduler", ("checkpoint",), "xray_hf.seams.transformers",
         "load_optimizer_state: under FSDP2 rank 0 alone reads optimizer.pt; if it moves, every rank loads the full "
         "optimizer state onto its device (or a sharded optimizer fails to load)",
         "none"),
    Seam(TRAINER, "_save_optimizer_and_scheduler", ("output_dir",), "xray_hf.seams.transformers",
         "save_optimizer_state: under FSDP2 the optimizer state is gathered in an unsharded run's layout; if it "
         "moves, FSDP2 checkpoints hold sharded state that DDP runs cannot resume",
         "none"),
    Seam(TRAINER, "_load_best_model", (), "xray_hf.seams.transformers",
         "load_best_model: an FSDP2 model is unsharded before the best checkpoint is loaded into it",
         "none"),
    # --- models and processors: overridden in their own classes (also Hub remote code)
    Seam("transformers.utils.hub:PushToHubMixin", "_upload_modified_files",
         ("working_dir", "repo_id", "files_timestamps"), "xray_hf.hub_mixin",
         "model.push_to_hub / save_pretrained(push_to_hub=True) add the remote code and the model card to the upload; "
         "if it moves, pushes go up without remote code or card",
         "a hook between saving and uploading in PushToHubMixin.push_to_hub",
         ("tests/hub/test_push.py::test_model_push_to_hub_carries_remote_code_and_card",
          "tests/hub/test_push.py::test_processors_push_to_hub_carry_remote_code_and_auto_map")),
    Seam("transformers.modeling_utils:PreTrainedModel", "_init_weights", ("module",), "xray_hf.modeling",
         "each model's initialisation (transformers' documented way to define it); if it moves, new weights stay "
         "at torch's defaults", "none (this is transformers' model-definition contract)"),
    Seam("transformers.modeling_utils:PreTrainedModel", "_from_config", ("config",), "xray_hf.modeling.clip",
         "builds a text tower from its config with the config's attention implementation and dtype",
         "AutoModel.from_config (for registered model types)"),
    Seam("transformers.modeling_utils:PreTrainedModel", "_no_split_modules", None, "xray_hf.trainers.fsdp",
         "which modules are transformer blocks: the FSDP2 units; if it moves, every model is one unit",
         "none (model-definition contract)"),
    Seam("transformers.modeling_utils:PreTrainedModel", "_keep_in_fp32_modules_strict", None, "xray_hf.modeling.clip",
         "calibrated int8 ranges stay fp32 when a CLIP checkpoint loads in bf16; if it moves, the bucket "
         "boundaries silently shift", "none (model-definition contract)"),
    Seam("transformers.modeling_utils:PreTrainedModel", "_keys_to_ignore_on_load_unexpected", None, "xray_hf.modeling",
         "a stage loads the previous stage's checkpoint without warning about its dropped head",
         "none (model-definition contract)"),
    Seam("transformers.image_processing_utils:BaseImageProcessor", "_validate_preprocess_kwargs", ("do_resize", "size"),
         "xray_hf.processing", "the processors accept the paper's variable-aspect-ratio sizes",
         "none", by_keyword=True),
    Seam("transformers.image_processing_utils:BaseImageProcessor", "_prepare_images_structure", ("images",),
         "xray_hf.processing.image_processing", "nested image lists are flattened as the processor expects",
         "none"),
    Seam("transformers.image_processing_backends:TorchvisionBackend", "_preprocess", ("images",),
         "xray_hf.processing.image_processing", "the image transform itself (transformers' documented override point "
         "for fast processors)", "none (processor-definition contract)"),
    Seam("transformers.video_processing_utils:BaseVideoProcessor", "_decode_and_sample_videos",
         ("videos", "video_metadata", "do_sample_frames", "sample_indices_fn"), "xray_hf.processing.video_processing",
         "uniform frame sampling of decoded clips", "none"),
    Seam("transformers.video_processing_utils:BaseVideoProcessor", "_preprocess", ("videos",),
         "xray_hf.processing.video_processing", "the video transform itself", "none (processor-definition contract)"),
)

# The public hooks TrainerSeams forwards to; transformers' Trainer must not define them itself (tested).
TRAINER_HOOKS = ("save_weights", "before_checkpoint_save", "push_checkpoint", "load_checkpoint_weights",
                 "load_optimizer_state", "save_optimizer_state", "load_best_model")


class TrainerSeams:
    """The private `Trainer` methods the package overrides, each forwarding to a public-named hook. Override the
    hooks (calling `super()`); the defaults here run the Trainer's own private method."""

    # ------------------------------------------------------------------------------------------- forwarding
    def _save(self, output_dir: str | None = None, state_dict: dict | None = None) -> None:
        return self.save_weights(output_dir, state_dict)

    def _save_checkpoint(self, model: nn.Module, trial: Any) -> None:
        from transformers.trainer_utils import PREFIX_CHECKPOINT_DIR

        folder = os.path.join(self._get_output_dir(trial=trial), f"{PREFIX_CHECKPOINT_DIR}-{self.state.global_step}")
        self.before_checkpoint_save(folder)
        return super()._save_checkpoint(model, trial)

    def _push_from_checkpoint(self, checkpoint_folder: str) -> None:
        return self.push_checkpoint(checkpoint_folder)

    def _load_from_checkpoint(self, resume_from_checkpoint: str, model: nn.Module | None = None) -> None:
        return self.load_checkpoint_weights(resume_from_checkpoint, model)

    def _load_optimizer_and_scheduler(self, checkpoint: str | None) -> None:
        return self.load_optimizer_state(checkpoint)

    def _save_optimizer_and_scheduler(self, output_dir: str) -> None:
        return self.save_optimizer_state(output_dir)

    def _load_best_model(self) -> None:
        return self.load_best_model()

    # ------------------------------------------------------------------------------------ the public hooks
    def save_weights(self, output_dir: str | None = None, state_dict: dict | None = None) -> None:
        """Write the model (weights, config, processing class) into `output_dir`: for `save_model` and every
        checkpoint. `state_dict` replaces the model's own (e.g. gathered from shards)."""
        return super()._save(output_dir, state_dict)

    def before_checkpoint_save(self, checkpoint: str) -> None:
        """Runs on every rank before the Trainer writes checkpoint folder `checkpoint` (weights, optimizer, RNG states
        and, last, `trainer_state.json`)."""

    def push_checkpoint(self, checkpoint_folder: str) -> None:
        """With `push_to_hub=True`: upload a just-saved checkpoint."""
        return super()._push_from_checkpoint(checkpoint_folder)

    def load_checkpoint_weights(self, checkpoint: str, model: nn.Module | None = None) -> None:
        """Load a checkpoint's weights into the model (resuming) or into `model`."""
        return super()._load_from_checkpoint(checkpoint, model)

    def load_optimizer_state(self, checkpoint: str | None) -> None:
        """Load the optimizer and scheduler states of a checkpoint being resumed."""
        return super()._load_optimizer_and_scheduler(checkpoint)

    def save_optimizer_state(self, output_dir: str) -> None:
        """Write the optimizer and scheduler states into a checkpoint folder."""
        return super()._save_optimizer_and_scheduler(output_dir)

    def load_best_model(self) -> None:
        """Load the best checkpoint's weights at the end of training (`load_best_model_at_end`)."""
        return super()._load_best_model()


__all__ = ["SEAMS", "TRAINER", "TRAINER_HOOKS", "TrainerSeams"]
