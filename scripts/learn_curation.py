"""Does curation help a CLIP run (issue 13)? The tiny plain-tower CLIP of `scripts/learn_clip.py` trained on the
raw OpenMoji training set and on its curated shards (`xray-hf curate --config configs/curate.yaml`), same steps and
seeds, evaluated on OpenMoji's held-out test retrieval. Reports both, whichever way it goes.

    xray-hf curate --config configs/curate.yaml
    python scripts/learn_curation.py --curated runs/curate/openmoji --output runs/learn_curation
"""

from __future__ import annotations

import argparse
import json
import os
import statistics

import datasets
import torch
from learn_clip import log, openmoji_data, plain_clip_config, retrieval  # scripts/ (the script's folder is on sys.path)

from xray_hf.trainers.run import run_stage


def train(out: str, image_source: dict, seed: int, steps: int) -> dict:
    config = plain_clip_config(out, seed, steps, openmoji_data(image_source), {"column": "caption"},
                               projection_dim=128, learning_rate=1e-3)
    run_stage("clip", config)
    return retrieval(out)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--curated", default="runs/curate/openmoji")
    parser.add_argument("--output", default="runs/learn_curation")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--steps", type=int, default=600)
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    curated_rows = sum(len(datasets.Dataset.from_parquet(os.path.join(args.curated, f)))
                       for f in os.listdir(args.curated) if f.endswith(".parquet"))
    sources = {"raw": {"name": "openmoji", "split": "train"},
               "curated": {"path": args.curated, "num_samples": curated_rows}}
    results = {}
    for name, source in sources.items():
        runs = [train(os.path.join(args.output, f"{name}_seed{seed}"), source, seed, args.steps) for seed in args.seeds]
        results[name] = {"runs": runs, "mean": {k: statistics.mean(r[k] for r in runs) for k in runs[0]}}
        log(f"{name}: {json.dumps(results[name]['mean'])}")
    results["curated_rows"] = curated_rows
    os.makedirs(args.output, exist_ok=True)
    with open(os.path.join(args.output, "learn_curation.json"), "w") as f:
        json.dump(results, f, indent=1)


if __name__ == "__main__":
    main()
