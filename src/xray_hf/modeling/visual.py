"""The XrayVisual backbone: one ViT for images and videos with 3D tubelet tokens (paper section 3).

Sequence layout: [CLS, registers, patch tokens]. Patch tokens come from a Conv3d with kernel
(tubelet, patch, patch); an image is a clip whose frames all equal the image, which the patch
embedding computes exactly (and at half the cost) by summing the kernel over time. Position
embeddings are factorised (time, height, width) and interpolated per axis, so any resolution,
rectangle and frame count divisible by the tubelet size works.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn
from transformers import PreTrainedModel
from transformers import initialization as init
from transformers.activations import ACT2FN
from transformers.modeling_layers import GradientCheckpointingLayer

from ..configuration.visual import XrayVisualConfig
from ..hub_mixin import XrayHubMixin
from .outputs import XrayVisualModelOutput
from .token_reduction import evit_reorganize, size_bias, tome_merge


def resize_position_table(table: torch.Tensor, size: int, mode: str) -> torch.Tensor:
    """Resize a (1, n, D) position table to (1, size, D) in fp32; the identity when size == n.

    `mode="bicubic"` for space (align_corners=False, as timm), `"linear"` for time
    (align_corners=True, so a single tubelet, e.g. an image, takes the first time slot).
    """
    if table.shape[1] == size:
        return table
    x = table.float().transpose(1, 2)  # (1, D, n)
    if mode == "linear":
        x = F.interpolate(x, size=size, mode="linear", align_corners=True)
    else:
        x = F.interpolate(x[..., None], size=(size, 1), mode=mode, align_corners=False)[..., 0]
    return x.transpose(1, 2).to(table.dtype)


def factorised_position_embeddings(
    time: torch.Tensor, height: torch.Tensor, width: torch.Tensor, grid: tuple[int, int, int]
) -> torch.Tensor:
    """(1, T'*H'*W', D) sum of per-axis tables (each (1, n, D)) resized to `grid`, in (time, height, width) order."""
    grid_t, grid_h, grid_w = grid
    pos_t = resize_position_table(time, grid_t, "linear")
    pos_h = resize_position_table(height, grid_h, "bicubic")
    pos_w = resize_position_table(width, grid_w, "bicubic")
    return (pos_t[:, :, None, None] + pos_h[:, None, :, None] + pos_w[:, None, None, :]).flatten(1, 3)


def norms_and_biases(module: nn.Module) -> set[str]:
    """Names of `module`'s LayerNorm parameters and biases (relative to `module`), which never take weight decay."""
    names = {name for name, _ in module.named_parameters() if name.endswith(".bias")}
    for prefix, child in module.named_modules():
        if isinstance(child, nn.LayerNorm):
            names |= {f"{prefix}.{name}" for name, _ in child.named_parameters(recurse=False)}
    return names


class XrayVisualPatchEmbeddings(nn.Module):
    """Conv3d tubelet tokenizer; images use the time-summed kernel (identical to repeating the image)."""

    def __init__(self, config: XrayVisualConfig):
        super().__init__()
        self.num_channels = config.num_channels
        self.patch_size = config.patch_size
        self.tubelet_size = config.tubelet_size
        kernel = (config.tubelet_size, config.patch_size, config.patch_size)
        self.projection = nn.Conv3d(config.num_channels, config.hidden_size, kernel_size=kernel, stride=kernel)

    def check_input(self, pixel_values: torch.Tensor) -> None:
        """Raise a `ValueError` naming the problem for any input the tokenizer cannot take."""
        if not isinstance(pixel_values, torch.Tensor):
            raise TypeError(f"pixel_values must be a torch.Tensor, got {type(pixel_values).__name__}")
        if pixel_values.ndim not in (4, 5):
            raise ValueError(
                "pixel_values must be (batch, channels, height, width) for images or "
                f"(batch, frames, channels, height, width) for videos, got shape {tuple(pixel_values.shape)}"
            )
        if not pixel_values.is_floating_point():
            raise ValueError(f"pixel_values must be a floating point tensor, got {pixel_values.dtype}")
        channels = pixel_values.shape[-3]
        if channels != self.num_channels:
            raise ValueError(
                f"pixel_values has {channels} channels but the model expects {self.num_channels} "
                f"(shape {tuple(pixel_values.shape)}; videos are (batch, frames, channels, height, width))"
            )
        height, width = pixel_values.shape[-2:]
        if height % self.patch_size or width % self.patch_size:
            raise ValueError(
                f"image size {height}x{width} is not divisible by the patch size {self.patch_size}"
            )
        if pixel_values.ndim == 5 and pixel_values.shape[1] % self.tubelet_size:
            raise ValueError(
                f"video has {pixel_values.shape[1]} frames, not divisible by the tubelet size {self.tubelet_size}"
            )

    def forward(self, pixel_values: torch.Tensor) -> tuple[torch.Tensor, tuple[int, int, int]]:
        """Tokens (B, T'*H'*W', D) in (time, height, width) order, and the grid (T', H', W')."""
        self.check_input(pixel_values)
        weight, bias = self.projection.weight, self.projection.bias
        pixel_values = pixel_values.to(weight.dtype)
        if pixel_values.ndim == 4:
            x = F.conv2d(pixel_values, weight.sum(dim=2), bias, stride=self.patch_size)
            grid = (1, x.shape[2], x.shape[3])
        else:
            x = F.conv3d(pixel_values.transpose(1, 2), weight, bias, stride=self.projection.stride)
            grid = tuple(x.shape[2:])
        return x.flatten(2).transpose(1, 2), grid


class XrayVisualEmbeddings(nn.Module):
    """Patch tokens plus factorised position embeddings, CLS token and register tokens."""

    TOKENS = ("cls_token", "register_tokens", "position_embeddings_time", "position_embeddings_height",
              "position_embeddings_width")  # learned tokens and tables, not weights of a layer

    def __init__(self, config: XrayVisualConfig):
        super().__init__()
        grid_t, grid_h, grid_w = config.grid_size
        self.patch_embeddings = XrayVisualPatchEmbeddings(config)
        self.cls_token = nn.Parameter(torch.zeros(1, 1, config.hidden_size))
        self.register_tokens = nn.Parameter(torch.zeros(1, config.num_register_tokens, config.hidden_size))
        self.position_embeddings_time = nn.Parameter(torch.zeros(1, grid_t, config.hidden_size))
        self.position_embeddings_height = nn.Parameter(torch.zeros(1, grid_h, config.hidden_size))
        self.position_embeddings_width = nn.Parameter(torch.zeros(1, grid_w, config.hidden_size))

    def position_embeddings(self, grid: tuple[int, int, int]) -> torch.Tensor:
        """(1, T'*H'*W', D) position embeddings for a token grid, interpolated per axis."""
        return factorised_position_embeddings(
            self.position_embeddings_time, self.position_embeddings_height, self.position_embeddings_width, grid
        )

    def embed_patches(self, pixel_values: torch.Tensor) -> tuple[torch.Tensor, tuple[int, int, int]]:
        """Patch tokens with position embeddings (B, N, D), and the grid; no CLS or registers."""
        tokens, grid = self.patch_embeddings(pixel_values)
        return tokens + self.position_embeddings(grid).to(tokens.dtype), grid

    def add_prefix(self, tokens: torch.Tensor) -> torch.Tensor:
        """Prepend CLS and the registers: [CLS, registers, tokens]."""
        batch = tokens.shape[0]
        prefix = torch.cat([self.cls_token, self.register_tokens], dim=1).to(tokens.dtype)
        return torch.cat([prefix.expand(batch, -1, -1), tokens], dim=1)

    def forward(self, pixel_values: torch.Tensor) -> tuple[torch.Tensor, tuple[int, int, int]]:
        tokens, grid = self.embed_patches(pixel_values)
        return self.add_prefix(tokens), grid


class XrayVisualAttention(nn.Module):
    """Multi-head self-attention through `scaled_dot_product_attention`.

    For EViT it also returns the CLS attention row, computed as one `q_cls @ K^T` beside the fused
    kernel; for ToMe it returns the head-averaged keys as the similarity metric.
    """

    def __init__(self, config: XrayVisualConfig):
        super().__init__()
        self.num_heads = config.num_attention_heads
        self.head_dim = config.hidden_size // config.num_attention_heads
        self.scale = self.head_dim**-0.5
        self.qkv = nn.Linear(config.hidden_size, 3 * config.hidden_size, bias=config.qkv_bias)
        self.proj = nn.Linear(config.hidden_size, config.hidden_size)

    def forward(
        self,
        hidden_states: torch.Tensor,
        attn_bias: torch.Tensor | None = None,
        return_cls_attention: bool = False,
        return_metric: bool = False,
    ) -> tuple[torch.Tensor, torch.Tensor | None, torch.Tensor | None]:
        batch, length, width = hidden_states.shape
        qkv = self.qkv(hidden_states).reshape(batch, length, 3, self.num_heads, self.head_dim)
        query, key, value = qkv.permute(2, 0, 3, 1, 4).unbind(0)
        out = F.scaled_dot_product_attention(query, key, value, attn_mask=attn_bias)
        out = self.proj(out.transpose(1, 2).reshape(batch, length, width))

        cls_attention = None
        if return_cls_attention:
            logits = (query[:, :, :1].float() @ key.float().transpose(-2, -1)) * self.scale
            if attn_bias is not None:
                logits = logits + attn_bias.float()
            cls_attention = logits.softmax(dim=-1).mean(dim=1)[:, 0]  # (B, N)
        metric = key.mean(dim=1) if return_metric else None
        return out, cls_attention, metric


class XrayVisualMLP(nn.Module):
    def __init__(self, config: XrayVisualConfig):
        super().__init__()
        self.fc1 = nn.Linear(config.hidden_size, config.intermediate_size)
        self.act = ACT2FN[config.hidden_act]
        self.fc2 = nn.Linear(config.intermediate_size, config.hidden_size)

    def forward(self, hidden_states: torch.Tensor) -> torch.Tensor:
        return self.fc2(self.act(self.fc1(hidden_states)))


class XrayVisualDropPath(nn.Module):
    """Stochastic depth per sample, as `timm.layers.DropPath` (same draws, scaled by the keep probability); kept here
    so that loading a checkpoint (also as Hub remote code) needs no timm."""

    def __init__(self, drop_prob: float = 0.0):
        super().__init__()
        self.drop_prob = drop_prob

    def forward(self, hidden_states: torch.Tensor) -> torch.Tensor:
        if self.drop_prob == 0.0 or not self.training:
            return hidden_states
        keep_prob = 1.0 - self.drop_prob
        shape = (hidden_states.shape[0],) + (1,) * (hidden_states.ndim - 1)
        mask = hidden_states.new_empty(shape).bernoulli_(keep_prob)
        if keep_prob > 0.0:
            mask.div_(keep_prob)
        return hidden_states * mask

    def extra_repr(self) -> str:
        return f"drop_prob={round(self.drop_prob, 3):0.3f}"


class XrayVisualLayer(GradientCheckpointingLayer):
    """Pre-norm block; EViT and ToMe reduce tokens between the attention and the MLP."""

    def __init__(self, config: XrayVisualConfig, layer_idx: int, drop_path: float = 0.0):
        super().__init__()
        self.layer_idx = layer_idx
        self.keep_rate = config.keep_rate_for_layer(layer_idx)
        self.norm1 = nn.LayerNorm(config.hidden_size, eps=config.layer_norm_eps)
        self.attention = XrayVisualAttention(config)
        self.norm2 = nn.LayerNorm(config.hidden_size, eps=config.layer_norm_eps)
        self.mlp = XrayVisualMLP(config)
        self.drop_path = XrayVisualDropPath(drop_path) if drop_path > 0 else nn.Identity()

    def forward(
        self,
        hidden_states: torch.Tensor,
        sizes: torch.Tensor | None = None,
        num_prefix_tokens: int = 1,
        tome_r: int = 0,
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        prune = self.keep_rate < 1.0
        merge = tome_r > 0 and not prune  # EViT moves the tokens, so its layers do not also merge with ToMe
        out, cls_attention, metric = self.attention(
            self.norm1(hidden_states),
            attn_bias=size_bias(sizes, hidden_states.dtype),
            return_cls_attention=prune,
            return_metric=merge,
        )
        hidden_states = hidden_states + self.drop_path(out)
        if prune:
            cls_attention = cls_attention[:, num_prefix_tokens:]
            hidden_states, sizes = evit_reorganize(hidden_states, cls_attention, num_prefix_tokens, self.keep_rate, sizes)
        if merge:
            hidden_states, sizes = tome_merge(hidden_states, metric, num_prefix_tokens, tome_r, sizes)
        hidden_states = hidden_states + self.drop_path(self.mlp(self.norm2(hidden_states)))
        return hidden_states, sizes


class XrayVisualEncoder(nn.Module):
    def __init__(self, config: XrayVisualConfig):
        super().__init__()
        depth = config.num_hidden_layers  # stochastic depth rising linearly (plain Python: safe on the meta device)
        rates = [config.drop_path_rate * i / max(1, depth - 1) for i in range(depth)]
        self.layer = nn.ModuleList(
            [XrayVisualLayer(config, i, drop_path=rates[i]) for i in range(config.num_hidden_layers)]
        )

    def forward(
        self,
        hidden_states: torch.Tensor,
        num_prefix_tokens: int,
        tome_r: int = 0,
        output_hidden_states: bool = False,
    ) -> tuple[torch.Tensor, torch.Tensor | None, tuple[torch.Tensor, ...] | None]:
        all_hidden_states = (hidden_states,) if output_hidden_states else None
        # Sizes count ToMe merges only (EViT's fused token has size 1), so they are tracked while ToMe runs.
        sizes = hidden_states.new_ones(*hidden_states.shape[:2], 1, dtype=torch.float32) if tome_r > 0 else None
        for layer in self.layer:
            hidden_states, sizes = layer(hidden_states, sizes, num_prefix_tokens=num_prefix_tokens, tome_r=tome_r)
            if output_hidden_states:
                all_hidden_states = all_hidden_states + (hidden_states,)
        return hidden_states, sizes, all_hidden_states


class XrayVisualAttentionPooling(nn.Module):
    """Pool with one learned query attending over CLS and patch tokens (paper 4.8: optional)."""

    def __init__(self, config: XrayVisualConfig):
        super().__init__()
        self.num_heads = config.num_attention_heads
        self.query = nn.Parameter(torch.zeros(1, 1, config.hidden_size))
        self.kv = nn.Linear(config.hidden_size, 2 * config.hidden_size)
        self.proj = nn.Linear(config.hidden_size, config.hidden_size)

    def forward(self, hidden_states: torch.Tensor, attn_bias: torch.Tensor | None = None) -> torch.Tensor:
        batch, length, width = hidden_states.shape
        head_dim = width // self.num_heads
        kv = self.kv(hidden_states).reshape(batch, length, 2, self.num_heads, head_dim)
        key, value = kv.permute(2, 0, 3, 1, 4).unbind(0)
        query = self.query.to(hidden_states.dtype).expand(batch, -1, -1)
        query = query.reshape(batch, 1, self.num_heads, head_dim).transpose(1, 2)
        out = F.scaled_dot_product_attention(query, key, value, attn_mask=attn_bias)
        return self.proj(out.transpose(1, 2).reshape(batch, width))


class XrayVisualPreTrainedModel(XrayHubMixin, PreTrainedModel):
    config: XrayVisualConfig
    config_class = XrayVisualConfig
    base_model_prefix = "xray_visual"
    main_input_name = "pixel_values"
    input_modalities = ("image", "video")
    supports_gradient_checkpointing = True
    _no_split_modules = ["XrayVisualEmbeddings", "XrayVisualLayer"]
    _supports_sdpa = True

    @torch.no_grad()
    def _init_weights(self, module: nn.Module) -> None:
        std = self.config.initializer_range
        if isinstance(module, (nn.Linear, nn.Conv3d)):
            init.trunc_normal_(module.weight, mean=0.0, std=std)
            if module.bias is not None:
                init.zeros_(module.bias)
        elif isinstance(module, nn.LayerNorm):
            init.ones_(module.weight)
            init.zeros_(module.bias)
        elif isinstance(module, XrayVisualEmbeddings):
            for param in (module.cls_token, module.register_tokens, module.position_embeddings_time,
                          module.position_embeddings_height, module.position_embeddings_width):
                init.trunc_normal_(param, mean=0.0, std=std)
        elif isinstance(module, XrayVisualAttentionPooling):
            init.trunc_normal_(module.query, mean=0.0, std=std)


class XrayVisualModel(XrayVisualPreTrainedModel):
    """The XrayVisual encoder: `pixel_values` (B, C, H, W) images or (B, T, C, H, W) videos -> embeddings."""

    # loading the backbone out of any stage's checkpoint: the other parts of those models are expected extras (MAE
    # decoder; hashtag and classification heads; CLIP's text tower, projection, scale, SLIP head and denoiser; a
    # distillation student's projection)
    _keys_to_ignore_on_load_unexpected = [
        r"^decoder\.", r"^classifier\.", r"^head\.", r"^text_model\.", r"^visual_projection\.", r"^logit_scale$",
        r"^slip_head\.", r"^denoiser\.", r"^distill_projection\.",
    ]

    def __init__(self, config: XrayVisualConfig):
        super().__init__(config)
        self.embeddings = XrayVisualEmbeddings(config)
        self.encoder = XrayVisualEncoder(config)
        self.layernorm = nn.LayerNorm(config.hidden_size, eps=config.layer_norm_eps)
        self.attention_pooling = XrayVisualAttentionPooling(config) if config.pooling == "attention" else None
        self.post_init()

    def get_input_embeddings(self) -> nn.Module:
        return self.embeddings.patch_embeddings

    def no_weight_decay(self) -> set[str]:
        """Parameters that never take weight decay (timm's convention): the CLS and register tokens, the position
        tables, the attention-pooling query, norms and biases."""
        names = {f"embeddings.{name}" for name in XrayVisualEmbeddings.TOKENS}
        if self.attention_pooling is not None:
            names.add("attention_pooling.query")
        return names | norms_and_biases(self)

    def layer_id(self, name: str) -> int:
        """Depth of parameter `name` for layer-wise learning-rate decay: 0 for the embeddings, `i + 1` for encoder
        layer `i`, `num_hidden_layers + 1` after the encoder (final norm, pooling)."""
        if name.startswith("embeddings."):
            return 0
        if name.startswith("encoder.layer."):
            return int(name.split(".")[2]) + 1
        return self.config.num_hidden_layers + 1

    def active_tome_r(self) -> int:
        """ToMe r in effect now: the config's at inference, 0 in training unless `tome_in_training`."""
        return self.config.tome_r if (not self.training or self.config.tome_in_training) else 0

    def encode(
        self, hidden_states: torch.Tensor, output_hidden_states: bool = False, tome_r: int | None = None
    ) -> XrayVisualModelOutput:
        """Run the blocks, the final norm and pooling on a [CLS, registers, tokens] sequence.

        Stage models that build their own token sequence (MAE keeps only visible patches) call this.
        """
        num_prefix = self.config.num_prefix_tokens
        tome_r = self.active_tome_r() if tome_r is None else tome_r
        hidden_states, sizes, all_hidden_states = self.encoder(
            hidden_states, num_prefix, tome_r=tome_r, output_hidden_states=output_hidden_states
        )
        hidden_states = self.layernorm(hidden_states)
        patch_tokens = hidden_states[:, num_prefix:]
        patch_sizes = None if sizes is None else sizes[:, num_prefix:]
        if self.config.pooling == "cls":
            pooled = hidden_states[:, 0]
        elif self.config.pooling == "mean":
            if patch_sizes is None:
                pooled = patch_tokens.mean(dim=1)
            else:
                weights = patch_sizes.to(patch_tokens.dtype)
                pooled = (patch_tokens * weights).sum(dim=1) / weights.sum(dim=1)
        else:
            keep = torch.cat([hidden_states[:, :1], patch_tokens], dim=1)
            bias = None if sizes is None else size_bias(torch.cat([sizes[:, :1], patch_sizes], dim=1), keep.dtype)
            pooled = self.attention_pooling(keep, bias)
        return XrayVisualModelOutput(
            last_hidden_state=torch.cat([hidden_states[:, :1], patch_tokens], dim=1),
            pooler_output=pooled,
            register_tokens=hidden_states[:, 1:num_prefix] if num_prefix > 1 else None,
            token_sizes=None if patch_sizes is None else patch_sizes[..., 0],
            hidden_states=all_hidden_states,
        )

    def forward(
        self,
        pixel_values: torch.Tensor,
        output_hidden_states: bool | None = None,
        return_dict: bool | None = None,
        **kwargs,
    ) -> XrayVisualModelOutput | tuple:
        r"""
        pixel_values (`torch.FloatTensor`):
            Images `(batch, channels, height, width)` or videos `(batch, frames, channels, height, width)`;
            height and width divisible by `patch_size`, frames by `tubelet_size`.
        """
        if pixel_values is None:
            raise ValueError("pixel_values is required")
        output_hidden_states = (
            output_hidden_states if output_hidden_states is not None else self.config.output_hidden_states
        )
        return_dict = return_dict if return_dict is not None else self.config.return_dict
        hidden_states, _ = self.embeddings(pixel_values)
        outputs = self.encode(hidden_states, output_hidden_states=output_hidden_states)
        return outputs if return_dict else outputs.to_tuple()


__all__ = [
    "XrayVisualPreTrainedModel", "XrayVisualModel", "resize_position_table", "factorised_position_embeddings",
    "norms_and_biases",
]
