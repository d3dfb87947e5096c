"""Tiny random-init checkpoints for the Hub tests (shapes as tests/modeling/test_clip.py and tests/processing)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from PIL import Image

from xray_hf import (
    XrayCLIPConfig,
    XrayCLIPModel,
    XrayCLIPProcessor,
    XrayLLM2CLIPTextConfig,
    XrayTextConfig,
    XrayVisualConfig,
    XrayVisualForPreTraining,
    XrayVisualImageProcessor,
    XrayVisualVideoProcessor,
)
from xray_hf.convert import smollm2_tokenizer

CAPTIONS = ["an astronaut in a white suit", "a red heart", "a cat on a mat"]


def mae_checkpoint(directory: Path, seed: int = 0) -> XrayVisualForPreTraining:
    """A stage-1 (MAE) checkpoint with its image processor, as `xray-hf train mae` writes one."""
    torch.manual_seed(seed)
    config = XrayVisualConfig.from_preset("tiny", decoder_hidden_size=32, decoder_num_hidden_layers=1,
                                         decoder_num_attention_heads=4, decoder_intermediate_size=64)
    model = XrayVisualForPreTraining(config).eval()
    model.save_pretrained(directory)
    XrayVisualImageProcessor(size=32).save_pretrained(directory)
    return model


def clip_checkpoint(directory: Path, seed: int = 0) -> tuple[XrayCLIPModel, XrayCLIPProcessor]:
    """A CLIP checkpoint with the plain text tower and the processor (SmolLM2's tokenizer)."""
    tokenizer = smollm2_tokenizer()
    text = XrayTextConfig.from_preset("tiny", vocab_size=len(tokenizer), projection_dim=16, max_position_embeddings=32)
    config = XrayCLIPConfig(vision_config=XrayVisualConfig.from_preset("tiny"), text_config=text, projection_dim=16,
                            slip_hidden_size=32, slip_projection_dim=8)
    torch.manual_seed(seed)
    model = XrayCLIPModel(config).eval()
    model.save_pretrained(directory)
    processor = XrayCLIPProcessor.for_model(config, XrayVisualImageProcessor(size=32),
                                            XrayVisualVideoProcessor(size=32, num_frames=4), tokenizer)
    processor.save_pretrained(directory)
    return model, processor


def llm2clip_checkpoint(directory: Path, seed: int = 0) -> tuple[XrayCLIPModel, XrayCLIPProcessor]:
    """A CLIP checkpoint with the LLM2CLIP text tower (a tiny bidirectional LLaMA, frozen, SmolLM2's tokenizer) and
    its processor, as `xray-hf train clip` with `text.from_llm` writes one (shapes as tests/processing/test_clip.py).
    The LLM carries a merged LLM2Vec LoRA (non-zero LoRA weights, merged as `trainers.llm2vec.merge_lora` does), as
    after the MNTP / SimCSE stages: loading the checkpoint must not need peft."""
    tokenizer = smollm2_tokenizer()
    llm = {"model_type": "llama", "vocab_size": len(tokenizer), "hidden_size": 32, "intermediate_size": 64,
           "num_hidden_layers": 2, "num_attention_heads": 4, "num_key_value_heads": 2, "head_dim": 8,
           "max_position_embeddings": 64, "tie_word_embeddings": True}
    text = XrayLLM2CLIPTextConfig(llm_config=llm, projection_dim=16, adapter_depth=1, max_text_length=24)
    config = XrayCLIPConfig(vision_config=XrayVisualConfig.from_preset("tiny"), text_config=text, projection_dim=16)
    torch.manual_seed(seed)
    model = XrayCLIPModel(config).eval()
    _merge_random_lora(model.text_model)
    model.save_pretrained(directory)
    processor = XrayCLIPProcessor.for_model(config, XrayVisualImageProcessor(size=32),
                                            XrayVisualVideoProcessor(size=32, num_frames=4), tokenizer)
    processor.save_pretrained(directory)
    return model, processor


def embedder_clip_checkpoint(directory: Path, seed: int = 0) -> tuple[XrayCLIPModel, XrayCLIPProcessor]:
    """A CLIP checkpoint whose LLM2CLIP tower freezes a sentence encoder (a tiny BERT with MiniLM's WordPiece
    tokenizer, mean pooled and normalised, as `from_llm: minilm` builds one) and its processor."""
    from transformers import AutoTokenizer

    from xray_hf.convert import minilm_folder

    tokenizer = AutoTokenizer.from_pretrained(minilm_folder())
    bert = {"model_type": "bert", "vocab_size": len(tokenizer), "hidden_size": 32, "intermediate_size": 64,
            "num_hidden_layers": 2, "num_attention_heads": 4, "max_position_embeddings": 64}
    text = XrayLLM2CLIPTextConfig(llm_config=bert, projection_dim=16, adapter_depth=1, max_text_length=24,
                                  normalize_pooled=True)
    config = XrayCLIPConfig(vision_config=XrayVisualConfig.from_preset("tiny"), text_config=text, projection_dim=16)
    torch.manual_seed(seed)
    model = XrayCLIPModel(config).eval()
    model.save_pretrained(directory)
    processor = XrayCLIPProcessor.for_model(config, XrayVisualImageProcessor(size=32),
                                            XrayVisualVideoProcessor(size=32, num_frames=4), tokenizer)
    processor.save_pretrained(directory)
    return model, processor


def _merge_random_lora(text_model) -> None:
    """Fold a LoRA adapter with random (non-zero) weights into `text_model`'s LLM, in place, with peft's
    `merge_and_unload` on LLM2Vec's target modules (what `trainers.llm2vec.merge_lora` does)."""
    import copy

    from peft import LoraConfig, get_peft_model

    targets = r"llm\.layers\.\d+\.(self_attn\.(q|k|v|o)_proj|mlp\.(gate|up|down)_proj)"  # llm2vec.LORA_TARGET_MODULES
    peft_model = get_peft_model(copy.deepcopy(text_model), LoraConfig(r=2, lora_alpha=4, target_modules=targets))
    with torch.no_grad():
        for name, param in peft_model.named_parameters():
            if "lora_" in name:
                param.normal_(0.0, 0.2)
    merged = peft_model.merge_and_unload()
    before = text_model.llm.layers[0].self_attn.q_proj.weight.clone()
    text_model.load_state_dict(merged.state_dict())
    assert not torch.equal(text_model.llm.layers[0].self_attn.q_proj.weight, before)  # the LoRA changed the LLM
    text_model.freeze_llm(text_model.config.freeze_llm)


def images(count: int = 2, seed: int = 0) -> list[Image.Image]:
    rng = np.random.default_rng(seed)
    return [Image.fromarray(rng.integers(0, 256, (40 + 8 * i, 48, 3), dtype=np.uint8)) for i in range(count)]


def add_training_state(directory: Path) -> list[str]:
    """What a training run leaves beside the weights and a push must not upload; returns the paths."""
    junk = ["checkpoint-2/model.safetensors", "checkpoint-2/optimizer.pt", "optimizer.pt", "scheduler.pt",
            "training_args.bin", "training_args.json", "trainer_state.json", "runs/events.out.tfevents.1.host",
            "text_cache/data.arrow", "rng_state.pth"]
    for relative in junk:
        (directory / relative).parent.mkdir(parents=True, exist_ok=True)
        (directory / relative).write_bytes(b"training state")
    return junk
