"""The `clip` entry of the stage table: build stage 3 from a run config.

```yaml
stage: clip
model:
  vision: {from_pretrained: runs/tiny/hashtag}       # or {preset: tiny, config: {...}}; the head is dropped
  text: {from_llm: minilm, config: {projection_dim: 128}}    # LLM2CLIP tower on a frozen text model
  #   or {from_pretrained: DIR} (a trained text tower), or {preset: tiny} (the plain XrayTextModel, from scratch)
  config: {slip_weight: 1.0, lambda_den: 1.0}         # XrayCLIPConfig settings
  # from_pretrained: runs/tiny/clip                   # instead of vision/text: continue a CLIP checkpoint
captions: {column: caption, hashtag_column: hashtags, sentence_p: 0.3}
text_cache: {enabled: true}                          # pooled LLM outputs cached once (frozen LLM only)
slip: {crop_scale: [0.08, 1.0], blur_p: 0.5}          # SimCLR view augmentation (when slip_weight > 0);
                                                      # videos: false keeps SLIP to image batches
data: {...}
training: {...}                                      # CLIPTrainingArguments
```

`from_llm` and `tokenizer` take a folder, a Hub id, or the name of a text model that ships in a registry package
(`xray_hf.convert.PACKAGED_TEXT_MODELS`): `minilm` (all-MiniLM-L6-v2, a sentence-transformers folder: its pooling,
normalisation and max length come with it) or `smollm2` (SmolLM2-135M-Instruct, converted once from its GGUF file).
"""

from __future__ import annotations

from ..data import SampleCollator, SimCLRViews, TrainTransform, WithSimCLRViews
from ..data.inputs import build_eval_datasets, build_train_loader
from ..data.transforms import Resolution
from ..run_config.extras import CLIPRunExtras
from .build import build_clip_model, evaluate_after_training, normalization, save_clip_processor
from .clip import CachedTexts, CLIPCollator, CLIPTrainer
from .run import RunContext, StageRun
from .texts import caption_sampler, text_inputs_for


# ---------------------------------------------------------------------------------------------------- stage
def prepare_clip(run: RunContext) -> StageRun:
    """The `clip` stage of the run-config table (`xray_hf.stages`)."""
    extras: CLIPRunExtras = run.extras
    captions, cache_spec = extras.captions, extras.text_cache
    model, tokenizer = build_clip_model(run.model)
    args = run.training_args()
    resolution = Resolution(run.data.resolution)
    slip = model.config.slip_weight > 0
    mean, std = normalization(run.data)
    slip_videos = extras.slip.videos  # SLIP's two-frame views of clips too (paper 4.2.4)
    view_kwargs = extras.slip.kwargs()

    def wrap_transform(transform):
        views = SimCLRViews(TrainTransform(resolution, image_mean=mean, image_std=std, **view_kwargs))
        return WithSimCLRViews(transform, views, video_views=slip_videos)

    text_inputs = text_inputs_for(run, model, tokenizer, captions, cache_spec, args.main_process_first)
    collator = CLIPCollator(text_inputs, base=SampleCollator(resolution=resolution),
                            hashtags=captions.hashtag_column is not None,
                            group_identical_captions=args.group_identical_captions)
    loader = build_train_loader(
        run.data, run.seed, collate_fn=collator, rank=args.process_index, world_size=args.world_size,
        resolution=resolution, wrap_transform=wrap_transform if slip else None, wrap_decoder=caption_sampler(captions),
    )
    eval_sets = build_eval_datasets(run.data)
    trainer = CLIPTrainer(
        model=model, args=args, train_loader=loader, eval_dataset=eval_sets or None, resolution=resolution,
        tokenizer=tokenizer, text_inputs=text_inputs, eval_caption_column=captions.column, slip_videos=slip_videos,
    )

    config = model.config  # not the model: a closure over it would keep an FSDP2-sharded copy alive after training

    def save_artifacts(trainer: CLIPTrainer, results: dict, output_dir: str) -> None:
        save_clip_processor(run, config, tokenizer, output_dir)

    return StageRun(trainer, results={"slip": slip, "text_cache": isinstance(text_inputs, CachedTexts)},
                    after_training=evaluate_after_training, save_artifacts=save_artifacts)


__all__ = ["prepare_clip"]
