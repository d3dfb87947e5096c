"""Stage 3: the XrayVisual backbone and a text tower aligned CLIP-style (paper 4.2.3), with the SLIP projection head
(4.2.4) and the denoiser (4.2.5) the training objectives need.

`XrayCLIPModel` follows transformers' `CLIPModel`: `get_image_features` / `get_video_features` /
`get_text_features` return the tower's output with the projected, unnormalised fp32 embedding in `pooler_output`,
and `forward` returns `XrayCLIPOutput` (normalised embeddings, `logits_per_image`, `logits_per_text`). As in
open_clip, the model computes features and the losses live in `xray_hf.losses`; `forward(return_loss=True)`
applies them on the local batch (the trainer applies the distributed versions). The backbone sits at
`xray_visual`, so `XrayVisualModel.from_pretrained(clip_dir)` loads the vision tower of a CLIP checkpoint.
"""

from __future__ import annotations

import os
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn
from transformers import AutoModel, PreTrainedModel
from transformers import initialization as init

from ..configuration.clip import LOGIT_SCALE_MAX, XrayCLIPConfig
from ..configuration.visual import XrayVisualConfig
from .compression import (
    XrayCompressionMixin,
    XrayEmbeddingCompression,
    init_compression_weights,
)
from ..hub_mixin import XrayHubMixin
from .llm2clip import XrayLLM2CLIPTextModel
from .outputs import XrayCLIPOutput, XrayVisualModelOutput
from .text import XrayTextModel, XrayTextModelOutput
from .visual import XrayVisualModel


class XrayCLIPDenoiser(nn.Module):
    """Denoising head (paper 4.2.5): an MLP down to `denoise_ratio` x the width, zero-mean Gaussian noise on the
    (layer-normalised, so the noise level means the same throughout training) bottleneck, an MLP back up."""

    def __init__(self, config: XrayCLIPConfig):
        super().__init__()
        width, bottleneck = config.vision_config.hidden_size, config.denoise_hidden_size
        self.noise_std = config.denoise_noise_std
        self.down = nn.Sequential(nn.Linear(width, width), nn.GELU(), nn.Linear(width, bottleneck))
        self.norm = nn.LayerNorm(bottleneck, elementwise_affine=False)
        self.up = nn.Sequential(nn.Linear(bottleneck, width), nn.GELU(), nn.Linear(width, width))

    def forward(self, embedding: torch.Tensor, noise: torch.Tensor | None = None) -> torch.Tensor:
        """Reconstruct `embedding` (B, D) from its noisy bottleneck; `noise` (B, bottleneck) defaults to a draw."""
        code = self.norm(self.down(embedding))
        if noise is None:
            noise = torch.randn_like(code)
        return self.up(code + self.noise_std * noise.to(code.dtype))


class XrayCLIPSLIPHead(nn.Module):
    """SLIP's projection MLP (3 layers, as SLIP) from the backbone's pooled output to the SimCLR space."""

    def __init__(self, config: XrayCLIPConfig):
        super().__init__()
        width, hidden = config.vision_config.hidden_size, config.slip_hidden_size
        self.mlp = nn.Sequential(
            nn.Linear(width, hidden), nn.LayerNorm(hidden), nn.GELU(),
            nn.Linear(hidden, hidden), nn.LayerNorm(hidden), nn.GELU(),
            nn.Linear(hidden, config.slip_projection_dim),
        )

    def forward(self, pooled: torch.Tensor) -> torch.Tensor:
        return self.mlp(pooled)


class XrayCLIPPreTrainedModel(XrayHubMixin, PreTrainedModel):
    config: XrayCLIPConfig
    config_class = XrayCLIPConfig
    base_model_prefix = "xray_clip"
    main_input_name = "pixel_values"
    input_modalities = ("image", "video", "text")
    supports_gradient_checkpointing = True
    _no_split_modules = ["XrayVisualEmbeddings", "XrayVisualLayer"]
    _supports_sdpa = True
    # calibrated int8 ranges are bucket boundaries: loaded in bf16 they would move (compressed embeddings, 6.4)
    _keep_in_fp32_modules_strict = ["embedding_compression"]

    @torch.no_grad()
    def _init_weights(self, module: nn.Module) -> None:
        std = self.config.initializer_range
        if isinstance(module, nn.Linear):
            init.trunc_normal_(module.weight, mean=0.0, std=std)
            if module.bias is not None:
                init.zeros_(module.bias)
        elif isinstance(module, nn.LayerNorm) and module.weight is not None:
            init.ones_(module.weight)
            init.zeros_(module.bias)
        if isinstance(module, XrayEmbeddingCompression):
            init_compression_weights(module)
        if isinstance(module, XrayCLIPModel):
            init.normal_(module.visual_projection.weight, std=module.config.vision_config.hidden_size**-0.5)
            init.constant_(module.logit_scale, module.config.logit_scale_init_value)


TEXT_TOWERS: dict[str, type[PreTrainedModel]] = {
    tower.config_class.model_type: tower for tower in (XrayTextModel, XrayLLM2CLIPTextModel)
}


def _text_tower(config: Any) -> PreTrainedModel:
    """The text tower for `config` by its `model_type`, taken from this package rather than from the Auto registry,
    so that the model also builds as Hub remote code (where `xray_hf` registered nothing); other types via AutoModel."""
    tower = TEXT_TOWERS.get(config.model_type)
    return tower._from_config(config) if tower is not None else AutoModel.from_config(config)


class XrayCLIPModel(XrayCompressionMixin, XrayCLIPPreTrainedModel):
    """
    The XrayVisual backbone (`xray_visual`) and a text tower (`text_model`: `XrayLLM2CLIPTextModel` or
    `XrayTextModel`, by `config.text_config.model_type`), projected into one space of `config.projection_dim`.

    Also holds what stage-3 training needs beside the two towers: `logit_scale` (a 0-d parameter, exponentiated in
    the logits), the SLIP projection head (`slip_head`, when `config.slip_weight > 0`) and the denoiser (`denoiser`,
    when `config.lambda_den > 0`). Inference uses only the towers and the projections.

    With `config.compression_config`, `embedding_compression` holds the compressed embeddings (paper 6.3-6.4):
    `get_image_features(pixel_values, compression="projection" | "int8" | "binary", compressed_dim=None)` (and the
    video and text variants) return them in `pooler_output`; see `xray_hf.modeling.compression`.
    """

    def __init__(self, config: XrayCLIPConfig):
        super().__init__(config)
        self.xray_visual = XrayVisualModel(config.vision_config)
        self.text_model = _text_tower(config.text_config)
        config.text_config = self.text_model.config  # one object: settings cannot drift apart
        self.visual_projection = nn.Linear(config.vision_config.hidden_size, config.projection_dim, bias=False)
        self.logit_scale = nn.Parameter(torch.tensor(float(config.logit_scale_init_value)))
        self.slip_head = XrayCLIPSLIPHead(config) if config.slip_weight > 0 else None
        self.denoiser = XrayCLIPDenoiser(config) if config.lambda_den > 0 else None
        self._build_embedding_compression()
        self._no_split_modules = list(dict.fromkeys(
            self._no_split_modules + list(getattr(self.text_model, "_no_split_modules", None) or [])
        ))
        self.post_init()
        self._freeze_text_llm()

    # ----------------------------------------------------------------------------------------- loading, training
    def _freeze_text_llm(self) -> None:
        """Keep a frozen LLM frozen (loading materialises fresh, trainable parameters)."""
        freeze = getattr(self.text_model, "freeze_llm", None)
        if freeze is not None and getattr(self.config.text_config, "freeze_llm", False):
            freeze(True)

    def _drop_absent_lm_head(self, source: str) -> None:
        """The text tower's untied LLM has no head in `source`: keep none (as the tower does), never a random one."""
        if getattr(self.text_model, "lm_head", None) is not None:
            self.text_model._lm_head_missing(source)

    @classmethod
    def from_pretrained(cls, pretrained_model_name_or_path, *args: Any, output_loading_info: bool = False, **kwargs):
        model, info = super().from_pretrained(pretrained_model_name_or_path, *args, output_loading_info=True, **kwargs)
        head = "text_model.lm_head.weight"
        if head in info["missing_keys"]:
            model._drop_absent_lm_head(str(pretrained_model_name_or_path))
            info["missing_keys"] = {key for key in info["missing_keys"] if key != head}
        model._freeze_text_llm()
        return (model, info) if output_loading_info else model

    @classmethod
    def from_stages(
        cls,
        vision: str | os.PathLike | XrayVisualModel,
        text: str | os.PathLike | PreTrainedModel,
        freeze_llm: bool | None = None,
        **config_kwargs: Any,
    ) -> "XrayCLIPModel":
        """Start stage 3 from the previous stages: the backbone of a hashtag (or MAE, or backbone) checkpoint, its
        head dropped and nothing else missing, and a trained text tower (`XrayLLM2CLIPTextModel`, whose frozen text
        model stays as its config's `freeze_llm` says unless `freeze_llm` is given, or `XrayTextModel`). The visual projection, logit scale, SLIP head and
        denoiser are new. `config_kwargs` go to [`XrayCLIPConfig`]; `projection_dim` is the text tower's."""
        if isinstance(vision, XrayVisualModel):
            backbone = vision
        else:
            backbone, info = XrayVisualModel.from_pretrained(vision, output_loading_info=True)
            if info["missing_keys"]:
                raise ValueError(
                    f"{vision} does not hold a complete XrayVisual backbone: missing {sorted(info['missing_keys'])[:8]}"
                )
        tower = text if isinstance(text, PreTrainedModel) else AutoModel.from_pretrained(text)
        if hasattr(tower, "freeze_llm") and freeze_llm is not None:
            tower.freeze_llm(freeze_llm)  # recorded in its config, which the CLIP config takes over
        vision_config = XrayVisualConfig.from_dict(
            {k: v for k, v in backbone.config.to_dict().items() if k not in ("id2label", "label2id", "problem_type")}
        )
        config_kwargs.setdefault("projection_dim", tower.config.projection_dim)
        config = XrayCLIPConfig(vision_config=vision_config, text_config=tower.config, **config_kwargs)
        model = cls(config)
        if getattr(tower, "lm_head", None) is None:
            model._drop_absent_lm_head(str(text))
        model.xray_visual.load_state_dict(backbone.state_dict())
        model.text_model.load_state_dict(tower.state_dict())
        model._freeze_text_llm()
        return model

    def save_pretrained(self, save_directory: str | os.PathLike, *args: Any, **kwargs: Any) -> Any:
        """`PreTrainedModel.save_pretrained`, plus the sentence-transformers files (`modules.json`,
        `sentence_bert_config.json`) that let `SentenceTransformer(save_directory)` load the checkpoint."""
        from .st_files import write_sentence_transformers_files

        result = super().save_pretrained(save_directory, *args, **kwargs)
        if os.path.isdir(save_directory) and kwargs.get("is_main_process", True):
            write_sentence_transformers_files(save_directory, self.config)
        return result

    def no_weight_decay(self) -> set[str]:
        """Parameters that never take weight decay: the logit scale (besides biases, norms and tokens)."""
        return {"logit_scale"}

    def clamp_logit_scale(self, max_value: float = LOGIT_SCALE_MAX) -> None:
        """Clamp `logit_scale` to [0, log 100] in place (after each optimizer step, as CLIP and open_clip do)."""
        with torch.no_grad():
            self.logit_scale.clamp_(0, max_value)

    # ------------------------------------------------------------------------------------------------- features
    def _encode_visual(self, pixel_values: torch.Tensor, **kwargs: Any) -> tuple[XrayVisualModelOutput, torch.Tensor]:
        outputs = self.xray_visual(pixel_values=pixel_values, return_dict=True, **kwargs)
        pooled = outputs.pooler_output
        projected = self.visual_projection(pooled.to(self.visual_projection.weight.dtype)).float()
        return outputs, projected

    def get_image_features(
        self, pixel_values: torch.Tensor, compression: str | None = None, compressed_dim: int | None = None,
        **kwargs: Any,
    ) -> XrayVisualModelOutput:
        """Images `(B, C, H, W)` (or videos `(B, T, C, H, W)`) -> the backbone's output with the projected,
        unnormalised fp32 embedding `(B, projection_dim)` in `pooler_output`; with `compression`, the compressed
        embedding instead (`"projection"`: unit-norm `(B, compressed_dim)`, `"int8"`: int8 codes, `"binary"`:
        packed uint8 bits)."""
        outputs, projected = self._encode_visual(pixel_values, **kwargs)
        outputs.pooler_output = projected
        return self._compressed_output(outputs, compression, compressed_dim)

    def get_video_features(
        self, pixel_values: torch.Tensor, compression: str | None = None, compressed_dim: int | None = None,
        **kwargs: Any,
    ) -> XrayVisualModelOutput:
        """Videos `(B, T, C, H, W)` -> as `get_image_features`."""
        if not isinstance(pixel_values, torch.Tensor) or pixel_values.ndim != 5:
            shape = tuple(pixel_values.shape) if isinstance(pixel_values, torch.Tensor) else type(pixel_values)
            raise ValueError(f"videos must be (batch, frames, channels, height, width), got {shape}")
        return self.get_image_features(pixel_values, compression, compressed_dim, **kwargs)

    def get_text_features(
        self,
        input_ids: torch.LongTensor | None = None,
        attention_mask: torch.Tensor | None = None,
        llm_pooled_output: torch.Tensor | None = None,
        compression: str | None = None,
        compressed_dim: int | None = None,
        **kwargs: Any,
    ) -> XrayTextModelOutput:
        """Tokens (or, for the LLM2CLIP tower, cached pooled LLM outputs) -> the tower's output with the projected,
        unnormalised fp32 embedding `(B, projection_dim)` in `pooler_output` (compressed with `compression`, as
        `get_image_features`)."""
        outputs = self._text_outputs(input_ids, attention_mask, llm_pooled_output)
        outputs.pooler_output = outputs.text_embeds
        return self._compressed_output(outputs, compression, compressed_dim)

    def _text_outputs(self, input_ids, attention_mask, llm_pooled_output) -> XrayTextModelOutput:
        if llm_pooled_output is not None:
            if not hasattr(self.text_model, "get_llm_pooled_output"):
                raise ValueError(f"llm_pooled_output needs the LLM2CLIP text tower, not {type(self.text_model).__name__}")
            return self.text_model(llm_pooled_output=llm_pooled_output, return_dict=True)
        if input_ids is None:
            raise ValueError("text needs input_ids (with attention_mask) or llm_pooled_output")
        return self.text_model(input_ids=input_ids, attention_mask=attention_mask, return_dict=True)

    # -------------------------------------------------------------------------------------------------- forward
    def forward(
        self,
        input_ids: torch.LongTensor | None = None,
        attention_mask: torch.Tensor | None = None,
        pixel_values: torch.Tensor | None = None,
        llm_pooled_output: torch.Tensor | None = None,
        hashtag_input_ids: torch.LongTensor | None = None,
        hashtag_attention_mask: torch.Tensor | None = None,
        hashtag_llm_pooled_output: torch.Tensor | None = None,
        hashtag_mask: torch.Tensor | None = None,
        simclr_view_1: torch.Tensor | None = None,
        simclr_view_2: torch.Tensor | None = None,
        return_loss: bool | None = None,
        output_hidden_states: bool | None = None,
        return_dict: bool | None = None,
        **kwargs: Any,
    ) -> XrayCLIPOutput | tuple:
        r"""
        input_ids, attention_mask (`torch.LongTensor` of shape `(batch, sequence)`, *optional*):
            Caption tokens; or `llm_pooled_output` `(batch, llm_hidden_size)`, cached pooled LLM outputs.
        pixel_values (`torch.FloatTensor`, *optional*):
            Images `(batch, C, H, W)` or videos `(batch, T, C, H, W)`.
        hashtag_input_ids, hashtag_attention_mask, hashtag_llm_pooled_output (*optional*):
            The aggregated hashtags of each item as text: the second caption of the siamese loss (paper 4.7.1);
            `hashtag_mask` `(batch,)` marks the items that have hashtags.
        simclr_view_1, simclr_view_2 (`torch.FloatTensor` of shape `(batch, C, H, W)`, *optional*):
            Two augmented views of each item (two frames of a clip for videos), for SLIP.
        return_loss (`bool`, *optional*):
            Compute every loss term on this (local) batch: contrastive, hashtag (siamese), SLIP, denoising.
        """
        if kwargs:
            raise TypeError(f"XrayCLIPModel.forward got unexpected arguments {sorted(kwargs)}")
        return_dict = return_dict if return_dict is not None else self.config.return_dict
        image_embeds = text_embeds = vision_outputs = text_outputs = None
        out: dict[str, Any] = {}
        if pixel_values is not None:
            vision_outputs, projected = self._encode_visual(pixel_values, output_hidden_states=output_hidden_states)
            image_embeds = F.normalize(projected, dim=-1)
            if self.denoiser is not None and (return_loss or self.training):
                target = vision_outputs.pooler_output.float()
                out["denoise_target"] = target
                out["denoised_embeds"] = self.denoiser(target.to(self.visual_projection.weight.dtype)).float()
        if input_ids is not None or llm_pooled_output is not None:
            text_outputs = self._text_outputs(input_ids, attention_mask, llm_pooled_output)
            text_embeds = F.normalize(text_outputs.text_embeds.float(), dim=-1)
        if hashtag_input_ids is not None or hashtag_llm_pooled_output is not None:
            hashtags = self._text_outputs(hashtag_input_ids, hashtag_attention_mask, hashtag_llm_pooled_output)
            out["hashtag_embeds"] = F.normalize(hashtags.text_embeds.float(), dim=-1)
            out["hashtag_mask"] = hashtag_mask
        if (simclr_view_1 is None) != (simclr_view_2 is None):
            raise ValueError("SLIP needs both simclr_view_1 and simclr_view_2")
        if simclr_view_1 is not None:
            if self.slip_head is None:
                raise ValueError("SimCLR views were given but the model has no SLIP head (config.slip_weight is 0)")
            views = self.xray_visual(pixel_values=torch.cat([simclr_view_1, simclr_view_2]), return_dict=True)
            first, second = self.slip_head(views.pooler_output).float().chunk(2)
            out["slip_embeds_1"], out["slip_embeds_2"] = first, second

        logit_scale = self.logit_scale.float().exp()
        logits_per_image = logits_per_text = None
        if image_embeds is not None and text_embeds is not None:
            with torch.autocast(image_embeds.device.type, enabled=False):  # logits in fp32, also under bf16 autocast
                logits_per_text = logit_scale * text_embeds @ image_embeds.T
            logits_per_image = logits_per_text.T

        losses: dict[str, torch.Tensor] = {}
        if return_loss:
            if image_embeds is None or text_embeds is None:
                raise ValueError("return_loss needs both pixel_values and text (input_ids or llm_pooled_output)")
            losses = self.loss_terms(image_embeds=image_embeds, text_embeds=text_embeds, logit_scale=logit_scale, **out)
        output = XrayCLIPOutput(
            loss=losses.get("loss"),
            logits_per_image=logits_per_image,
            logits_per_text=logits_per_text,
            text_embeds=text_embeds,
            image_embeds=image_embeds,
            text_model_output=text_outputs,
            vision_model_output=vision_outputs,
            logit_scale=logit_scale,
            contrastive_loss=losses.get("contrastive_loss"),
            hashtag_loss=losses.get("hashtag_loss"),
            slip_loss=losses.get("slip_loss"),
            denoise_loss=losses.get("denoise_loss"),
            hashtag_embeds=out.get("hashtag_embeds"),
            hashtag_mask=out.get("hashtag_mask"),
            slip_embeds_1=out.get("slip_embeds_1"),
            slip_embeds_2=out.get("slip_embeds_2"),
            denoised_embeds=out.get("denoised_embeds"),
            denoise_target=out.get("denoise_target"),
        )
        return output if return_dict else output.to_tuple()

    def loss_terms(self, loss_fn: nn.Module | None = None, **features: Any) -> dict[str, torch.Tensor]:
        """The stage's loss terms (and their weighted sum, `loss`) from `forward`'s feature fields; `loss_fn`
        defaults to the local-batch `CLIPStageLoss` configured from `self.config`."""
        from ..losses import CLIPStageLoss

        loss_fn = loss_fn or CLIPStageLoss.from_config(self.config, world_size=1, rank=0)
        return loss_fn(**features, output_dict=True)


__all__ = ["XrayCLIPModel", "XrayCLIPPreTrainedModel", "XrayCLIPDenoiser", "XrayCLIPSLIPHead"]
