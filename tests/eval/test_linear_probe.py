import numpy as np
import pytest
import torch
from sklearn.datasets import load_digits

from xray_hf.eval.linear_probe import C_GRID, extract_features, knn_eval, knn_scores, linear_probe_eval


@pytest.fixture(scope="module")
def digits():
    """scikit-learn's 1,797 8x8 digits, split 60/20/20 by a fixed permutation."""
    data = load_digits()
    order = np.random.default_rng(0).permutation(len(data.target))
    x, y = data.data[order], data.target[order]
    return x[:1080], y[:1080], x[1080:1440], y[1080:1440], x[1440:], y[1440:]


def test_linear_probe_beats_chance_clearly_on_digits(digits):
    x_train, y_train, x_val, y_val, x_test, y_test = digits
    metrics = linear_probe_eval(x_train, y_train, x_test, y_test, x_val, y_val)
    assert metrics["lp_acc1"] > 0.9  # chance is 0.1
    assert metrics["lp_acc5"] > metrics["lp_acc1"]
    assert metrics["lp_mean_per_class_recall"] > 0.9
    assert metrics["lp_C"] in C_GRID and 0.9 < metrics["lp_val_acc1"] <= 1.0


def test_linear_probe_on_a_fixed_random_projection_and_without_a_validation_split(digits):
    x_train, y_train, _, _, x_test, y_test = digits
    projection = np.random.default_rng(1).normal(size=(64, 16))  # frozen random "features", 16-D
    metrics = linear_probe_eval(x_train @ projection, y_train, x_test @ projection, y_test)  # 20% held out for C
    assert metrics["lp_acc1"] > 0.6
    shuffled = linear_probe_eval(x_train @ projection, np.random.default_rng(2).permutation(y_train),
                                 x_test @ projection, y_test)
    assert shuffled["lp_acc1"] < 0.3  # labels carry the signal, not the probe


def test_knn_beats_chance_and_votes_by_weighted_similarity(digits):
    x_train, y_train, _, _, x_test, y_test = digits
    metrics = knn_eval(x_train, y_train, x_test, y_test)
    assert metrics["knn_acc1"] > 0.9 and set(metrics) == {"knn_acc1", "knn_acc5", "knn_mean_per_class_recall"}
    # hand example: two neighbours of class 1 slightly less similar than one of class 0, but together heavier
    train = torch.tensor([[1.0, 0.0], [0.9, 0.3], [0.9, 0.31]])
    votes = knn_scores(train, torch.tensor([0, 1, 1]), torch.tensor([[1.0, 0.05]]), num_classes=2, k=3)
    similarity = torch.nn.functional.normalize(train.double(), dim=-1) @ torch.nn.functional.normalize(
        torch.tensor([1.0, 0.05]).double(), dim=0)
    weights = (similarity / 0.07).exp()
    torch.testing.assert_close(votes[0], torch.stack([weights[0], weights[1] + weights[2]]))
    assert votes.argmax().item() == 1
    assert knn_scores(train, torch.tensor([0, 1, 1]), torch.tensor([[1.0, 0.05]]), 2, k=1).argmax().item() == 0


def test_features_of_a_tiny_clip(tiny_clip):
    model, _, _ = tiny_clip
    samples = [{"pixel_values": torch.randn(3, 32, 32), "label": i % 3} for i in range(5)]
    pooled, labels = extract_features(model, samples)
    embedding, _ = extract_features(model, samples, feature="embedding")
    assert pooled.shape == (5, 32) and embedding.shape == (5, 16) and labels.tolist() == [0, 1, 2, 0, 1]


def test_bad_probe_input_is_refused(digits):
    x_train, y_train, _, _, x_test, y_test = digits
    with pytest.raises(ValueError, match="two classes"):
        linear_probe_eval(x_train, np.zeros_like(y_train), x_test, y_test)
    with pytest.raises(ValueError, match="dimensions"):
        linear_probe_eval(x_train, y_train, x_test[:, :5], y_test)
    with pytest.raises(ValueError, match="both val_features and val_labels"):
        linear_probe_eval(x_train, y_train, x_test, y_test, val_features=x_test)
    with pytest.raises(ValueError, match="C_grid"):
        linear_probe_eval(x_train, y_train, x_test, y_test, C_grid=(0.0,))
    with pytest.raises(ValueError, match="labels must have shape"):
        knn_eval(x_train, y_train[:3], x_test, y_test)
