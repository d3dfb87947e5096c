"""MAETrainer on real data (MNIST digits and moving-shapes clips), multimodal batches, exact resume."""

import os

import pytest
import torch
from transformers import TrainerCallback

from xray_hf import XrayVisualConfig, XrayVisualForPreTraining
from xray_hf.trainers import MAETrainer, MAETrainingArguments
from xray_hf.trainers.resume import DATA_STATE_NAME
from xray_hf.run_config.data import DataSpec
from xray_hf.data.inputs import build_eval_dataset, build_train_loader
from xray_hf.trainers.mae import num_patches
from xray_hf.trainers.mae import mae_eval

DATA = {
    "resolution": 16,
    "image": {"name": "mnist", "split": "train", "batch_size": 16, "max_samples": 64},  # 4 image batches
    "video": {"name": "moving-shapes", "split": "train", "batch_size": 4, "max_samples": 16, "num_frames": 4},
    "augment": {"flip_p": 0.0, "blur_p": 0.0, "brightness": 0.0, "saturation": 0.0},
}


def tiny_model() -> XrayVisualForPreTraining:
    torch.manual_seed(0)
    config = XrayVisualConfig.from_preset(
        "tiny", image_size=16, patch_size=4, num_frames=4, hidden_size=32, num_hidden_layers=2,
        num_attention_heads=2, intermediate_size=64, decoder_hidden_size=32, decoder_num_hidden_layers=1,
        decoder_num_attention_heads=2,
    )
    return XrayVisualForPreTraining(config)


class RecordingMAETrainer(MAETrainer):
    """Records every training loss exactly (the Trainer's logs are averaged and rounded)."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.losses: list[float] = []
        self.modalities: list[str] = []

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        loss = super().compute_loss(model, inputs, return_outputs, num_items_in_batch)
        if model.training:
            self.losses.append((loss[0] if return_outputs else loss).item())
            self.modalities.append("video" if inputs["pixel_values"].ndim == 5 else "image")
        return loss


class StopAt(TrainerCallback):
    """Stop the run after step `step` (after its checkpoint is written): a killed run."""

    def __init__(self, step: int):
        self.step = step

    def on_step_end(self, args, state, control, **kwargs):
        if state.global_step == self.step:
            control.should_training_stop = True
        return control


def make_trainer(output_dir, max_steps=12, stop_at=None, **extra) -> RecordingMAETrainer:
    args = MAETrainingArguments(
        output_dir=str(output_dir), max_steps=max_steps, learning_rate=1e-3, warmup_steps=2, save_steps=5,
        logging_steps=1, report_to=[], disable_tqdm=True, seed=0, **extra,
    )
    trainer = RecordingMAETrainer(
        model=tiny_model(), args=args, train_loader=build_train_loader(DataSpec.from_dict(DATA), seed=0)
    )
    if stop_at is not None:
        trainer.add_callback(StopAt(stop_at))
    return trainer


def final_weights(trainer) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in trainer.model.state_dict().items()}


def test_resume_gives_the_uninterrupted_loss_sequence_bitwise_twice(tmp_path):
    full = make_trainer(tmp_path / "full")
    full.train()
    assert len(full.losses) == 12  # one epoch is 8 steps: the run crosses an epoch boundary
    assert set(full.modalities[:8]) == {"image", "video"} and full.modalities[:8].count("video") == 4

    killed = make_trainer(tmp_path / "run", stop_at=5)
    killed.train()
    assert killed.losses == full.losses[:5]
    assert os.path.isfile(tmp_path / "run" / "checkpoint-5" / DATA_STATE_NAME.format(rank=0))

    resumed = make_trainer(tmp_path / "run", stop_at=10)  # a new process would build exactly this
    resumed.train(resume_from_checkpoint=str(tmp_path / "run" / "checkpoint-5"))
    assert resumed.losses == full.losses[5:10]  # bitwise: same batches, same masks, same updates

    again = make_trainer(tmp_path / "run")
    again.train(resume_from_checkpoint=True)  # the last checkpoint: checkpoint-10
    assert again.losses == full.losses[10:12]
    assert again.modalities == full.modalities[10:12]
    for name, tensor in final_weights(full).items():
        assert torch.equal(final_weights(again)[name], tensor), name


def test_mae_trainer_loss_falls_on_mnist_and_beats_the_patch_mean(tmp_path):
    data = DataSpec.from_dict({
        "resolution": 16, "image": {"name": "mnist", "batch_size": 32, "max_samples": 1024},
        "eval": {"name": "mnist", "split": "validation", "max_samples": 128},
        "augment": {"flip_p": 0.0, "blur_p": 0.0, "brightness": 0.0, "saturation": 0.0},
    })
    args = MAETrainingArguments(
        output_dir=str(tmp_path), max_steps=60, learning_rate=2e-3, warmup_steps=5, logging_steps=10,
        report_to=[], disable_tqdm=True, save_strategy="no", optimizer="adamw", seed=0,
    )
    model = tiny_model()
    eval_set = build_eval_dataset(data)
    before = mae_eval(model, eval_set)
    trainer = RecordingMAETrainer(model=model, args=args, train_loader=build_train_loader(data, seed=0))
    trainer.train()
    after = mae_eval(trainer.model, eval_set)
    first, last = sum(trainer.losses[:10]) / 10, sum(trainer.losses[-10:]) / 10
    assert last < 0.9 * first  # training batches are augmented (random crops): a noisier, slower fall
    assert after["masked_loss"] < 0.8 * after["patch_mean_loss"]  # measured: 0.63 vs 0.98
    assert after["masked_loss"] < before["masked_loss"]
    logged = [entry for entry in trainer.state.log_history if "loss" in entry]
    assert all("loss_image" in entry and "loss_video" not in entry for entry in logged)


def test_mask_ratio_arguments_and_deterministic_noise(tmp_path):
    trainer = make_trainer(tmp_path, max_steps=1, mask_ratio=0.5, video_mask_ratio=0.5)
    model = trainer.model.train()
    images = torch.randn(2, 3, 16, 16)
    out = trainer.compute_loss(model, {"pixel_values": images}, return_outputs=True)[1]
    assert out.mask.sum().item() == 16  # 50% of 2 x 16 patches
    trainer._noise_key = None
    a = trainer.mask_noise(model, images)
    trainer._noise_key = None  # same step, first micro-batch again: the same noise
    assert torch.equal(a, trainer.mask_noise(model, images))
    assert not torch.equal(trainer.mask_noise(model, images), a)  # next micro-batch differs
    assert num_patches(model.config, torch.zeros(1, 8, 3, 16, 16)) == 4 * 16
    with pytest.raises(ValueError, match="mask_ratio"):
        MAETrainingArguments(output_dir=str(tmp_path), mask_ratio=1.5)
    with pytest.raises(ValueError, match="pixel_values"):
        trainer.compute_loss(model, {"image": images})
