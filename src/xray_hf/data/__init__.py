"""Data: streaming sources, per-sample decoding, multimodal batch sampling, transforms, embedded datasets.

A typical input pipeline for one rank:

```python
from xray_hf.data import DecodedStream, ImageDecoder, StreamingDataLoader, TrainTransform, load_source

source = load_source("shards/")  # WebDataset tars, Parquet shards, a folder + metadata, or a Hub id
stream = DecodedStream(source, ImageDecoder(transform=TrainTransform(224)), rank=rank, world_size=world_size)
loader = StreamingDataLoader(stream, batch_size=64, num_workers=4)
for epoch in range(epochs):
    loader.set_epoch(epoch)
    for batch in loader:  # {"pixel_values": (B, C, H, W), ...other columns}
        ...
state = loader.state_dict()  # resume exactly with loader.load_state_dict(state)
```
"""

from .decoding import (
    SKIP_REASONS,
    ImageDecoder,
    SampleDecodeError,
    VideoClip,
    VideoDecoder,
    decode_image,
    decode_video_clip,
    sample_clip_indices,
)
from .embedded import load_embedded
from .embedded_builders import with_article
from .loader import EpochStats, SampleCollator, StreamingDataLoader
from .moving_shapes import encode_video, render_moving_shape
from .sampling import ModalitySchedule, MultimodalLoader, modality_probabilities
from .sources import folder_source, load_source
from .streams import DecodedStream, ShardCountError, check_num_shards
from .transforms import EvalTransform, Resolution, SimCLRViews, TrainTransform, WithSimCLRViews
from .writers import write_shards

__all__ = [
    "SKIP_REASONS",
    "DecodedStream",
    "EpochStats",
    "EvalTransform",
    "ImageDecoder",
    "ModalitySchedule",
    "MultimodalLoader",
    "Resolution",
    "SampleCollator",
    "SampleDecodeError",
    "ShardCountError",
    "SimCLRViews",
    "StreamingDataLoader",
    "TrainTransform",
    "VideoClip",
    "VideoDecoder",
    "WithSimCLRViews",
    "check_num_shards",
    "decode_image",
    "decode_video_clip",
    "encode_video",
    "folder_source",
    "load_embedded",
    "load_source",
    "modality_probabilities",
    "render_moving_shape",
    "sample_clip_indices",
    "with_article",
    "write_shards",
]
