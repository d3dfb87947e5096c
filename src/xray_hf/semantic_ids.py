"""`xray-hf semantic-ids`: embed a dataset with a checkpoint, fit a semantic-ID quantiser (paper section 6.6)
on the embeddings, and write the ids per item, the quantiser and a report.

Written to the output directory:
- `semantic_ids.parquet`: one row per item: `row` (index in the split), `id` (the dataset's id column,
  when it has one) and `semantic_ids` (K integers, level or chunk order);
- `quantizer/`: the fitted `XraySemanticIDModel` (config.json + model.safetensors), loadable with
  `XraySemanticIDModel.from_pretrained` to encode new embeddings;
- `report.json`: `semantic_id_report`'s metrics plus the run's settings.

Report metrics (`semantic_id_report`), for each level (chunk) k = 1..K:
- `usage`: fraction of the N codes chosen by at least one item; `perplexity`: exp of the entropy of the code
  distribution (N when codes are used uniformly, 1 when one code takes every item);
- `collision_rate`: fraction of items whose first k codes equal those of another item (at k = K: items whose
  whole semantic ID is not unique);
- `reconstruction_cosine` (RQ): mean cosine between the input and the sum of its first k codewords;
and overall: `reconstruction_cosine` and `reconstruction_mse` of the full reconstruction, and how often an
item and its nearest neighbour under the model's cosine similarity share their first code, against two random
distinct items (`neighbour_first_code_rate`, `random_pair_first_code_rate`, the latter exact:
sum_j c_j (c_j - 1) / (n (n - 1)) for code counts c_j). A level whose usage is below `USAGE_FLOOR` is listed
in `collapsed_levels`.
"""

from __future__ import annotations

import json
import os
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
import torch.nn.functional as F

from .configuration.semantic_ids import XraySemanticIDConfig
from .modeling.semantic_ids import DEFAULT_EPOCHS, XraySemanticIDModel

if TYPE_CHECKING:
    from .eval.options import EmbedOptions

# a level using fewer than 90% of its codes on the data it was fitted on has (partly) collapsed; k-means init and
# dead-code reset keep every code in use on the embedded sets (tests/test_semantic_ids.py)
USAGE_FLOOR = 0.9
IDS_FILE = "semantic_ids.parquet"
QUANTIZER_DIR = "quantizer"
REPORT_FILE = "report.json"


# -- metrics on ids --

def _codes(codes: torch.Tensor) -> torch.Tensor:
    codes = torch.as_tensor(codes)
    if codes.ndim != 1 or codes.numel() == 0 or codes.is_floating_point() or codes.min() < 0:
        raise ValueError("codes must be a non-empty 1-D tensor of non-negative integers")
    return codes.long()


def code_usage(codes: torch.Tensor, codebook_size: int) -> float:
    """Fraction of the `codebook_size` codes that occur in `codes` (N,)."""
    return _codes(codes).unique().numel() / codebook_size


def code_perplexity(codes: torch.Tensor) -> float:
    """exp(entropy) of the empirical code distribution of `codes` (N,)."""
    p = torch.bincount(_codes(codes)).double()
    p = p[p > 0] / p.sum()
    return float(torch.exp(-(p * p.log()).sum()))


def prefix_collision_rates(semantic_ids: torch.Tensor) -> list[float]:
    """For k = 1..K, the fraction of items whose first k codes equal another item's."""
    ids = torch.as_tensor(semantic_ids).long()
    if ids.ndim != 2 or ids.shape[0] == 0:
        raise ValueError(f"semantic_ids must have shape (N, K), got {tuple(ids.shape)}")
    rates = []
    for k in range(1, ids.shape[1] + 1):
        _, inverse, counts = torch.unique(ids[:, :k], dim=0, return_inverse=True, return_counts=True)
        rates.append(float((counts[inverse] > 1).double().mean()))
    return rates


def nearest_neighbours(embeddings: torch.Tensor, chunk: int = 1024) -> torch.Tensor:
    """Index (N,) of each item's most cosine-similar other item."""
    x = F.normalize(torch.as_tensor(embeddings).float(), dim=-1)
    if x.shape[0] < 2:
        raise ValueError("nearest neighbours need at least 2 items")
    out = []
    for start in range(0, x.shape[0], chunk):
        sims = x[start : start + chunk] @ x.T
        rows = torch.arange(sims.shape[0])
        sims[rows, rows + start] = -float("inf")
        out.append(sims.argmax(1))
    return torch.cat(out)


def first_code_agreement(embeddings: torch.Tensor, codes: torch.Tensor) -> dict[str, float]:
    """How often an item and its nearest neighbour share a code, and the same for two random distinct items."""
    codes = _codes(codes)
    neighbours = nearest_neighbours(embeddings)
    counts = torch.bincount(codes).double()
    n = codes.numel()
    return {
        "neighbour_first_code_rate": float((codes == codes[neighbours]).double().mean()),
        "random_pair_first_code_rate": float((counts * (counts - 1)).sum() / (n * (n - 1))),
    }


def semantic_id_report(quantizer: XraySemanticIDModel, embeddings: torch.Tensor,
                       ids: torch.Tensor | None = None) -> dict[str, Any]:
    """The metrics of the module docstring for `embeddings` (N, D) under a fitted quantiser (`ids`: their codes,
    when already encoded)."""
    config = quantizer.config
    ids = quantizer.encode(embeddings) if ids is None else ids
    x = quantizer.prepare_embeddings(embeddings)
    codewords = quantizer.get_codewords(ids)
    reconstruction = quantizer.decode(ids)
    collisions = prefix_collision_rates(ids)
    partial = codewords.cumsum(1) if config.method == "rq" else None
    levels = []
    for level in range(config.num_levels):
        row = {
            "level": level + 1,
            "used_codes": int(ids[:, level].unique().numel()),
            "usage": code_usage(ids[:, level], config.codebook_size),
            "perplexity": code_perplexity(ids[:, level]),
            "collision_rate": collisions[level],
        }
        if partial is not None:
            row["reconstruction_cosine"] = float(F.cosine_similarity(partial[:, level], x, dim=-1).mean())
        levels.append(row)
    return {
        "method": config.method,
        "distance": config.distance,
        "num_levels": config.num_levels,
        "codebook_size": config.codebook_size,
        "num_items": int(ids.shape[0]),
        "levels": levels,
        "reconstruction_cosine": float(F.cosine_similarity(reconstruction, x, dim=-1).mean()),
        "reconstruction_mse": float(((reconstruction - x) ** 2).sum(-1).mean()),
        "unique_id_rate": float(torch.unique(ids, dim=0).shape[0] / ids.shape[0]),
        **first_code_agreement(embeddings, ids[:, 0]),
        "usage_floor": USAGE_FLOOR,
        "collapsed_levels": [row["level"] for row in levels if row["usage"] < USAGE_FLOOR],
    }


# -- the command --

def embed_dataset(
    model_dir: str | os.PathLike,
    dataset: str,
    split: str = "train",
    *,
    max_samples: int | None = None,
    feature: str = "embedding",
    media_column: str | None = None,
    video_mode: str = "native",
    embed: EmbedOptions | None = None,
    min_items: int = 1,
    seed: int = 0,
) -> tuple[torch.Tensor, list[str] | None]:
    """Embeddings (N, D) of a dataset's images or videos under a checkpoint directory, as `xray-hf eval`
    computes them, and the dataset's `id` column (None when it has none). Fewer than `min_items` rows is an
    error raised before anything is embedded."""
    from .eval.data import ProcessorTransform, decoded, load_eval_set
    from .checkpoint import load_checkpoint
    from .eval.features import embed_images
    from .eval.options import EmbedOptions

    eval_set = load_eval_set(dataset, split, max_samples=max_samples, media_column=media_column)
    if len(eval_set.dataset) < min_items:
        raise ValueError(f"{dataset}/{split} has {len(eval_set.dataset)} items, fewer than the {min_items} needed "
                         "(the codebook size)")
    pieces = load_checkpoint(model_dir, need_text=False, video=eval_set.modality == "video")
    embed = embed or EmbedOptions()
    model = embed.place(pieces.model)
    transform = ProcessorTransform(pieces.image_processor, pieces.video_processor)
    data = decoded(eval_set, transform, num_frames=embed.frames(pieces.video_processor), stride=embed.stride, seed=seed)
    has_ids = "id" in eval_set.dataset.column_names
    embeddings, gathered = embed_images(
        model, data, columns=("id",) if has_ids else (), feature=feature, video_mode=video_mode,
        batch_size=embed.batch_size, num_workers=embed.num_workers,
    )
    return embeddings, ([str(i) for i in gathered["id"]] if has_ids else None)


def feature_width(model_dir: str | os.PathLike, feature: str = "embedding") -> int | None:
    """Width of the `feature` embeddings `embed_dataset` computes with the checkpoint in `model_dir`, from its
    config alone (`eval.features.feature_dim`); None when the config does not say."""
    from transformers import AutoConfig

    from .eval.features import feature_dim

    return feature_dim(AutoConfig.from_pretrained(os.fspath(model_dir)), feature)


def write_ids(path: str | os.PathLike, semantic_ids: torch.Tensor, item_ids: list[str] | None = None) -> str:
    """Parquet file of `row`, `id` (when given) and `semantic_ids` (a list of K integers) per item."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    ids = torch.as_tensor(semantic_ids).cpu().numpy().astype(np.int32)
    columns: dict[str, Any] = {"row": pa.array(np.arange(ids.shape[0], dtype=np.int64))}
    if item_ids is not None:
        if len(item_ids) != ids.shape[0]:
            raise ValueError(f"{len(item_ids)} item ids for {ids.shape[0]} semantic ids")
        columns["id"] = pa.array(item_ids, type=pa.string())
    columns["semantic_ids"] = pa.FixedSizeListArray.from_arrays(pa.array(ids.reshape(-1)), ids.shape[1])
    pq.write_table(pa.table(columns), os.fspath(path))
    return os.fspath(path)


def run_semantic_ids(
    model: str | os.PathLike,
    dataset: str,
    output: str | os.PathLike,
    *,
    levels: int = 3,
    codebook_size: int = 256,
    method: str = "rq",
    distance: str | None = None,
    split: str = "train",
    max_samples: int | None = None,
    epochs: int = DEFAULT_EPOCHS,
    batch_size: int | None = None,
    feature: str = "embedding",
    media_column: str | None = None,
    embed: EmbedOptions | None = None,
    seed: int = 0,
) -> dict[str, Any]:
    """Embed `dataset`/`split` with the checkpoint `model`, fit a `method` quantiser of `levels` x
    `codebook_size` codes, write the files of the module docstring under `output` and return the report."""
    if not isinstance(levels, int) or levels < 1:
        raise ValueError(f"levels must be an integer >= 1, got {levels!r}")
    if not isinstance(codebook_size, int) or codebook_size < 2:
        raise ValueError(f"codebook_size must be an integer >= 2, got {codebook_size!r}")
    # checks the settings before the slow part: first alone, then with the width the checkpoint's config gives
    # for `feature` (PQ splits it into `levels` chunks); a width the config does not give is checked once embedded
    XraySemanticIDConfig(embedding_dim=levels, method=method, num_levels=levels, codebook_size=codebook_size,
                         distance=distance)
    if not os.path.isdir(os.fspath(model)):
        raise FileNotFoundError(f"model directory {os.fspath(model)!r} does not exist")
    width = feature_width(model, feature)
    if width is not None:
        try:
            XraySemanticIDConfig(embedding_dim=width, method=method, num_levels=levels, codebook_size=codebook_size,
                                 distance=distance)
        except ValueError as error:
            raise ValueError(f"{os.fspath(model)!r} gives {width}-d {feature!r} features: {error}") from error
    embeddings, item_ids = embed_dataset(
        model, dataset, split, max_samples=max_samples, feature=feature, media_column=media_column,
        embed=embed, min_items=codebook_size, seed=seed,
    )
    config = XraySemanticIDConfig(embedding_dim=int(embeddings.shape[1]), method=method, num_levels=levels,
                                  codebook_size=codebook_size, distance=distance)
    quantizer = XraySemanticIDModel(config).fit(embeddings, epochs=epochs, batch_size=batch_size, seed=seed)
    ids = quantizer.encode(embeddings)
    report = semantic_id_report(quantizer, embeddings, ids)
    report.update(model=os.fspath(model), dataset=dataset, split=split, feature=feature,
                  embedding_dim=config.embedding_dim, epochs=epochs, batch_size=batch_size, seed=seed,
                  files={"ids": IDS_FILE, "quantizer": QUANTIZER_DIR, "report": REPORT_FILE})
    out = os.fspath(output)
    os.makedirs(out, exist_ok=True)
    write_ids(os.path.join(out, IDS_FILE), ids, item_ids)
    quantizer.save_pretrained(os.path.join(out, QUANTIZER_DIR))
    with open(os.path.join(out, REPORT_FILE), "w") as handle:
        json.dump(report, handle, indent=2)
    return report


__all__ = [
    "USAGE_FLOOR",
    "code_perplexity",
    "code_usage",
    "embed_dataset",
    "feature_width",
    "first_code_agreement",
    "nearest_neighbours",
    "prefix_collision_rates",
    "run_semantic_ids",
    "semantic_id_report",
    "write_ids",
]
