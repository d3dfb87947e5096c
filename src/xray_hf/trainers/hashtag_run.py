"""The `hashtag` entry of the stage table: build stage 2 (hashtag classification, paper 4.2.2) from a run config.

```yaml
stage: hashtag
model: {from_pretrained: runs/tiny/mae, config: {pooling: mean}}   # the MAE encoder, its decoder dropped
vocabulary: {column: hashtags, min_count: 5}        # HashtagVocabulary.from_tag_lists arguments, plus source:
data: {...}                                         # images and videos with a hashtag column
training: {...}                                     # HashtagTrainingArguments
```

Saves the image processor and `hashtag_vocabulary.json` (with counts); evaluation reports `hashtag_metrics`.
"""

from __future__ import annotations

import os

from ..data import SampleCollator
from ..data.inputs import build_eval_dataset, build_train_loader, source_table
from ..eval.metrics import hashtag_metrics
from ..modeling.hashtag import HashtagVocabulary, XrayVisualForHashtagClassification
from ..run_config.extras import VocabularySpec
from .build import build_visual_model, evaluate_after_training, image_processor_for
from .hashtag import HashtagCollator, HashtagTrainer
from .run import RunContext, StageRun


def prepare_hashtag(run: RunContext) -> StageRun:
    """The `hashtag` stage of the run-config table (`xray_hf.stages`)."""
    spec: VocabularySpec = run.extras.vocabulary
    data = run.data
    vocab_sources = [spec.source] if spec.source else [s for s in (data.image, data.video) if s]
    tag_lists = [tags for source in vocab_sources for tags in source_table(source)[spec.column]]
    vocabulary = HashtagVocabulary.from_tag_lists(tag_lists, min_count=spec.min_count, max_size=spec.max_size)
    model = build_visual_model(XrayVisualForHashtagClassification, run.model, **vocabulary.config_kwargs())
    args = run.training_args()
    loader = build_train_loader(data, run.seed, collate_fn=HashtagCollator(vocabulary, base=SampleCollator()),
                                rank=args.process_index, world_size=args.world_size)
    trainer = HashtagTrainer(
        model=model, args=args, data_collator=HashtagCollator(vocabulary), train_loader=loader,
        eval_dataset=build_eval_dataset(data), compute_metrics=hashtag_metrics,
    )

    def save_artifacts(trainer: HashtagTrainer, results: dict, output_dir: str) -> None:
        image_processor_for(data).save_pretrained(output_dir)
        vocabulary.save(os.path.join(output_dir, "hashtag_vocabulary.json"))  # with counts; labels are in config

    return StageRun(trainer, results={"vocabulary_size": len(vocabulary)}, after_training=evaluate_after_training,
                    save_artifacts=save_artifacts)


__all__ = ["prepare_hashtag"]
