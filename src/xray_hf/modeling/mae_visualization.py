"""Look at what the MAE reconstructs: a PNG grid of original / masked / reconstruction / reconstruction with the
visible patches pasted back, one row per sample (videos: the frames of each panel side by side)."""

from __future__ import annotations

import os
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torchvision.utils import make_grid, save_image
from transformers.image_utils import OPENAI_CLIP_MEAN, OPENAI_CLIP_STD

from .mae import XrayVisualForPreTraining, patchify, unpatchify

PANELS = ("original", "masked", "reconstruction", "reconstruction + visible")


def unnormalize(pixel_values: torch.Tensor, mean: Sequence[float], std: Sequence[float]) -> torch.Tensor:
    """Undo `Normalize(mean, std)` on `(..., C, H, W)` and clamp to [0, 1]."""
    shape = (-1, 1, 1)
    mean_t = torch.tensor(mean, dtype=torch.float32, device=pixel_values.device).view(shape)
    std_t = torch.tensor(std, dtype=torch.float32, device=pixel_values.device).view(shape)
    return (pixel_values.float() * std_t + mean_t).clamp(0.0, 1.0)


@torch.no_grad()
def reconstruction_panels(
    model: XrayVisualForPreTraining, pixel_values: torch.Tensor, noise: torch.Tensor | None = None,
    mean: Sequence[float] = OPENAI_CLIP_MEAN, std: Sequence[float] = OPENAI_CLIP_STD,
) -> tuple[torch.Tensor, float]:
    """`(B, 4, T, C, H, W)` un-normalised panels (see `PANELS`; T = 1 for images) and the batch's masked loss."""
    was_training = model.training
    model.eval()
    try:
        out = model(pixel_values, noise=noise)
    finally:
        model.train(was_training)
    config = model.config
    p, t, c = config.patch_size, config.tubelet_size, config.num_channels
    video = pixel_values.ndim == 5
    frames = pixel_values.shape[1] // t if video else 1
    grid = (frames, pixel_values.shape[-2] // p, pixel_values.shape[-1] // p)
    patches = patchify(pixel_values.float(), p, t)
    grey = torch.zeros_like(patches)  # 0 in normalised pixel space: the dataset mean colour
    masked = unpatchify(torch.where(out.mask[..., None].bool(), grey, patches), grid, p, t, c, video)
    recon = model.reconstruct(pixel_values.float(), out.logits, out.mask)
    pasted = model.reconstruct(pixel_values.float(), out.logits, out.mask, paste_visible=True)
    panels = torch.stack([pixel_values.float(), masked, recon, pasted], dim=1)
    if not video:
        panels = panels.unsqueeze(2)  # (B, 4, 1, C, H, W)
    return unnormalize(panels, mean, std), float(out.loss)


def save_reconstruction_grid(
    model: XrayVisualForPreTraining, pixel_values: torch.Tensor, path: str | os.PathLike,
    noise: torch.Tensor | None = None, mean: Sequence[float] = OPENAI_CLIP_MEAN, std: Sequence[float] = OPENAI_CLIP_STD,
    min_height: int = 96,
) -> float:
    """Save a PNG grid (one row per sample, columns as in `PANELS`) and return the batch's masked-patch loss."""
    panels, loss = reconstruction_panels(model, pixel_values, noise, mean, std)
    batch, num_panels, frames, channels, height, width = panels.shape
    # each panel: its frames side by side
    strips = panels.permute(0, 1, 3, 4, 2, 5).reshape(batch * num_panels, channels, height, frames * width)
    if channels == 1:
        strips = strips.expand(-1, 3, -1, -1)
    scale = max(1, -(-min_height // height))
    if scale > 1:
        strips = F.interpolate(strips, scale_factor=scale, mode="nearest")
    grid = make_grid(strips, nrow=num_panels, padding=2, pad_value=1.0)
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    save_image(grid, path)
    return loss


__all__ = ["PANELS", "reconstruction_panels", "save_reconstruction_grid", "unnormalize"]
