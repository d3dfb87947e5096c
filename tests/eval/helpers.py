"""Helpers of the evaluation tests: a tiny transformers `CLIPModel` with a word-level tokenizer and a
`CLIPImageProcessor`, and a one-hot stub model whose answers are known."""

from __future__ import annotations

import torch
from torch import nn
from transformers.modeling_outputs import BaseModelOutputWithPooling

DIGIT_WORDS = ("zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine")
WORDS = (
    "a an the photo of bad large small itap origami in video game art clip showing footage handwritten digit "
    "moving left right up down circle square triangle red green blue yellow white orange " + " ".join(DIGIT_WORDS)
).split() + [str(d) for d in range(10)]
EOS_ID = 3  # CLIPTextTransformer pools at the first eos_token_id (any id but the legacy 2)


def make_tokenizer(max_length: int = 16):
    """A lower-casing word-level tokenizer ending every text with [EOS], padded with [PAD]."""
    from tokenizers import Tokenizer, models, normalizers, pre_tokenizers, processors
    from transformers import PreTrainedTokenizerFast

    vocab = {"[PAD]": 0, "[UNK]": 1, "[BOS]": 2, "[EOS]": EOS_ID}
    for word in WORDS:
        vocab.setdefault(word, len(vocab))
    backend = Tokenizer(models.WordLevel(vocab, unk_token="[UNK]"))
    backend.normalizer = normalizers.Lowercase()
    backend.pre_tokenizer = pre_tokenizers.Whitespace()
    backend.post_processor = processors.TemplateProcessing(single="$A [EOS]", special_tokens=[("[EOS]", EOS_ID)])
    return PreTrainedTokenizerFast(
        tokenizer_object=backend, pad_token="[PAD]", unk_token="[UNK]", eos_token="[EOS]", bos_token="[BOS]",
        model_max_length=max_length,
    )


def make_clip(seed: int = 0, projection_dim: int = 16):
    from transformers import CLIPConfig, CLIPModel

    tokenizer = make_tokenizer()
    config = CLIPConfig(
        text_config=dict(hidden_size=32, intermediate_size=64, num_hidden_layers=1, num_attention_heads=2,
                         vocab_size=len(tokenizer), max_position_embeddings=16, eos_token_id=EOS_ID,
                         bos_token_id=2, pad_token_id=0),
        vision_config=dict(image_size=32, patch_size=8, hidden_size=32, intermediate_size=64, num_hidden_layers=1,
                           num_attention_heads=2),
        projection_dim=projection_dim,
    )
    torch.manual_seed(seed)
    return CLIPModel(config).eval(), tokenizer


def make_image_processor():
    from transformers import CLIPImageProcessor

    return CLIPImageProcessor(size={"shortest_edge": 32}, crop_size={"height": 32, "width": 32})


class OneHotCLIP(nn.Module):
    """A model with known answers: an image's embedding is the first row of its first channel (one-hot class
    images give one-hot embeddings); a clip's is the mean over frames (via get_video_features); the pooled
    backbone feature is the whole first channel flattened."""

    def __init__(self):
        super().__init__()
        self.dummy = nn.Parameter(torch.zeros(()))
        self.video_calls = 0

    def get_image_features(self, pixel_values):
        if pixel_values.ndim != 4:
            raise ValueError("images only")
        return BaseModelOutputWithPooling(pooler_output=pixel_values[:, 0, 0, :] + self.dummy)

    def get_video_features(self, pixel_values):
        self.video_calls += 1
        return BaseModelOutputWithPooling(pooler_output=pixel_values[:, :, 0, 0, :].mean(1) + self.dummy)


def one_hot_images(labels, size: int = 16, frames: int | None = None) -> torch.Tensor:
    """Images (N, 3, size, size), or clips (N, T, 3, size, size), carrying their label one-hot in row 0."""
    labels = torch.as_tensor(labels)
    images = torch.zeros(len(labels), 3, size, size)
    images[torch.arange(len(labels)), 0, 0, labels] = 1.0
    if frames is not None:
        images = images[:, None].repeat(1, frames, 1, 1, 1)
    return images


def one_hot_text_encoder(classnames, size: int = 16):
    """encode_text for OneHotCLIP: a text mentioning class name i embeds as one-hot i (longest name first)."""
    order = sorted(range(len(classnames)), key=lambda i: -len(classnames[i]))

    def encode(texts):
        out = torch.zeros(len(texts), size)
        for row, text in enumerate(texts):
            index = next(i for i in order if classnames[i] in text)
            out[row, index] = 1.0
        return out

    return encode
