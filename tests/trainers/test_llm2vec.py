import json
import time

import pytest
import torch
import torch.nn.functional as F
from datasets import Dataset
from peft import PeftModel
from safetensors import safe_open
from transformers import AutoModel, LlamaConfig, LlamaForCausalLM, LlamaModel

import xray_hf  # noqa: F401
from xray_hf import XrayLLM2CLIPTextConfig, XrayLLM2CLIPTextForMNTP, XrayLLM2CLIPTextModel
from xray_hf.convert import smollm2_checkpoint, smollm2_tokenizer
from xray_hf.trainers.llm2vec import (
    LLM2VecTrainingArguments,
    MNTPCollator,
    MNTPTrainer,
    SimCSECollator,
    SimCSETrainer,
    add_lora,
    load_lora,
    merge_lora,
)

CAPTIONS = [
    "a photo of a cat sleeping on a red sofa", "two dogs", "an aerial view of a city at night",
    "a bowl of soup", "a man riding a bicycle down a hill", "three apples on a wooden table",
]


@pytest.fixture(scope="module")
def tokenizer():
    return smollm2_tokenizer()


@pytest.fixture(scope="module")
def base_dir(tokenizer, tmp_path_factory):
    """A saved tiny text tower: the base every adapter names."""
    torch.manual_seed(0)
    llm = dict(model_type="llama", vocab_size=len(tokenizer), hidden_size=32, intermediate_size=64,
               num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2, tie_word_embeddings=True)
    path = tmp_path_factory.mktemp("text_base")
    XrayLLM2CLIPTextModel(XrayLLM2CLIPTextConfig(llm_config=llm, projection_dim=16)).save_pretrained(path)
    return path


def tokens(tokenizer, texts):
    return tokenizer(texts, padding=True, return_tensors="pt")


def perturb_lora(peft_model, seed=1):
    """LoRA starts as an identity (B = 0); give it weights so merging has something to check."""
    torch.manual_seed(seed)
    with torch.no_grad():
        for name, param in peft_model.named_parameters():
            if "lora_" in name:
                param.normal_(0.0, 0.2)


def args(tmp_path, **overrides):
    defaults = dict(output_dir=str(tmp_path), report_to=[], save_strategy="no", use_cpu=True, logging_steps=1,
                    disable_tqdm=True, seed=0)
    return LLM2VecTrainingArguments(**{**defaults, **overrides})


# -- collators --


@pytest.mark.parametrize("side", ["right", "left"])
def test_mntp_collator_masks_predictable_tokens_only(tokenizer, side):
    torch.manual_seed(0)
    collator = MNTPCollator(tokenizer, mask_probability=0.3, padding_side=side)
    assert tokenizer.convert_ids_to_tokens(collator.mask_token_id) == "_"
    clean = tokenizer(CAPTIONS, padding=True, padding_side=side, return_tensors="pt")
    batch = collator([{"text": text} for text in CAPTIONS])
    labels, ids, mask = batch["labels"], batch["input_ids"], batch["attention_mask"]
    masked = labels != -100
    assert torch.equal(mask, clean["attention_mask"])
    assert torch.equal(labels[masked], clean["input_ids"][masked])  # labels are the original tokens
    assert masked.any(dim=1).all()  # every caption has something to predict
    first_real = mask.float().argmax(dim=1)
    assert not masked[torch.arange(len(CAPTIONS)), first_real].any()  # nothing precedes the first token
    assert not (masked & (mask == 0)).any()
    assert torch.equal(ids[~masked], clean["input_ids"][~masked])  # unmasked tokens are untouched
    assert (ids[masked] == collator.mask_token_id).float().mean() > 0.5  # mostly the mask token (80%)


def test_mntp_masks_are_a_function_of_seed_epoch_and_example(tokenizer, monkeypatch):
    """What is masked does not come from torch's global RNG (which DataLoader workers seed per worker and a resume
    does not bring back as the uninterrupted run had it): each example draws from (seed, epoch, example), as the
    SimCSE collator does, so workers and a resumed run mask what one uninterrupted process masks."""
    monkeypatch.setenv("TOKENIZERS_PARALLELISM", "false")
    features = [{"id": f"item{i}", "text": text} for i, text in enumerate(CAPTIONS)]
    collator = MNTPCollator(tokenizer, mask_probability=0.3, seed=0)
    first = collator(features)
    torch.manual_seed(123)  # the global RNG plays no part
    again = collator(features)
    assert torch.equal(first["input_ids"], again["input_ids"]) and torch.equal(first["labels"], again["labels"])
    alone = collator([features[2]])  # an example masks the same alone as in a batch (right padding)
    width = alone["labels"].shape[1]
    assert torch.equal(first["labels"][2, :width], alone["labels"][0])
    assert torch.equal(first["input_ids"][2, :width], alone["input_ids"][0])
    loader = torch.utils.data.DataLoader(features, batch_size=3, num_workers=2, collate_fn=collator)
    in_workers = list(loader)
    for batch, part in zip(in_workers, (features[:3], features[3:])):
        assert torch.equal(batch["labels"], collator(part)["labels"])
        assert torch.equal(batch["input_ids"], collator(part)["input_ids"])
    collator.set_epoch(1)
    assert not torch.equal(collator(features)["labels"], first["labels"])  # a new epoch masks anew
    collator.set_epoch(0)
    assert torch.equal(collator(features)["labels"], first["labels"])
    assert not torch.equal(MNTPCollator(tokenizer, mask_probability=0.3, seed=1)(features)["labels"], first["labels"])


def test_mntp_collator_bad_settings_raise(tokenizer):
    with pytest.raises(ValueError, match="mask_probability"):
        MNTPCollator(tokenizer, mask_probability=0.0)
    with pytest.raises(ValueError, match="single token"):
        MNTPCollator(tokenizer, mask_token="not one token")
    with pytest.raises(ValueError, match="non-empty caption"):
        MNTPCollator(tokenizer)([{"text": ""}])


def test_simcse_collator_pairs_and_groups(tokenizer):
    collator = SimCSECollator(tokenizer, seed=0)
    features = [
        {"id": "cat", "captions": ["a cat", "a photo of a cat", "kitty on a sofa"]},
        {"id": "dog", "captions": ["a dog", "a puppy"]},
        {"id": "cat", "captions": ["a cat again", "one more cat"]},
    ]
    batch = collator(features)
    assert batch["input_ids"].shape[0] == 6
    assert batch["group_ids"].tolist() == [0, 1, 0]
    texts = tokenizer.batch_decode(batch["input_ids"], skip_special_tokens=True)
    for row, feature in enumerate(features):
        anchor, positive = texts[row].strip(), texts[row + 3].strip()
        assert anchor != positive and {anchor, positive} <= set(feature["captions"])
    with pytest.raises(ValueError, match="at least two captions"):
        collator([{"id": "x", "captions": ["only one"]}])


def simcse_items(count: int, captions: int = 8) -> list[dict]:
    return [{"id": f"item{i}", "captions": [f"a photo of item {i} seen from side {j}" for j in range(captions)]}
            for i in range(count)]


def drawn_pairs(tokenizer, batch, features) -> dict[str, tuple[int, int]]:
    """The (anchor, positive) caption indices the collator drew for each item of `features`."""
    texts = [t.strip() for t in tokenizer.batch_decode(batch["input_ids"], skip_special_tokens=True)]
    half = len(texts) // 2
    return {f["id"]: (f["captions"].index(texts[row]), f["captions"].index(texts[row + half]))
            for row, f in enumerate(features)}


def test_simcse_workers_draw_different_pairs_and_the_same_as_one_process(tokenizer, monkeypatch):
    monkeypatch.setenv("TOKENIZERS_PARALLELISM", "false")
    items = simcse_items(16)
    collator = SimCSECollator(tokenizer, seed=0)
    loader = torch.utils.data.DataLoader(items, batch_size=4, num_workers=2, collate_fn=collator,
                                         persistent_workers=True)
    shuffled = items[::-1]
    for epoch in (0, 1):
        collator.set_epoch(epoch)  # reaches the persistent workers' copies too
        batches = list(loader)  # batches 0, 2 come from worker 0; 1, 3 from worker 1
        per_batch = [drawn_pairs(tokenizer, batch, items[4 * i: 4 * i + 4]) for i, batch in enumerate(batches)]
        pairs = [list(drawn.values()) for drawn in per_batch]
        assert pairs[0] != pairs[1] and pairs[2] != pairs[3]  # the two workers' first and second batches
        # each item's draw depends on the item, not on the worker, the batch or its position in the batch
        in_workers = {item: pair for drawn in per_batch for item, pair in drawn.items()}
        alone = SimCSECollator(tokenizer, seed=0)
        alone.set_epoch(epoch)
        assert in_workers == drawn_pairs(tokenizer, alone(shuffled), shuffled)
        assert len(set(in_workers.values())) > 8  # 56 possible pairs: independent draws, not one for all items


def test_simcse_draw_is_a_function_of_seed_epoch_and_item(tokenizer):
    items = simcse_items(12)
    collator = SimCSECollator(tokenizer, seed=0)
    first = drawn_pairs(tokenizer, collator(items), items)
    assert drawn_pairs(tokenizer, collator(items), items) == first  # drawing again: the same pairs
    collator.set_epoch(1)
    assert collator.epoch == 1
    second_epoch = drawn_pairs(tokenizer, collator(items), items)
    assert second_epoch != first  # a new epoch draws new pairs
    collator.set_epoch(0)
    assert drawn_pairs(tokenizer, collator(items), items) == first
    assert drawn_pairs(tokenizer, SimCSECollator(tokenizer, seed=1)(items), items) != first
    with pytest.raises(ValueError, match="seed"):
        SimCSECollator(tokenizer, seed=-1)
    with pytest.raises(ValueError, match="epoch"):
        collator.set_epoch(-1)


# -- LoRA: where it goes, how it is saved, merged and loaded --


def test_add_lora_targets_attention_and_mlp_of_every_layer(base_dir):
    peft_model = add_lora(XrayLLM2CLIPTextModel.from_pretrained(base_dir), r=4)
    trainable = [name for name, p in peft_model.named_parameters() if p.requires_grad]
    assert trainable and all("lora_" in name for name in trainable)
    wrapped = {name.split(".lora_")[0].split("llm.")[1] for name in trainable}
    expected = {f"layers.{i}.{m}" for i in range(2) for m in (
        "self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj", "self_attn.o_proj",
        "mlp.gate_proj", "mlp.up_proj", "mlp.down_proj")}
    assert wrapped == expected


def test_add_lora_needs_a_saved_xray_base(tokenizer, base_dir, tmp_path):
    fresh = XrayLLM2CLIPTextModel(XrayLLM2CLIPTextConfig.from_pretrained(base_dir))
    with pytest.raises(ValueError, match="not a saved checkpoint"):
        add_lora(fresh)
    LlamaConfig(hidden_size=32, num_hidden_layers=1).save_pretrained(tmp_path)
    with pytest.raises(ValueError, match="'llama' checkpoint"):
        add_lora(XrayLLM2CLIPTextModel.from_pretrained(base_dir), base_model_name_or_path=tmp_path)
    with pytest.raises(TypeError, match="XrayLLM2CLIPText"):
        add_lora(torch.nn.Linear(2, 2))


def test_merged_and_unmerged_give_the_same_embeddings(tokenizer, base_dir):
    peft_model = add_lora(XrayLLM2CLIPTextModel.from_pretrained(base_dir), r=4).eval()
    perturb_lora(peft_model)
    batch = tokens(tokenizer, CAPTIONS)
    with torch.no_grad():
        unmerged = peft_model(**batch).text_embeds
        base = XrayLLM2CLIPTextModel.from_pretrained(base_dir).get_text_features(**batch).pooler_output
    assert (unmerged - base).abs().max() > 1e-3  # the adapter does change the embedding
    merged = merge_lora(peft_model)
    assert type(merged) is XrayLLM2CLIPTextModel
    with torch.no_grad():
        assert torch.allclose(merged.get_text_features(**batch).pooler_output, unmerged, atol=1e-5)
    # merging restores the CLIP-stage freezing: only adapter and projection train
    assert {n.split(".")[0] for n, p in merged.named_parameters() if p.requires_grad} == {"adapter", "text_projection"}


def test_adapter_is_saved_relative_to_its_base_and_loads_in_one_call(tokenizer, base_dir, tmp_path):
    peft_model = add_lora(XrayLLM2CLIPTextModel.from_pretrained(base_dir), r=4).eval()
    perturb_lora(peft_model)
    peft_model.save_pretrained(tmp_path)
    adapter_config = json.loads((tmp_path / "adapter_config.json").read_text())
    assert adapter_config["base_model_name_or_path"] == str(base_dir)
    with safe_open(str(tmp_path / "adapter_model.safetensors"), "pt") as weights:
        keys = list(weights.keys())
    # peft's file format: base model module names under peft's fixed `base_model.model.` prefix
    assert keys and all(k.startswith("base_model.model.llm.layers.") and ".lora_" in k for k in keys)
    batch = tokens(tokenizer, CAPTIONS)
    with torch.no_grad():
        expected = peft_model(**batch).text_embeds
        for loader in (XrayLLM2CLIPTextModel.from_pretrained, AutoModel.from_pretrained):
            resolved = loader(tmp_path)  # one call: base from the adapter config, then the adapter
            assert type(resolved) is XrayLLM2CLIPTextModel
            assert torch.allclose(resolved.get_text_features(**batch).pooler_output, expected, atol=1e-5)
            assert not any(p.requires_grad for p in resolved.llm.parameters())
        merged = load_lora(XrayLLM2CLIPTextModel.from_pretrained(base_dir), tmp_path)
        assert torch.allclose(merged.get_text_features(**batch).pooler_output, expected, atol=1e-5)


def test_mntp_adapter_applies_to_the_text_tower(tokenizer, base_dir, tmp_path):
    mntp = add_lora(XrayLLM2CLIPTextForMNTP.from_pretrained(base_dir), r=4)
    perturb_lora(mntp)
    mntp.save_pretrained(tmp_path)
    reference = merge_lora(mntp)  # the MNTP model with the adapter folded in
    text = load_lora(XrayLLM2CLIPTextModel.from_pretrained(base_dir), tmp_path)
    batch = tokens(tokenizer, CAPTIONS)
    with torch.no_grad():
        assert torch.allclose(text.llm_hidden_states(**batch), reference.llm_hidden_states(**batch), atol=1e-5)


def test_adapter_refuses_a_stock_causal_llm(base_dir, tmp_path):
    peft_model = add_lora(XrayLLM2CLIPTextModel.from_pretrained(base_dir), r=4)
    peft_model.save_pretrained(tmp_path)
    config = XrayLLM2CLIPTextConfig.from_pretrained(base_dir).llm_config
    stock = LlamaModel(LlamaConfig(**{k: v for k, v in config.to_dict().items() if k != "is_causal"}))
    with pytest.raises(ValueError, match="not found in the base model|Target modules"):
        PeftModel.from_pretrained(stock, tmp_path)


def test_documented_mntp_flow_keeps_the_head_of_an_untied_llm(tokenizer, tmp_path):
    """Mistral, larger Qwen2 and LLaMA-3-8B have an LM head of their own: MNTP must train against it, not noise."""
    torch.manual_seed(0)
    llm = LlamaForCausalLM(LlamaConfig(vocab_size=64, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                                       num_attention_heads=4, num_key_value_heads=2, tie_word_embeddings=False))
    llm.save_pretrained(tmp_path / "llm")
    # the module docstring's flow: text tower from the LLM, saved; the MNTP model from that saved base
    XrayLLM2CLIPTextModel.from_llm(tmp_path / "llm", projection_dim=8).save_pretrained(tmp_path / "text_base")
    mntp = XrayLLM2CLIPTextForMNTP.from_pretrained(tmp_path / "text_base")
    assert torch.equal(mntp.lm_head.weight, llm.lm_head.weight)
    assert not torch.equal(mntp.lm_head.weight, mntp.llm.get_input_embeddings().weight)
    peft_model = add_lora(mntp, r=4)
    assert torch.equal(peft_model.base_model.model.lm_head.weight, llm.lm_head.weight)
    ids = torch.randint(3, 64, (2, 7))
    with torch.no_grad():
        logits = peft_model(input_ids=ids, attention_mask=torch.ones_like(ids)).logits
        reference = llm.lm_head(mntp.llm_hidden_states(ids, torch.ones_like(ids)))
    assert torch.allclose(logits, reference, atol=1e-6)  # the LoRA starts as identity: the LLM's own head


# -- the trainers --


def test_mntp_trainer_lowers_the_loss(tokenizer, base_dir, tmp_path):
    # a random tiny LLM: LoRA alone barely moves its 49k-way output in a few steps, so it trains fully here
    # (LoRA training on the real model is the slow test below)
    torch.manual_seed(0)
    model = XrayLLM2CLIPTextForMNTP.from_pretrained(base_dir)
    model.freeze_llm(False)
    data = Dataset.from_dict({"text": CAPTIONS * 4})
    trainer = MNTPTrainer(model=model, args=args(tmp_path, per_device_train_batch_size=12, max_steps=30,
                                                 learning_rate=1e-2),
                          train_dataset=data, data_collator=MNTPCollator(tokenizer, mask_probability=0.3))
    trainer.train()
    losses = [log["loss"] for log in trainer.state.log_history if "loss" in log]
    assert sum(losses[-5:]) / 5 < sum(losses[:5]) / 5 - 0.5
    trainer.save_model(tmp_path / "saved")  # the arguments as JSON, no pickled training_args.bin
    assert not (tmp_path / "saved" / "training_args.bin").exists()
    assert (tmp_path / "saved" / "training_args.json").is_file()


def test_simcse_trainer_pulls_captions_of_one_item_together(tokenizer, base_dir, tmp_path):
    torch.manual_seed(0)
    model = add_lora(XrayLLM2CLIPTextModel.from_pretrained(base_dir), r=8)
    items = {"cat": ["a cat", "a photo of a cat", "a kitten"], "car": ["a car", "a red car", "a photo of a car"],
             "soup": ["a bowl of soup", "soup", "hot soup"], "tree": ["a tree", "a tall tree", "a photo of a tree"]}
    data = Dataset.from_dict({"id": list(items), "captions": list(items.values())})
    trainer = SimCSETrainer(model=model, args=args(tmp_path, per_device_train_batch_size=4, max_steps=25,
                                                   learning_rate=2e-2),
                            train_dataset=data, data_collator=SimCSECollator(tokenizer, seed=0))
    trainer.train()
    losses = [log["loss"] for log in trainer.state.log_history if "loss" in log]
    assert sum(losses[-5:]) / 5 < 0.5 * sum(losses[:5]) / 5



class RecordingSimCSETrainer(SimCSETrainer):
    """Records the token ids of every batch it trains on, by global step."""

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        self.seen[self.state.global_step] = (self.data_collator.epoch, inputs["input_ids"].tolist())
        return super().compute_loss(model, inputs, return_outputs, num_items_in_batch)


def test_simcse_resumed_run_draws_what_the_uninterrupted_run_drew(tokenizer, base_dir, tmp_path):
    data = Dataset.from_list(simcse_items(6))

    def run(output_dir, resume_from_checkpoint=None):
        torch.manual_seed(0)
        trainer = RecordingSimCSETrainer(
            model=add_lora(XrayLLM2CLIPTextModel.from_pretrained(base_dir), r=4),
            args=args(output_dir, per_device_train_batch_size=2, max_steps=9, save_strategy="steps", save_steps=4),
            train_dataset=data, data_collator=SimCSECollator(tokenizer, seed=0))
        trainer.seen = {}
        trainer.train(resume_from_checkpoint=resume_from_checkpoint)
        return trainer.seen

    full = run(tmp_path / "full")  # 3 steps per epoch: epochs 0, 1, 2
    assert [full[step][0] for step in range(9)] == [0, 0, 0, 1, 1, 1, 2, 2, 2]  # the trainer sets the epoch
    for step in (4, 8):  # resume mid-epoch 1, and mid-epoch 2
        resumed = run(tmp_path / "full", resume_from_checkpoint=str(tmp_path / "full" / f"checkpoint-{step}"))
        assert sorted(resumed) == list(range(step, 9))
        assert resumed == {s: full[s] for s in resumed}


# -- the real model (slow): MNTP then SimCSE on SmolLM2-135M --

# Honest data note: no caption set with several captions per image ships in a registry package, so the
# captions are paraphrase templates over the class names of Fashion-MNIST and MNIST. SimCSE trains on one
# set of templates; retrieval is measured on other templates (and on classes it never saw).
FASHION = ["T-shirt", "pair of trousers", "pullover", "dress", "coat", "sandal", "shirt", "sneaker", "bag",
           "ankle boot"]
DIGITS = ["zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine"]
CLASSES = FASHION + [f"handwritten digit {d}" for d in DIGITS]
TRAIN_CLASSES, UNSEEN_CLASSES = CLASSES[:7] + CLASSES[10:17], CLASSES[7:10] + CLASSES[17:]
TRAIN_TEMPLATES = [
    "a photo of a {}.", "a picture showing a {}", "an image of a {} on a plain background",
    "a small {} in the centre of the frame", "a black and white photo of a {}", "a low resolution picture of a {}",
    "a close-up shot of a {}", "there is a {} in this picture",
]
HELD_OUT_TEMPLATES = [
    "a blurry photograph of a {}", "this image contains a {}", "a cropped photo of a {}",
    "a grayscale image of one {}", "a {}, seen from the front",
]


def retrieval_top1(model, tokenizer, classes) -> float:
    """Caption-to-caption retrieval: is each caption's nearest other caption one of the same class?"""
    texts = [t.format(c) for c in classes for t in HELD_OUT_TEMPLATES]
    labels = torch.arange(len(classes)).repeat_interleave(len(HELD_OUT_TEMPLATES))
    model.eval()
    with torch.no_grad():
        pooled = model.get_llm_pooled_output(**tokens(tokenizer, texts))
    sim = F.normalize(pooled, dim=-1) @ F.normalize(pooled, dim=-1).T
    sim.fill_diagonal_(-2.0)
    return (labels[sim.argmax(dim=1)] == labels).float().mean().item()


@pytest.mark.slow
def test_real_smollm2_mntp_then_simcse(tmp_path):
    torch.manual_seed(0)
    start = time.perf_counter()
    tokenizer = smollm2_tokenizer()
    XrayLLM2CLIPTextModel.from_llm(smollm2_checkpoint()).save_pretrained(tmp_path / "base")

    mntp = add_lora(XrayLLM2CLIPTextForMNTP.from_pretrained(tmp_path / "base"))
    texts = [t.format(c) for c in TRAIN_CLASSES for t in TRAIN_TEMPLATES]
    trainer = MNTPTrainer(model=mntp, args=args(tmp_path / "mntp", per_device_train_batch_size=16, max_steps=20,
                                                learning_rate=1e-3, warmup_steps=2),
                          train_dataset=Dataset.from_dict({"text": texts}),
                          data_collator=MNTPCollator(tokenizer, mask_probability=0.2))
    trainer.train()
    mntp_losses = [log["loss"] for log in trainer.state.log_history if "loss" in log]
    mntp.save_pretrained(tmp_path / "mntp_lora")
    load_lora(XrayLLM2CLIPTextModel.from_pretrained(tmp_path / "base"), tmp_path / "mntp_lora").save_pretrained(
        tmp_path / "mntp")

    text = XrayLLM2CLIPTextModel.from_pretrained(tmp_path / "mntp")
    before = retrieval_top1(text, tokenizer, TRAIN_CLASSES), retrieval_top1(text, tokenizer, UNSEEN_CLASSES)
    simcse = add_lora(text)
    items = Dataset.from_dict({"id": TRAIN_CLASSES,
                               "captions": [[t.format(c) for t in TRAIN_TEMPLATES] for c in TRAIN_CLASSES]})
    # every batch holds all 14 training classes; a high constant learning rate, so a few steps suffice
    trainer = SimCSETrainer(model=simcse, args=args(tmp_path / "simcse", per_device_train_batch_size=14,
                                                    max_steps=30, learning_rate=1e-3, lr_scheduler_type="constant"),
                            train_dataset=items, data_collator=SimCSECollator(tokenizer, seed=0))
    trainer.train()
    simcse_losses = [log["loss"] for log in trainer.state.log_history if "loss" in log]
    after = retrieval_top1(simcse, tokenizer, TRAIN_CLASSES), retrieval_top1(simcse, tokenizer, UNSEEN_CLASSES)

    mntp_first, mntp_last = sum(mntp_losses[:5]) / 5, sum(mntp_losses[-5:]) / 5
    print(f"\nMNTP loss (mean of first/last 5 of {len(mntp_losses)} steps): {mntp_first:.3f} -> {mntp_last:.3f}")
    print(f"SimCSE loss: {sum(simcse_losses[:5]) / 5:.3f} -> {sum(simcse_losses[-5:]) / 5:.3f}")
    print(f"caption->caption top-1, held-out templates, trained classes: {before[0]:.3f} -> {after[0]:.3f}")
    print(f"caption->caption top-1, held-out templates, unseen classes:  {before[1]:.3f} -> {after[1]:.3f}")
    print(f"time: {time.perf_counter() - start:.0f} s")
    assert mntp_last < mntp_first - 1.0
    assert after[0] > before[0] + 0.3  # held-out templates of the trained classes
    assert after[1] > before[1] + 0.1  # classes SimCSE never saw
