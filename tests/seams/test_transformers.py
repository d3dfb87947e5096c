"""transformers' private names (`xray_hf.seams.transformers`): each still exists with the signature the package
relies on, and each override really runs: a checkpoint save writes the data position and JSON arguments, a resume
loads weights and optimizer through the hooks, the best model is loaded through its hook; the model and processor
hooks shape what they should. (Pushes: tests/hub/test_push.py, named in the seams' `guarded_by`.)"""

import importlib
import inspect
import json
import math

import pytest
import torch
from torch import nn
from transformers import PretrainedConfig, PreTrainedModel, Trainer

from xray_hf.seams.transformers import SEAMS, TRAINER_HOOKS, TrainerSeams
from xray_hf.trainers.base import XrayTrainer, XrayTrainingArguments
from xray_hf.trainers.resume import DATA_STATE_NAME


def _resolve(path: str):
    module, _, qualified = path.partition(":")
    owner = importlib.import_module(module)
    for part in qualified.split("."):
        owner = getattr(owner, part)
    return owner


@pytest.mark.parametrize("seam", SEAMS, ids=lambda s: f"{s.owner.rsplit(':', 1)[1]}.{s.name}")
def test_the_private_name_exists_with_the_signature_the_package_relies_on(seam):
    owner = _resolve(seam.owner)
    moved = f"transformers moved {seam.owner}.{seam.name}, which {seam.where} relies on: {seam.purpose}"
    assert hasattr(owner, seam.name), moved
    if seam.parameters is None:
        return
    parameters = [p for p in inspect.signature(getattr(owner, seam.name)).parameters if p not in ("self", "cls")]
    if seam.by_keyword:
        assert set(seam.parameters) <= set(parameters), f"{moved}; its parameters are now {parameters}"
    else:
        assert parameters[: len(seam.parameters)] == list(seam.parameters), f"{moved}; its parameters are now {parameters}"


def test_the_public_hooks_are_not_trainer_names_and_every_trainer_has_the_seams_before_trainer():
    taken = [hook for hook in TRAINER_HOOKS if hasattr(Trainer, hook)]
    assert not taken, f"transformers' Trainer now defines {taken}: the seam hooks would override them"
    trainers = {cls for module in ("xray_hf.trainers.base", "xray_hf.trainers.llm2vec", "xray_hf.trainers.clip",
                                   "xray_hf.trainers.compression", "xray_hf.trainers.distill", "xray_hf.trainers.mae",
                                   "xray_hf.trainers.hashtag")
                for cls in vars(importlib.import_module(module)).values()
                if isinstance(cls, type) and issubclass(cls, Trainer) and cls.__module__.startswith("xray_hf")}
    assert len(trainers) >= 8
    for cls in trainers:
        mro = cls.__mro__
        assert mro[mro.index(Trainer) - 1] is TrainerSeams, cls


# ------------------------------------------------------------------------------ the Trainer hooks at work
class ToyConfig(PretrainedConfig):
    model_type = "xray_seams_toy"


class Toy(PreTrainedModel):
    config_class = ToyConfig

    def __init__(self, config):
        super().__init__(config)
        self.linear = nn.Linear(4, 1)
        self.post_init()

    def forward(self, x, y):
        return {"loss": (self.linear(x).squeeze(-1) - y).pow(2).mean()}


class Stream:
    """A stateful loader of 4 batches per epoch (its position is what a checkpoint's data state records)."""

    def __init__(self):
        self.position = 0

    def __len__(self):
        return 4

    def __iter__(self):
        while self.position < 4:
            generator = torch.Generator().manual_seed(self.position)
            self.position += 1
            x = torch.randn(8, 4, generator=generator)
            yield {"x": x, "y": x.sum(-1)}

    def set_epoch(self, epoch):
        self.position = 0

    def state_dict(self):
        return {"position": self.position}

    def load_state_dict(self, state):
        self.position = state["position"]


class Spy(XrayTrainer):
    calls: dict

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.calls = {hook: 0 for hook in TRAINER_HOOKS}

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        out = model(inputs["x"], inputs["y"])
        return (out["loss"], out) if return_outputs else out["loss"]


for _hook in TRAINER_HOOKS:  # count each hook, then run the real one
    def _counting(self, *args, _hook=_hook, **kwargs):
        self.calls[_hook] += 1
        return getattr(super(Spy, self), _hook)(*args, **kwargs)
    setattr(Spy, _hook, _counting)


def _trainer(output_dir, eval_dataset=None, **extra) -> Spy:
    torch.manual_seed(0)
    args = XrayTrainingArguments(output_dir=str(output_dir), max_steps=4, save_steps=2, learning_rate=0.05,
                                 optimizer="adamw", report_to=[], disable_tqdm=True, logging_steps=1, **extra)
    return Spy(model=Toy(ToyConfig()), args=args, train_loader=Stream(), eval_dataset=eval_dataset)


def test_saving_and_resuming_run_through_every_trainer_hook(tmp_path):
    trainer = _trainer(tmp_path)
    trainer.train()
    calls = trainer.calls
    assert calls["before_checkpoint_save"] == 2 and calls["save_weights"] == 2 and calls["save_optimizer_state"] == 2
    checkpoint = tmp_path / "checkpoint-2"
    # what the overrides add: the data position (before trainer_state.json) and JSON training arguments
    assert json.loads((checkpoint / DATA_STATE_NAME.format(rank=0)).read_text())["loader"] == {"position": 2}
    assert (checkpoint / "training_args.json").is_file() and not (checkpoint / "training_args.bin").exists()
    trainer.save_model(str(tmp_path / "final"))
    assert trainer.calls["save_weights"] == 3 and (tmp_path / "final" / "training_args.json").is_file()

    resumed = _trainer(tmp_path)
    resumed.train(resume_from_checkpoint=str(checkpoint))
    assert resumed.calls["load_checkpoint_weights"] == 1 and resumed.calls["load_optimizer_state"] == 1
    assert resumed.state.global_step == 4 and resumed.train_loader.loader.position == 4  # continued at batch 3
    for name, value in trainer.model.state_dict().items():
        torch.testing.assert_close(resumed.model.state_dict()[name], value)


def test_the_best_model_is_loaded_through_its_hook(tmp_path):
    evaluation = [{"x": torch.ones(8, 4), "y": torch.full((8,), 4.0)}] * 2
    trainer = _trainer(tmp_path, evaluation, eval_strategy="steps", eval_steps=2, load_best_model_at_end=True,
                       label_names=["y"])
    trainer.train()
    assert trainer.calls["load_best_model"] == 1 and trainer.state.best_model_checkpoint is not None


# ---------------------------------------------------------------------------- the model and processor hooks
def _tiny_clip():
    from xray_hf import XrayCLIPConfig, XrayCLIPModel, XrayTextConfig, XrayVisualConfig

    vision = XrayVisualConfig.from_preset("tiny", image_size=16, patch_size=4, hidden_size=32, num_hidden_layers=1,
                                          num_attention_heads=2, intermediate_size=64)
    text = XrayTextConfig.from_preset("tiny", vocab_size=64, projection_dim=16, max_position_embeddings=16,
                                      hidden_size=32, num_attention_heads=2, num_hidden_layers=1)
    config = XrayCLIPConfig(vision_config=vision, text_config=text, projection_dim=16, slip_weight=0.0, lambda_den=0.0)
    return XrayCLIPModel(config)


def test_init_weights_and_from_config_build_the_models_as_configured():
    torch.manual_seed(0)
    model = _tiny_clip()
    weight = model.xray_visual.encoder.layer[0].mlp.fc1.weight  # _init_weights: trunc-normal(0.02), not torch's default
    assert abs(weight.std().item() - model.config.vision_config.initializer_range) < 0.005
    assert type(model.text_model).__name__ == "XrayTextModel"  # _from_config: the tower of the config's model_type


def test_fp32_modules_stay_fp32_when_a_checkpoint_loads_in_bf16(tmp_path):
    model = _tiny_clip()
    model.add_embedding_compression({"compressed_dim": 8})
    model.embedding_compression.calibrate_int8(torch.randn(16, 16))
    model.save_pretrained(tmp_path)
    loaded = type(model).from_pretrained(tmp_path, dtype=torch.bfloat16)
    assert loaded.embedding_compression.int8_ranges.dtype == torch.float32
    assert loaded.xray_visual.encoder.layer[0].mlp.fc1.weight.dtype == torch.bfloat16


def test_no_split_modules_name_the_fsdp_units():
    from xray_hf.trainers.fsdp import no_split_classes, transformer_blocks

    model = _tiny_clip()
    assert "XrayVisualLayer" in no_split_classes(model)
    assert any(type(block).__name__ == "XrayVisualLayer" for block in transformer_blocks(model))


def test_the_processor_hooks_shape_images_and_sample_frames():
    from xray_hf import XrayVisualImageProcessor, XrayVisualVideoProcessor

    image = torch.randint(0, 256, (3, 40, 60), dtype=torch.uint8)
    processor = XrayVisualImageProcessor(size=(16, 24))  # a rectangle: _validate_preprocess_kwargs accepts it
    out = processor(images=[[image, image]], return_tensors="pt")["pixel_values"]  # nested: _prepare_images_structure
    assert tuple(out.shape) == (2, 3, 16, 24)  # _preprocess
    video = torch.randint(0, 256, (12, 3, 20, 20), dtype=torch.uint8)
    clip = XrayVisualVideoProcessor(size=16, num_frames=4)(videos=[video], return_tensors="pt")["pixel_values"]
    assert tuple(clip.shape) == (1, 4, 3, 16, 16)  # _decode_and_sample_videos: 4 frames of 12, then _preprocess
    assert math.isfinite(clip.float().sum().item())
