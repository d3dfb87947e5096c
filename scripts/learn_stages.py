"""Show on real data that stages 1 (MAE) and 2 (hashtags) learn; prints the numbers and writes PNG grids.

    python scripts/learn_stages.py --output runs/learn          # ~50 minutes on 1 CPU core
    python scripts/learn_stages.py --output runs/learn --quick  # a few minutes, smaller budgets

1. MAE with configs/mae_tiny.yaml (MNIST-5k digits + moving-shapes clips, 75% / 90% masking): masked-patch loss
   on held-out digits and clips against predicting each patch's mean, before and after; reconstruction grids;
   a linear probe (logistic regression on frozen features) of MNIST digits, MAE encoder vs random init.
2. Hashtags with configs/hashtag_tiny.yaml (OpenMoji + moving-shapes tagged with shape and direction): mAP and
   precision@1 on held-out items (validation + test) against the tag-frequency baseline; initialised from an MAE
   run on the same training data vs random init, at the same step budget, fine-tuned (the config's layer-wise
   lr decay; random init also with its best plain recipe) and as a linear probe (frozen backbone), over 3 seeds.
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import time

import numpy as np
import torch

from xray_hf import HashtagVocabulary, XrayVisualForHashtagClassification, XrayVisualForPreTraining
from xray_hf.modeling.mae_visualization import save_reconstruction_grid
from xray_hf.trainers import HashtagCollator, HashtagTrainer, HashtagTrainingArguments, hashtag_metrics
from xray_hf.data.inputs import build_eval_dataset, source_table
from xray_hf.run_config.data import DataSpec, SourceSpec
from xray_hf.run_config.model import VisionSpec
from xray_hf.trainers.mae import mae_eval
from xray_hf.trainers.build import build_visual_model
from xray_hf.trainers.run import load_run_config, run_stage

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
QUIET = {"disable_tqdm": True, "report_to": ["tensorboard"], "save_total_limit": 1}


def log(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", flush=True)


@torch.no_grad()
def features(backbone, dataset, batch_size: int = 256) -> tuple[np.ndarray, np.ndarray]:
    """CLS and mean-patch features of every item."""
    backbone.eval()
    cls, mean = [], []
    for start in range(0, len(dataset), batch_size):
        x = torch.stack([dataset[i]["pixel_values"] for i in range(start, min(len(dataset), start + batch_size))])
        out = backbone(x)
        cls.append(out.pooler_output.numpy())
        mean.append(out.last_hidden_state[:, 1:].mean(1).numpy())
    return np.concatenate(cls), np.concatenate(mean)


def linear_probe(backbone, data: DataSpec, train_split="train", test_split="test") -> dict[str, float]:
    from sklearn.linear_model import LogisticRegression
    from sklearn.preprocessing import StandardScaler

    sets = {s: build_eval_dataset(data, SourceSpec(name="mnist", split=s)) for s in (train_split, test_split)}
    labels = {s: np.array(source_table(SourceSpec(name="mnist", split=s))["label"]) for s in sets}
    feats = {s: features(backbone, d) for s, d in sets.items()}
    result = {}
    for i, name in enumerate(("cls", "mean_patch")):
        scaler = StandardScaler().fit(feats[train_split][i])
        clf = LogisticRegression(max_iter=2000).fit(scaler.transform(feats[train_split][i]), labels[train_split])
        result[name] = float(clf.score(scaler.transform(feats[test_split][i]), labels[test_split]))
    return result


def stage1(output: str, steps: int) -> dict:
    config = load_run_config(os.path.join(ROOT, "configs", "mae_tiny.yaml"))
    config["training"].update(output_dir=os.path.join(output, "mae"), max_steps=steps, **QUIET)
    data = DataSpec.from_dict(config["data"])
    digits = build_eval_dataset(data)
    clips = build_eval_dataset(data, SourceSpec(name="moving-shapes", split="validation", num_frames=4, stride=2))
    torch.manual_seed(config["seed"])
    untrained = build_visual_model(XrayVisualForPreTraining, VisionSpec.from_dict(config["model"], "model"))
    res = {"before": {"images": mae_eval(untrained, digits), "videos": mae_eval(untrained, clips, batch_size=32)}}
    res["probe_random_init"] = linear_probe(untrained.xray_visual, data)
    log(f"stage 1 before training: {res['before']}; MNIST linear probe, random init: {res['probe_random_init']}")
    start = time.time()
    run = run_stage("mae", config)
    res["train_seconds"] = time.time() - start
    model = XrayVisualForPreTraining.from_pretrained(config["training"]["output_dir"])
    res["after"] = {"images": mae_eval(model, digits), "videos": mae_eval(model, clips, batch_size=32)}
    res["probe_mae"] = linear_probe(model.xray_visual, data)
    logged = [e for e in run["log_history"] if "loss_image" in e or "loss_video" in e]
    res["train_loss_first_last"] = {
        m: (next(e[f"loss_{m}"] for e in logged if f"loss_{m}" in e),
            next(e[f"loss_{m}"] for e in reversed(logged) if f"loss_{m}" in e)) for m in ("image", "video")
    }
    mean, std = data.augment.image_mean, data.augment.image_std
    kwargs = {} if mean is None else {"mean": mean, "std": std}
    torch.manual_seed(0)
    spread = lambda n, k: torch.linspace(0, n - 1, k).long().tolist()  # noqa: E731  (validation sets are sorted)
    save_reconstruction_grid(model, torch.stack([digits[i]["pixel_values"] for i in spread(len(digits), 10)]),
                             os.path.join(output, "mae_mnist_reconstruction.png"), **kwargs)
    save_reconstruction_grid(model, torch.stack([clips[i]["pixel_values"] for i in spread(len(clips), 4)]),
                             os.path.join(output, "mae_video_reconstruction.png"), **kwargs)
    log(f"stage 1 after {steps} steps ({res['train_seconds']:.0f} s): {res['after']}; "
        f"MNIST linear probe, MAE: {res['probe_mae']}")
    return res


def frequency_baseline(vocab: HashtagVocabulary, eval_set) -> dict[str, float]:
    """Score every item with the training frequency of each hashtag (the same ranking for all items)."""
    from transformers import EvalPrediction

    labels = vocab.encode([eval_set[i]["hashtags"] for i in range(len(eval_set))]).numpy()
    freq = np.array([vocab.counts[t] for t in vocab.labels], dtype=np.float64)
    scores = np.tile(freq, (len(labels), 1)) + 1e-9 * np.random.default_rng(0).random(labels.shape)  # break ties
    return hashtag_metrics(EvalPrediction(predictions=scores, label_ids=labels))


def held_out(data: DataSpec, spec: SourceSpec) -> torch.utils.data.Dataset:
    """Validation and test splits together (OpenMoji's validation split alone has ~70 tagged items)."""
    parts = [build_eval_dataset(data, SourceSpec(**{**vars(spec), "split": split})) for split in ("validation", "test")]
    return torch.utils.data.ConcatDataset(parts)


def summarize(runs: list[dict]) -> dict:
    keys = runs[0].keys()
    return {k: {m: (float(np.mean([r[k][m] for r in runs])), float(np.std([r[k][m] for r in runs])))
                for m in runs[0][k]} for k in keys}


def stage2(output: str, mae_steps: int, steps: int, seeds: list[int]) -> dict:
    h_config = load_run_config(os.path.join(ROOT, "configs", "hashtag_tiny.yaml"))
    m_config = load_run_config(os.path.join(ROOT, "configs", "mae_tiny.yaml"))
    # stage 1 on stage 2's training media (as in the paper, where both stages read the same data)
    m_config["data"]["image"] = dict(h_config["data"]["image"])
    m_config["data"]["eval"] = {"name": "openmoji", "split": "validation"}
    m_config["data"]["augment"] = h_config["data"]["augment"]
    m_config["training"].update(output_dir=os.path.join(output, "mae_openmoji"), max_steps=mae_steps, **QUIET)
    log("stage 2: MAE pretraining on OpenMoji + moving-shapes")
    run = run_stage("mae", m_config)
    res = {"mae_pretraining": run.get("eval")}
    log(f"MAE on OpenMoji: {res['mae_pretraining']}")

    data = DataSpec.from_dict(h_config["data"])
    eval_sets = {
        "images": held_out(data, SourceSpec(name="openmoji")),
        "videos": held_out(data, SourceSpec(name="moving-shapes", num_frames=4, stride=2,
                                            hashtags_from=["shape", "direction"])),
    }
    tags = [t for spec in (data.image, data.video) for t in source_table(spec)["hashtags"]]
    vocab = HashtagVocabulary.from_tag_lists(tags, **{k: v for k, v in h_config["vocabulary"].items() if k != "column"})
    res["vocabulary_size"] = len(vocab)
    res["eval_items"] = {name: len(ds) for name, ds in eval_sets.items()}
    res["frequency_baseline"] = {name: frequency_baseline(vocab, ds) for name, ds in eval_sets.items()}
    log(f"tag-frequency baseline: {res['frequency_baseline']}")

    model_config = h_config["model"].get("config", {})  # e.g. pooling: mean, applied to both initialisations
    mae_dir = m_config["training"]["output_dir"]
    from_mae = {"from_pretrained": mae_dir, "config": model_config}
    random_init = {"preset": "tiny", "config": {**m_config["model"]["config"], **model_config}}
    fine_tune = {}  # configs/hashtag_tiny.yaml's recipe: layer-wise lr decay
    probe = {"freeze_backbone": True, "learning_rate": 3e-3, "layer_decay": None}  # a linear head, larger step
    variants = {
        "finetune_from_mae": (from_mae, fine_tune),
        "finetune_random_init": (random_init, fine_tune),
        # the best plain from-scratch recipe of a small single-seed sweep (lr 1e-4 and 3e-4 without layer decay;
        # 1e-3 with decay 0.5 and 3e-3 with decay 0.3 are the config-style recipes)
        "finetune_random_init_no_layer_decay": (random_init, {"learning_rate": 1e-4, "layer_decay": None}),
        "probe_from_mae": (from_mae, probe),
        "probe_random_init": (random_init, probe),
    }
    for name, (model_spec, recipe) in variants.items():
        runs = []
        for seed in seeds:
            config = copy.deepcopy(h_config)
            config["model"], config["seed"] = model_spec, seed
            out = os.path.join(output, f"hashtag_{name}_seed{seed}")
            config["training"].update(output_dir=out, max_steps=steps, eval_strategy="no", save_strategy="no",
                                      **QUIET, **recipe)
            start = time.time()
            run_stage("hashtag", config)
            model = XrayVisualForHashtagClassification.from_pretrained(out)
            args = HashtagTrainingArguments(output_dir=os.path.join(output, "eval_tmp"), report_to=[],
                                            per_device_eval_batch_size=128, disable_tqdm=True)
            trainer = HashtagTrainer(model=model, args=args, data_collator=HashtagCollator(vocab),
                                     compute_metrics=hashtag_metrics)
            runs.append({ds: {k.removeprefix("eval_"): v for k, v in trainer.evaluate(eval_dataset=eval_set).items()
                              if k in ("eval_mAP", "eval_precision@1")}
                         for ds, eval_set in eval_sets.items()})
            log(f"{name} seed {seed} ({steps} steps, {time.time() - start:.0f} s): {runs[-1]}")
        res[name] = {"runs": runs, "mean_std": summarize(runs)}
        log(f"{name}: mean, std over seeds {seeds}: {res[name]['mean_std']}")
    return res


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--output", default="runs/learn")
    parser.add_argument("--quick", action="store_true", help="small budgets (a smoke run, weaker numbers)")
    parser.add_argument("--threads", type=int, default=1, help="torch threads (1 is fastest for the tiny preset)")
    parser.add_argument("--stages", nargs="+", default=["1", "2"])
    parser.add_argument("--seeds", type=int, nargs="+", default=None,
                        help="seeds of the stage 2 comparison (default 0 1 2, --quick 0)")
    parser.add_argument("--mae-steps", type=int, default=None, help="stage 1 MAE steps (default 600, --quick 100)")
    parser.add_argument("--pretrain-steps", type=int, default=None,
                        help="stage 2's MAE pretraining steps on its own media (default 3000, --quick 100)")
    parser.add_argument("--hashtag-steps", type=int, default=None, help="hashtag steps (default 400, --quick 60)")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    os.makedirs(args.output, exist_ok=True)
    mae_steps, pretrain_steps, hashtag_steps = (100, 100, 60) if args.quick else (600, 3000, 400)
    mae_steps = args.mae_steps or mae_steps
    pretrain_steps, hashtag_steps = args.pretrain_steps or pretrain_steps, args.hashtag_steps or hashtag_steps
    results = {}
    if "1" in args.stages:
        results["stage1"] = stage1(args.output, mae_steps)
    if "2" in args.stages:
        seeds = args.seeds or ([0] if args.quick else [0, 1, 2])
        results["stage2"] = stage2(args.output, pretrain_steps, hashtag_steps, seeds)
    path = os.path.join(args.output, f"learn_results_stages{''.join(args.stages)}.json")
    with open(path, "w") as f:
        json.dump(results, f, indent=1)
    log(f"results in {path}")


if __name__ == "__main__":
    main()
