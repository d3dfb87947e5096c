import numpy as np
import pytest
from PIL import Image

from xray_hf.eval.plots import (
    HIT_COLOUR,
    confusion_matrix,
    plot_confusion_matrix,
    plot_recall_curve,
    plot_retrieval_grid,
)


def test_confusion_matrix_rows_are_normalised():
    matrix = confusion_matrix([0, 0, 1, 1, 1, 1], [0, 1, 1, 1, 1, 0], 3)
    np.testing.assert_allclose(matrix, [[0.5, 0.5, 0], [0.25, 0.75, 0], [0, 0, 0]])
    with pytest.raises(ValueError, match="lie in"):
        confusion_matrix([0, 3], [0, 1], 3)


@pytest.mark.parametrize("classes", [3, 30, 100])
def test_confusion_matrix_png(tmp_path, classes):
    rng = np.random.default_rng(0)
    labels, predictions = rng.integers(0, classes, 200), rng.integers(0, classes, 200)
    path = plot_confusion_matrix(labels, predictions, [f"class {i}" for i in range(classes)], tmp_path / "cm.png",
                                 size=(640, 480))
    with Image.open(path) as image:
        assert image.format == "PNG" and image.size == (640, 480)
        colours = np.unique(np.asarray(image.convert("RGB")).reshape(-1, 3), axis=0)
        assert len(colours) > 10  # something was drawn


def test_recall_curve_png(tmp_path):
    curve = {"ks": list(range(1, 21)), "image_retrieval": list(np.linspace(0.1, 1, 20)),
             "text_retrieval": list(np.linspace(0.2, 1, 20)), "num_items": 40}
    with Image.open(plot_recall_curve(curve, tmp_path / "r.png")) as image:
        assert image.size == (800, 600)
    with pytest.raises(ValueError, match="values for"):
        plot_recall_curve({"ks": [1, 2], "image_retrieval": [0.5]}, tmp_path / "bad.png")


def test_retrieval_grid_png_frames_hits_green(tmp_path):
    rng = np.random.default_rng(0)
    images = [[rng.integers(0, 255, (28, 28), dtype=np.uint8) for _ in range(5)],
              [np.full((3, 20, 30), 0.5) for _ in range(5)]]  # grey uint8, and (C, H, W) floats
    hits = [[False, False, True, False, False], [False] * 5]
    path = plot_retrieval_grid(["a handwritten digit three", "a video of a circle moving left"], images, hits,
                               tmp_path / "grid.png", cell=100, text_width=300)
    with Image.open(path) as image:
        assert image.size == (300 + 5 * 100, 2 * 100)
        pixels = np.asarray(image.convert("RGB")).astype(int)
    green = np.array([int(HIT_COLOUR[i : i + 2], 16) for i in (1, 3, 5)])
    is_green = (np.abs(pixels - green).sum(-1) < 40)
    assert is_green[:100, 500:600].sum() > 200  # the frame around the hit (row 0, third image)
    assert is_green[100:].sum() == 0 and is_green[:, :500].sum() == 0


def test_retrieval_grid_refuses_mismatched_rows(tmp_path):
    with pytest.raises(ValueError, match="as many image rows"):
        plot_retrieval_grid(["q"], [], [], tmp_path / "g.png")
    with pytest.raises(ValueError, match="hit flags"):
        plot_retrieval_grid(["q"], [[np.zeros((4, 4))]], [[True, False]], tmp_path / "g.png")
