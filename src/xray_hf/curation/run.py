"""`xray-hf curate --config FILE`: the curation steps in order over one source, written as Parquet shards with a
report. The steps are a table (`STEPS`), each a streaming `datasets` step; the run is resumable.

```yaml
source: {name: openmoji, split: train}         # an embedded dataset, or {path: DIR_OR_FILES} for load_source
output_dir: runs/curate/openmoji
caption_column: caption
id_column: id
shard_size: 1000
steps:
  - clean: {}                                   # clean_caption; empty captions dropped
  - language: {languages: [en], min_probability: 0.3}
  - sentences: {language: en}                   # one row per sentence
  - balance: {t: 20}                            # WordNet concepts, MetaCLIP; a counting pass first
  - similarity: {model: runs/tiny/clip, drop_fraction: 0.1}   # or threshold: 0.25
  - hashtags: {column: hashtags}                # WordNet canonical hashtags (table written)
  - rewrite: {model: smollm2, max_words: 30}    # a local LM rewrites each caption (2.3.1); rejects kept as is
```

`balance` and `hashtags` read the stream before them once more to count (concepts, tags), so everything before
them runs twice: put the model steps (`similarity`, `rewrite`) after them (a warning says so otherwise).

Counting: every step's output is counted as rows stream through (`report.json`: rows in and out of each step,
with the settings each step resolved, e.g. the calibrated similarity threshold). Resume: shards are written
whole (`shard-00000.parquet`, ...), and `progress.json` records the rows written; a rerun with the same config
skips them in the (deterministic) output stream and continues. A changed config is refused rather than mixed in.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import datasets
import yaml

from ..atomic_io import write_json_atomic
from .concepts import (
    ConceptCounts,
    WordNetConcepts,
    balance_concepts,
    canonical_hashtags,
    canonicalize_hashtags,
    plot_concept_histogram,
)
from .cleaning import clean_captions, filter_language, split_into_sentences

logger = logging.getLogger(__name__)


@dataclass
class CurateConfig:
    source: dict[str, Any]
    output_dir: str
    steps: list[Any] = field(default_factory=list)
    caption_column: str = "caption"
    id_column: str = "id"
    shard_size: int = 1000

    @classmethod
    def from_file(cls, path: str | os.PathLike) -> CurateConfig:
        with open(path, encoding="utf-8") as f:
            values = yaml.safe_load(f)
        if not isinstance(values, dict):
            raise ValueError(f"{path}: a curate config must be a YAML mapping")
        unknown = set(values) - set(cls.__dataclass_fields__)
        if unknown:
            raise ValueError(f"unknown curate config keys {sorted(unknown)}; known: {sorted(cls.__dataclass_fields__)}")
        out = cls(**values)
        if out.shard_size < 1:
            raise ValueError(f"shard_size must be >= 1, got {out.shard_size}")
        names = [_step(step)[0] for step in out.steps]
        for name in names:
            if name not in STEPS:
                raise ValueError(f"unknown curation step {name!r}; known: {sorted(STEPS)}")
        counting = [i for i, name in enumerate(names) if name in COUNTING_STEPS]
        costly = [name for name in names[: counting[-1]] if name in COSTLY_STEPS] if counting else []
        if costly:
            logger.warning("curation steps %s come before a step with a counting pass (%s): they will run once per "
                           "pass; put them after it", costly, [names[i] for i in counting])
        return out

    def fingerprint(self) -> str:
        return hashlib.sha256(json.dumps(self.__dict__, sort_keys=True, default=str).encode()).hexdigest()


def _step(step: Any) -> tuple[str, dict[str, Any]]:
    if isinstance(step, str):
        return step, {}
    if isinstance(step, dict) and len(step) == 1:
        name, settings = next(iter(step.items()))
        return name, dict(settings or {})
    raise ValueError(f"a curation step is a name or a one-key mapping {{name: settings}}, got {step!r}")


class Context:
    """What steps share: the config, the report entry of the running step, and the stream before it (for steps
    that need a counting pass)."""

    def __init__(self, config: CurateConfig, output_dir: str):
        self.config, self.output_dir = config, output_dir
        self.counting = False
        self._wordnet: WordNetConcepts | None = None

    @property
    def wordnet(self) -> WordNetConcepts:
        if self._wordnet is None:
            self._wordnet = WordNetConcepts()
        return self._wordnet


# ------------------------------------------------------------------------------------------------------- steps
def _clean(ds: Any, settings: dict, ctx: Context, report: dict) -> Any:
    return clean_captions(ds, ctx.config.caption_column)


def _language(ds: Any, settings: dict, ctx: Context, report: dict) -> Any:
    return filter_language(ds, ctx.config.caption_column, settings.get("languages", ["en"]),
                           settings.get("min_probability", 0.5), settings.get("restrict_to"))


def _sentences(ds: Any, settings: dict, ctx: Context, report: dict) -> Any:
    return split_into_sentences(ds, ctx.config.caption_column, settings.get("language", "en"))


def _balance(ds: Any, settings: dict, ctx: Context, report: dict) -> Any:
    t = int(settings.get("t", 20_000))
    counts = ConceptCounts(ctx.wordnet).update(row[ctx.config.caption_column] for row in ds)  # the counting pass
    report["concepts"] = len(counts.counts)
    report["top_concepts"] = counts.most_common(10)

    def after_pass(kept_rows: Any) -> None:
        after = ConceptCounts(ctx.wordnet).update(row[ctx.config.caption_column] for row in kept_rows)
        plot_concept_histogram(counts.counts, after.counts, os.path.join(ctx.output_dir, "concepts.png"), t=t)

    report["_after"] = after_pass
    return balance_concepts(ds, ctx.wordnet, counts.counts, t, ctx.config.caption_column, ctx.config.id_column,
                            seed=int(settings.get("seed", 0)))


def _similarity(ds: Any, settings: dict, ctx: Context, report: dict) -> Any:
    from .similarity_filter import SimilarityScorer, calibrate_threshold, filter_by_similarity, score_pairs

    if "model" not in settings:
        raise ValueError("the similarity step needs model: a CLIP checkpoint directory")
    scorer = SimilarityScorer(settings["model"])
    scored = score_pairs(ds, scorer, settings.get("image_column", "image"), ctx.config.caption_column,
                         int(settings.get("batch_size", 64)))
    threshold = settings.get("threshold")
    if threshold is None:
        sample = [row["clip_score"] for row in scored.take(int(settings.get("calibration_samples", 512)))]
        threshold = calibrate_threshold(sample, float(settings.get("drop_fraction", 0.1)))
    report["threshold"] = float(threshold)
    return filter_by_similarity(scored, float(threshold))


def _hashtags(ds: Any, settings: dict, ctx: Context, report: dict) -> Any:
    column = settings.get("column", "hashtags")
    counts = Counter(tag for row in ds for tag in (row[column] or []))
    table = canonical_hashtags(counts, ctx.wordnet)
    with open(os.path.join(ctx.output_dir, "hashtag_table.json"), "w", encoding="utf-8") as f:
        json.dump(table, f, indent=1, ensure_ascii=False)
    report["hashtags"], report["canonical_hashtags"] = len(table), len(set(table.values()))
    return ds.map(lambda row: {column: canonicalize_hashtags(row[column] or [], table)})


def _rewrite(ds: Any, settings: dict, ctx: Context, report: dict) -> Any:
    from .rewrite import CaptionRewriter, rewrite_captions

    batch_size = int(settings.pop("batch_size", 16))
    output_column = settings.pop("output_column", "rewritten_caption")
    rewriter = CaptionRewriter(batch_size=batch_size, **settings)
    return rewrite_captions(ds, rewriter, ctx.config.caption_column, output_column, batch_size)


# steps that read the stream before them once more to count (concepts, hashtags), and steps that run a model
COUNTING_STEPS, COSTLY_STEPS = ("balance", "hashtags"), ("similarity", "rewrite")
STEPS: dict[str, Callable[[Any, dict, Context, dict], Any]] = {
    "clean": _clean, "language": _language, "sentences": _sentences, "balance": _balance,
    "similarity": _similarity, "hashtags": _hashtags, "rewrite": _rewrite,
}


# ------------------------------------------------------------------------------------------------------ the run
def _open_source(source: dict[str, Any]) -> datasets.IterableDataset:
    if "name" in source:
        from ..data.tables import open_table

        table = open_table(source["name"], source.get("split", "train"), max_samples=source.get("max_samples"))
        return table.to_iterable_dataset(num_shards=int(source.get("num_shards", 1)))
    if "path" in source:
        from ..data.sources import load_source

        return load_source(source["path"], **{k: v for k, v in source.items() if k != "path"})
    raise ValueError(f"source needs name: (an embedded dataset) or path:, got {source}")


def _counted(ds: Any, report: dict, ctx: Context) -> Any:
    """Count the rows a step lets through, in the writing pass only (counting passes of later steps also read it)."""
    report.setdefault("rows_out", 0)

    def count(row: dict) -> dict:
        if ctx.counting:
            report["rows_out"] += 1
        return {}

    return ds.map(count)


def curate(config: CurateConfig) -> dict[str, Any]:
    """Run the configured steps, write the shards, return (and save) the report."""
    out = config.output_dir
    os.makedirs(out, exist_ok=True)
    progress_file = os.path.join(out, "progress.json")
    progress = {"fingerprint": config.fingerprint(), "rows": 0, "shards": 0}
    if os.path.isfile(progress_file):
        with open(progress_file, encoding="utf-8") as f:
            saved = json.load(f)
        if saved.get("fingerprint") != progress["fingerprint"]:
            raise ValueError(f"{out} holds a curation run of another config; use a new output_dir")
        progress = saved
    ctx = Context(config, out)
    stream = _counted(_open_source(config.source), source_report := {"step": "source"}, ctx)
    reports = [source_report]
    for step in config.steps:
        name, settings = _step(step)
        report = {"step": name, "settings": dict(settings)}
        stream = _counted(STEPS[name](stream, settings, ctx, report), report, ctx)
        reports.append(report)
    features = stream.features
    ctx.counting = True
    rows, shard = [], progress["shards"]
    written = progress["rows"]
    from tqdm.auto import tqdm

    bar = tqdm(desc=f"curating into {out}", unit=" rows", initial=written)
    for row in stream.skip(written) if written else stream:
        bar.update(1)
        rows.append(row)
        if len(rows) == config.shard_size:
            shard = _write_shard(out, shard, rows, features)
            written += len(rows)
            rows = []
            _save_json(progress_file, {**progress, "rows": written, "shards": shard})
    bar.close()
    if rows:
        shard = _write_shard(out, shard, rows, features)
        written += len(rows)
        _save_json(progress_file, {**progress, "rows": written, "shards": shard})
    for report in reports:
        after = report.pop("_after", None)
        if after is not None:
            after(_read_shards(out))
    previous = reports[0]["rows_out"]
    for report in reports[1:]:
        report["rows_in"], previous = previous, report["rows_out"]
    result = {"output_dir": out, "rows_written": written, "shards": shard, "steps": reports,
              "resumed_after_rows": progress["rows"]}
    _save_json(os.path.join(out, "report.json"), result)
    return result


def _write_shard(out: str, index: int, rows: list[dict], features: Any) -> int:
    table = datasets.Dataset.from_list(rows, features=features) if features is not None else datasets.Dataset.from_list(rows)
    table.to_parquet(os.path.join(out, f"shard-{index:05d}.parquet"))
    return index + 1


def _read_shards(out: str) -> datasets.Dataset:
    files = sorted(f for f in os.listdir(out) if f.startswith("shard-") and f.endswith(".parquet"))
    return datasets.load_dataset("parquet", data_files=[os.path.join(out, f) for f in files], split="train")


def _save_json(path: str, value: dict) -> None:
    write_json_atomic(path, value, indent=1, ensure_ascii=False, default=str)


__all__ = ["STEPS", "CurateConfig", "curate"]
