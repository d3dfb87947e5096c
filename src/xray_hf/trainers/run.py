"""Run one stage from a YAML run config: `xray-hf train mae|hashtag --config configs/mae_tiny.yaml`.

A run config has the stage, a seed, the model (a preset or a previous stage's checkpoint, plus config
overrides), the data (see `trainers/data.py`), the `training:` arguments of the stage's `TrainingArguments`
subclass, and stage extras (`vocabulary:` for hashtags). The run saves the model, its image processor and a
`results.json` into `training.output_dir`; an MAE run also saves `reconstruction.png`.
"""

from __future__ import annotations

import copy
import json
import logging
import os
from typing import Any

import torch
import yaml
from transformers import set_seed

from ..configuration.visual import XrayVisualConfig
from ..data import SampleCollator
from ..modeling.hashtag import HashtagVocabulary, XrayVisualForHashtagClassification
from ..modeling.mae import XrayVisualForPreTraining, masked_patch_loss, patchify
from ..modeling.mae_visualization import save_reconstruction_grid
from ..processing.image_processing import XrayVisualImageProcessor
from .data import DataSpec, SourceSpec, _map_dataset, build_eval_dataset, build_train_loader
from .hashtag import HashtagCollator, HashtagTrainer, HashtagTrainingArguments, hashtag_metrics
from .mae import MAETrainer, MAETrainingArguments

logger = logging.getLogger(__name__)

STAGES = ("mae", "hashtag")
TOP_LEVEL_KEYS = {"stage", "seed", "model", "data", "training", "vocabulary", "reconstruction"}


def load_run_config(path: str | os.PathLike) -> dict[str, Any]:
    """Read and check a YAML run config."""
    with open(path, encoding="utf-8") as f:
        config = yaml.safe_load(f)
    if not isinstance(config, dict):
        raise ValueError(f"{path}: a run config must be a YAML mapping, got {type(config).__name__}")
    return config


def check_run_config(config: dict[str, Any], stage: str) -> None:
    if stage not in STAGES:
        raise ValueError(f"stage must be one of {STAGES}, got {stage!r}")
    unknown = set(config) - TOP_LEVEL_KEYS
    if unknown:
        raise ValueError(f"unknown run config keys {sorted(unknown)}; known: {sorted(TOP_LEVEL_KEYS)}")
    if config.get("stage", stage) != stage:
        raise ValueError(f"the run config is for stage {config['stage']!r}, not {stage!r}")
    for key in ("model", "data", "training"):
        if not isinstance(config.get(key), dict):
            raise ValueError(f"the run config needs a '{key}:' mapping")
    if "output_dir" not in config["training"]:
        raise ValueError("training.output_dir is required")


def build_model(stage: str, model_spec: dict[str, Any], **config_kwargs: Any):
    """The stage's model from `preset:` (random init) or `from_pretrained:` (a previous stage), with `config:`
    overrides. Loading from a previous stage keeps its encoder and drops its head (the MAE decoder, ...)."""
    unknown = set(model_spec) - {"preset", "from_pretrained", "config"}
    if unknown:
        raise ValueError(f"unknown model keys {sorted(unknown)}; use preset, from_pretrained and config")
    cls = XrayVisualForPreTraining if stage == "mae" else XrayVisualForHashtagClassification
    overrides = {**model_spec.get("config", {}), **config_kwargs}
    if model_spec.get("from_pretrained"):
        path = model_spec["from_pretrained"]
        if not os.path.exists(path):
            raise ValueError(f"model.from_pretrained {path!r} does not exist (run the previous stage first)")
        return cls.from_pretrained(path, **overrides)
    config = XrayVisualConfig.from_preset(model_spec.get("preset", "tiny"), **overrides)
    return cls(config)


def _normalization(data: DataSpec) -> tuple[list[float], list[float]]:
    from ..data import TrainTransform

    transform = TrainTransform(data.resolution, **data.augment)
    return transform.image_mean, transform.image_std


def image_processor_for(data: DataSpec) -> XrayVisualImageProcessor:
    """The inference-time processor matching the run's resolution and normalisation."""
    mean, std = _normalization(data)
    size = data.resolution if isinstance(data.resolution, int) else tuple(data.resolution)
    return XrayVisualImageProcessor(size=size, image_mean=mean, image_std=std)


@torch.no_grad()
def mae_eval(model: XrayVisualForPreTraining, dataset, batch_size: int = 128, seed: int = 0) -> dict[str, float]:
    """Masked-patch loss on `dataset` with fixed masks, next to predicting each masked patch's own mean (the loss
    of a zero prediction in per-patch normalised space; with raw-pixel targets, the patch mean itself)."""
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


def _training_args(cls, training: dict[str, Any], seed: int, **extra: Any):
    kwargs = {"seed": seed, "report_to": ["tensorboard"], **training, **extra}
    return cls(**kwargs)


def run_stage(
    stage: str, config: dict[str, Any], resume_from_checkpoint: str | bool | None = None
) -> dict[str, Any]:
    """Train one stage as the run config says; returns (and saves as results.json) its numbers."""
    config = copy.deepcopy(config)
    check_run_config(config, stage)
    seed = int(config.get("seed", 0))
    set_seed(seed)
    data = DataSpec.from_dict(config["data"])
    training = dict(config["training"])
    output_dir = training["output_dir"]
    results: dict[str, Any] = {"stage": stage}

    if stage == "mae":
        model = build_model(stage, config["model"])
        args = _training_args(MAETrainingArguments, training, seed)
        loader = build_train_loader(data, seed, rank=args.process_index, world_size=args.world_size)
        trainer = MAETrainer(
            model=model, args=args, data_collator=SampleCollator(), train_loader=loader,
            eval_dataset=build_eval_dataset(data),
        )
    else:
        vocab_spec = dict(config.get("vocabulary") or {})
        source = vocab_spec.pop("source", None)
        vocab_sources = [SourceSpec.from_dict(source)] if source else [s for s in (data.image, data.video) if s]
        column = vocab_spec.pop("column", "hashtags")
        tag_lists = [tags for spec in vocab_sources for tags in _map_dataset(spec)[column]]
        vocabulary = HashtagVocabulary.from_tag_lists(tag_lists, **vocab_spec)
        model = build_model(stage, config["model"], **vocabulary.config_kwargs())
        args = _training_args(HashtagTrainingArguments, training, seed)
        loader = build_train_loader(data, seed, collate_fn=HashtagCollator(vocabulary, base=SampleCollator()),
                                    rank=args.process_index, world_size=args.world_size)
        trainer = HashtagTrainer(
            model=model, args=args, data_collator=HashtagCollator(vocabulary), train_loader=loader,
            eval_dataset=build_eval_dataset(data), compute_metrics=hashtag_metrics,
        )
        results["vocabulary_size"] = len(vocabulary)

    train_output = trainer.train(resume_from_checkpoint=resume_from_checkpoint)
    results["train_loss"] = train_output.training_loss
    results["global_step"] = train_output.global_step
    results["log_history"] = trainer.state.log_history
    trainer.save_model(output_dir)
    if stage == "hashtag" and trainer.eval_dataset is not None:
        results["eval"] = trainer.evaluate()  # on every rank: it shards the set and gathers the predictions
    if trainer.is_world_process_zero():
        image_processor_for(data).save_pretrained(output_dir)
        if stage == "mae":
            eval_set = build_eval_dataset(data)
            if eval_set is not None:
                results["eval"] = mae_eval(trainer.model, eval_set, seed=seed)
                picks = torch.linspace(0, len(eval_set) - 1, min(8, len(eval_set))).long().tolist()  # spread classes
                samples = torch.stack([eval_set[i]["pixel_values"] for i in picks])
                mean, std = _normalization(data)
                path = os.path.join(output_dir, "reconstruction.png")
                save_reconstruction_grid(trainer.model, samples, path, mean=mean, std=std)
                results["reconstruction"] = path
        else:
            vocabulary.save(os.path.join(output_dir, "hashtag_vocabulary.json"))  # with counts; labels are in config
        with open(os.path.join(output_dir, "results.json"), "w", encoding="utf-8") as f:
            json.dump(results, f, indent=1, default=str)
    return results


def train_from_file(stage: str, path: str | os.PathLike, overrides: dict[str, Any] | None = None,
                    resume_from_checkpoint: str | bool | None = None) -> dict[str, Any]:
    """`xray-hf train <stage> --config <path>`: load the YAML, apply `training:` overrides, run."""
    config = load_run_config(path)
    if overrides:
        config.setdefault("training", {}).update(overrides)
    return run_stage(stage, config, resume_from_checkpoint=resume_from_checkpoint)


__all__ = ["STAGES", "build_model", "image_processor_for", "load_run_config", "mae_eval", "run_stage",
           "train_from_file"]
