"""Helpers of the search tests: tiny random-init CLIP checkpoints (with calibrated compressed embeddings) and small
galleries written to disk: PNG images with captions and tags (plus a corrupt file) and mp4 clips."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import torch
from PIL import Image

COLOURS = {"red": (220, 30, 30), "green": (30, 200, 60), "blue": (40, 60, 220), "yellow": (240, 220, 40)}
SHAPES = ("square", "circle")


def make_clip(directory: Path, seed: int = 0, projection_dim: int = 16) -> Path:
    """A tiny XrayCLIPModel (plain text tower, SmolLM2's tokenizer) with a compression module whose int8 ranges are
    calibrated on its own embeddings of random images and texts, saved with its processor."""
    from xray_hf import (
        XrayCLIPConfig,
        XrayCLIPModel,
        XrayCLIPProcessor,
        XrayTextConfig,
        XrayVisualConfig,
        XrayVisualImageProcessor,
        XrayVisualVideoProcessor,
    )
    from xray_hf.convert import smollm2_tokenizer

    tokenizer = smollm2_tokenizer()
    text = XrayTextConfig.from_preset("tiny", vocab_size=len(tokenizer), projection_dim=projection_dim,
                                      max_position_embeddings=32)
    config = XrayCLIPConfig(vision_config=XrayVisualConfig.from_preset("tiny"), text_config=text,
                            projection_dim=projection_dim, slip_hidden_size=32, slip_projection_dim=8)
    torch.manual_seed(seed)
    model = XrayCLIPModel(config).eval()
    model.add_embedding_compression({"compressed_dim": 8})
    processor = XrayCLIPProcessor.for_model(config, XrayVisualImageProcessor(size=32),
                                            XrayVisualVideoProcessor(size=32, num_frames=4), tokenizer)
    with torch.no_grad():
        pixels = torch.rand(16, 3, 32, 32) * 2 - 1
        tokens = processor(text=[f"a {c} {s}" for c in COLOURS for s in SHAPES], return_tensors="pt")
        sample = torch.cat([model.get_image_features(pixels).pooler_output,
                            model.get_text_features(tokens["input_ids"], tokens["attention_mask"]).pooler_output])
    model.embedding_compression.calibrate_int8(sample)
    model.save_pretrained(directory)
    processor.save_pretrained(directory)
    return directory


def draw(colour: str, shape: str, size: int = 40, shift: int = 0) -> Image.Image:
    picture = Image.new("RGB", (size, size), (255, 255, 255))
    from PIL import ImageDraw

    pen = ImageDraw.Draw(picture)
    box = (6 + shift, 6, size - 6 + shift, size - 6)
    (pen.rectangle if shape == "square" else pen.ellipse)(box, fill=COLOURS[colour])
    return picture


def write_image_folder(root: Path, corrupt: bool = True) -> Path:
    """16 PNGs (4 colours x 2 shapes x 2 positions) with `metadata.jsonl` (caption, tags, colour) and, with `corrupt`,
    one more row whose file is not an image."""
    root.mkdir(parents=True, exist_ok=True)
    rows = []
    for colour in COLOURS:
        for shape in SHAPES:
            for shift in (0, 3):
                name = f"{colour}_{shape}_{shift}.png"
                draw(colour, shape, shift=shift).save(root / name)
                rows.append({"file_name": name, "caption": f"a {colour} {shape}", "tags": [colour, shape],
                             "colour": colour})
    if corrupt:
        (root / "broken.png").write_bytes(b"this is not a png")
        rows.append({"file_name": "broken.png", "caption": "broken", "tags": ["broken"], "colour": "none"})
    (root / "metadata.jsonl").write_text("".join(json.dumps(row) + "\n" for row in rows))
    return root


def write_video_folder(root: Path, count: int = 3) -> Path:
    """`count` short mp4 clips of a moving coloured square, with `metadata.jsonl`."""
    from xray_hf.data import encode_video

    root.mkdir(parents=True, exist_ok=True)
    rows = []
    for index, colour in enumerate(list(COLOURS)[:count]):
        frames = np.stack([np.asarray(draw(colour, "square", size=48, shift=t)) for t in range(12)])
        (root / f"clip_{colour}.mp4").write_bytes(encode_video(frames))
        rows.append({"file_name": f"clip_{colour}.mp4", "caption": f"a {colour} square moving right",
                     "tags": [colour, "square"], "colour": colour})
    (root / "metadata.jsonl").write_text("".join(json.dumps(row) + "\n" for row in rows))
    return root


