"""The `distill` entry of the stage table: distil a trained teacher into a smaller student (paper 4.11).

```yaml
stage: distill
teacher: {from_pretrained: runs/tiny/clip}       # an XrayCLIPModel, or any XrayVisual checkpoint (image-only)
model:
  vision: {preset: tiny, config: {hidden_size: 32, num_hidden_layers: 2}}   # the student's backbone
  # or vision: {from_pretrained: DIR}; or from_pretrained: DIR (continue a student)
  config: {}                                      # the student's config: XrayCLIPConfig settings for a CLIP teacher,
                                                  # XrayVisualConfig ones for an image-only teacher
captions: {column: caption}                      # CLIP teachers: the texts of the relational term
text_cache: {enabled: true}                      # the teacher's frozen LLM, cached as in the clip stage
teacher_cache: {enabled: false}                  # precompute the teacher's image embeddings once (by sample id)
data: {...}                                      # video_fraction: a video teacher's share of clip batches (0.5 in
                                                 # distill_tiny.yaml; the paper's 75:25 is 0.25)
training: {...}                                  # DistillationTrainingArguments
```

A CLIP teacher's student is an `XrayCLIPModel` with the student backbone, the teacher's text tower (frozen) and a
new visual projection into the teacher's `projection_dim`; its logit scale starts at the teacher's. An image-only
teacher's student is an `XrayVisualForDistillation`. Either saves as a normal checkpoint with its processor.
"""

from __future__ import annotations

import copy
import functools
import os
from dataclasses import asdict
from typing import Any

from transformers import AutoConfig

from ..caches.common import load_or_build
from ..caches.teacher import TeacherEmbeddingCache, teacher_cache_key
from ..configuration.clip import XrayCLIPConfig
from ..configuration.visual import XrayVisualConfig
from ..data import SampleCollator
from ..data.inputs import build_eval_dataset, build_eval_datasets, build_train_loader
from ..data.transforms import Resolution
from ..modeling.clip import XrayCLIPModel
from ..modeling.distillation import XrayVisualForDistillation
from ..modeling.visual import XrayVisualModel
from ..run_config.block import check_config
from ..run_config.extras import CaptionSpec, DistillRunExtras, TeacherCacheSpec, TextCacheSpec
from ..run_config.model import StudentModelSpec, TeacherSpec
from .build import (
    build_backbone,
    build_visual_model,
    evaluate_after_training,
    existing_path,
    image_processor_for,
    load_tokenizer,
    normalization,
    save_clip_processor,
)
from .clip import CLIPCollator
from .distill import DistillationTrainer, teacher_kind
from .run import RunContext, StageRun
from .texts import caption_sampler, text_inputs_for

# teacher checkpoints by their config's model_type: the class that loads them
TEACHER_CLASSES: dict[str, type] = {"xray_clip": XrayCLIPModel, "xray_visual": XrayVisualModel}


def load_teacher(spec: TeacherSpec) -> tuple[Any, Any]:
    """(teacher, tokenizer or None) from `teacher.from_pretrained`, chosen by the checkpoint's `model_type`."""
    path = existing_path(spec.from_pretrained, "teacher.from_pretrained")
    model_type = AutoConfig.from_pretrained(path).model_type
    if model_type not in TEACHER_CLASSES:
        raise ValueError(f"teacher {path!r} is a {model_type!r} checkpoint; a teacher is one of {sorted(TEACHER_CLASSES)}")
    teacher = TEACHER_CLASSES[model_type].from_pretrained(path)
    return teacher, (load_tokenizer(path) if isinstance(teacher, XrayCLIPModel) else None)


def student_overrides(spec: StudentModelSpec, clip_teacher: bool) -> dict[str, Any]:
    """`model.config`, checked against the student's own config class now that the teacher says which it is (the
    run-config parse accepts the settings of either)."""
    config_class = XrayCLIPConfig if clip_teacher else XrayVisualConfig
    try:
        return check_config(spec.config, (config_class,), "model.config")
    except ValueError as error:
        student = "an XrayCLIPModel (its backbone's settings go in model.vision.config)" if clip_teacher else \
            "an XrayVisualForDistillation"
        raise ValueError(f"{error} (the student of this teacher is {student})") from error


def build_student(spec: StudentModelSpec, teacher: Any) -> Any:
    """The student of `model:` for `teacher` (see the module docstring)."""
    clip_teacher = isinstance(teacher, XrayCLIPModel)
    overrides = student_overrides(spec, clip_teacher)
    if spec.from_pretrained:  # continue a student
        path = existing_path(spec.from_pretrained, "model.from_pretrained")
        student_class = XrayCLIPModel if clip_teacher else XrayVisualForDistillation
        return student_class.from_pretrained(path, **overrides)
    if not clip_teacher:
        return build_visual_model(XrayVisualForDistillation, spec.vision,
                                  **{**overrides, "distill_target_size": teacher.config.hidden_size})
    settings = {"projection_dim": teacher.config.projection_dim, "slip_weight": 0.0, "lambda_den": 0.0,
                "hashtag_loss_weight": 0.0, "logit_scale_init_value": float(teacher.logit_scale.detach()),
                "label_smoothing": teacher.config.label_smoothing, **overrides}
    student = XrayCLIPModel.from_stages(vision=build_backbone(spec.vision), text=copy.deepcopy(teacher.text_model),
                                       **settings)
    student.text_model.requires_grad_(False)  # the teacher's tower: its text embeddings are the student's
    return student


def prepare_teacher_cache(run: RunContext, teacher: Any, spec: TeacherCacheSpec, main_process_first: Any):
    """Open the teacher cache over the training sources (clean views: the evaluation transform), building it once
    (main process first) when it is missing or stale."""
    sources = {modality: source for modality, source in (("image", run.data.image), ("video", run.data.video))
               if source is not None}
    if any(source.name is None for source in sources.values()):
        raise ValueError("teacher_cache needs embedded training sources (name:), not path: sources")
    datasets = {modality: build_eval_dataset(run.data, source) for modality, source in sources.items()}
    keys = [teacher_cache_key(modality, i) for modality, dataset in datasets.items() for i in dataset.dataset["id"]]
    settings = {"sources": {modality: asdict(source) for modality, source in sources.items()},
                "resolution": run.data.resolution, "normalization": normalization(run.data)}
    path = spec.dir or os.path.join(run.output_dir, "teacher_cache")
    embed = functools.partial(teacher_kind(teacher).teacher_image, teacher)
    with main_process_first(desc="teacher cache"):
        return load_or_build(
            lambda: TeacherEmbeddingCache.load(path, teacher, settings, keys=keys),
            lambda: TeacherEmbeddingCache.build(path, teacher, settings, datasets, embed, batch_size=spec.batch_size),
            path, "teacher cache",
        )


def prepare_distill(run: RunContext) -> StageRun:
    """The `distill` stage of the run-config table (`xray_hf.stages`)."""
    extras: DistillRunExtras = run.extras
    teacher, tokenizer = load_teacher(extras.teacher)
    kind = teacher_kind(teacher)
    student = build_student(run.model, teacher)
    args = run.training_args()
    resolution = Resolution(run.data.resolution)
    captions, cache_spec = extras.captions or CaptionSpec(), extras.text_cache or TextCacheSpec()
    text_inputs, wrap_decoder = None, None
    collator: Any = SampleCollator(resolution=resolution)
    if kind.uses_text:
        # the teacher's text tower embeds the texts; it is the student's too
        text_inputs = text_inputs_for(run, teacher, tokenizer, captions, cache_spec, args.main_process_first)
        collator = CLIPCollator(text_inputs, base=collator, group_identical_captions=args.group_identical_captions)
        wrap_decoder = caption_sampler(captions)
    elif extras.captions is not None or extras.text_cache is not None:
        raise ValueError("captions: and text_cache: are for CLIP teachers; this teacher is image-only")
    loader = build_train_loader(run.data, run.seed, collate_fn=collator, rank=args.process_index,
                                world_size=args.world_size, resolution=resolution, wrap_decoder=wrap_decoder)
    teacher_cache = None
    if extras.teacher_cache.enabled:
        teacher_cache = prepare_teacher_cache(run, teacher, extras.teacher_cache, args.main_process_first)
    eval_sets = build_eval_datasets(run.data)
    trainer = DistillationTrainer(
        model=student, teacher=teacher, teacher_cache=teacher_cache, args=args, train_loader=loader, eval_dataset=eval_sets or None,
        resolution=resolution, tokenizer=tokenizer, text_inputs=text_inputs, eval_caption_column=captions.column,
    )

    def save_artifacts(trainer: DistillationTrainer, results: dict, output_dir: str) -> None:
        if kind.uses_text:
            save_clip_processor(run, student.config, tokenizer, output_dir)
        else:
            image_processor_for(run.data).save_pretrained(output_dir)

    results = {"teacher": os.path.abspath(extras.teacher.from_pretrained), "student": type(student).__name__,
               "teacher_cache": teacher_cache is not None,
               "teacher_parameters": teacher.num_parameters(), "student_parameters": student.num_parameters()}
    return StageRun(trainer, results=results, after_training=evaluate_after_training, save_artifacts=save_artifacts)


__all__ = [
    "TEACHER_CLASSES", "build_student", "load_teacher", "prepare_distill", "prepare_teacher_cache", "student_overrides",
]
