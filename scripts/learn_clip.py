"""Show on real data that stage 3 (CLIP + SLIP + denoising + siamese captions) learns; prints mean and spread over
seeds and writes every result as JSON (CLIP_benchmark's shape) under --output.

    python scripts/learn_clip.py --output runs/learn_clip                      # all experiments, 3 seeds
    python scripts/learn_clip.py --output runs/learn_clip --experiments fashion --seeds 0

Experiments (tiny preset; evaluation through `xray_hf.eval.run_eval` on the saved checkpoint, as a user runs it):

- `fashion`: Fashion-MNIST captioned with simple templates of its class names, the frozen MiniLM tower (LLM2CLIP
  slot) against the plain text tower from scratch; zero-shot top-1 on the test split with the training template
  set and with CLIP's 8 photo templates (whose unseen words a from-scratch tower cannot read), and a linear probe.
- `unseen`: the same, trained on 8 Fashion-MNIST classes only; zero-shot on the test images of the 2 held-back
  classes (bag, ankle boot: the last two), among all 10 class names (CLIP's photo templates), MiniLM against plain;
  beside it, zero-shot on the whole test split.
- `towers`: OpenMoji retrieval on the test split (names never seen in training), image->text and text->image
  R@1/R@5/R@10: the LLM2CLIP tower with frozen all-MiniLM-L6-v2 and with SmolLM2-135M (raw, causal, after
  LLM2Vec; pooled outputs cached) against the plain `XrayTextModel` trained from scratch (paper 4.6, claim: a
  frozen LLM-side tower beats training text from scratch), all against the same embeddings with captions shuffled.
- `order`: configs/clip_tiny.yaml started from MAE -> hashtag (configs/mae_tiny.yaml, configs/hashtag_tiny.yaml,
  trained once) against the same CLIP run from random init at the same CLIP budget (paper Table 6): OpenMoji
  retrieval, moving-shapes video zero-shot (shape x direction, shape, direction) and a Fashion-MNIST linear probe.
- `ablation`: the same CLIP run from the hashtag checkpoint with SLIP on/off and denoising on/off.
- `video_factors`: configs/clip_tiny.yaml on moving-shapes clips alone, one factor changed at a time (random init
  or the MAE -> hashtag checkpoint, CLS or mean pooling, two-frame SLIP, denoising); `--towers` picks variants.
- `video`: CLIP on moving-shapes clips alone ("a red circle moving left"), plain text tower from scratch; zero-shot
  on the test clips over shape x direction, shape alone and direction alone (chance 1/12, 1/3, 1/4).
"""

from __future__ import annotations

import argparse
import json
import os
import time

import numpy as np
import torch

from xray_hf.eval import run_eval
from xray_hf.eval.data import decoded, load_eval_set, ProcessorTransform
from xray_hf.eval.metrics import retrieval_metrics
from xray_hf.eval.retrieval import embed_retrieval_set
from xray_hf.eval.run import load_checkpoint
from xray_hf.trainers.run import load_run_config, run_stage

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
QUIET = {"disable_tqdm": True, "report_to": ["tensorboard"], "save_strategy": "no", "eval_strategy": "no"}
TRAIN_TEMPLATES = ["a photo of a {}", "a picture of a {}", "an image of a {}", "a {}", "a photo of the {}",
                   "a close-up photo of a {}"]
VISION_TINY = {"preset": "tiny", "config": {"image_size": 32, "patch_size": 4, "num_frames": 4}}
MINILM_TEXT = {"from_llm": "minilm", "config": {"adapter_depth": 4}}  # frozen all-MiniLM-L6-v2, cached
PLAIN_TEXT = {"preset": "tiny", "tokenizer": "smollm2",
              "config": {"num_hidden_layers": 2, "hidden_size": 64, "num_attention_heads": 4,
                         "max_position_embeddings": 32}}


def log(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", flush=True)


def summarize(runs: list[dict]) -> dict:
    keys = runs[0].keys()
    return {k: [round(float(np.mean([r[k] for r in runs])), 4), round(float(np.std([r[k] for r in runs])), 4)]
            for k in keys}


def retrieval(model_dir: str, split: str = "test", shuffle_seed: int | None = None) -> dict[str, float]:
    """OpenMoji retrieval R@1/R@5 both ways; with `shuffle_seed`, on the same embeddings with captions permuted."""
    if shuffle_seed is None:
        metrics = run_eval(model_dir, "retrieval", "openmoji", split=split, plots=False)["metrics"]
    else:
        pieces = load_checkpoint(model_dir)
        eval_set = load_eval_set("openmoji", split, need=("captions",))
        data = decoded(eval_set, ProcessorTransform(pieces["image_processor"], pieces["video_processor"]))
        embeds = embed_retrieval_set(pieces["model"], data, tokenizer=pieces["tokenizer"], caption_column="caption")
        order = torch.from_numpy(np.random.default_rng(shuffle_seed).permutation(len(embeds.text_to_image)))
        metrics = retrieval_metrics(embeds.image_embeds, embeds.text_embeds, embeds.text_to_image[order])
    return {k: metrics[k] for k in ("text_retrieval_recall@1", "text_retrieval_recall@5", "text_retrieval_recall@10",
                                    "image_retrieval_recall@1", "image_retrieval_recall@5",
                                    "image_retrieval_recall@10")}


def video_zero_shot(model_dir: str) -> dict[str, float]:
    """Moving-shapes test clips: zero-shot over shape x direction, shape alone and direction alone."""
    out = {}
    for column, templates in (("label", ["a video of a {}.", "a {}."]), ("shape", ["a video of a {}."]),
                              ("direction", ["a video of a shape moving {}.", "something moving {}."])):
        metrics = run_eval(model_dir, "zero-shot", "moving-shapes", split="test", label_column=column,
                           templates=templates, plots=False)["metrics"]
        out[f"video_{column}_acc1"] = metrics["acc1"]
    return out


def openmoji_data(image_source: dict | None = None) -> dict:
    """The `data:` block of the OpenMoji retrieval runs (`image_source` replaces the embedded training set)."""
    return {"resolution": 32, "image": {**(image_source or {"name": "openmoji", "split": "train"}), "batch_size": 64},
            "augment": {"flip_p": 0.0, "blur_p": 0.0, "brightness": 0.2, "saturation": 0.2, "crop_scale": [0.7, 1.0]}}


def plain_clip_config(out: str, seed: int, steps: int, data: dict, captions: dict, text: dict = PLAIN_TEXT,
                      projection_dim: int = 64, learning_rate: float = 2e-3) -> dict:
    """A `clip` run config of the tiny backbone with plain contrastive training (no SLIP, denoising or hashtags)."""
    return {
        "stage": "clip", "seed": seed,
        "model": {"vision": VISION_TINY, "text": text,
                  "config": {"projection_dim": projection_dim, "slip_weight": 0.0, "lambda_den": 0.0,
                             "hashtag_loss_weight": 0.0}},
        "captions": captions,
        "data": data,
        "training": {"output_dir": out, "max_steps": steps, "learning_rate": learning_rate, "optimizer": "adamw",
                     "weight_decay": 0.05, "warmup_steps": 30, "logging_steps": 50, "lr_scheduler_type": "cosine",
                     **QUIET},
    }


FASHION_AUGMENT = {"flip_p": 0.5, "blur_p": 0.0, "brightness": 0.0, "saturation": 0.0, "crop_scale": [0.7, 1.0]}
TEXT_TOWERS = {"minilm": MINILM_TEXT, "plain": PLAIN_TEXT}


def chosen_towers(towers: list[str] | None) -> dict[str, dict]:
    return {name: text for name, text in TEXT_TOWERS.items() if not towers or name in towers}


def fashion_config(out: str, seed: int, steps: int, image_source: dict, text: dict) -> dict:
    """A template-captioned Fashion-MNIST CLIP run (batches of 128) on `image_source`."""
    data = {"resolution": 32, "image": {**image_source, "batch_size": 128}, "augment": FASHION_AUGMENT}
    return plain_clip_config(out, seed, steps, data, {"templates": TRAIN_TEMPLATES}, text=text)


def fashion(output: str, seeds: list[int], steps: int, towers: list[str] | None = None) -> dict:
    res = {}
    for tower, text in chosen_towers(towers).items():
        runs = []
        for seed in seeds:
            out = os.path.join(output, f"fashion_{tower}_seed{seed}")
            config = fashion_config(out, seed, steps, {"name": "fashion-mnist", "split": "train"}, text)
            start = time.time()
            run_stage("clip", config)
            seconds = time.time() - start
            zs = {name: run_eval(out, "zero-shot", "fashion-mnist", split="test", templates=templates,
                                 plots=False)["metrics"]["acc1"]
                  for name, templates in (("zeroshot_acc1_train_templates", TRAIN_TEMPLATES),
                                          ("zeroshot_acc1_clip_photo_templates", "photo"))}
            probe = run_eval(out, "linear-probe", "fashion-mnist", split="test", max_train_samples=10000,
                             plots=False)["metrics"]
            runs.append({**zs, "lp_acc1": probe["lp_acc1"], "train_seconds": seconds})
            log(f"fashion {tower} seed {seed}: {runs[-1]}")
        res[tower] = {"runs": runs, "mean_std": summarize(runs)}
    res["steps"] = steps
    return res


HELD_OUT = 2  # the last classes of Fashion-MNIST (bag, ankle boot) are never seen in `unseen` training


def _fashion_subset(output: str) -> tuple[str, list[str], list[int]]:
    """A Parquet file of the Fashion-MNIST training images of all but the last HELD_OUT classes."""
    from xray_hf.data import load_embedded

    train = load_embedded("fashion-mnist", "train")
    names = train.features["label"].names
    held = list(range(len(names) - HELD_OUT, len(names)))
    path = os.path.join(output, "fashion_seen_classes.parquet")
    if not os.path.exists(path):
        train.filter(lambda label: label not in held, input_columns="label").to_parquet(path)
    return path, names, held


def unseen(output: str, seeds: list[int], steps: int, towers: list[str] | None = None) -> dict:
    """Zero-shot on classes the CLIP run never saw: only the text tower knows what their names mean."""
    from xray_hf.data import load_embedded

    path, names, held = _fashion_subset(output)
    test = load_embedded("fashion-mnist", "test")
    held_test = os.path.join(output, "fashion_held_out_test.parquet")
    if not os.path.exists(held_test):
        test.filter(lambda label: label in held, input_columns="label").to_parquet(held_test)
    count = sum(1 for label in load_embedded("fashion-mnist", "train")["label"] if label not in held)
    res = {"held_out_classes": [names[i] for i in held]}
    for tower, text in chosen_towers(towers).items():
        runs = []
        for seed in seeds:
            out = os.path.join(output, f"unseen_{tower}_seed{seed}")
            config = fashion_config(out, seed, steps, {"path": path, "num_samples": count}, text)
            run_stage("clip", config)
            among_all = run_eval(out, "zero-shot", held_test, templates="photo", classnames=names,
                                 plots=False)["metrics"]["acc1"]
            runs.append({"unseen_acc1_among_10": among_all,
                         "seen_acc1": run_eval(out, "zero-shot", "fashion-mnist", split="test", templates="photo",
                                               plots=False)["metrics"]["acc1"]})
            log(f"unseen {tower} seed {seed}: {runs[-1]}")
        res[tower] = {"runs": runs, "mean_std": summarize(runs)}
    res["steps"] = steps
    return res


def towers(output: str, seeds: list[int], steps: int, cache_dir: str, tower_variants: list[str] | None = None) -> dict:
    res = {}
    llm_text = {"from_llm": "smollm2", "config": {"pooling": "mean", "adapter_depth": 4, "max_text_length": 32}}
    # the LLM as pretrained (causal): bidirectional attention without LLM2Vec's MNTP adaptation is off-distribution
    causal_text = {"from_llm": "smollm2", "config": {"pooling": "mean", "adapter_depth": 4, "max_text_length": 32,
                                                     "bidirectional": False}}
    variants = (("llm2clip_minilm_cached", MINILM_TEXT), ("llm2clip_smollm2_cached", llm_text),
                ("llm2clip_smollm2_causal_cached", causal_text), ("llm2clip_smollm2_llm2vec_cached", None),
                ("plain_from_scratch", PLAIN_TEXT))
    for name, text in variants:
        if tower_variants and name not in tower_variants:
            continue
        if text is None:  # MNTP + SimCSE first, as the paper does
            text = {"from_pretrained": llm2vec_tower(output)}
        runs = []
        for seed in seeds:
            out = os.path.join(output, f"towers_{name}_seed{seed}")
            config = plain_clip_config(out, seed, steps, openmoji_data(), {"column": "caption"}, text=text,
                                       projection_dim=128, learning_rate=1e-3)
            config["text_cache"] = {"dir": f"{cache_dir}_{name}"}
            start = time.time()
            run_stage("clip", config)
            runs.append({**retrieval(out), **{f"shuffled_{k}": v for k, v in retrieval(out, shuffle_seed=seed).items()},
                         "train_seconds": time.time() - start})
            log(f"towers {name} seed {seed}: {runs[-1]}")
        res[name] = {"runs": runs, "mean_std": summarize(runs)}
    res["steps"] = steps
    return res


def llm2vec_tower(output: str, steps: int = 100) -> str:
    """SmolLM2 through LLM2Vec (paper 4.6.2): bidirectional, LoRA MNTP on the OpenMoji training captions and tags, then
    supervised SimCSE with each emoji's name and its tags as the positive pair; merged; returns the tower folder."""
    from datasets import Dataset

    from xray_hf import XrayLLM2CLIPTextForMNTP, XrayLLM2CLIPTextModel
    from xray_hf.convert import smollm2_checkpoint, smollm2_tokenizer
    from xray_hf.data import load_embedded
    from xray_hf.data.captions import hashtag_text
    from xray_hf.trainers.llm2vec import (LLM2VecTrainingArguments, MNTPCollator, MNTPTrainer, SimCSECollator,
                                          SimCSETrainer, add_lora, load_lora, merge_lora)

    folder = os.path.join(output, "llm2vec_smollm2")
    if os.path.isfile(os.path.join(folder, "config.json")):
        return folder
    tokenizer = smollm2_tokenizer()
    base = os.path.join(output, "llm2vec_base")
    XrayLLM2CLIPTextModel.from_llm(smollm2_checkpoint(), projection_dim=128, max_text_length=32).save_pretrained(base)
    train = load_embedded("openmoji", "train")
    tags = [hashtag_text(t) for t in train["hashtags"]]
    common = dict(report_to=[], disable_tqdm=True, save_strategy="no", logging_steps=20, learning_rate=1e-3,
                  warmup_steps=10, max_steps=steps)
    mntp = add_lora(XrayLLM2CLIPTextForMNTP.from_pretrained(base))
    MNTPTrainer(model=mntp, args=LLM2VecTrainingArguments(output_dir=os.path.join(output, "llm2vec_mntp"),
                                                          per_device_train_batch_size=32, **common),
                train_dataset=Dataset.from_dict({"text": list(train["caption"]) + [t for t in tags if t]}),
                data_collator=MNTPCollator(tokenizer, max_length=32)).train()
    mntp.save_pretrained(os.path.join(output, "llm2vec_mntp_lora"))
    text = load_lora(XrayLLM2CLIPTextModel.from_pretrained(base), os.path.join(output, "llm2vec_mntp_lora"))
    simcse = add_lora(text)
    items = Dataset.from_dict({"id": list(train["id"]), "captions": [[c, t] for c, t in zip(train["caption"], tags)]})
    SimCSETrainer(model=simcse, args=LLM2VecTrainingArguments(output_dir=os.path.join(output, "llm2vec_simcse"),
                                                              per_device_train_batch_size=32, **common),
                  train_dataset=items.filter(lambda r: bool(r["captions"][1])),
                  data_collator=SimCSECollator(tokenizer, max_length=32, seed=0)).train()
    merge_lora(simcse).save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder


def pretrain(output: str, mae_steps: int, hashtag_steps: int) -> str:
    """MAE then hashtags with the shipped tiny configs, once; returns the hashtag checkpoint."""
    mae = load_run_config(os.path.join(ROOT, "configs", "mae_tiny.yaml"))
    mae["training"].update(output_dir=os.path.join(output, "mae"), max_steps=mae_steps, **QUIET)
    hashtag = load_run_config(os.path.join(ROOT, "configs", "hashtag_tiny.yaml"))
    hashtag["model"]["from_pretrained"] = mae["training"]["output_dir"]
    hashtag["training"].update(output_dir=os.path.join(output, "hashtag"), max_steps=hashtag_steps, **QUIET)
    if not os.path.isfile(os.path.join(hashtag["training"]["output_dir"], "config.json")):
        run_stage("mae", mae)
        run_stage("hashtag", hashtag)
    return hashtag["training"]["output_dir"]


def clip_tiny(out: str, seed: int, steps: int, cache_dir: str, vision: dict, **model_config) -> dict:
    done = os.path.join(out, "learn_clip_result.json")  # a cut-off session resumes at the first unfinished run
    if os.path.exists(done):
        with open(done) as f:
            return json.load(f)
    config = load_run_config(os.path.join(ROOT, "configs", "clip_tiny.yaml"))
    config["seed"] = seed
    config["model"]["vision"] = vision
    config["model"]["config"].update(model_config)
    config["text_cache"] = {"dir": cache_dir}
    config["training"].update(output_dir=out, max_steps=steps, **QUIET)
    config["training"]["resolution_schedule"] = [[0, 16], [steps // 3, 24], [2 * steps // 3, 32]]
    start = time.time()
    run_stage("clip", config)
    seconds = time.time() - start
    probe = run_eval(out, "linear-probe", "fashion-mnist", split="test", max_train_samples=10000, plots=False)
    result = {**retrieval(out), **video_zero_shot(out), "fashion_lp_acc1": probe["metrics"]["lp_acc1"],
              "train_seconds": seconds}
    with open(done, "w") as f:
        json.dump(result, f, indent=2)
    return result


def order(output: str, seeds: list[int], steps: int, cache_dir: str, hashtag_dir: str) -> dict:
    res = {}
    random_init = {"preset": "tiny", "config": load_run_config(os.path.join(ROOT, "configs", "mae_tiny.yaml"))
                   ["model"]["config"]}
    for name, vision in (("mae_hashtag_clip", {"from_pretrained": hashtag_dir}), ("clip_random_init", random_init)):
        runs = []
        for seed in seeds:
            runs.append(clip_tiny(os.path.join(output, f"order_{name}_seed{seed}"), seed, steps, cache_dir, vision))
            log(f"order {name} seed {seed}: {runs[-1]}")
        res[name] = {"runs": runs, "mean_std": summarize(runs)}
    res["steps"] = steps
    return res


def ablation(output: str, seeds: list[int], steps: int, cache_dir: str, hashtag_dir: str) -> dict:
    res = {}
    for name, settings in (("slip_on_denoise_on", {}), ("slip_off", {"slip_weight": 0.0}),
                           ("denoise_off", {"lambda_den": 0.0}), ("slip_off_denoise_off", {"slip_weight": 0.0,
                                                                                          "lambda_den": 0.0})):
        runs = []
        for seed in seeds:
            out = os.path.join(output, f"ablation_{name}_seed{seed}")
            runs.append(clip_tiny(out, seed, steps, cache_dir, {"from_pretrained": hashtag_dir}, **settings))
            log(f"ablation {name} seed {seed}: {runs[-1]}")
        res[name] = {"runs": runs, "mean_std": summarize(runs)}
    res["steps"] = steps
    return res


def video(output: str, seeds: list[int], steps: int) -> dict:
    runs = []
    for seed in seeds:
        out = os.path.join(output, f"video_seed{seed}")
        data = {"resolution": 32,
                "video": {"name": "moving-shapes", "split": "train", "batch_size": 32, "num_frames": 4, "stride": 2},
                "augment": {"flip_p": 0.0, "blur_p": 0.0, "brightness": 0.0, "saturation": 0.0,
                            "crop_scale": [0.8, 1.0]}}
        config = plain_clip_config(out, seed, steps, data, {"column": "caption"})
        start = time.time()
        run_stage("clip", config)
        runs.append({**video_zero_shot(out), "train_seconds": time.time() - start})
        log(f"video seed {seed}: {runs[-1]}")
    return {"runs": runs, "mean_std": summarize(runs), "steps": steps}


VIDEO_FACTORS = {  # name: (vision init, pooling, SLIP, denoising), all with the frozen MiniLM tower
    "scratch_plain": ("scratch", "cls", False, False),
    "scratch_denoise": ("scratch", "cls", False, True),
    "scratch_slip": ("scratch", "cls", True, False),
    "scratch_mean_pool_denoise": ("scratch", "mean", False, True),
    "hashtag_init_denoise": ("hashtag", "cls", False, True),
    "hashtag_init_mean_pool_denoise": ("hashtag", "mean", False, True),
}


def video_factors(output: str, seeds: list[int], steps: int, hashtag_dir: str,
                  variants: list[str] | None = None) -> dict:
    """configs/clip_tiny.yaml on moving-shapes clips alone (no images), one factor changed at a time: where the
    vision tower starts (random init or the MAE -> hashtag checkpoint), its pooling, two-frame SLIP, denoising.
    Zero-shot on the 120 test clips over shape x direction, shape and direction."""
    res = {}
    for name, (init, pooling, slip, denoise) in VIDEO_FACTORS.items():
        if variants and name not in variants:
            continue
        runs = []
        for seed in seeds:
            out = os.path.join(output, f"video_factors_{name}_seed{seed}")
            done = os.path.join(out, "learn_clip_result.json")
            if os.path.exists(done):
                with open(done) as f:
                    runs.append(json.load(f))
                continue
            config = load_run_config(os.path.join(ROOT, "configs", "clip_tiny.yaml"))
            vision = dict(VISION_TINY) if init == "scratch" else {"from_pretrained": hashtag_dir}
            vision["config"] = {**vision.get("config", {}), "pooling": pooling}
            config["seed"] = seed
            config["model"]["vision"] = vision
            config["model"]["config"].update(slip_weight=1.0 if slip else 0.0, lambda_den=1.0 if denoise else 0.0,
                                             hashtag_loss_weight=0.0)
            for key in ("image", "video_fraction", "eval"):
                config["data"].pop(key, None)
            config["text_cache"] = {"dir": os.path.join(output, "text_cache_video_factors")}
            config["training"].update(output_dir=out, max_steps=steps, resolution_schedule=None, **QUIET)
            start = time.time()
            run_stage("clip", config)
            runs.append({**video_zero_shot(out), "train_seconds": time.time() - start})
            with open(done, "w") as f:
                json.dump(runs[-1], f, indent=2)
            log(f"video_factors {name} seed {seed}: {runs[-1]}")
        res[name] = {"runs": runs, "mean_std": summarize(runs)}
    res["steps"] = steps
    return res


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--output", default="runs/learn_clip")
    parser.add_argument("--experiments", nargs="+", default=["fashion", "unseen", "towers", "order", "ablation"])
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--steps", type=int, default=None, help="CLIP steps of every run (default per experiment)")
    parser.add_argument("--towers", nargs="+", default=None,
                        help="only these text towers (`towers`: variant names; `fashion`, `unseen`: minilm, plain)")
    parser.add_argument("--pretrain-steps", type=int, default=600, help="MAE and hashtag steps of `order`/`ablation`")
    parser.add_argument("--threads", type=int, default=1, help="torch threads (1 is fastest for the tiny preset)")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    os.makedirs(args.output, exist_ok=True)
    results = {}
    for experiment in args.experiments:
        log(f"experiment {experiment}")
        # one SmolLM2 cache for all runs of an experiment (same texts, same LLM): built once, then opened
        cache_dir = os.path.join(args.output, f"text_cache_{'clip_tiny' if experiment in ('order', 'ablation') else experiment}")
        if experiment == "fashion":
            results[experiment] = fashion(args.output, args.seeds, args.steps or 1200, args.towers)
        elif experiment == "unseen":
            results[experiment] = unseen(args.output, args.seeds, args.steps or 1200, args.towers)
        elif experiment == "towers":
            results[experiment] = towers(args.output, args.seeds, args.steps or 600, cache_dir, args.towers)
        elif experiment == "video":
            results[experiment] = video(args.output, args.seeds, args.steps or 600)
        elif experiment == "video_factors":
            hashtag_dir = pretrain(args.output, args.pretrain_steps, args.pretrain_steps)
            results[experiment] = video_factors(args.output, args.seeds, args.steps or 300, hashtag_dir, args.towers)
        elif experiment in ("order", "ablation"):
            hashtag_dir = pretrain(args.output, args.pretrain_steps, args.pretrain_steps)
            run = order if experiment == "order" else ablation
            results[experiment] = run(args.output, args.seeds, args.steps or 600, cache_dir, hashtag_dir)
        else:
            raise ValueError(f"unknown experiment {experiment!r}")
        log(f"{experiment}: {json.dumps({k: v.get('mean_std', v) if isinstance(v, dict) else v for k, v in results[experiment].items()})}")
        name = "_".join(args.experiments + (args.towers or []))  # a --towers subset does not overwrite the full run
        path = os.path.join(args.output, f"learn_clip_{name}.json")
        with open(path, "w") as f:
            json.dump(results, f, indent=1)
    log(f"results in {path}")


if __name__ == "__main__":
    main()
