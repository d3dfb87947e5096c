"""Distillation (paper 4.11): a frozen teacher taught to a smaller student.

Two teacher kinds, one small class each (`TEACHERS`, keyed by the teacher's class):

- an [`XrayCLIPModel`] teacher: the student is an `XrayCLIPModel` with a smaller backbone and the teacher's text
  tower (frozen, so the teacher's text embeddings are the student's too and are computed once per batch, by the
  teacher). Terms: feature distillation of the projected image embeddings (the student's `visual_projection` is
  the learned map into the teacher's space), relational distillation of the image-text similarity matrix (KL of
  the softmaxed logits, open_clip's `DistillClipLoss`), and optionally the student's own contrastive loss.
- an [`XrayVisualModel`] teacher: the student is an [`XrayVisualForDistillation`] whose `distill_projection`
  maps its pooled embedding to the teacher's width; feature distillation only.

Teachers see the student's batch (same augmented pixels), in eval mode and without gradients; or their image
embeddings of each sample's clean view come precomputed from a `TeacherEmbeddingCache`. Evaluation reports
`feature_cosine` (the mean student-teacher cosine on the eval set) for both kinds, plus zero-shot and retrieval
for CLIP students. The multimodal loader trains a video teacher's student on images and videos at the ratio of
`data.video_fraction` (4.11: 0.25).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from ..caches.teacher import TeacherEmbeddingCache, teacher_cache_key
from ..losses import FEATURE_METRICS, DistillationLoss
from ..modeling.clip import XrayCLIPModel
from ..modeling.distillation import XrayVisualForDistillation
from ..modeling.visual import XrayVisualModel
from .callbacks import LogitScaleClampCallback
from .clip import CLIPTrainer, CLIPTrainingArguments

logger = logging.getLogger(__name__)

TEXT_INPUTS = ("input_ids", "attention_mask", "llm_pooled_output")


@dataclass
class DistillationTrainingArguments(CLIPTrainingArguments):
    """Distillation settings beside the CLIP stage's (Lion by default; no gradient caching: the teacher runs on the
    whole batch)."""

    feature_distill_weight: float = field(default=1.0, metadata={"help": "weight of the feature distillation term"})
    relational_distill_weight: float = field(
        default=1.0, metadata={"help": "weight of the image-text relational (KL) term; CLIP teachers only"}
    )
    contrastive_weight: float = field(
        default=0.0, metadata={"help": "weight of the student's own CLIP loss on the true pairs; CLIP teachers only"}
    )
    feature_distill_metric: str = field(default="cosine", metadata={"help": f"one of {FEATURE_METRICS}"})
    distill_temperature: float = field(default=1.0, metadata={"help": "divides both models' logits (relational)"})

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.gradient_cache_chunk_size is not None:
            raise ValueError("gradient_cache_chunk_size is not supported by distillation (the teacher embeds the "
                             "whole batch); lower the batch size instead")
        # checked here, before any model is built: weights, metric, temperature
        DistillationLoss(self.feature_distill_weight, self.relational_distill_weight, self.contrastive_weight,
                         self.feature_distill_metric, self.distill_temperature, world_size=1, rank=0)


# ------------------------------------------------------------------------------------------- teacher kinds
class CLIPTeacher:
    """An `XrayCLIPModel` teacher and student; the student shares the teacher's (frozen) text tower."""

    uses_text = True

    @staticmethod
    def check_student(teacher: nn.Module, student: nn.Module) -> None:
        if not isinstance(student, XrayCLIPModel):
            raise ValueError(f"a CLIP teacher's student must be an XrayCLIPModel, got {type(student).__name__}")
        if student.config.projection_dim != teacher.config.projection_dim:
            raise ValueError(f"the student's projection_dim {student.config.projection_dim} differs from the "
                             f"teacher's {teacher.config.projection_dim}: it must embed into the teacher's space")

    @staticmethod
    def teacher_image(teacher: nn.Module, pixel_values: torch.Tensor) -> torch.Tensor:
        return teacher.get_image_features(pixel_values).pooler_output

    @staticmethod
    def teacher_text(teacher: nn.Module, inputs: dict[str, Any]) -> dict[str, torch.Tensor]:
        """With texts in the batch (tokens or cached LLM outputs): the teacher's text embeddings and scale."""
        text = {key: inputs[key] for key in TEXT_INPUTS if key in inputs}
        if not text:
            return {}
        return {"teacher_text_embeds": teacher.get_text_features(**text).pooler_output,
                "teacher_logit_scale": teacher.logit_scale.float().exp()}

    @staticmethod
    def student_outputs(model: nn.Module, inputs: dict[str, Any], teacher: dict[str, torch.Tensor]) -> dict:
        outputs = model(pixel_values=inputs["pixel_values"], return_dict=True)  # through DDP/FSDP's forward
        out = {"image_embeds": outputs.image_embeds, "logit_scale": outputs.logit_scale}
        if "teacher_text_embeds" in teacher:  # the student's text tower is the teacher's, frozen
            out["text_embeds"] = teacher["teacher_text_embeds"]
        return out


class VisualTeacher:
    """An `XrayVisualModel` teacher (pooled embedding) and an `XrayVisualForDistillation` student."""

    uses_text = False

    @staticmethod
    def check_student(teacher: nn.Module, student: nn.Module) -> None:
        if not isinstance(student, XrayVisualForDistillation):
            raise ValueError(f"an image-only teacher's student must be an XrayVisualForDistillation, got "
                             f"{type(student).__name__}")
        if student.config.distill_target_size != teacher.config.hidden_size:
            raise ValueError(f"the student projects to {student.config.distill_target_size} but the teacher's "
                             f"embedding has {teacher.config.hidden_size}: set distill_target_size")

    @staticmethod
    def teacher_image(teacher: nn.Module, pixel_values: torch.Tensor) -> torch.Tensor:
        return teacher(pixel_values, return_dict=True).pooler_output.float()

    @staticmethod
    def teacher_text(teacher: nn.Module, inputs: dict[str, Any]) -> dict[str, torch.Tensor]:
        return {}

    @staticmethod
    def student_outputs(model: nn.Module, inputs: dict[str, Any], teacher: dict[str, torch.Tensor]) -> dict:
        return {"image_embeds": model(pixel_values=inputs["pixel_values"]).pooler_output}


TEACHERS: dict[type, type] = {XrayCLIPModel: CLIPTeacher, XrayVisualModel: VisualTeacher}


def teacher_kind(teacher: nn.Module) -> type:
    for cls, kind in TEACHERS.items():
        if isinstance(teacher, cls):
            return kind
    raise ValueError(f"a teacher must be one of {[c.__name__ for c in TEACHERS]}, got {type(teacher).__name__}")


def _stack_pixels(samples: list[dict]) -> dict[str, torch.Tensor]:
    return {"pixel_values": torch.stack([sample["pixel_values"] for sample in samples])}


# ---------------------------------------------------------------------------------------------------- trainer
class DistillationTrainer(CLIPTrainer):
    """`Trainer` that distils a frozen `teacher` into `model` (the student); see the module docstring.

    Args (beyond `CLIPTrainer`'s):
        teacher: an `XrayCLIPModel` or `XrayVisualModel`, e.g. `AutoModel.from_pretrained(dir)`. It is put in eval
            mode with gradients off and moved to the student's device on first use; it is never saved.
        teacher_cache: a `TeacherEmbeddingCache` of the teacher's image embeddings by sample id (batches then need
            the sources' `id` column); the teacher's vision tower no longer runs in training.
    """

    def __init__(self, *args: Any, teacher: nn.Module, teacher_cache: TeacherEmbeddingCache | None = None,
                 **kwargs: Any):
        super().__init__(*args, **kwargs)
        self.teacher_cache = teacher_cache
        if not isinstance(self.args, DistillationTrainingArguments):
            raise ValueError(f"DistillationTrainer needs DistillationTrainingArguments, got {type(self.args).__name__}")
        self.kind = teacher_kind(teacher)
        self.kind.check_student(teacher, self.model)
        if not self.kind.uses_text and (self.args.relational_distill_weight or self.args.contrastive_weight):
            raise ValueError("an image-only teacher has no texts: set relational_distill_weight and "
                             "contrastive_weight to 0 (feature distillation only)")
        self.teacher = teacher.eval().requires_grad_(False)
        if not self.kind.uses_text:
            self.remove_callback(LogitScaleClampCallback)
        elif not (self.args.relational_distill_weight or self.args.contrastive_weight):
            self.model.logit_scale.requires_grad_(False)  # no term uses it (and DDP would see an unused parameter)

    @property
    def loss_fn(self) -> DistillationLoss:
        if self._loss_fn is None:
            args = self.args
            self._loss_fn = DistillationLoss(
                args.feature_distill_weight, args.relational_distill_weight, args.contrastive_weight,
                args.feature_distill_metric, args.distill_temperature, rank=args.process_index,
                world_size=args.world_size,
            )
        return self._loss_fn

    def teacher_outputs(self, inputs: dict[str, Any], use_cache: bool = True) -> dict[str, torch.Tensor]:
        """The teacher's embeddings of a batch (no gradients, eval mode, on the batch's device): image embeddings
        from the teacher cache when there is one (`use_cache`), else from the teacher; text embeddings and scale for
        a CLIP teacher when the batch has texts."""
        pixels = self.model_inputs(inputs)
        if next(self.teacher.parameters()).device != pixels.device:
            self.teacher.to(pixels.device)
        self.teacher.eval()
        with torch.no_grad():
            if self.teacher_cache is not None and use_cache:
                if "id" not in inputs:
                    raise ValueError(f"the teacher cache needs sample ids ('id') in the batch (keys: {sorted(inputs)})")
                modality = "video" if pixels.ndim == 5 else "image"
                keys = [teacher_cache_key(modality, sample_id) for sample_id in inputs["id"]]
                image = self.teacher_cache.lookup(keys, device=pixels.device)
            else:
                image = self.kind.teacher_image(self.teacher, pixels)
            return {"teacher_image_embeds": image, **self.kind.teacher_text(self.teacher, inputs)}

    def compute_loss(
        self,
        model: nn.Module,
        inputs: dict[str, Any],
        return_outputs: bool = False,
        num_items_in_batch: torch.Tensor | int | None = None,
    ):
        if self.kind.uses_text and not any(key in inputs for key in TEXT_INPUTS):
            raise ValueError(f"a CLIP teacher needs texts in the batch (keys: {sorted(inputs)}): use CLIPCollator")
        teacher = self.teacher_outputs(inputs)
        student = self.kind.student_outputs(model, inputs, teacher)
        terms = self.loss_fn(**student, **teacher, group_ids=inputs.get("group_ids"), output_dict=True)
        if model.training:
            self._record(terms, student.get("logit_scale"), inputs["pixel_values"].ndim == 5)
        return (terms["loss"], {**student, **teacher, **terms}) if return_outputs else terms["loss"]

    # ----------------------------------------------------------------------------------------- evaluation
    def feature_cosine(self, dataset: Any) -> float:
        """Mean cosine between the student's and the teacher's image embeddings over an eval set."""
        model = self.accelerator.unwrap_model(self.model)
        loader = torch.utils.data.DataLoader(dataset, batch_size=self.args.per_device_eval_batch_size,
                                             collate_fn=_stack_pixels, num_workers=0)
        total, count = 0.0, 0
        was_training = model.training
        model.eval()
        try:
            with torch.no_grad(), self.compute_loss_context_manager():
                for batch in loader:
                    pixels = batch["pixel_values"].to(self.args.device)
                    teacher = self.teacher_outputs({"pixel_values": pixels}, use_cache=False)
                    student = self.kind.student_outputs(model, {"pixel_values": pixels}, teacher)
                    cosine = F.cosine_similarity(student["image_embeds"].float(), teacher["teacher_image_embeds"].float())
                    total, count = total + float(cosine.sum()), count + len(cosine)
        finally:
            model.train(was_training)
        return total / max(count, 1)

    def eval_metrics(self, dataset: Any) -> dict[str, float]:
        metrics = super().eval_metrics(dataset) if self.kind.uses_text else {}
        return {**metrics, "feature_cosine": self.feature_cosine(dataset)}


__all__ = [
    "CLIPTeacher", "DistillationTrainer", "DistillationTrainingArguments", "TEACHERS", "VisualTeacher", "teacher_kind",
]
