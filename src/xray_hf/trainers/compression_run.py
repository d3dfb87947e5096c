"""The `compress` entry of the stage table: train a CLIP checkpoint's compressed embeddings (paper 6.3-6.4) on its
own frozen embeddings, from a run config (see `compression.py` for the method).

```yaml
stage: compress
model:
  from_pretrained: runs/tiny/clip           # a CLIP checkpoint (with its processor and tokenizer)
  compression: {compressed_dim: 100, matryoshka_dims: [64, 32]}   # XrayCompressionConfig
texts: {column: caption}                    # captions of the training items; or {templates: ["a photo of a {}"]}
data:
  image: {name: openmoji, split: train}     # embedded with the checkpoint's own processor
  eval: {name: openmoji, split: validation} # retention: retrieval (captions) and zero-shot (labels)
training: {output_dir: runs/tiny/compress, optimizer: adamw, learning_rate: 1.0e-3, max_steps: 300,
           per_device_train_batch_size: 256}
```
"""

from __future__ import annotations

import os
from typing import Any

import torch

from ..checkpoint import Checkpoint, load_checkpoint
from ..data.inputs import eval_set_name
from ..eval.compression import compression_retention
from ..run_config.data import SourceSpec
from ..run_config.extras import TextsSpec
from ..run_config.model import CompressModelSpec
from .compression import CompressionTrainer, EmbeddingDataset, calibrate_int8, compression_of, training_embeddings
from .run import RunContext, StageRun


def embed_source(pieces: Checkpoint, spec: SourceSpec, texts: TextsSpec, need_text: bool) -> dict[str, Any]:
    """Embed one source with the checkpoint's processor: `image_embeds`, and when the source has them
    `text_embeds` + `text_to_image` (captions), `labels` + `classnames`, and with `texts.templates` the
    `classifier` and the class prompts' `prompt_embeds`."""
    from ..eval.data import ProcessorTransform, decoded, load_eval_set
    from ..eval.features import embed_images, encode_texts
    from ..eval.retrieval import caption_targets
    from ..eval.zero_shot import build_zero_shot_classifier, fill_template, resolve_templates

    model, tokenizer = pieces.model, pieces.tokenizer
    templated = texts.templates is not None
    eval_set = load_eval_set(spec.name or spec.path, spec.split, max_samples=spec.max_samples,
                             caption_column=None if templated else texts.column, label_column=texts.label_column,
                             need=(("classnames",) if templated else ("captions",)) if need_text else ())
    transform = ProcessorTransform(pieces.image_processor, pieces.video_processor)
    data = decoded(eval_set, transform, num_frames=spec.num_frames, stride=spec.stride)
    columns = [c for c in (eval_set.caption_column, eval_set.label_column) if c]
    image_embeds, gathered = embed_images(model, data, columns=columns, batch_size=spec.batch_size)
    out: dict[str, Any] = {"image_embeds": image_embeds}
    if eval_set.caption_column and not templated:
        captions, text_to_image, kept = caption_targets(gathered[eval_set.caption_column])
        out.update(text_embeds=encode_texts(captions, model, tokenizer), text_to_image=text_to_image, kept=kept)
    if eval_set.label_column and eval_set.classnames:
        out.update(labels=torch.as_tensor(gathered[eval_set.label_column]).long(), classnames=eval_set.classnames)
        templates = resolve_templates(texts.templates or ("a photo of a {}.",))
        if templated:  # each prompt through the text tower once: kept, and averaged into the classifier
            prompts = [fill_template(t, name) for name in eval_set.classnames for t in templates]
            out["text_embeds_templates"] = encode_texts(prompts, model, tokenizer)
            cached = dict(zip(prompts, out["text_embeds_templates"]))
            out["classifier"] = build_zero_shot_classifier(
                None, None, eval_set.classnames, templates, encode_text=lambda batch: torch.stack([cached[p] for p in batch])
            )
        else:
            out["classifier"] = build_zero_shot_classifier(model, tokenizer, eval_set.classnames, templates)
    return out


def retention_inputs(embedded: dict[str, Any]) -> dict[str, Any]:
    """`compression_retention` keyword arguments from `embed_source`'s output (retrieval and/or zero-shot)."""
    out: dict[str, Any] = {}
    if "text_to_image" in embedded:
        out["retrieval"] = {"image_embeds": embedded["image_embeds"][embedded["kept"]],
                            "text_embeds": embedded["text_embeds"], "text_to_image": embedded["text_to_image"]}
    if "classifier" in embedded:
        out["zero_shot"] = {"image_embeds": embedded["image_embeds"], "classifier": embedded["classifier"],
                            "labels": embedded["labels"]}
    return out


def prepare_compress(run: RunContext) -> StageRun:
    """The `compress` stage of the run-config table (`xray_hf.stages`)."""
    spec: CompressModelSpec = run.model
    path = spec.from_pretrained
    if not os.path.isdir(path):
        raise ValueError(f"model.from_pretrained must be an existing CLIP checkpoint directory, got {path!r}")
    texts: TextsSpec = run.extras.texts
    video = run.data.video is not None or any(s.modality == "video" for s in run.data.eval_sets)
    pieces = load_checkpoint(path, need_text=True, video=video)
    model = pieces.model
    if not hasattr(model, "add_embedding_compression"):
        raise ValueError(f"{path} holds a {type(model).__name__}; the compress stage needs an XrayCLIPModel")
    if spec.compression is not None or model.embedding_compression is None:
        model.add_embedding_compression(spec.compression)  # a fresh module (the settings may differ)
    args = run.training_args()

    image_parts, text_parts = [], []
    for source in (run.data.image, run.data.video):
        if source is not None:
            embedded = embed_source(pieces, source, texts, need_text=True)
            image_parts.append(embedded["image_embeds"])
            text_parts.append(embedded.get("text_embeds", embedded.get("text_embeds_templates")))
    text_parts = [t for t in text_parts if t is not None]
    embeds = training_embeddings(torch.cat(image_parts), torch.cat(text_parts) if text_parts else None,
                                 args.balance_modalities)
    calibrate_int8(model, embeds, args.calibration_samples, run.seed)
    trainer = CompressionTrainer(model, args, train_dataset=EmbeddingDataset(embeds))

    def after_training(trainer: CompressionTrainer, results: dict) -> None:
        module = compression_of(trainer.trained_model())
        module.eval()
        retention: dict[str, Any] = {}
        for eval_spec in run.data.eval_sets:
            inputs = retention_inputs(embed_source(pieces, eval_spec, texts, need_text=False))
            if inputs:
                with torch.no_grad():
                    retention[eval_set_name(eval_spec, set(retention))] = compression_retention(module, **inputs)
        results["retention"] = retention

    def save_artifacts(trainer: CompressionTrainer, results: dict, output_dir: str) -> None:
        from transformers import AutoProcessor

        AutoProcessor.from_pretrained(path).save_pretrained(output_dir)

    return StageRun(trainer, results={"training_embeddings": int(embeds.shape[0]), "source": path},
                    after_training=after_training, save_artifacts=save_artifacts)


__all__ = ["embed_source", "prepare_compress", "retention_inputs"]
