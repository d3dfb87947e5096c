"""Stage 1 trainer: MAE pretraining on image and video batches (paper 4.2.1).

Masks are drawn from a generator keyed by (seed, rank, optimizer step, micro-batch), not from the global RNG:
a resumed run therefore masks every batch exactly as the uninterrupted run would, whatever else consumed
random numbers in between (DataLoader iterators, augmentations). Image and video losses are also logged
separately (`loss_image`, `loss_video`), since the two modalities reconstruct at different difficulty.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from torch import nn

from .base import XrayTrainer, XrayTrainingArguments


@dataclass
class MAETrainingArguments(XrayTrainingArguments):
    """Stage 1 settings. The mask ratios override the model config's (`None` keeps the config's 0.75 / 0.9)."""

    mask_ratio: float | None = field(default=None, metadata={"help": "fraction of image patches masked"})
    video_mask_ratio: float | None = field(default=None, metadata={"help": "fraction of video tubelets masked"})

    def __post_init__(self) -> None:
        super().__post_init__()
        for name in ("mask_ratio", "video_mask_ratio"):
            value = getattr(self, name)
            if value is not None and not 0.0 <= value < 1.0:
                raise ValueError(f"{name} must be in [0, 1), got {value}")


def num_patches(config: Any, pixel_values: torch.Tensor) -> int:
    """Patch tokens of an image `(B, C, H, W)` or video `(B, T, C, H, W)` batch under `config`."""
    frames = pixel_values.shape[1] // config.tubelet_size if pixel_values.ndim == 5 else 1
    return frames * (pixel_values.shape[-2] // config.patch_size) * (pixel_values.shape[-1] // config.patch_size)


class MAETrainer(XrayTrainer):
    """`Trainer` for [`XrayVisualForPreTraining`]: batches carry `pixel_values` (images or videos, one modality per
    batch); other columns are ignored."""

    def __init__(self, *args: Any, **kwargs: Any):
        super().__init__(*args, **kwargs)
        self._noise_key: tuple[int, int] | None = None  # (global step, micro-batch) of the last training mask
        self._eval_batches = 0
        self._modality_loss: dict[str, list] = {}  # modality -> [summed loss tensor, batches]

    def mask_noise(self, model: nn.Module, pixel_values: torch.Tensor) -> torch.Tensor:
        """Uniform noise `(B, N)` for the mask, from a generator keyed by (seed, rank, step, micro-batch)."""
        config = self.accelerator.unwrap_model(model).config
        if model.training:
            step = self.state.global_step
            micro = self._noise_key[1] + 1 if self._noise_key and self._noise_key[0] == step else 0
            self._noise_key = (step, micro)
            key = [self.args.seed, self.args.process_index, step, micro]
        else:
            key = [self.args.seed, self.args.process_index, 2**31, self._eval_batches]
            self._eval_batches += 1
        seed = int(np.random.SeedSequence(key).generate_state(1, dtype=np.uint64)[0] >> 1)
        generator = torch.Generator().manual_seed(seed)
        noise = torch.rand(pixel_values.shape[0], num_patches(config, pixel_values), generator=generator)
        return noise.to(pixel_values.device)

    def compute_loss(
        self,
        model: nn.Module,
        inputs: dict[str, Any],
        return_outputs: bool = False,
        num_items_in_batch: torch.Tensor | int | None = None,
    ):
        pixel_values = self.model_inputs(inputs)
        video = pixel_values.ndim == 5
        ratio = self.args.video_mask_ratio if video else self.args.mask_ratio
        outputs = model(pixel_values=pixel_values, noise=self.mask_noise(model, pixel_values), mask_ratio=ratio)
        loss = outputs.loss
        if model.training:
            total = self._modality_loss.setdefault("video" if video else "image", [0.0, 0])
            total[0] = total[0] + loss.detach()  # a tensor: no device sync per step
            total[1] += 1
        return (loss, outputs) if return_outputs else loss

    def prediction_step(self, model, inputs, prediction_loss_only, ignore_keys=None):
        inputs = self._prepare_inputs(inputs)
        with torch.no_grad(), self.compute_loss_context_manager():
            loss = self.compute_loss(model, inputs)
        return loss.detach(), None, None

    def evaluate(self, *args: Any, **kwargs: Any) -> dict[str, float]:
        self._eval_batches = 0  # every evaluation sees the same masks
        return super().evaluate(*args, **kwargs)

    def log(self, logs: dict[str, float], start_time: float | None = None) -> None:
        if "loss" in logs:
            for modality, (total, count) in self._modality_loss.items():
                if count:
                    logs[f"loss_{modality}"] = round(float(total) / count, 6)
            self._modality_loss = {}
        super().log(logs, start_time)


@torch.no_grad()
def mae_eval(model: nn.Module, dataset: Any, batch_size: int = 128, seed: int = 0) -> dict[str, float]:
    """Masked-patch loss on `dataset` with fixed masks, next to predicting each masked patch's own mean (the loss
    of a zero prediction in per-patch normalised space; with raw-pixel targets, the patch mean itself)."""
    from ..losses import masked_patch_loss
    from ..modeling.mae import patchify

    model.eval()
    generator = torch.Generator().manual_seed(seed)
    total = baseline = 0.0
    batches = 0
    for start in range(0, len(dataset), batch_size):
        stop = min(len(dataset), start + batch_size)
        pixel_values = torch.stack([dataset[i]["pixel_values"] for i in range(start, stop)])
        target = patchify(pixel_values, model.config.patch_size, model.config.tubelet_size)
        noise = torch.rand(target.shape[:2], generator=generator)
        out = model(pixel_values, noise=noise)
        if model.config.norm_pix_loss:
            mean_prediction = torch.zeros_like(target)
        else:
            mean_prediction = target.mean(dim=-1, keepdim=True).expand_as(target)
        total += float(out.loss)
        baseline += float(masked_patch_loss(mean_prediction, target, out.mask, model.config.norm_pix_loss))
        batches += 1
    return {"masked_loss": total / batches, "patch_mean_loss": baseline / batches}


__all__ = ["MAETrainer", "MAETrainingArguments", "mae_eval", "num_patches"]
