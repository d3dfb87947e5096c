"""The stages of the recipe, as data: one entry per stage, read by the run-config loader (`trainers/run.py`), the
`xray-hf train` command and the pipeline. Adding a stage adds an entry (and its files), never a branch elsewhere.

Each entry names, as `module:attribute` paths resolved on use (so importing this table is cheap):

- `prepare`: `prepare(run: RunContext) -> StageRun`, which builds the model (from a preset or the previous stage's
  checkpoint), the `TrainingArguments` subclass, the input pipeline and collator, and the Trainer subclass, and
  says what to evaluate and save after training;
- `arguments`: the stage's `TrainingArguments` subclass (what `training:` holds);
- `model`, `data`: the `xray_hf.run_config` blocks that parse `model:` and `data:` (`DataSpec`: images and videos;
  `TextDataSpec` for the text stages);
- `extras`: the `xray_hf.run_config` block of the stage's own top-level keys (e.g. `vocabulary:` for hashtags), or
  None;
- `previous`: the stage whose checkpoint this one starts from in the recipe;
- `artifacts`: files written beside the weights, besides config, weights, processor and `results.json`.
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class Stage:
    name: str
    help: str
    prepare: str
    arguments: str
    extras: str | None = None
    previous: str | None = None
    artifacts: tuple[str, ...] = ()
    model: str = "xray_hf.run_config.model:VisionSpec"
    data: str = "xray_hf.run_config.data:DataSpec"

    @staticmethod
    def resolve(path: str) -> Any:
        module, _, attribute = path.partition(":")
        return getattr(importlib.import_module(module), attribute)

    def prepare_fn(self):
        return self.resolve(self.prepare)

    def arguments_class(self) -> type:
        return self.resolve(self.arguments)

    def extras_class(self) -> type | None:
        return self.resolve(self.extras) if self.extras else None

    def model_class(self) -> type:
        return self.resolve(self.model)

    def data_class(self) -> type:
        return self.resolve(self.data)


STAGES: dict[str, Stage] = {
    stage.name: stage
    for stage in (
        Stage(
            name="mae",
            help="stage 1: masked autoencoding on images and videos (paper 4.2.1)",
            prepare="xray_hf.trainers.mae_run:prepare_mae",
            arguments="xray_hf.trainers.mae:MAETrainingArguments",
            artifacts=("reconstruction.png",),
        ),
        Stage(
            name="hashtag",
            help="stage 2: hashtag classification (paper 4.2.2)",
            prepare="xray_hf.trainers.hashtag_run:prepare_hashtag",
            arguments="xray_hf.trainers.hashtag:HashtagTrainingArguments",
            extras="xray_hf.run_config.extras:HashtagRunExtras",
            previous="mae",
            artifacts=("hashtag_vocabulary.json",),
        ),
        Stage(
            name="mntp",
            help="text tower 1: LLM2Vec masked next-token prediction with LoRA on a bidirectional LLM (paper 4.6.2)",
            prepare="xray_hf.trainers.llm2vec_run:prepare_mntp",
            arguments="xray_hf.trainers.llm2vec:LLM2VecTrainingArguments",
            model="xray_hf.run_config.model:TextModelSpec",
            data="xray_hf.run_config.data:TextDataSpec",
            artifacts=("base", "lora"),
        ),
        Stage(
            name="simcse",
            help="text tower 2: LLM2Vec supervised SimCSE with LoRA, captions of one item as positives (4.6.2)",
            prepare="xray_hf.trainers.llm2vec_run:prepare_simcse",
            arguments="xray_hf.trainers.llm2vec:LLM2VecTrainingArguments",
            model="xray_hf.run_config.model:TextModelSpec",
            data="xray_hf.run_config.data:TextDataSpec",
            previous="mntp",
            artifacts=("lora",),
        ),
        Stage(
            name="clip",
            help="stage 3: CLIP + SLIP + denoising + siamese captions (paper 4.2.3-4.2.5, 4.7.1)",
            prepare="xray_hf.trainers.clip_run:prepare_clip",
            arguments="xray_hf.trainers.clip:CLIPTrainingArguments",
            model="xray_hf.run_config.model:CLIPModelSpec",
            extras="xray_hf.run_config.extras:CLIPRunExtras",
            previous="hashtag",
            artifacts=("text_cache",),
        ),
        Stage(
            name="distill",
            help="distillation: a trained teacher (CLIP or image-only) into a smaller student (paper 4.11)",
            prepare="xray_hf.trainers.distill_run:prepare_distill",
            arguments="xray_hf.trainers.distill:DistillationTrainingArguments",
            model="xray_hf.run_config.model:StudentModelSpec",
            extras="xray_hf.run_config.extras:DistillRunExtras",
            previous="clip",
            artifacts=("text_cache", "teacher_cache"),
        ),
        Stage(
            name="compress",
            help="compressed embeddings: learned 100-d / Matryoshka projection, calibrated int8, binary (paper 6.3-6.4)",
            prepare="xray_hf.trainers.compression_run:prepare_compress",
            arguments="xray_hf.trainers.compression:CompressionTrainingArguments",
            model="xray_hf.run_config.model:CompressModelSpec",
            extras="xray_hf.run_config.extras:CompressionRunExtras",
            previous="clip",
        ),
    )
}


def get_stage(name: str) -> Stage:
    if name not in STAGES:
        raise ValueError(f"stage must be one of {sorted(STAGES)}, got {name!r}")
    return STAGES[name]


__all__ = ["STAGES", "Stage", "get_stage"]
