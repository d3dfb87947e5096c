"""Resume through the Trainer: epochs shorter than `len()`, gradient accumulation, corrupt samples, uneven shards,
resuming twice; the data state is JSON and a pickled one is refused."""

import io
import json
import os

import datasets
import numpy as np
import pytest
import torch
from PIL import Image
from transformers import TrainerCallback

from xray_hf import XrayVisualConfig, XrayVisualForPreTraining
from xray_hf.data import DecodedStream, ImageDecoder, StreamingDataLoader, TrainTransform
from xray_hf.data.sources import undecoded
from xray_hf.trainers import MAETrainer, MAETrainingArguments
from xray_hf.trainers.resume import DATA_STATE_NAME, ResumableLoader, last_complete_checkpoint


class ShortEpochLoader:
    """A stateful loader that claims `claimed` batches per epoch but yields only `real` (a skipped sample, uneven
    shards or a multimodal loader running dry all do this). Batch content depends on (epoch, position)."""

    def __init__(self, claimed: int = 5, real: int = 3, batch_size: int = 2):
        self.claimed, self.real, self.batch_size = claimed, real, batch_size
        self.epoch, self.position = 0, 0
        self.served: list[tuple[int, int]] = []

    def __len__(self):
        return self.claimed

    def set_epoch(self, epoch):
        self.epoch, self.position = epoch, 0

    def __iter__(self):
        while self.position < self.real:
            index = self.position
            self.position += 1
            self.served.append((self.epoch, index))
            generator = torch.Generator().manual_seed(1000 * self.epoch + index)
            yield {"pixel_values": torch.randn(self.batch_size, 3, 16, 16, generator=generator)}

    def state_dict(self):
        return {"epoch": self.epoch, "position": self.position}

    def load_state_dict(self, state):
        self.epoch, self.position = state["epoch"], state["position"]


def test_resumable_loader_runs_epochs_back_to_back_and_restores_anywhere():
    def take(loader, n):
        iterator = iter(loader)
        return [next(iterator)["pixel_values"][0, 0, 0, 0].item() for _ in range(n)]

    stream = ResumableLoader(ShortEpochLoader(claimed=5, real=3))
    reference = take(stream, 8)  # epochs 0, 1 and part of 2: no len(), no end
    assert stream.epoch == 2 and stream.state_dict()["batches"] == 2
    for k in range(1, 8):  # a state taken after batch k, including at the end of an epoch (k = 3, 6)
        source = ResumableLoader(ShortEpochLoader())
        take(source, k)
        state = json.loads(json.dumps(source.state_dict()))
        resumed = ResumableLoader(ShortEpochLoader())
        resumed.load_state_dict(state)
        assert take(resumed, 8 - k) == reference[k:], k
    again = ResumableLoader(ShortEpochLoader())
    first = take(again, 4)
    assert first + take(again, 4) == reference  # a second iteration continues, it does not restart the epoch
    with pytest.raises(ValueError, match="missing"):
        again.load_state_dict({"epoch": 0})
    with pytest.raises(TypeError, match="state_dict"):
        ResumableLoader([1, 2, 3])


def tiny_mae() -> XrayVisualForPreTraining:
    torch.manual_seed(0)
    config = XrayVisualConfig.from_preset(
        "tiny", image_size=16, patch_size=4, num_frames=4, hidden_size=32, num_hidden_layers=2,
        num_attention_heads=2, intermediate_size=64, decoder_hidden_size=32, decoder_num_hidden_layers=1,
        decoder_num_attention_heads=2, drop_path_rate=0.1,  # consumes the global RNG: resume must restore it
    )
    return XrayVisualForPreTraining(config)


class Recording(MAETrainer):
    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.losses: list[float] = []

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        loss = super().compute_loss(model, inputs, return_outputs, num_items_in_batch)
        if model.training:
            self.losses.append((loss[0] if return_outputs else loss).item())
        return loss


class StopAt(TrainerCallback):
    def __init__(self, step: int):
        self.step = step

    def on_step_end(self, args, state, control, **kwargs):
        if state.global_step == self.step:
            control.should_training_stop = True
        return control


def run(output_dir, loader, max_steps=9, stop_at=None, resume=None, **extra) -> Recording:
    args = MAETrainingArguments(
        output_dir=str(output_dir), max_steps=max_steps, learning_rate=1e-3, warmup_steps=2, save_steps=1,
        logging_steps=1, report_to=[], disable_tqdm=True, seed=0, optimizer="adamw", **extra,
    )
    trainer = Recording(model=tiny_mae(), args=args, train_loader=loader)
    if stop_at is not None:
        trainer.add_callback(StopAt(stop_at))
    trainer.train(resume_from_checkpoint=resume)
    return trainer


def weights(trainer) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in trainer.model.state_dict().items()}


def assert_same_weights(a, b):
    wa, wb = weights(a), weights(b)
    for name, tensor in wa.items():
        assert torch.equal(wb[name], tensor), name


def test_epochs_shorter_than_len_still_reach_max_steps(tmp_path):
    loader = ShortEpochLoader(claimed=5, real=3)
    trainer = run(tmp_path, loader, max_steps=9)
    assert trainer.state.global_step == 9 and len(trainer.losses) == 9
    assert loader.served == [(e, i) for e in range(3) for i in range(3)]  # each epoch once, in order


@pytest.mark.parametrize("accumulation", [1, 3])
def test_resume_twice_gives_the_uninterrupted_run_bitwise(tmp_path, accumulation):
    # 3 real batches per epoch (len() says 5); with accumulation 3 over 4 updates the groups straddle epochs
    max_steps = 9 if accumulation == 1 else 4
    full = run(tmp_path / "full", ShortEpochLoader(), max_steps=max_steps, gradient_accumulation_steps=accumulation)
    assert full.state.global_step == max_steps and len(full.losses) == max_steps * accumulation
    stops = (3, 4) if accumulation == 1 else (1, 3)
    for first in range(1, max_steps):  # interrupt after any step, then once more later, then finish
        folder = tmp_path / f"run{first}"
        killed = run(folder, ShortEpochLoader(), max_steps=max_steps, stop_at=first,
                     gradient_accumulation_steps=accumulation)
        losses = list(killed.losses)
        second = min(first + 1, max_steps) if first not in stops else max_steps
        resumed = run(folder, ShortEpochLoader(), max_steps=max_steps, stop_at=second, resume=True,
                      gradient_accumulation_steps=accumulation)
        losses += resumed.losses
        if resumed.state.global_step < max_steps:
            final = run(folder, ShortEpochLoader(), max_steps=max_steps, resume=True,
                        gradient_accumulation_steps=accumulation)
            losses += final.losses
        else:
            final = resumed
        assert final.state.global_step == max_steps
        assert losses == full.losses, f"interrupted after step {first}"
        assert_same_weights(final, full)


def test_a_stream_without_a_single_batch_is_an_error(tmp_path):
    with pytest.raises(RuntimeError, match="no batch"):
        run(tmp_path, ShortEpochLoader(claimed=5, real=0), max_steps=3)


def test_data_state_is_json_and_pickle_is_refused(tmp_path):
    run(tmp_path, ShortEpochLoader(), max_steps=2)
    checkpoint = tmp_path / "checkpoint-2"
    state_file = checkpoint / DATA_STATE_NAME.format(rank=0)
    assert state_file.name.endswith(".json")
    state = json.loads(state_file.read_text())
    assert state["loader"] == {"epoch": 0, "position": 2}
    # a pickled state (what earlier versions wrote) is refused with a clear error, never unpickled
    state_file.unlink()
    torch.save({"loader": {"epoch": 0, "position": 2}}, checkpoint / "data_state-rank0.pt")
    with pytest.raises(ValueError, match="pickle"):
        run(tmp_path, ShortEpochLoader(), max_steps=3, resume=str(checkpoint))
    state_file.write_bytes((checkpoint / "data_state-rank0.pt").read_bytes())
    with pytest.raises(ValueError, match="JSON"):
        run(tmp_path, ShortEpochLoader(), max_steps=3, resume=str(checkpoint))


def test_num_train_epochs_becomes_steps_from_the_estimate(tmp_path):
    loader = ShortEpochLoader(claimed=5, real=3)
    args = MAETrainingArguments(output_dir=str(tmp_path), num_train_epochs=2, report_to=[], disable_tqdm=True,
                                save_strategy="no", optimizer="adamw")
    trainer = Recording(model=tiny_mae(), args=args, train_loader=loader)
    trainer.train()
    assert trainer.state.global_step == 10  # 2 x len(): the estimate sets the step count, and it is reached


# ------------------------------------------------------------------ real streams: corrupt sample, uneven shards


def _png(value: int) -> bytes:
    buffer = io.BytesIO()
    rng = np.random.default_rng(value)
    Image.fromarray(rng.integers(0, 256, (16, 16, 3), dtype=np.uint8)).save(buffer, format="PNG")
    return buffer.getvalue()


def real_loader(num_workers: int) -> StreamingDataLoader:
    """11 images in 3 uneven shards (4, 4, 3 rows), one of them corrupt: with 2 workers one worker reads 7 rows
    and the other 4; `steps_per_epoch` (the estimate) says 6 batches of 2, fewer arrive."""
    images = [{"bytes": _png(i) if i != 5 else b"not an image", "path": None} for i in range(11)]
    table = datasets.Dataset.from_dict({"image": images}, features=datasets.Features({"image": datasets.Image()}))
    source = undecoded(table.to_iterable_dataset(num_shards=3))
    transform = TrainTransform(16, flip_p=0.0, blur_p=0.0, brightness=0.0, saturation=0.0)
    stream = DecodedStream(source, ImageDecoder(transform=transform), seed=0, shuffle_buffer=4)
    return StreamingDataLoader(stream, batch_size=2, num_workers=num_workers, drop_last=True, steps_per_epoch=6)


@pytest.mark.parametrize("num_workers", [0, 2])
def test_corrupt_sample_and_uneven_shards_resume_bitwise(tmp_path, num_workers):
    full = run(tmp_path / "full", real_loader(num_workers), max_steps=8, gradient_accumulation_steps=1)
    assert full.state.global_step == 8
    killed = run(tmp_path / "run", real_loader(num_workers), max_steps=8, stop_at=3)
    resumed = run(tmp_path / "run", real_loader(num_workers), max_steps=8, stop_at=6, resume=True)
    final = run(tmp_path / "run", real_loader(num_workers), max_steps=8, resume=True)
    assert killed.losses + resumed.losses + final.losses == full.losses
    assert_same_weights(final, full)
    assert os.path.isfile(tmp_path / "run" / "checkpoint-6" / DATA_STATE_NAME.format(rank=0))


def test_a_save_killed_before_the_trainer_state_is_skipped_by_resume_last(tmp_path, monkeypatch):
    """A process killed while saving checkpoint-4 (after the weights and data position, before the Trainer state):
    `resume_from_checkpoint=True` takes checkpoint-3, and the run ends as the uninterrupted one."""
    from transformers.trainer_callback import TrainerState

    from xray_hf.trainers.resume import last_complete_checkpoint

    full = run(tmp_path / "full", ShortEpochLoader(), max_steps=6)
    save_to_json = TrainerState.save_to_json

    class Killed(BaseException):
        pass

    def killed_at_4(self, path):
        if self.global_step == 4:
            with open(path, "w") as f:
                f.write('{"global_step": 4, "log_hist')  # torn write, then the process dies
            raise Killed
        return save_to_json(self, path)

    monkeypatch.setattr(TrainerState, "save_to_json", killed_at_4)
    with pytest.raises(Killed):
        run(tmp_path / "run", ShortEpochLoader(), max_steps=6)
    monkeypatch.setattr(TrainerState, "save_to_json", save_to_json)
    torn = tmp_path / "run" / "checkpoint-4"
    assert (torn / "data_state-rank0.json").is_file()  # the data position is written before the Trainer state
    assert last_complete_checkpoint(tmp_path / "run") == str(tmp_path / "run" / "checkpoint-3")
    (tmp_path / "run" / "checkpoint-3" / "data_state-rank2.json").write_text("{}")  # rank 1 missing: refused
    assert last_complete_checkpoint(tmp_path / "run") == str(tmp_path / "run" / "checkpoint-2")
    (tmp_path / "run" / "checkpoint-3" / "data_state-rank2.json").unlink()
    resumed = run(tmp_path / "run", ShortEpochLoader(), max_steps=6, resume=True)
    assert resumed.losses == full.losses[3:]
    assert_same_weights(resumed, full)


# ------------------------------------------------------------------------------ a stage resumed at its end
STAGE = {
    "stage": "mae", "seed": 0,
    "model": {"preset": "tiny", "config": {
        "image_size": 16, "patch_size": 4, "num_frames": 4, "hidden_size": 32, "num_hidden_layers": 1,
        "num_attention_heads": 2, "intermediate_size": 64, "decoder_hidden_size": 32, "decoder_num_hidden_layers": 1,
        "decoder_num_attention_heads": 2, "decoder_intermediate_size": 64}},
    "data": {"resolution": 16, "image": {"name": "mnist", "batch_size": 4, "max_samples": 16},
             "augment": {"flip_p": 0.0, "blur_p": 0.0}},
    # a constant rate (an extra step would move the weights) and logs every 3 steps, saves every 2: the steps
    # 1-2 and 4 are not on a logging step
    "training": {"max_steps": 4, "save_steps": 2, "logging_steps": 3, "learning_rate": 1e-3, "warmup_steps": 0,
                 "lr_scheduler_type": "constant", "optimizer": "adamw", "report_to": [], "disable_tqdm": True},
}


def stage_config(output_dir) -> dict:
    return {**STAGE, "training": {**STAGE["training"], "output_dir": str(output_dir)}}


def test_resuming_a_finished_stage_trains_nothing_and_reports_the_whole_stage(tmp_path, monkeypatch):
    """`--resume last` on a finished run (or a pipeline rerun after an interruption in its evaluation) resumes
    from the checkpoint saved at max_steps: nothing trains, the checkpoint's weights are saved, and the stage's
    training loss is its own over all of its steps, also after a resume half-way."""
    import shutil

    from safetensors.torch import load_file

    from xray_hf.trainers.run import run_stage

    steps: list[float] = []
    compute_loss = MAETrainer.compute_loss

    def counting(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        out = compute_loss(self, model, inputs, return_outputs, num_items_in_batch)
        if model.training:
            steps.append(float((out[0] if return_outputs else out).detach()))
        return out

    monkeypatch.setattr(MAETrainer, "compute_loss", counting)
    full = run_stage("mae", stage_config(tmp_path / "full"))
    full_steps = list(steps)
    assert full["global_step"] == 4 and len(full_steps) == 4
    assert full["train_loss"] == pytest.approx(sum(full_steps) / 4, rel=1e-6)

    steps.clear()
    finished = run_stage("mae", stage_config(tmp_path / "full"), resume_from_checkpoint=True)  # checkpoint-4
    assert steps == [], f"resuming the finished stage trained {len(steps)} more step(s)"
    assert finished["global_step"] == 4
    saved, checkpoint = (load_file(tmp_path / "full" / name / "model.safetensors") for name in (".", "checkpoint-4"))
    for name, tensor in checkpoint.items():
        assert torch.equal(saved[name], tensor), name
    assert finished["train_loss"] == pytest.approx(full["train_loss"], rel=1e-6)
    assert [e["loss"] for e in finished["log_history"] if "loss" in e] == \
        [e["loss"] for e in full["log_history"] if "loss" in e]

    # resumed half-way (a kill after checkpoint-2): the reported loss is still over steps 1-4, not 3-4
    shutil.copytree(tmp_path / "full" / "checkpoint-2", tmp_path / "half" / "checkpoint-2")
    steps.clear()
    half = run_stage("mae", stage_config(tmp_path / "half"), resume_from_checkpoint=True)
    assert steps == pytest.approx(full_steps[2:], rel=1e-6)
    assert half["train_loss"] == pytest.approx(full["train_loss"], rel=1e-6)


def test_last_complete_checkpoint_skips_a_save_cut_short(tmp_path):
    for step, files in ((2, {"trainer_state.json": "{}", "data_state-rank0.json": "{}"}),
                        (4, {"trainer_state.json": "{}", "data_state-rank0.json": "{}"}),
                        (6, {"trainer_state.json": '{"global'}),          # killed while writing the trainer state
                        (8, {"model.safetensors": ""})):                    # killed while writing the weights
        folder = tmp_path / f"checkpoint-{step}"
        folder.mkdir()
        for name, text in files.items():
            (folder / name).write_text(text)
    assert last_complete_checkpoint(str(tmp_path)) == str(tmp_path / "checkpoint-4")
    assert last_complete_checkpoint(str(tmp_path / "missing")) is None
