"""Search index kinds on real embeddings: recall@10 against exact search, queries per second, build time and bytes
per item, plus the indexing throughput against the model's own embedding throughput.

    python bench/search.py --model runs/tiny/clip --output runs/bench_search

1. Indexing vs embedding: `xray-hf eval`'s embedding path (decode, preprocess, embed) and `build_index` (the same
   plus the faiss add and the Parquet / manifest commits; thumbnails off) on the same Fashion-MNIST test images,
   model loading left out of both; the ratio of their items per second (target: >= 0.9: the index is not the
   bottleneck).
2. The gallery: all of Fashion-MNIST (70,000) and MNIST (5,000) embedded by the checkpoint, built incrementally
   into one flat index (one `build_index` call per split: the later calls skip what is done, so a rerun is quick),
   plus `--generated` vectors drawn from a Gaussian fitted to the real ones (mean and covariance), normalised. 1,000
   real vectors are held out as queries.
3. Each kind (flat, hnsw, int8, binary + re-rank, ivfpq) is built from those vectors and searched for the queries:
   recall@10 against the flat index, queries/s (all queries in one call; one at a time on one thread; k = 1000),
   build seconds, bytes per item (stored code; whole serialised index). int8 takes the calibrated ranges of the
   checkpoint or of its compress stage (`--compress-model`, default `<model>/../compress`, used when its towers
   equal the checkpoint's), else ranges calibrated on the gallery as the compress stage does.

The machine is shared: read the numbers next to the header's matmul rates, and the ratios more than the rates.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time

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


def throughput(model: str, output: str, items: int, batch_size: int) -> dict[str, float]:
    """Steady-state items per second (model loading left out of both) of the evaluation embedding path
    (`eval.data.decoded` + `embed_images`) and of `build_index` (decode + embed + faiss add + commits), on the
    same images."""
    from xray_hf.eval.data import ProcessorTransform, decoded, load_eval_set
    from xray_hf.eval.features import embed_images
    from xray_hf.checkpoint import load_checkpoint

    pieces = load_checkpoint(model, need_text=False)
    data = decoded(load_eval_set("fashion-mnist", "test", max_samples=items),
                   ProcessorTransform(pieces.image_processor))
    start = time.perf_counter()
    embeddings, _ = embed_images(pieces.model, data, batch_size=batch_size)
    embed = len(embeddings) / (time.perf_counter() - start)
    target = os.path.join(output, "throughput_index")
    if os.path.isdir(target):
        import shutil

        shutil.rmtree(target)
    report = build_index(model, "fashion-mnist", target, max_items=items, thumbnails=False,
                         embed=EmbedOptions(batch_size=batch_size), progress=False)
    work = sum(report["seconds"][key] for key in ("decode", "embed", "index", "write"))
    index = report["added"] / work
    return {"items": items, "embed_items_per_s": embed, "index_items_per_s": index, "ratio": index / embed,
            "index_seconds": report["seconds"]}


def gallery_vectors(model: str, output: str, batch_size: int) -> tuple[np.ndarray, float]:
    target = os.path.join(output, "gallery_index")
    start = time.perf_counter()
    for name, split in GALLERY:
        build_index(model, name, target, split=split, thumbnails=False, embed=EmbedOptions(batch_size=batch_size),
                    progress=True)
    index = SearchIndex(target)
    return index.index.index.reconstruct_n(0, len(index)), time.perf_counter() - start


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


def run_kind(kind: str, gallery: np.ndarray, queries: np.ndarray, truth: np.ndarray, ranges: np.ndarray):
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
    sizes = index.bytes_per_item()
    return {"kind": kind, "recall@10": float(np.mean(hits)), "qps_batch": qps_batch, "qps_single": qps_single,
            "qps_k1000": qps_k1000, "build_s": build, "code_bytes": sizes["code"], "index_bytes": sizes["index"],
            "rerank_bytes": sizes.get("rerank_vectors"), "float_bytes": 4 * dim}


def markdown(rows: list[dict]) -> str:
    lines = ["| kind | recall@10 | queries/s (batch) | queries/s (one by one) | queries/s (k=1000) | build (s) | "
             "bytes/item: code | bytes/item: index |", "|---|---:|---:|---:|---:|---:|---:|---:|"]
    for r in rows:
        extra = f" (+{r['rerank_bytes']:.0f} float, on disk)" if r["rerank_bytes"] else ""
        lines.append(f"| {r['kind']} | {r['recall@10']:.3f} | {r['qps_batch']:,.0f} | {r['qps_single']:,.0f} | "
                     f"{r['qps_k1000']:,.0f} | {r['build_s']:.2f} | {r['code_bytes']} | {r['index_bytes']:.1f}{extra} |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default="runs/tiny/clip", help="an XrayCLIPModel checkpoint (a trained one)")
    parser.add_argument("--output", default="runs/bench_search")
    parser.add_argument("--generated", type=int, default=60000, help="generated vectors added to the real ones")
    parser.add_argument("--compress-model", default=None,
                        help="compress-stage checkpoint with the int8 ranges (default: <model>/../compress)")
    parser.add_argument("--queries", type=int, default=1000)
    parser.add_argument("--throughput-items", type=int, default=5000)
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
        args.generated, args.queries, args.throughput_items = 2000, 100, 200
    os.makedirs(args.output, exist_ok=True)
    header = machine_header()
    print(header)
    speed = None
    if not args.skip_throughput:
        speed = throughput(args.model, args.output, args.throughput_items, args.batch_size)
        print(f"indexing {speed['index_items_per_s']:.0f} items/s vs embedding {speed['embed_items_per_s']:.0f} "
              f"items/s ({speed['items']} Fashion-MNIST test images): ratio {speed['ratio']:.2f}")
    real, gallery_seconds = gallery_vectors(args.model, args.output, args.batch_size)
    rng = np.random.default_rng(0)
    order = rng.permutation(len(real))
    queries, kept = real[order[: args.queries]], real[order[args.queries :]]
    gallery = np.concatenate([kept, generated(kept, args.generated)])
    print(f"gallery: {len(kept)} real + {args.generated} generated = {len(gallery)} vectors of {gallery.shape[1]} "
          f"dimensions; {len(queries)} real queries held out (real vectors embedded and indexed in "
          f"{gallery_seconds:.0f} s)")
    ranges, ranges_from = model_int8_ranges(args.model, args.compress_model)
    if ranges is None:
        ranges, ranges_from = int8_ranges(torch.from_numpy(kept)).numpy(), "calibrated on the real gallery vectors"
    truth = np.argsort(-(queries @ gallery.T), axis=1)[:, :10]
    rows = [run_kind(kind, gallery, queries, truth, ranges) for kind in KINDS]
    table = markdown(rows)
    print(f"int8 ranges: {ranges_from}")
    print(table)
    result = {"header": header, "model": args.model, "throughput": speed, "gallery": len(gallery),
              "real": len(kept), "generated": args.generated, "queries": len(queries), "dim": int(gallery.shape[1]),
              "int8_ranges": ranges_from, "kinds": rows}
    with open(os.path.join(args.output, "search_bench.json"), "w") as handle:
        json.dump(result, handle, indent=2)
    with open(os.path.join(args.output, "search_bench.md"), "w") as handle:
        handle.write(f"{header}\n\n{table}\n")


if __name__ == "__main__":
    main()
