"""The run-config schema: every key a run config (`xray-hf train <stage> --config X.yaml`, or a stage section of a
pipeline YAML) may hold, as typed dataclasses that hold the defaults. `RunConfig.from_dict(config, stage)` parses a
whole config once; an unknown key is refused by its path (`unknown key 'model.text.config.freeze_lm'`), so is a
value of the wrong type (`training.learning_rate must be float, got str '1e-3'`: YAML reads 1e-3, having no dot, as text), and a
`config:` block may only name settings of the config class it overrides. Stage code receives these objects.

```yaml
stage: clip                      # optional; must match the stage trained
seed: 0
model:                           # by stage (model.py):
  # mae, hashtag: VisionSpec     {preset: tiny, from_pretrained: DIR, config: {XrayVisualConfig settings}}
  # mntp, simcse: TextModelSpec  {text: TextTowerSpec, lora: {r: 16, alpha: 32, dropout: 0.05}}
  # clip: CLIPModelSpec          {vision: VisionSpec, text: TextTowerSpec, config: {XrayCLIPConfig settings},
  #                               from_pretrained: DIR, tokenizer: NAME}
  #   TextTowerSpec: {from_pretrained: DIR | from_llm: minilm / smollm2 / DIR | preset: NAME, tokenizer: NAME,
  #                   config: {XrayLLM2CLIPTextConfig / XrayTextConfig settings}}
  # distill: StudentModelSpec    {vision: VisionSpec, config: {student config settings}, from_pretrained: DIR}
  # compress: CompressModelSpec  {from_pretrained: DIR, compression: {compressed_dim, matryoshka_dims,
  #                               matryoshka_weights}}
data:                            # vision stages: DataSpec (data.py)
  resolution: 32                 # int or [height, width]
  image: {name: NAME | path: DIR, split: train, batch_size: 32, modality, column, num_samples, num_frames: 4,
          stride: 2, num_shards: 8, max_samples, hashtags_from: [COLUMN, ...]}   # SourceSpec
  video: {...}                   # SourceSpec
  eval: {...}                    # a SourceSpec, or a list of them
  augment: {resize, crop_scale, flip_p, brightness, saturation, blur_p, blur_sigma, image_mean, image_std}
  num_workers: 0
  shuffle_buffer: 256
  video_fraction: 0.25           # share of video batches (needs image and video)
  # text stages: TextDataSpec {sources: [{name, split: train, columns: [caption], max_samples}], max_length: 32,
  #                            mask_probability: 0.2}
training: {output_dir: DIR, ...} # the stage's TrainingArguments subclass's arguments (output_dir required)
# the stage's own blocks (extras.py):
vocabulary: {source: SourceSpec, column: hashtags, min_count: 1, max_size}            # hashtag
captions: {column: caption, hashtag_column, sentence_p: 0.0, templates, label_column}  # clip, distill
text_cache: {enabled: true, dir, batch_size: 64}                                      # clip, distill
slip: {crop_scale: [0.08, 1.0], blur_p: 0.5, flip_p, brightness, saturation, resize, blur_sigma, videos: true}  # clip
teacher: {from_pretrained: DIR}                                                       # distill (required)
teacher_cache: {enabled: false, dir, batch_size: 64}                                  # distill
texts: {column: caption, templates, label_column}                                     # compress
```
"""

from .block import Block
from .config import COMMON_KEYS, RunConfig

__all__ = ["Block", "COMMON_KEYS", "RunConfig"]
