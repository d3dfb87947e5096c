"""The `mntp` and `simcse` entries of the stage table: the LLM2Vec text tower (paper 4.6.2) from run configs.

```yaml
stage: mntp                                   # then `stage: simcse` from its output, then the clip stage
model:
  text: {from_llm: smollm2, config: {pooling: mean, max_text_length: 32}}   # or {from_pretrained: DIR}
  lora: {r: 16, alpha: 32, dropout: 0.05}     # add_lora's settings
data:
  sources: [{name: openmoji, split: train, columns: [caption, hashtags]}]
  max_length: 32
  mask_probability: 0.2                       # MNTP only
training: {...}                               # LLM2VecTrainingArguments
```

Texts come from the `columns` of embedded datasets: a string column gives its text, a list column (hashtags) the
tags joined as one text (`hashtag_text`). MNTP trains on every non-empty text; SimCSE takes each item's texts as
its captions (anchor and positive drawn from them), so an item needs two non-empty columns (others are dropped,
and counted in `results.json`).

Each stage trains LoRA on the LLM's projections and saves, into `output_dir`, the merged text tower (an
`XrayLLM2CLIPTextModel` checkpoint with its tokenizer, which the next stage or the clip stage's
`text: {from_pretrained: DIR}` loads), the adapter alone under `lora/`, and (MNTP) the tower it started from under
`base/`. Checkpoints during training hold the adapter; `--resume` continues from them.
"""

from __future__ import annotations

import logging
import os
from typing import Any

import datasets

from ..data import load_embedded
from ..data.captions import hashtag_text
from ..data.tables import take_samples
from ..modeling.llm2clip import XrayLLM2CLIPTextForMNTP, XrayLLM2CLIPTextModel
from ..run_config.data import TextDataSpec
from ..run_config.model import TextModelSpec
from .build import build_text_tower
from .llm2vec import MNTPCollator, MNTPTrainer, SimCSECollator, SimCSETrainer, add_lora, load_lora, merge_lora
from .run import RunContext, StageRun

logger = logging.getLogger(__name__)


def _text(value: Any) -> str:
    if value is None:
        return ""
    if isinstance(value, str):
        return value.strip()
    if isinstance(value, (list, tuple)):
        return hashtag_text([str(v) for v in value])
    raise ValueError(f"a text column must hold strings or lists of strings, got {type(value).__name__}")


def item_texts(data: TextDataSpec) -> list[tuple[str, list[str]]]:
    """(item id, its non-empty texts in column order) of every row of every source."""
    items = []
    for source in data.sources:
        table = load_embedded(source.name, source.split)
        missing = [c for c in source.columns if c not in table.column_names]
        if missing:
            raise ValueError(f"{source.name}/{source.split} has no column {missing} (columns: {table.column_names})")
        table = take_samples(table, source.max_samples)
        ids = table["id"] if "id" in table.column_names else range(len(table))
        rows = table.select_columns(source.columns).to_dict()
        for row, item in enumerate(ids):
            texts = [t for t in (_text(rows[c][row]) for c in source.columns) if t]
            items.append((f"{source.name}/{item}", texts))
    return items


# ------------------------------------------------------------------------------------------------------ model
def save_merged(tokenizer: Any, merged_tower: Any):
    """`StageRun.save_model` of a LoRA text stage: the adapter in `output_dir/lora`, and the merged text tower
    (`merged_tower(trainer, lora_dir)`) with the tokenizer in `output_dir`."""

    def save(trainer: Any, output_dir: str) -> None:
        if not trainer.is_world_process_zero():
            return
        lora_dir = os.path.join(output_dir, "lora")
        trainer.accelerator.unwrap_model(trainer.model).save_pretrained(lora_dir)
        merged_tower(trainer, lora_dir).save_pretrained(output_dir)
        tokenizer.save_pretrained(output_dir)

    return save


def prepare_mntp(run: RunContext) -> StageRun:
    """The `mntp` stage: masked next-token prediction with LoRA on the bidirectional LLM of a text tower."""
    spec: TextModelSpec = run.model
    lora, data = spec.lora, run.data
    tower, tokenizer = build_text_tower(spec.text, None)
    if not isinstance(tower, XrayLLM2CLIPTextModel):
        raise ValueError(f"MNTP trains an LLM2CLIP text tower, not {type(tower).__name__}")
    base = os.path.join(run.output_dir, "base")
    args = run.training_args()
    with args.main_process_first(desc="mntp base"):
        if args.process_index == 0:
            tower.save_pretrained(base)  # with the LM head of an untied LLM: the MNTP head
    model = add_lora(XrayLLM2CLIPTextForMNTP.from_pretrained(base), lora.r, lora.alpha, lora.dropout)
    texts = [text for _, item in item_texts(data) for text in item]
    trainer = MNTPTrainer(model=model, args=args, train_dataset=datasets.Dataset.from_dict({"text": texts}),
                          data_collator=MNTPCollator(tokenizer, max_length=data.max_length,
                                                     mask_probability=data.mask_probability, seed=run.seed))
    # the MNTP model has the LLM and its head only: the adapter goes onto the base tower (with its adapter MLP)
    merged = save_merged(tokenizer, lambda trainer, lora_dir: load_lora(XrayLLM2CLIPTextModel.from_pretrained(base),
                                                                         lora_dir))
    return StageRun(trainer, results={"texts": len(texts)}, save_model=merged)


def prepare_simcse(run: RunContext) -> StageRun:
    """The `simcse` stage: supervised SimCSE with LoRA, the texts of one item as positives."""
    spec: TextModelSpec = run.model
    lora, data = spec.lora, run.data
    if not spec.text.from_pretrained:
        raise ValueError("simcse starts from a trained text tower: model.text.from_pretrained (the mntp output)")
    tower, tokenizer = build_text_tower(spec.text, None)
    if not isinstance(tower, XrayLLM2CLIPTextModel):
        raise ValueError(f"SimCSE trains an LLM2CLIP text tower, not {type(tower).__name__}")
    model = add_lora(tower, lora.r, lora.alpha, lora.dropout)  # only LoRA trains
    items = item_texts(data)
    pairs = [(item, texts) for item, texts in items if len(texts) >= 2]
    if not pairs:
        raise ValueError("no item has two non-empty texts: SimCSE needs at least two columns per item")
    args = run.training_args()
    train = datasets.Dataset.from_dict({"id": [i for i, _ in pairs], "captions": [t for _, t in pairs]})
    trainer = SimCSETrainer(model=model, args=args, train_dataset=train,
                            data_collator=SimCSECollator(tokenizer, max_length=data.max_length, seed=run.seed))
    return StageRun(trainer, results={"items": len(pairs), "items_without_a_pair": len(items) - len(pairs)},
                    save_model=save_merged(tokenizer, lambda trainer, lora_dir: merge_lora(
                        trainer.accelerator.unwrap_model(trainer.model))))


__all__ = ["item_texts", "prepare_mntp", "prepare_simcse"]
