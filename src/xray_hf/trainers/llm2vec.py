"""Training the LLM side of LLM2CLIP (paper section 4.6.2): LLM2Vec's MNTP, then supervised SimCSE, with LoRA.

Stages, each from the last checkpoint (every checkpoint is an `xray_llm2clip_text` one, so no stage's output
can be loaded as a plain causal LLM by mistake):

```python
text = XrayLLM2CLIPTextModel.from_llm("smollm2/")             # bidirectional LLM, new adapter + projection
text.save_pretrained("run/text_base")                          # with the LM head of an untied LLM
mntp = add_lora(XrayLLM2CLIPTextForMNTP.from_pretrained("run/text_base"))  # the LLM's own head, frozen
MNTPTrainer(model=mntp, args=..., train_dataset=texts, data_collator=MNTPCollator(tokenizer)).train()
mntp.save_pretrained("run/mntp_lora")                          # adapter only, keys relative to the base
text = load_lora(XrayLLM2CLIPTextModel.from_pretrained("run/text_base"), "run/mntp_lora")  # merged
text.save_pretrained("run/mntp")                               # merged: the base of the next stage
simcse = add_lora(XrayLLM2CLIPTextModel.from_pretrained("run/mntp"))
SimCSETrainer(model=simcse, ..., data_collator=SimCSECollator(tokenizer)).train()
simcse.save_pretrained("run/simcse_lora")
text = XrayLLM2CLIPTextModel.from_pretrained("run/simcse_lora")  # one call: base + adapter (unmerged)
text.freeze_llm()                                              # CLIP stage: adapter + projection only
```

LoRA sits on the LLM's attention and MLP projections (`LORA_TARGET_MODULES`); the saved adapter's keys are
relative to the base model (`llm.layers.N...`), and the adapter config names the base checkpoint, so
`from_pretrained(adapter_dir)` (ours or `AutoModel`'s) resolves base + adapter in one call.
"""

from __future__ import annotations

import hashlib
import json
import math
import numbers
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from peft import LoraConfig, PeftModel, get_peft_model
from transformers import PreTrainedTokenizerBase, Trainer, TrainerCallback, TrainingArguments

from ..configuration.text import XrayLLM2CLIPTextConfig
from ..losses import simcse_loss
from ..modeling.llm2clip import XrayLLM2CLIPTextPreTrainedModel
from .base import XrayTrainerMixin

# Attention (q, k, v, o) and MLP (gate, up, down) projections of every LLM layer, matched on full module names
# from the base model, so an adapter can only attach to an `llm.*` LLM inside our models.
LORA_TARGET_MODULES = r"llm\.layers\.\d+\.(self_attn\.(q|k|v|o)_proj|mlp\.(gate|up|down)_proj)"


# ---------------------------------------------------------------------------------------------------------
# LoRA: add, merge, load
# ---------------------------------------------------------------------------------------------------------


def _check_xray_text_checkpoint(path: str | os.PathLike) -> None:
    config_file = Path(path) / "config.json"
    if not config_file.is_file():
        raise ValueError(
            f"LoRA base {str(path)!r} is not a saved checkpoint: save the model with save_pretrained and load it "
            "with from_pretrained first, so the adapter names a base that from_pretrained can resolve"
        )
    model_type = json.loads(config_file.read_text()).get("model_type")
    if model_type != XrayLLM2CLIPTextConfig.model_type:
        raise ValueError(
            f"LoRA base {str(path)!r} is a {model_type!r} checkpoint; an LLM2Vec adapter must name an "
            f"{XrayLLM2CLIPTextConfig.model_type!r} checkpoint (a plain LLM would load it causally)"
        )


def add_lora(
    model: XrayLLM2CLIPTextPreTrainedModel,
    r: int = 16,
    lora_alpha: int = 32,
    lora_dropout: float = 0.05,
    base_model_name_or_path: str | os.PathLike | None = None,
) -> PeftModel:
    """
    Wrap `model` with LoRA on the LLM's attention and MLP projections (LLM2Vec's r=16, alpha=32, dropout 0.05).

    Only the LoRA weights train. `model` must come from `from_pretrained` on an `xray_llm2clip_text` checkpoint
    (or name one in `base_model_name_or_path`): the adapter records it as its base.
    """
    if not isinstance(model, XrayLLM2CLIPTextPreTrainedModel):
        raise TypeError(f"add_lora expects an XrayLLM2CLIPText model, got {type(model).__name__}")
    base = str(base_model_name_or_path or model.name_or_path or "")
    _check_xray_text_checkpoint(base)
    config = LoraConfig(
        r=r,
        lora_alpha=lora_alpha,
        lora_dropout=lora_dropout,
        target_modules=LORA_TARGET_MODULES,
        base_model_name_or_path=base,
    )
    peft_model = get_peft_model(model, config)
    peft_model.peft_config["default"].base_model_name_or_path = base
    return peft_model


def merge_lora(peft_model: PeftModel) -> XrayLLM2CLIPTextPreTrainedModel:
    """Fold the LoRA weights into the LLM (`merge_and_unload`); restores `config.freeze_llm` for the rest."""
    if not isinstance(peft_model, PeftModel):
        raise TypeError(f"merge_lora expects a peft PeftModel, got {type(peft_model).__name__}")
    model = peft_model.merge_and_unload()
    for param in model.parameters():
        param.requires_grad_(True)
    model.freeze_llm(model.config.freeze_llm)
    return model


def load_lora(
    model: XrayLLM2CLIPTextPreTrainedModel, adapter_dir: str | os.PathLike, merge: bool = True
) -> XrayLLM2CLIPTextPreTrainedModel | PeftModel:
    """Attach a saved LoRA adapter to `model`, merged into the weights by default (the next stage's base)."""
    peft_model = PeftModel.from_pretrained(model, str(adapter_dir))
    return merge_lora(peft_model) if merge else peft_model


# ---------------------------------------------------------------------------------------------------------
# Collators
# ---------------------------------------------------------------------------------------------------------


def _tokenize(tokenizer: PreTrainedTokenizerBase, texts: list[str], max_length: int, padding_side: str, **kwargs):
    if not texts or not all(isinstance(t, str) and t.strip() for t in texts):
        raise ValueError("every example needs a non-empty caption string")
    return tokenizer(
        texts,
        padding=True,
        truncation=True,
        max_length=max_length,
        padding_side=padding_side,
        return_tensors="pt",
        **kwargs,
    )


class ExampleDraws:
    """For collators whose random draws must survive workers and resumes: an example's draw is a pure function of
    (`seed`, epoch, example), the example identified by a SHA-256 of what identifies it (as the data layer keys
    each sample's randomness). So DataLoader workers (each with a copy of the collator) draw independently, an
    example draws the same wherever and whenever it is collated, and a resumed run draws what the uninterrupted one
    would. The epoch (`set_epoch`, which the LLM2Vec trainers call at every epoch) is shared with the workers,
    persistent ones too. Subclasses are dataclasses with `seed` and `_epoch` fields and call `_init_draws`."""

    seed: int
    _epoch: torch.Tensor

    def _init_draws(self) -> None:
        if isinstance(self.seed, bool) or not isinstance(self.seed, numbers.Integral) or self.seed < 0:
            raise ValueError(f"seed must be a non-negative int, got {self.seed!r}")
        self.seed = int(self.seed)
        # shared with DataLoader workers (also persistent ones), like `DecodedStream`'s epoch
        self._epoch = torch.zeros((), dtype=torch.int64).share_memory_()

    @property
    def epoch(self) -> int:
        return int(self._epoch)

    def set_epoch(self, epoch: int) -> None:
        """Draw the examples of `epoch` from now on (in this process and in its DataLoader workers)."""
        if isinstance(epoch, bool) or not isinstance(epoch, numbers.Integral) or epoch < 0:
            raise ValueError(f"epoch must be a non-negative int, got {epoch!r}")
        self._epoch.fill_(int(epoch))

    def _rng(self, example: Any, epoch: int) -> np.random.Generator:
        identity = json.dumps(example, ensure_ascii=False, default=str).encode()
        words = np.frombuffer(hashlib.sha256(identity).digest(), dtype=np.uint32).tolist()
        return np.random.default_rng([self.seed, epoch, *words])


@dataclass
class MNTPCollator(ExampleDraws):
    """
    Masked next-token prediction batches: tokenize `text_column`, mask `mask_probability` of the tokens (at least
    one per caption, never the first: nothing precedes it), labels = original ids at masked positions, -100
    elsewhere. BERT's 80/10/10: a masked token becomes `mask_token`, a random token, or stays.

    `mask_token` defaults to the tokenizer's mask token, else `"_"` (LLM2Vec's choice for LLaMA-family models).
    Each example's masks are drawn from (`seed`, epoch, example: its `id_column` value and text; see
    `ExampleDraws`), over its own tokens in order: the same alone or in any batch, padded either side.
    """

    tokenizer: PreTrainedTokenizerBase
    max_length: int = 128
    mask_probability: float = 0.2
    mask_token: str | None = None
    padding_side: str = "right"
    text_column: str = "text"
    id_column: str | None = "id"
    seed: int = 0
    mask_token_id: int = field(init=False)
    _epoch: torch.Tensor = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        if not 0.0 < self.mask_probability < 1.0:
            raise ValueError(f"mask_probability must be in (0, 1), got {self.mask_probability}")
        token = self.mask_token or self.tokenizer.mask_token or "_"
        ids = self.tokenizer(token, add_special_tokens=False)["input_ids"]
        if len(ids) != 1:
            raise ValueError(f"mask token {token!r} is not a single token of this tokenizer (ids {ids})")
        self.mask_token_id = ids[0]
        self._init_draws()

    def __call__(self, features: list[dict[str, Any]]) -> dict[str, torch.Tensor]:
        texts = [f[self.text_column] for f in features]
        batch = _tokenize(
            self.tokenizer, texts, self.max_length, self.padding_side, return_special_tokens_mask=True
        )
        input_ids, attention_mask = batch["input_ids"], batch["attention_mask"]
        real = attention_mask.bool() & ~batch["special_tokens_mask"].bool()
        # a token can be predicted only if some real token precedes it
        eligible = real & (attention_mask.cumsum(dim=1) > 1)
        labels = torch.full_like(input_ids, -100)
        masked_ids = input_ids.clone()
        epoch = self.epoch
        for row, feature in enumerate(features):
            positions = torch.nonzero(eligible[row]).flatten()  # the example's own tokens, in order
            if len(positions) == 0:
                continue
            item = feature.get(self.id_column) if self.id_column else None
            rng = self._rng([item, texts[row]], epoch)
            chosen = rng.random(len(positions)) < self.mask_probability
            if not chosen.any():
                chosen[rng.integers(len(positions))] = True
            how = rng.random(len(positions))  # < 0.8: the mask token; < 0.9: a random token; else kept
            random_ids = rng.integers(len(self.tokenizer), size=len(positions))
            for index in np.flatnonzero(chosen).tolist():
                position = int(positions[index])
                labels[row, position] = input_ids[row, position]
                if how[index] < 0.8:
                    masked_ids[row, position] = self.mask_token_id
                elif how[index] < 0.9:
                    masked_ids[row, position] = int(random_ids[index])
        if not bool((labels != -100).any()):
            raise ValueError("no caption in the batch has a token that can be masked (captions of one token?)")
        return {"input_ids": masked_ids, "attention_mask": attention_mask, "labels": labels}


@dataclass
class SimCSECollator(ExampleDraws):
    """
    Supervised SimCSE batches: each example holds several captions of one item (`captions_column`, >= 2); two
    distinct ones are drawn as anchor and positive. Returns `input_ids`/`attention_mask` of shape `(2B, L)`
    (anchors first, then positives) and `group_ids` `(B,)` from `id_column`, so two examples of the same item
    in a batch are not treated as negatives of each other.

    The draw is a pure function of (`seed`, epoch, example), the example identified by its id and captions (see
    `ExampleDraws`): workers and resumed runs draw what one uninterrupted process draws, and each epoch draws new
    pairs. Two identical examples (same id, same captions) in one epoch draw the same pair.
    """

    tokenizer: PreTrainedTokenizerBase
    max_length: int = 128
    padding_side: str = "right"
    captions_column: str = "captions"
    id_column: str | None = "id"
    seed: int = 0
    _epoch: torch.Tensor = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        self._init_draws()

    def _draw(self, item: Any, captions: list[str], epoch: int) -> tuple[int, int]:
        first, second = self._rng([item, list(captions)], epoch).choice(len(captions), size=2, replace=False).tolist()
        return first, second

    def __call__(self, features: list[dict[str, Any]]) -> dict[str, torch.Tensor]:
        anchors, positives, ids = [], [], []
        epoch = self.epoch
        for i, feature in enumerate(features):
            captions = feature[self.captions_column]
            if isinstance(captions, str) or len(captions) < 2:
                raise ValueError(f"SimCSE needs at least two captions per item, example {i} has {captions!r}")
            item = feature.get(self.id_column) if self.id_column else None
            first, second = self._draw(item, captions, epoch)
            anchors.append(captions[first])
            positives.append(captions[second])
            ids.append(feature[self.id_column] if self.id_column and self.id_column in feature else f"#row{i}")
        batch = _tokenize(self.tokenizer, anchors + positives, self.max_length, self.padding_side)
        index: dict[Any, int] = {}
        group_ids = torch.tensor([index.setdefault(item, len(index)) for item in ids])
        return {"input_ids": batch["input_ids"], "attention_mask": batch["attention_mask"], "group_ids": group_ids}


# ---------------------------------------------------------------------------------------------------------
# Trainers
# ---------------------------------------------------------------------------------------------------------


@dataclass
class LLM2VecTrainingArguments(TrainingArguments):
    """`TrainingArguments` for the MNTP and SimCSE stages."""

    simcse_temperature: float = field(default=0.05, metadata={"help": "SimCSE softmax temperature."})
    remove_unused_columns: bool = field(
        default=False, metadata={"help": "Kept False: the collators read raw text columns."}
    )


class _CollatorEpochCallback(TrainerCallback):
    """Tells the collator the Trainer's epoch before each epoch's batches are collated (`set_epoch`).

    The first epoch of a `train()` call is the one the Trainer state is in (0, or the resumed one); each later
    epoch is the previous one plus one, as in the Trainer's own epoch loop."""

    def __init__(self, collator: Any):
        self.collator = collator
        self._epoch: int | None = None

    def on_train_begin(self, args, state, control, **kwargs):
        self._epoch = None

    def on_epoch_begin(self, args, state, control, **kwargs):
        self._epoch = math.floor(state.epoch or 0) if self._epoch is None else self._epoch + 1
        self.collator.set_epoch(self._epoch)


class _CollatorEpochMixin:
    """A collator with `set_epoch` (`MNTPCollator`, `SimCSECollator`) is told each epoch, so its draws follow it."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        if hasattr(self.data_collator, "set_epoch"):
            self.add_callback(_CollatorEpochCallback(self.data_collator))


class MNTPTrainer(_CollatorEpochMixin, XrayTrainerMixin, Trainer):
    """Masked next-token prediction (LLM2Vec stage 1) on an `XrayLLM2CLIPTextForMNTP` (usually with LoRA); its
    collator's masks follow the epoch."""

    def compute_loss(
        self,
        model: torch.nn.Module,
        inputs: dict[str, torch.Tensor],
        return_outputs: bool = False,
        num_items_in_batch: torch.Tensor | int | None = None,
    ):
        outputs = model(
            input_ids=inputs["input_ids"],
            attention_mask=inputs["attention_mask"],
            labels=inputs["labels"],
            num_items_in_batch=num_items_in_batch,
        )
        return (outputs.loss, outputs) if return_outputs else outputs.loss


class SimCSETrainer(_CollatorEpochMixin, XrayTrainerMixin, Trainer):
    """
    Supervised SimCSE (LLM2Vec stage 2) on an `XrayLLM2CLIPTextModel` (usually with LoRA): InfoNCE on the
    pooled LLM outputs of two captions of each item, in-batch negatives, `args.simcse_temperature`.
    A collator with `set_epoch` (`SimCSECollator`) is told each epoch, so its draws follow the epoch.
    """

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        # the loss is a batch mean, not a per-token sum: let Trainer divide it over gradient accumulation
        self.model_accepts_loss_kwargs = False

    def compute_loss(
        self,
        model: torch.nn.Module,
        inputs: dict[str, torch.Tensor],
        return_outputs: bool = False,
        num_items_in_batch: torch.Tensor | int | None = None,
    ):
        outputs = model(input_ids=inputs["input_ids"], attention_mask=inputs["attention_mask"])
        anchors, positives = outputs.pooler_output.chunk(2, dim=0)
        temperature = getattr(self.args, "simcse_temperature", 0.05)
        loss = simcse_loss(anchors, positives, temperature=temperature, group_ids=inputs.get("group_ids"))
        return (loss, outputs) if return_outputs else loss


__all__ = [
    "LORA_TARGET_MODULES",
    "add_lora",
    "merge_lora",
    "load_lora",
    "ExampleDraws",
    "MNTPCollator",
    "SimCSECollator",
    "LLM2VecTrainingArguments",
    "MNTPTrainer",
    "SimCSETrainer",
]
