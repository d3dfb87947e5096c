"""HashtagTrainer on real data: OpenMoji images and moving-shapes clips tagged with their shape and direction."""

import pytest
import torch

from xray_hf import HashtagVocabulary, XrayVisualConfig, XrayVisualForHashtagClassification
from xray_hf.data import SampleCollator
from xray_hf.eval.metrics import hashtag_metrics
from xray_hf.trainers import HashtagCollator, HashtagTrainer, HashtagTrainingArguments
from xray_hf.run_config.data import DataSpec
from xray_hf.data.inputs import source_table, build_eval_dataset, build_train_loader


def test_collator_builds_multi_hot_labels():
    vocab = HashtagVocabulary(["cat", "dog"])
    samples = [{"pixel_values": torch.zeros(3, 4, 4), "hashtags": ["dog", "x"], "id": "a"},
               {"pixel_values": torch.ones(3, 4, 4), "hashtags": [], "id": "b"}]
    batch = HashtagCollator(vocab)(samples)
    assert batch["pixel_values"].shape == (2, 3, 4, 4) and batch["labels"].tolist() == [[0, 1], [0, 0]]
    batch = HashtagCollator(vocab, base=SampleCollator())(samples)
    assert batch["id"] == ["a", "b"] and "hashtags" not in batch
    with pytest.raises(ValueError, match="tags"):
        HashtagCollator(vocab, column="tags")(samples)


def test_hashtag_trainer_learns_on_images_and_videos(tmp_path):
    data = DataSpec.from_dict({
        "resolution": 16,
        "image": {"name": "openmoji", "batch_size": 32, "max_samples": 256},
        "video": {"name": "moving-shapes", "batch_size": 8, "max_samples": 64, "num_frames": 4,
                  "hashtags_from": ["shape", "direction"]},
        "eval": {"name": "moving-shapes", "split": "train", "max_samples": 32, "num_frames": 4,
                 "hashtags_from": ["shape", "direction"]},
        "augment": {"flip_p": 0.0, "blur_p": 0.0, "brightness": 0.0, "saturation": 0.0},
    })
    tags = [t for spec in (data.image, data.video) for t in source_table(spec)["hashtags"]]
    vocab = HashtagVocabulary.from_tag_lists(tags, min_count=3)
    assert {"circle", "square", "triangle", "left", "right", "up", "down"} <= set(vocab.labels)
    torch.manual_seed(0)
    config = XrayVisualConfig.from_preset(
        "tiny", image_size=16, patch_size=4, num_frames=4, hidden_size=32, num_hidden_layers=2,
        num_attention_heads=2, intermediate_size=64, **vocab.config_kwargs())
    args = HashtagTrainingArguments(
        output_dir=str(tmp_path), max_steps=48, learning_rate=2e-3, warmup_steps=4, logging_steps=8,
        optimizer="adamw", report_to=[], disable_tqdm=True, save_strategy="no", seed=0, label_smoothing_factor=0.1,
        per_device_eval_batch_size=32,
    )
    trainer = HashtagTrainer(
        model=XrayVisualForHashtagClassification(config), args=args, data_collator=HashtagCollator(vocab),
        train_loader=build_train_loader(data, 0, collate_fn=HashtagCollator(vocab, base=SampleCollator())),
        eval_dataset=build_eval_dataset(data), compute_metrics=hashtag_metrics,
    )
    before = trainer.evaluate()
    trainer.train()
    after = trainer.evaluate()
    losses = [e["loss"] for e in trainer.state.log_history if "loss" in e]
    assert losses[-1] < losses[0]
    assert after["eval_loss"] < before["eval_loss"]
    assert after["eval_mAP"] > before["eval_mAP"]
    with pytest.raises(ValueError, match="hashtag_loss"):
        HashtagTrainingArguments(output_dir=str(tmp_path), hashtag_loss="focal")
    with pytest.raises(ValueError, match="labels"):
        trainer.compute_loss(trainer.model, {"pixel_values": torch.zeros(1, 3, 16, 16)})


def test_freeze_backbone_is_a_linear_probe(tmp_path):
    config = XrayVisualConfig.from_preset("tiny", num_labels=3)
    args = HashtagTrainingArguments(output_dir=str(tmp_path), freeze_backbone=True, report_to=[], max_steps=1)
    trainer = HashtagTrainer(model=XrayVisualForHashtagClassification(config), args=args)
    trainer.create_optimizer()
    trained = {id(p) for g in trainer.optimizer.param_groups for p in g["params"]}
    assert trained == {id(trainer.model.classifier.weight), id(trainer.model.classifier.bias)}


def test_probe_trains_the_head_on_an_eval_mode_backbone(tmp_path):
    """A linear probe must read the backbone as at inference: the Trainer calls `model.train()` every step, and
    DropPath (drop_path_rate > 0) must stay off in the frozen backbone; only the head may change."""
    torch.manual_seed(0)
    config = XrayVisualConfig.from_preset("tiny", num_labels=3, drop_path_rate=0.5)
    model = XrayVisualForHashtagClassification(config)
    images, labels = torch.randn(4, 3, 32, 32), torch.eye(3)[[0, 1, 2, 0]]
    args = HashtagTrainingArguments(
        output_dir=str(tmp_path), freeze_backbone=True, report_to=[], max_steps=3, per_device_train_batch_size=4,
        learning_rate=1e-2, optimizer="adamw", save_strategy="no", disable_tqdm=True, seed=0,
        dataloader_pin_memory=False,
    )
    trainer = HashtagTrainer(
        model=model, args=args, train_dataset=[{"pixel_values": x, "labels": y} for x, y in zip(images, labels)]
    )
    seen = []
    hook = model.xray_visual.register_forward_hook(
        lambda module, inputs, out: seen.append((module.training, inputs[0].clone(), out.pooler_output.detach()))
    )
    before = {name: p.detach().clone() for name, p in model.named_parameters()}
    trainer.train()
    hook.remove()
    assert len(seen) == 3 and model.training and model.classifier.training  # the head itself is in train mode
    with torch.no_grad():
        for training, pixel_values, pooled in seen:
            assert not training  # the backbone ran in eval mode during each training step
            # DropPath off: the same images give the inference embedding at every step
            assert torch.allclose(pooled, model.xray_visual.eval()(pixel_values).pooler_output, atol=1e-6)
    changed = {name for name, p in model.named_parameters() if not torch.equal(p, before[name])}
    assert changed == {"classifier.weight", "classifier.bias"}
