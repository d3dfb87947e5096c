"""CLIPTrainer and the `clip` run config on real data (OpenMoji images with captions and hashtags, moving-shapes
clips): every loss term, evaluation, saved checkpoint + processor, exact resume through progressive resolution,
gradient caching, the logit-scale clamp, the LLM2CLIP text cache."""

import copy
import glob
import math
import os

import pytest
import torch
from transformers import AutoModel, AutoProcessor, LlamaConfig, LlamaForCausalLM, TrainerCallback, pipeline

from xray_hf import XrayCLIPConfig, XrayCLIPModel, XrayCLIPProcessor, XrayVisualModel
from xray_hf.configuration.text import XrayTextConfig
from xray_hf.convert import smollm2_tokenizer
from xray_hf.data import SampleCollator
from xray_hf.trainers.callbacks import LogitScaleClampCallback, ProgressiveResolutionCallback
from xray_hf.trainers.clip import CachedTexts, CLIPCollator, CLIPTrainingArguments, TokenizedTexts
from xray_hf.trainers.run import run_stage

VISION = {"preset": "tiny", "config": {"image_size": 16, "patch_size": 4, "num_frames": 4, "hidden_size": 32,
                                       "num_hidden_layers": 2, "num_attention_heads": 2, "intermediate_size": 64,
                                       "num_register_tokens": 1}}
TEXT = {"preset": "tiny", "tokenizer": "smollm2", "config": {"num_hidden_layers": 1, "hidden_size": 32,
                                                             "num_attention_heads": 2, "max_position_embeddings": 32}}
AUGMENT = {"flip_p": 0.0, "blur_p": 0.0, "brightness": 0.0, "saturation": 0.0, "crop_scale": [0.8, 1.0]}


def clip_config(output_dir, max_steps=12, **training):
    return {
        "stage": "clip", "seed": 0,
        "model": {"vision": copy.deepcopy(VISION), "text": copy.deepcopy(TEXT),
                  "config": {"projection_dim": 16, "slip_hidden_size": 32, "slip_projection_dim": 8}},
        "captions": {"column": "caption", "hashtag_column": "hashtags"},
        "slip": {"crop_scale": [0.5, 1.0], "blur_p": 0.0},
        "data": {
            "resolution": 16,
            "image": {"name": "openmoji", "split": "train", "batch_size": 16, "max_samples": 96},
            "video": {"name": "moving-shapes", "split": "train", "batch_size": 8, "max_samples": 32, "num_frames": 4,
                      "hashtags_from": ["shape", "direction"]},
            "eval": [{"name": "openmoji", "split": "validation", "max_samples": 48},
                     {"name": "moving-shapes", "split": "validation", "num_frames": 4}],
            "augment": AUGMENT,
        },
        "training": {"output_dir": str(output_dir), "max_steps": max_steps, "learning_rate": 2e-3,
                     "optimizer": "adamw", "warmup_steps": 2, "logging_steps": 1, "save_strategy": "no",
                     "report_to": [], "disable_tqdm": True, "per_device_eval_batch_size": 64, **training},
    }


def test_clip_run_trains_every_term_evaluates_and_saves_a_usable_checkpoint(tmp_path):
    out = tmp_path / "clip"
    results = run_stage("clip", clip_config(out, max_steps=16, report_to=["tensorboard"], eval_strategy="steps",
                                            eval_steps=8))
    logged = [entry for entry in results["log_history"] if "loss" in entry]
    assert len(logged) == 16
    for term in ("contrastive_loss", "hashtag_loss", "slip_loss", "denoise_loss", "logit_scale"):
        assert all(math.isfinite(entry[term]) for entry in logged), term
    assert {"loss_image", "loss_video"} <= set().union(*logged)
    first, last = sum(e["loss"] for e in logged[:4]) / 4, sum(e["loss"] for e in logged[-4:]) / 4
    assert last < first
    assert all(0 <= math.log(e["logit_scale"]) <= math.log(100) + 1e-6 for e in logged)
    evaluation = results["eval"]
    assert 0 <= evaluation["eval_openmoji_image_retrieval_recall@1"] <= evaluation["eval_openmoji_image_retrieval_recall@10"] <= 1
    assert "eval_moving_shapes_zeroshot_acc1" in evaluation and "eval_moving_shapes_zeroshot_acc5" in evaluation
    # evaluation every eval_steps reaches TensorBoard under stable names (one curve per metric across evaluations)
    scalars = _tensorboard_scalars(out)
    for tag in ("eval/openmoji_image_retrieval_recall@1", "eval/openmoji_text_retrieval_recall@5",
                "eval/moving_shapes_zeroshot_acc1", "train/contrastive_loss", "train/logit_scale"):
        assert tag in scalars, sorted(scalars)
    assert {8, 16} <= scalars["eval/openmoji_image_retrieval_recall@1"]
    # the checkpoint: model, processor, vision tower alone, zero-shot pipeline on a real image
    model = AutoModel.from_pretrained(out)
    assert isinstance(model, XrayCLIPModel)
    processor = AutoProcessor.from_pretrained(out)
    assert isinstance(processor, XrayCLIPProcessor)
    assert processor.image_processor.size["height"] == 16 and processor.video_processor.num_frames == 4
    backbone = XrayVisualModel.from_pretrained(out)
    pixels = processor(images=[_astronaut()], return_tensors="pt")["pixel_values"]
    with torch.no_grad():
        assert torch.allclose(backbone(pixels).pooler_output, model.xray_visual(pixels).pooler_output)
    scores = pipeline("zero-shot-image-classification", model=str(out))(_astronaut(), candidate_labels=["a", "b"])
    assert abs(sum(s["score"] for s in scores) - 1) < 1e-5
    assert os.path.isfile(out / "results.json")


def _tensorboard_scalars(out) -> dict[str, set[int]]:
    """Every scalar tag the run wrote to TensorBoard, with the steps it was written at."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    scalars = {}
    for path in glob.glob(os.path.join(out, "runs", "**", "events.out.tfevents*"), recursive=True):
        events = EventAccumulator(path)
        events.Reload()
        for tag in events.Tags()["scalars"]:
            scalars.setdefault(tag, set()).update(event.step for event in events.Scalars(tag))
    return scalars


def _astronaut():
    from PIL import Image
    from skimage import data

    return Image.fromarray(data.astronaut())


def _record(trainer):
    """Record each training step's input size and exact loss (the Trainer's logs are averaged and rounded)."""
    records = []
    original = trainer.compute_loss

    def compute_loss(model, inputs, return_outputs=False, num_items_in_batch=None):
        loss = original(model, inputs, return_outputs, num_items_in_batch)
        if model.training:
            records.append((tuple(inputs["pixel_values"].shape[-2:]), (loss[0] if return_outputs else loss).item()))
        return loss

    trainer.compute_loss = compute_loss
    return records


class StopAt(TrainerCallback):
    def __init__(self, step):
        self.step = step

    def on_step_end(self, args, state, control, **kwargs):
        if state.global_step == self.step:
            control.should_training_stop = True


def _run(config, stop_at=None, resume=None):
    from xray_hf.run_config import RunConfig
    from xray_hf.stages import get_stage
    from xray_hf.trainers.run import RunContext

    context = RunContext(get_stage("clip"), RunConfig.from_dict(config, "clip"))
    torch.manual_seed(0)
    run = get_stage("clip").prepare_fn()(context)
    records = _record(run.trainer)
    if stop_at is not None:
        run.trainer.add_callback(StopAt(stop_at))
    run.trainer.train(resume_from_checkpoint=resume)
    return run.trainer, records


@pytest.mark.parametrize("num_workers", [0, 2])
def test_resume_continues_the_loss_curve_and_the_resolution_schedule(tmp_path, num_workers):
    """Each step's batch has the schedule's size for that step, also when DataLoader workers prefetch batches
    before a change (they decode at a fixed size; the trainer resizes in the main process), so a run resumed
    after a change sees the uninterrupted run's batches bitwise."""
    schedule = [[0, 8], [3, 12], [6, 16]]
    training = dict(resolution_schedule=schedule, save_strategy="steps", save_steps=1, eval_strategy="no")
    config = clip_config(tmp_path / "full", max_steps=8, **training)
    config["data"].pop("eval")
    config["data"]["num_workers"] = num_workers
    full, records = _run(config)
    sizes = [size for size, _ in records]
    assert sizes == [(8, 8)] * 3 + [(12, 12)] * 3 + [(16, 16)] * 2
    config["training"]["output_dir"] = str(tmp_path / "run")
    _, first = _run(config, stop_at=4)
    _, rest = _run(config, resume=True)  # from checkpoint-4: resolution 12 first, then 16
    assert first + rest == records  # same sizes, bitwise the same losses


def _batch(config_kwargs=None, rows=12):
    torch.manual_seed(0)
    config = XrayCLIPConfig(
        vision_config=dict(VISION["config"], model_type="xray_visual", tubelet_size=2),
        text_config={"model_type": "xray_text", "vocab_size": 64, "hidden_size": 32, "num_hidden_layers": 1,
                     "num_attention_heads": 2, "max_position_embeddings": 16},
        projection_dim=16, slip_hidden_size=32, slip_projection_dim=8, **(config_kwargs or {}),
    )
    batch = {
        "pixel_values": torch.randn(rows, 3, 16, 16), "simclr_view_1": torch.randn(rows, 3, 16, 16),
        "simclr_view_2": torch.randn(rows, 3, 16, 16), "input_ids": torch.randint(1, 64, (rows, 6)),
        "attention_mask": torch.ones(rows, 6, dtype=torch.long), "hashtag_input_ids": torch.randint(1, 64, (rows, 4)),
        "hashtag_attention_mask": torch.ones(rows, 4, dtype=torch.long),
        "hashtag_mask": torch.arange(rows) % 3 != 0, "group_ids": torch.arange(rows) // 2,
    }
    return config, batch


def _trainer(tmp_path, model, slip_videos=True, **args):
    from xray_hf.trainers.clip import CLIPTrainer

    arguments = CLIPTrainingArguments(output_dir=str(tmp_path), report_to=[], max_steps=1, optimizer="adamw", **args)
    return CLIPTrainer(model=model, args=arguments, train_loader=_OneBatch(), slip_videos=slip_videos)


class _OneBatch:
    def __iter__(self):
        return iter([])

    def state_dict(self):
        return {}

    def load_state_dict(self, state):
        pass


def test_gradient_caching_gives_the_full_batch_loss_and_gradients(tmp_path):
    # noise-free denoiser: the chunks then compute exactly the full batch's function (random draws per chunk
    # cannot equal one draw for the whole batch; the replay of each chunk's own draws is tested in test_grad_cache)
    config, batch = _batch({"denoise_noise_std": 0.0})

    def grads(chunk_size):
        torch.manual_seed(1)
        model = XrayCLIPModel(config).train()
        model.load_state_dict(reference_state)
        trainer = _trainer(tmp_path / str(chunk_size), model, gradient_cache_chunk_size=chunk_size)
        loss = trainer.compute_loss(model, batch)
        loss.backward()
        return loss.detach(), {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}

    reference_state = XrayCLIPModel(config).state_dict()
    full_loss, full = grads(None)
    for chunk in (5, 4):  # uneven and even chunks
        loss, cached = grads(chunk)
        assert torch.allclose(loss, full_loss, rtol=1e-5)
        assert cached.keys() == full.keys()
        for name, grad in full.items():
            assert torch.allclose(cached[name], grad, rtol=1e-4, atol=1e-6), (chunk, name)


def test_logit_scale_is_clamped_after_every_optimizer_step(tmp_path):
    config, batch = _batch({"logit_scale_init_value": math.log(100) - 1e-3})
    model = XrayCLIPModel(config).train()
    trainer = _trainer(tmp_path, model, learning_rate=1.0, lr_scheduler_type="constant")
    assert any(isinstance(cb, LogitScaleClampCallback) for cb in trainer.callback_handler.callbacks)
    with torch.no_grad():
        model.logit_scale.fill_(10.0)  # as if a step had overshot
    LogitScaleClampCallback().on_optimizer_step(trainer.args, trainer.state, trainer.control, model=model)
    assert model.logit_scale.item() == pytest.approx(math.log(100))
    with torch.no_grad():
        model.logit_scale.fill_(-3.0)
    model.clamp_logit_scale()
    assert model.logit_scale.item() == 0.0
    groups = trainer.create_optimizer().param_groups
    (scale_group,) = [g for g in groups if any(p is model.logit_scale for p in g["params"])]
    assert scale_group["weight_decay"] == 0.0


def test_clip_arguments_and_batches_are_checked(tmp_path):
    with pytest.raises(ValueError, match="gradient_cache_chunk_size"):
        CLIPTrainingArguments(output_dir=str(tmp_path), gradient_accumulation_steps=2)
    with pytest.raises(ValueError, match="resolution_schedule must start at step 0"):
        CLIPTrainingArguments(output_dir=str(tmp_path), resolution_schedule=[[5, 16]])
    config, batch = _batch()
    model = XrayCLIPModel(config).train()
    trainer = _trainer(tmp_path, model)
    with pytest.raises(ValueError, match="SimCLR views"):
        trainer.compute_loss(model, {k: v for k, v in batch.items() if not k.startswith("simclr")})
    with pytest.raises(ValueError, match="no text"):
        trainer.compute_loss(model, {"pixel_values": batch["pixel_values"]})


def test_slip_on_images_only_trains_clips_without_views(tmp_path):
    """`slip: {videos: false}`: a clip batch without SimCLR views trains on the other terms; an image batch
    without views is still refused, and a clip batch without views is refused when videos should have them."""
    config, batch = _batch()
    model = XrayCLIPModel(config).train()
    clips = {k: v for k, v in batch.items() if not k.startswith("simclr")}
    clips["pixel_values"] = torch.randn(12, 4, 3, 16, 16)
    loss, outputs = _trainer(tmp_path, model, slip_videos=False).compute_loss(model, clips, return_outputs=True)
    assert torch.isfinite(loss) and "slip_loss" not in outputs and outputs["contrastive_loss"] > 0
    images = {k: v for k, v in batch.items() if not k.startswith("simclr")}
    with pytest.raises(ValueError, match="SimCLR views"):
        _trainer(tmp_path, model, slip_videos=False).compute_loss(model, images)
    with pytest.raises(ValueError, match=r"clip batch has no SimCLR views.*slip: \{videos: false\}"):
        _trainer(tmp_path, model).compute_loss(model, clips)


def test_progressive_resolution_schedule_and_resume_point():
    from xray_hf.data import Resolution

    resolution = Resolution(32)
    callback = ProgressiveResolutionCallback(resolution, [[0, 16], [100, 24], [200, [32, 48]]], patch_size=8)
    assert [callback.size_at(s) for s in (0, 99, 100, 250)] == [(16, 16), (16, 16), (24, 24), (32, 48)]

    class State:
        global_step = 150

    callback.on_train_begin(None, State(), None)  # the transforms decode at the largest size, whatever the step
    assert resolution.size == (32, 48)
    batch = {"pixel_values": torch.rand(2, 3, 32, 48), "simclr_view_1": torch.rand(2, 4, 3, 32, 48),
             "input_ids": torch.ones(2, 5, dtype=torch.long)}
    resized = callback.resize_batch(batch, 150)  # a run resumed at step 150 continues at 24
    assert resized["pixel_values"].shape == (2, 3, 24, 24) and resized["simclr_view_1"].shape == (2, 4, 3, 24, 24)
    assert resized["input_ids"] is batch["input_ids"]
    assert callback.resize_batch(batch, 250)["pixel_values"] is batch["pixel_values"]  # already the step's size
    with pytest.raises(ValueError, match="divisible"):
        ProgressiveResolutionCallback(resolution, [[0, 20]], patch_size=8)


def test_collator_adds_texts_hashtag_mask_and_caption_groups():
    tokenizer = smollm2_tokenizer()
    collate = CLIPCollator(TokenizedTexts(tokenizer, XrayTextConfig.from_preset("tiny", max_position_embeddings=8)), base=SampleCollator(), hashtags=True)
    samples = [{"pixel_values": torch.zeros(3, 4, 4), "text": text, "hashtag_text": tags}
               for text, tags in (("a cat", "cat, pet"), ("a dog", ""), ("a cat", "cat"))]
    batch = collate(samples)
    assert batch["input_ids"].shape[0] == 3 and batch["hashtag_input_ids"].shape[0] == 3
    assert batch["hashtag_mask"].tolist() == [True, False, True]
    assert batch["group_ids"][0] == batch["group_ids"][2] != batch["group_ids"][1]  # identical captions share
    assert batch["hashtag_group_ids"][0] != batch["hashtag_group_ids"][2]  # "cat, pet" and "cat" differ
    same_tags = collate([{"pixel_values": torch.zeros(3, 4, 4), "text": text, "hashtag_text": "circle, left"}
                         for text in ("a red circle moving left", "a blue circle moving left")])
    assert same_tags["group_ids"][0] != same_tags["group_ids"][1]  # different captions: negatives in that term
    assert same_tags["hashtag_group_ids"][0] == same_tags["hashtag_group_ids"][1]  # same hashtags: not negatives
    assert "text" not in batch and "hashtag_text" not in batch
    with pytest.raises(ValueError, match="CaptionSampler"):
        collate([{"pixel_values": torch.zeros(3, 4, 4)}])


def test_llm2clip_tower_trains_from_its_text_cache(tmp_path):
    tokenizer = smollm2_tokenizer()
    torch.manual_seed(0)
    llm = LlamaForCausalLM(LlamaConfig(
        vocab_size=len(tokenizer), hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
        num_key_value_heads=2, head_dim=8, max_position_embeddings=64, tie_word_embeddings=True,
    ))
    llm.save_pretrained(tmp_path / "llm")
    tokenizer.save_pretrained(tmp_path / "llm")
    config = clip_config(tmp_path / "clip", max_steps=3)
    config["model"]["text"] = {"from_llm": str(tmp_path / "llm"),
                               "config": {"adapter_depth": 1, "max_text_length": 16}}
    config["data"].pop("video")
    config["data"]["eval"] = {"name": "openmoji", "split": "validation", "max_samples": 16}
    trainer, _ = _run(config)
    assert isinstance(trainer.text_inputs, CachedTexts)
    cache_dir = tmp_path / "clip" / "text_cache"
    assert (cache_dir / "xray_text_cache.json").is_file()
    model = trainer.model
    assert not any(p.requires_grad for p in model.text_model.llm.parameters())
    assert all(p.requires_grad for p in model.text_model.adapter.parameters())
    # a cached caption gives what running the frozen LLM on it gives
    from xray_hf.data import load_embedded
    from xray_hf.data.tables import take_samples

    trained = take_samples(load_embedded("openmoji", "train"), config["data"]["image"]["max_samples"])
    texts = trained["caption"][:2]  # rows the run trained on, so their captions are in the cache
    batch = TokenizedTexts.for_config(tokenizer, model.config.text_config)(texts)
    with torch.no_grad():
        tokens = model.get_text_features(**batch).pooler_output
        cached = model.get_text_features(**trainer.text_inputs(texts)).pooler_output
    assert torch.allclose(tokens, cached, atol=1e-5)
    # a second run opens the same cache instead of rebuilding it
    stamp = (cache_dir / "xray_text_cache.json").stat().st_mtime_ns
    _run(config)
    assert (cache_dir / "xray_text_cache.json").stat().st_mtime_ns == stamp
