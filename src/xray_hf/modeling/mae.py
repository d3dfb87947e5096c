"""Stage 1 of the recipe: masked autoencoding on images and videos (paper 4.2.1, He et al. 2022).

Each sample gets its own random mask (75% of image patches, 90% of video tubelets); the backbone
encodes only the visible patch tokens plus CLS and registers, so its cost falls with the mask ratio.
A small decoder (its own width and depth, `config.decoder_*`) puts mask tokens back in place and
predicts the pixels of every patch; the loss is the mean squared error on the masked patches, against
pixels normalised per patch (`norm_pix_loss`).

Images and videos share one prediction head: it predicts a tubelet (`tubelet_size` frames of a patch).
An image is one tubelet whose frames are all the image, the mirror of the backbone's time-summed
patch kernel, so its prediction is the head averaged over time: `patch_size**2 * channels` values.
"""

from __future__ import annotations

import copy
import math

import torch
import torch.nn.functional as F
from torch import nn
from transformers import initialization as init

from ..configuration.visual import XrayVisualConfig
from ..losses import masked_patch_loss
from .outputs import XrayVisualForPreTrainingOutput
from .visual import (
    XrayVisualLayer,
    XrayVisualModel,
    XrayVisualPreTrainedModel,
    factorised_position_embeddings,
    norms_and_biases,
)


def patchify(pixel_values: torch.Tensor, patch_size: int, tubelet_size: int) -> torch.Tensor:
    """Pixels as patch rows, in the backbone's token order.

    Images `(B, C, H, W)` -> `(B, H'*W', p*p*C)`; videos `(B, T, C, H, W)` -> `(B, T'*H'*W', t*p*p*C)`,
    each row ordered (time, row, column, channel).
    """
    p, t = patch_size, tubelet_size
    if pixel_values.ndim == 4:
        b, c, h, w = pixel_values.shape
        x = pixel_values.reshape(b, c, h // p, p, w // p, p)
        return x.permute(0, 2, 4, 3, 5, 1).reshape(b, (h // p) * (w // p), p * p * c)
    if pixel_values.ndim == 5:
        b, f, c, h, w = pixel_values.shape
        x = pixel_values.reshape(b, f // t, t, c, h // p, p, w // p, p)
        return x.permute(0, 1, 4, 6, 2, 5, 7, 3).reshape(b, (f // t) * (h // p) * (w // p), t * p * p * c)
    raise ValueError(f"expected images (B, C, H, W) or videos (B, T, C, H, W), got shape {tuple(pixel_values.shape)}")


def unpatchify(
    patches: torch.Tensor, grid: tuple[int, int, int], patch_size: int, tubelet_size: int, num_channels: int,
    video: bool,
) -> torch.Tensor:
    """Inverse of [`patchify`]: `(B, N, patch_dim)` -> images `(B, C, H, W)` or videos `(B, T, C, H, W)`."""
    p, c = patch_size, num_channels
    gt, gh, gw = grid
    b, n, dim = patches.shape
    t = tubelet_size if video else 1
    if n != gt * gh * gw or dim != t * p * p * c:
        raise ValueError(
            f"patches of shape {tuple(patches.shape)} do not fit grid {grid} with patch dim {t}x{p}x{p}x{c}"
        )
    x = patches.reshape(b, gt, gh, gw, t, p, p, c)
    if not video:
        return x[:, 0, :, :, 0].permute(0, 5, 1, 3, 2, 4).reshape(b, c, gh * p, gw * p)
    return x.permute(0, 1, 4, 7, 2, 5, 3, 6).reshape(b, gt * t, c, gh * p, gw * p)


def random_masking(
    batch_size: int, num_patches: int, mask_ratio: float, device: torch.device | None = None,
    noise: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Per-sample random masking by argsort of uniform noise (He et al. 2022).

    Returns `ids_keep (B, K)` (visible patches, in noise order), `mask (B, N)` (1 = masked) and
    `ids_restore (B, N)`. `noise (B, N)` fixes the mask: the `K` patches with the lowest noise stay visible.
    `K = floor(N * (1 - mask_ratio))` as in MAE (at least 1), with float error rounded away first
    (800 * (1 - 0.9) is 79.999... in floats; K is 80).
    """
    num_keep = max(1, math.floor(round(num_patches * (1.0 - mask_ratio), 6)))
    if noise is None:
        noise = torch.rand(batch_size, num_patches, device=device)
    elif noise.shape != (batch_size, num_patches):
        raise ValueError(
            f"noise must have shape {(batch_size, num_patches)} (batch, patches), got {tuple(noise.shape)}"
        )
    ids_shuffle = torch.argsort(noise, dim=1)
    ids_restore = torch.argsort(ids_shuffle, dim=1)
    ids_keep = ids_shuffle[:, :num_keep]
    mask = torch.ones(batch_size, num_patches, device=ids_shuffle.device)
    mask[:, :num_keep] = 0
    mask = torch.gather(mask, 1, ids_restore)
    return ids_keep, mask, ids_restore


def decoder_config(config: XrayVisualConfig) -> XrayVisualConfig:
    """The backbone config reshaped to the decoder: its width and depth, no token reduction, no drop path."""
    dec = copy.deepcopy(config)
    dec.hidden_size = config.decoder_hidden_size
    dec.num_hidden_layers = config.decoder_num_hidden_layers
    dec.num_attention_heads = config.decoder_num_attention_heads
    dec.intermediate_size = config.decoder_intermediate_size
    dec.evit_layers, dec.keep_rate, dec.tome_r, dec.drop_path_rate = [], 1.0, 0, 0.0
    return dec


class XrayVisualMAEDecoder(nn.Module):
    """Lightweight MAE decoder: project, restore mask tokens in patch order, transformer blocks, pixel head."""

    def __init__(self, config: XrayVisualConfig):
        super().__init__()
        dec = decoder_config(config)
        grid_t, grid_h, grid_w = config.grid_size
        width = dec.hidden_size
        self.patch_size = config.patch_size
        self.tubelet_size = config.tubelet_size
        self.num_channels = config.num_channels
        self.decoder_embed = nn.Linear(config.hidden_size, width)
        self.mask_token = nn.Parameter(torch.zeros(1, 1, width))
        self.position_embeddings_time = nn.Parameter(torch.zeros(1, grid_t, width))
        self.position_embeddings_height = nn.Parameter(torch.zeros(1, grid_h, width))
        self.position_embeddings_width = nn.Parameter(torch.zeros(1, grid_w, width))
        self.layers = nn.ModuleList([XrayVisualLayer(dec, i) for i in range(dec.num_hidden_layers)])
        self.norm = nn.LayerNorm(width, eps=config.layer_norm_eps)
        self.pred = nn.Linear(width, config.tubelet_size * config.patch_size**2 * config.num_channels)

    def position_embeddings(self, grid: tuple[int, int, int]) -> torch.Tensor:
        return factorised_position_embeddings(
            self.position_embeddings_time, self.position_embeddings_height, self.position_embeddings_width, grid
        )

    def no_weight_decay(self) -> set[str]:
        """Parameters that never take weight decay: the mask token, the position tables, norms and biases."""
        tokens = {"mask_token", "position_embeddings_time", "position_embeddings_height", "position_embeddings_width"}
        return tokens | norms_and_biases(self)

    def predict(self, hidden_states: torch.Tensor, video: bool) -> torch.Tensor:
        """Pixel head: a tubelet per token for videos; for images the head averaged over the tubelet's frames."""
        if video:
            return self.pred(hidden_states)
        frames, dim = self.tubelet_size, self.pred.out_features // self.tubelet_size
        weight = self.pred.weight.view(frames, dim, -1).mean(dim=0)
        bias = self.pred.bias.view(frames, dim).mean(dim=0)
        return F.linear(hidden_states, weight, bias)

    def forward(
        self, prefix: torch.Tensor, visible: torch.Tensor, ids_restore: torch.Tensor, grid: tuple[int, int, int],
        video: bool,
    ) -> torch.Tensor:
        """`prefix (B, P, D)` (CLS, registers) and `visible (B, K, D)` encoder outputs -> pixels `(B, N, patch_dim)`."""
        batch, num_prefix = prefix.shape[0], prefix.shape[1]
        x = self.decoder_embed(torch.cat([prefix, visible], dim=1))
        prefix, visible = x[:, :num_prefix], x[:, num_prefix:]
        num_masked = ids_restore.shape[1] - visible.shape[1]
        tokens = torch.cat([visible, self.mask_token.to(x.dtype).expand(batch, num_masked, -1)], dim=1)
        index = ids_restore[..., None].expand(-1, -1, tokens.shape[-1])
        tokens = torch.gather(tokens, 1, index) + self.position_embeddings(grid).to(x.dtype)
        hidden_states = torch.cat([prefix, tokens], dim=1)
        for layer in self.layers:
            hidden_states, _ = layer(hidden_states, None, num_prefix_tokens=num_prefix)
        hidden_states = self.norm(hidden_states[:, num_prefix:])
        return self.predict(hidden_states, video)


class XrayVisualForPreTraining(XrayVisualPreTrainedModel):
    """XrayVisual backbone with the MAE decoder (stage 1). Later stages load its `xray_visual` weights and drop
    the decoder: `XrayVisualForHashtagClassification.from_pretrained(mae_checkpoint)`."""

    def __init__(self, config: XrayVisualConfig):
        super().__init__(config)
        pruning = [i for i in config.evit_layers if config.keep_rate_for_layer(i) < 1.0]
        if pruning:
            raise ValueError(
                f"MAE pretraining needs one encoder output per visible patch, but EViT prunes tokens at layers "
                f"{pruning} (keep_rate {config.keep_rate}); pretrain with keep_rate=1.0 and enable EViT in a later "
                "stage, e.g. from_pretrained(mae_checkpoint, evit_layers=..., keep_rate=...)"
            )
        self.xray_visual = XrayVisualModel(config)
        self.decoder = XrayVisualMAEDecoder(config)
        self.post_init()

    @torch.no_grad()
    def _init_weights(self, module: nn.Module) -> None:
        super()._init_weights(module)
        if isinstance(module, XrayVisualMAEDecoder):
            std = self.config.initializer_range
            for param in (module.mask_token, module.position_embeddings_time, module.position_embeddings_height,
                          module.position_embeddings_width):
                init.trunc_normal_(param, mean=0.0, std=std)

    def get_input_embeddings(self) -> nn.Module:
        return self.xray_visual.get_input_embeddings()

    def mask_ratio_for(self, pixel_values: torch.Tensor) -> float:
        return self.config.video_mask_ratio if pixel_values.ndim == 5 else self.config.mask_ratio

    def forward(
        self,
        pixel_values: torch.Tensor,
        noise: torch.Tensor | None = None,
        mask_ratio: float | None = None,
        output_hidden_states: bool | None = None,
        return_dict: bool | None = None,
    ) -> XrayVisualForPreTrainingOutput | tuple:
        r"""
        pixel_values (`torch.FloatTensor`):
            Images `(batch, channels, height, width)` or videos `(batch, frames, channels, height, width)`.
        noise (`torch.FloatTensor` of shape `(batch, num_patches)`, *optional*):
            Fixes the mask (lowest noise stays visible); random when not given.
        mask_ratio (`float`, *optional*):
            Overrides `config.mask_ratio` (images) / `config.video_mask_ratio` (videos) for this call.
        """
        if pixel_values is None:
            raise ValueError("pixel_values is required")
        output_hidden_states = (
            output_hidden_states if output_hidden_states is not None else self.config.output_hidden_states
        )
        return_dict = return_dict if return_dict is not None else self.config.return_dict
        ratio = self.mask_ratio_for(pixel_values) if mask_ratio is None else float(mask_ratio)
        if not 0.0 <= ratio < 1.0:
            raise ValueError(f"mask_ratio must be in [0, 1), got {ratio}")
        video = pixel_values.ndim == 5
        embeddings = self.xray_visual.embeddings

        tokens, grid = embeddings.embed_patches(pixel_values)
        batch, num_patches, width = tokens.shape
        ids_keep, mask, ids_restore = random_masking(batch, num_patches, ratio, tokens.device, noise)
        visible = torch.gather(tokens, 1, ids_keep[..., None].expand(-1, -1, width))
        encoded = self.xray_visual.encode(
            embeddings.add_prefix(visible), output_hidden_states=output_hidden_states, tome_r=0
        )
        hidden = encoded.last_hidden_state  # (B, 1 + K, D): CLS and the visible tokens
        prefix = hidden[:, :1] if encoded.register_tokens is None else torch.cat(
            [hidden[:, :1], encoded.register_tokens], dim=1
        )
        logits = self.decoder(prefix, hidden[:, 1:], ids_restore, grid, video).float()

        target = patchify(pixel_values, self.config.patch_size, self.config.tubelet_size)
        loss = masked_patch_loss(logits, target, mask, self.config.norm_pix_loss)
        output = XrayVisualForPreTrainingOutput(
            loss=loss, logits=logits, mask=mask, ids_restore=ids_restore, last_hidden_state=hidden,
            hidden_states=encoded.hidden_states,
        )
        return output if return_dict else output.to_tuple()

    @torch.no_grad()
    def reconstruct(
        self, pixel_values: torch.Tensor, logits: torch.Tensor, mask: torch.Tensor, paste_visible: bool = False
    ) -> torch.Tensor:
        """Predictions back in pixel space, shaped like `pixel_values`.

        With `norm_pix_loss` the predictions are per-patch normalised; they are mapped back with each patch's
        own mean and standard deviation taken from `pixel_values`, as in the MAE paper's figures. So a masked
        patch's mean colour and contrast come from the original (not predicted); only its structure is the
        model's. `paste_visible` puts the visible patches back.
        """
        p, t, c = self.config.patch_size, self.config.tubelet_size, self.config.num_channels
        video = pixel_values.ndim == 5
        target = patchify(pixel_values, p, t).float()
        pred = logits.float()
        if self.config.norm_pix_loss:
            pred = pred * (target.var(dim=-1, keepdim=True) + 1e-6) ** 0.5 + target.mean(dim=-1, keepdim=True)
        if paste_visible:
            pred = torch.where(mask[..., None].bool(), pred, target)
        frames = pixel_values.shape[1] // t if video else 1
        grid = (frames, pixel_values.shape[-2] // p, pixel_values.shape[-1] // p)
        return unpatchify(pred, grid, p, t, c, video).to(pixel_values.dtype)


__all__ = [
    "XrayVisualForPreTraining", "XrayVisualMAEDecoder", "patchify", "unpatchify", "random_masking", "masked_patch_loss",
]
