"""Linear adapters (paper 6.2): equal to scikit-learn's fitted probe after save and load; fitted on Fashion-MNIST
embeddings of a tiny CLIP trained here for a few seconds, beating chance and the same model's zero-shot accuracy;
saved beside the checkpoint by `xray-hf eval --save-adapter`; bad input refused with a ValueError."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
import torch
from sklearn.datasets import load_digits
from transformers import AutoModel

import xray_hf  # noqa: F401  (registers the Auto classes)
from xray_hf import (
    XrayLinearAdapter,
    XrayLinearAdapterConfig,
    list_adapters,
    load_adapter,
    save_adapter,
)
from xray_hf.cli import main
from xray_hf.eval.adapters import adapter_from_fit, adapter_logits, fit_adapter
from xray_hf.eval.data import ProcessorTransform, decoded, load_eval_set
from xray_hf.eval.linear_probe import fit_linear_probe
from xray_hf.checkpoint import load_checkpoint
from xray_hf.eval.run import run_eval
from xray_hf.modeling.adapters import adapter_path

TEMPLATES = ["a photo of a {}"]
CLIP_STEPS = 60  # ~6 s on one thread: zero-shot clearly above chance, far from saturated


@pytest.fixture(scope="module")
def digits():
    """scikit-learn's 8x8 digits (64-d pixel features), split 60/20/20 by a fixed permutation."""
    data = load_digits()
    order = np.random.default_rng(0).permutation(len(data.target))
    x, y = data.data[order], data.target[order]
    return x[:1080], y[:1080], x[1080:1440], y[1080:1440], x[1440:], y[1440:]


@pytest.fixture(scope="module")
def clip_dir(tmp_path_factory):
    """A tiny XrayCLIPModel trained for CLIP_STEPS steps on Fashion-MNIST with captions "a photo of a <class>"
    (the CLIP stage, `run_stage`): a checkpoint directory with its processor and tokenizer."""
    from xray_hf.trainers.run import run_stage

    out = tmp_path_factory.mktemp("clip")
    threads = torch.get_num_threads()  # module fixtures run before the suite's one-thread fixture: set it here
    torch.set_num_threads(1)
    vision = {"image_size": 16, "patch_size": 4, "num_frames": 4, "hidden_size": 32, "num_hidden_layers": 2,
              "num_attention_heads": 2, "intermediate_size": 64, "num_register_tokens": 0}
    text = {"num_hidden_layers": 1, "hidden_size": 32, "num_attention_heads": 2, "max_position_embeddings": 32}
    run_stage("clip", {
        "stage": "clip", "seed": 0,
        "model": {"vision": {"preset": "tiny", "config": vision},
                  "text": {"preset": "tiny", "tokenizer": "smollm2", "config": text},
                  "config": {"projection_dim": 32, "slip_weight": 0.0, "lambda_den": 0.0}},
        "captions": {"templates": TEMPLATES},
        "data": {"resolution": 16,
                 "image": {"name": "fashion-mnist", "split": "train", "batch_size": 64, "max_samples": 3000},
                 "augment": {"flip_p": 0.0, "blur_p": 0.0, "brightness": 0.0, "saturation": 0.0,
                             "crop_scale": [0.9, 1.0]}},
        "training": {"output_dir": str(out), "max_steps": CLIP_STEPS, "learning_rate": 3e-3, "optimizer": "adamw",
                     "warmup_steps": 5, "save_strategy": "no", "report_to": [], "disable_tqdm": True},
    })
    torch.set_num_threads(threads)
    return out


def fashion(pieces: dict, split: str, count: int):
    """`count` Fashion-MNIST samples of `split` through the checkpoint's image processor, and the set."""
    eval_set = load_eval_set("fashion-mnist", split, max_samples=count, need=("labels",))
    return decoded(eval_set, ProcessorTransform(pieces.image_processor, None)), eval_set


# ------------------------------------------------------------------------------------------------ exactness
def test_adapter_equals_sklearn_predict_proba_after_save_and_load(digits, tmp_path):
    x_train, y_train, x_val, y_val, x_test, _ = digits
    fit = fit_linear_probe(x_train, y_train, x_val, y_val)
    names = [f"digit {d}" for d in range(10)]
    adapter = adapter_from_fit(fit, classnames=names, feature="embedding", base_model_type="xray_clip")
    model_dir = tmp_path / "model"
    model_dir.mkdir()
    path = save_adapter(adapter, model_dir, "digits")
    assert path == adapter_path(model_dir, "digits") and list_adapters(model_dir) == ["digits"]
    with open(f"{path}/config.json") as handle:
        saved = json.load(handle)
    assert saved["model_type"] == "xray_linear_adapter" and saved["feature"] == "embedding"
    assert saved["regularization_C"] == fit.C and saved["id2label"]["3"] == "digit 3"

    for loaded in (load_adapter(model_dir, "digits"), AutoModel.from_pretrained(path)):
        assert isinstance(loaded, XrayLinearAdapter)
        x = torch.tensor(x_test, dtype=torch.float32)
        expected = fit.probe.predict_proba((x_test - fit.mean) / fit.std)
        torch.testing.assert_close(loaded.predict_proba(x), torch.tensor(expected, dtype=torch.float32),
                                   atol=1e-5, rtol=1e-4)
        np.testing.assert_array_equal(loaded.predict(x).numpy(), fit.probe.predict((x_test - fit.mean) / fit.std))
        assert loaded.predict_labels(x[:2]) == [names[i] for i in fit.probe.predict((x_test[:2] - fit.mean) / fit.std)]
        loss = loaded(x, labels=torch.tensor(digits[5])).loss
        assert loss is not None and 0 < loss.item() < 1.0


def test_binary_fit_and_classes_absent_from_the_fit(digits):
    """A two-class probe (one decision column in scikit-learn) gives its predict_proba; a class never seen in the
    fit gets probability 0 and is never predicted."""
    x_train, y_train, _, _, x_test, _ = digits
    keep = np.isin(y_train, (3, 8))
    fit = fit_linear_probe(x_train[keep], (y_train[keep] == 8).astype(int))
    adapter = adapter_from_fit(fit, classnames=["three", "eight"])
    standardised = (x_test - fit.mean) / fit.std
    torch.testing.assert_close(adapter.predict_proba(torch.tensor(x_test, dtype=torch.float32)),
                               torch.tensor(fit.probe.predict_proba(standardised), dtype=torch.float32),
                               atol=1e-5, rtol=1e-4)
    missing = np.isin(y_train, (0, 1, 2))  # classes 0-2 fitted, 3 and 4 only named
    fit = fit_linear_probe(x_train[missing], y_train[missing])
    adapter = adapter_from_fit(fit, classnames=["0", "1", "2", "3", "4"])
    probabilities = adapter.predict_proba(torch.tensor(x_test, dtype=torch.float32))
    assert probabilities.shape == (len(x_test), 5) and float(probabilities[:, 3:].max()) < 1e-12
    torch.testing.assert_close(probabilities[:, :3], torch.tensor(
        fit.probe.predict_proba((x_test - fit.mean) / fit.std), dtype=torch.float32), atol=1e-5, rtol=1e-4)


# ------------------------------------------------------------------------------------------------ real data
def test_fashion_mnist_adapter_on_clip_embeddings_beats_chance_and_zero_shot(clip_dir):
    """Fashion-MNIST classes from the frozen CLIP embedding of a tiny CLIP: the adapter (fitted on 1,000 train
    images, C chosen on 500 validation images) against zero-shot of the same model on the same 500 test images.
    Chance is 10%."""
    pieces = load_checkpoint(clip_dir)
    model = pieces.model
    train, eval_set = fashion(pieces, "train", 1000)
    val, _ = fashion(pieces, "validation", 500)
    test, test_set = fashion(pieces, "test", 500)
    results = {}
    for feature in ("embedding", "pooled"):
        adapter = fit_adapter(model, train, val, classnames=eval_set.classnames, feature=feature)
        assert adapter.config.base_model_type == "xray_clip" and adapter.config.id2label[1] == "Trouser"
        logits = adapter_logits(model, adapter, test)
        results[feature] = (logits.argmax(1) == test_set.labels()).float().mean().item()
    zero_shot = run_eval(clip_dir, "zero-shot", "fashion-mnist", "test", max_samples=500, templates=TEMPLATES,
                         plots=False)["metrics"]["acc1"]
    print(f"\nFashion-MNIST test (500), tiny CLIP after {CLIP_STEPS} steps: adapter on CLIP embedding "
          f"{results['embedding']:.3f}, on pooled backbone feature {results['pooled']:.3f}, zero-shot {zero_shot:.3f}")
    assert zero_shot > 0.2  # the checkpoint learned something
    assert results["embedding"] > 0.5 and results["pooled"] > 0.5  # 5x chance
    assert results["embedding"] > zero_shot + 0.1


def test_cli_saves_the_probe_beside_the_checkpoint_and_it_reproduces_the_probe_accuracy(clip_dir, tmp_path, capsys):
    clip_dir = shutil.copytree(clip_dir, tmp_path / "clip")  # the module's checkpoint stays without adapters
    output = tmp_path / "lp.json"
    assert main(["eval", "--model", str(clip_dir), "--task", "linear-probe", "--dataset", "fashion-mnist",
                 "--max-samples", "300", "--max-train-samples", "400", "--feature", "embedding",
                 "--save-adapter", "fashion", "--output", str(output), "--no-plots"]) == 0
    assert "linear adapter saved to" in capsys.readouterr().out
    result = json.loads(output.read_text())
    assert result["adapter"] == adapter_path(clip_dir, "fashion") and list_adapters(clip_dir) == ["fashion"]
    pieces = load_checkpoint(clip_dir)
    adapter = load_adapter(clip_dir, "fashion")
    assert adapter.config.fit_info["num_fit"] == 800  # train + validation, 400 each
    test, test_set = fashion(pieces, "test", 300)
    accuracy = (adapter_logits(pieces.model, adapter, test).argmax(1) == test_set.labels()).float().mean()
    assert abs(accuracy.item() - result["metrics"]["lp_acc1"]) < 1e-6


# ------------------------------------------------------------------------------------------------ bad input
def test_bad_input_is_refused_with_a_value_error(digits, tmp_path, clip_dir):
    x_train, y_train, _, _, _, _ = digits
    adapter = adapter_from_fit(fit_linear_probe(x_train, y_train), feature="pooled", base_model_type="xray_visual")
    model_dir = tmp_path / "model"
    model_dir.mkdir()
    save_adapter(adapter, model_dir, "digits")
    with pytest.raises(ValueError, match="no adapter 'other'.*available: digits"):
        load_adapter(model_dir, "other")
    with pytest.raises(ValueError, match="available: none"):
        load_adapter(tmp_path, "digits")
    with pytest.raises(ValueError, match="reads 64-d 'pooled' features, got 32-d"):
        adapter.predict(torch.randn(3, 32))
    with pytest.raises(ValueError, match="2-D float"):
        adapter.predict(torch.randn(64))
    for name in ("../escape", "", ".hidden", "a/b"):
        with pytest.raises(ValueError, match="adapter name"):
            save_adapter(adapter, model_dir, name)
    with pytest.raises(ValueError, match="does not exist"):
        save_adapter(adapter, tmp_path / "missing", "digits")
    with pytest.raises(ValueError, match="fitted on a 'xray_visual' model, not 'xray_clip'"):
        adapter_logits(AutoModel.from_pretrained(clip_dir), adapter, torch.randn(2, 3, 16, 16))
    with pytest.raises(ValueError, match="feature must be one of"):
        XrayLinearAdapterConfig(embedding_dim=8, feature="logits")
    with pytest.raises(ValueError, match="at least 2 classes"):
        XrayLinearAdapterConfig(embedding_dim=8, num_labels=1)
    with pytest.raises(ValueError, match="mean and std"):
        XrayLinearAdapter.from_linear_model(np.ones((3, 4)), np.zeros(3), [0, 1, 2], np.zeros(5), np.ones(5))
    with pytest.raises(ValueError, match="save_adapter needs task 'linear-probe'"):
        run_eval(clip_dir, "zero-shot", "fashion-mnist", save_adapter="fashion")
    with pytest.raises(SystemExit) as exit_info:  # the CLI turns the ValueError into exit status 2
        main(["eval", "--model", str(clip_dir), "--task", "knn", "--dataset", "fashion-mnist", "--save-adapter", "x"])
    assert exit_info.value.code == 2
