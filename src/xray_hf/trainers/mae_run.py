"""The `mae` entry of the stage table: build stage 1 (masked autoencoding, paper 4.2.1) from a run config.

```yaml
stage: mae
model: {preset: tiny, config: {mask_ratio: 0.75, video_mask_ratio: 0.9}}   # or from_pretrained: DIR
data: {...}                                         # images and videos; eval: the reconstruction grid's set
training: {...}                                     # MAETrainingArguments
```

Saves the image processor and, with an eval set, its masked-patch loss (`mae_eval`) and `reconstruction.png`.
"""

from __future__ import annotations

import os

import torch

from ..data import SampleCollator
from ..data.inputs import build_eval_dataset, build_train_loader
from ..modeling.mae import XrayVisualForPreTraining
from ..modeling.mae_visualization import save_reconstruction_grid
from .build import build_visual_model, image_processor_for, normalization
from .mae import MAETrainer, mae_eval
from .run import RunContext, StageRun


def prepare_mae(run: RunContext) -> StageRun:
    """The `mae` stage of the run-config table (`xray_hf.stages`)."""
    model = build_visual_model(XrayVisualForPreTraining, run.model)
    args = run.training_args()
    loader = build_train_loader(run.data, run.seed, rank=args.process_index, world_size=args.world_size)
    trainer = MAETrainer(model=model, args=args, data_collator=SampleCollator(), train_loader=loader,
                         eval_dataset=build_eval_dataset(run.data))

    def save_artifacts(trainer: MAETrainer, results: dict, output_dir: str) -> None:
        image_processor_for(run.data).save_pretrained(output_dir)
        eval_set = build_eval_dataset(run.data)
        if eval_set is None:
            return
        results["eval"] = mae_eval(trainer.model, eval_set, seed=run.seed)
        picks = torch.linspace(0, len(eval_set) - 1, min(8, len(eval_set))).long().tolist()  # spread classes
        samples = torch.stack([eval_set[i]["pixel_values"] for i in picks])
        mean, std = normalization(run.data)
        path = os.path.join(output_dir, "reconstruction.png")
        save_reconstruction_grid(trainer.model, samples, path, mean=mean, std=std)
        results["reconstruction"] = path

    return StageRun(trainer, save_artifacts=save_artifacts)


__all__ = ["prepare_mae"]
