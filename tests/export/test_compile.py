"""torch.compile for inference: static shapes (one graph per input shape, EViT and ToMe included), equality with
eager, and the recompile count of a progressive-resolution run."""

import pytest
import torch
import torch._dynamo
from torch._dynamo.testing import CompileCounter

from xray_hf import XrayCLIPConfig, XrayCLIPModel, XrayTextConfig, XrayVisualConfig, XrayVisualModel
from xray_hf.export.compile import compile_for_inference, is_compiled, vision_towers

REDUCTIONS = {
    "evit-per-layer-rates": {"evit_layers": [1, 2], "keep_rate": [0.7, 0.55]},
    "evit+tome": {"evit_layers": [2], "keep_rate": 0.6, "tome_r": 3},
}


@pytest.fixture(autouse=True)
def fresh_dynamo():
    torch._dynamo.reset()
    yield
    torch._dynamo.reset()


def backbone(**overrides) -> XrayVisualModel:
    torch.manual_seed(0)
    return XrayVisualModel(XrayVisualConfig.from_preset("tiny", **overrides)).eval()


@pytest.mark.parametrize("name", sorted(REDUCTIONS))
def test_one_graph_per_input_shape_images_and_videos(name):
    model = backbone(**REDUCTIONS[name])
    counter = CompileCounter()
    compile_for_inference(model, backend=counter)
    shapes = [(2, 3, 32, 32), (2, 3, 32, 32), (3, 3, 32, 32), (2, 3, 48, 48), (2, 4, 3, 32, 32), (2, 4, 3, 32, 32),
              (2, 3, 32, 32)]
    with torch.inference_mode():
        for shape in shapes:
            model(torch.randn(*shape))
    # a graph break would add a frame per call; a float keep rate or a data-dependent count, a frame per value
    assert counter.frame_count == len(set(shapes)) == 4


def test_new_data_at_a_seen_shape_never_recompiles():
    model = backbone(evit_layers=[1, 2], keep_rate=0.7, tome_r=3)
    counter = CompileCounter()
    compile_for_inference(model, backend=counter)
    with torch.inference_mode():
        for seed in range(4):
            model(torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(seed)) * (seed + 1))
    assert counter.frame_count == 1


@pytest.mark.slow  # inductor generates and builds C++ kernels: 15-80 s on 2 shared cores, by the compiler cache
def test_compiled_inductor_equals_eager():
    model = backbone(evit_layers=[1], keep_rate=0.7, tome_r=2)
    images = torch.randn(3, 3, 32, 32)
    with torch.inference_mode():
        eager = model(images).pooler_output
        compile_for_inference(model)
        compiled = model(images).pooler_output
    torch.testing.assert_close(compiled, eager, atol=1e-4, rtol=1e-4)


def test_clip_vision_tower_compiled_in_place_feature_api_kept():
    torch.manual_seed(0)
    config = XrayCLIPConfig(vision_config=XrayVisualConfig.from_preset("tiny"),
                            text_config=XrayTextConfig.from_preset("tiny", vocab_size=50, projection_dim=16,
                                                                   max_position_embeddings=16), projection_dim=16)
    model = XrayCLIPModel(config).eval()
    counter = CompileCounter()
    assert compile_for_inference(model, backend=counter) is model
    assert vision_towers(model) == [model.xray_visual] and is_compiled(model.xray_visual)
    assert not is_compiled(model.text_model)
    with torch.inference_mode():
        for _ in range(2):
            features = model.get_image_features(torch.randn(2, 3, 32, 32)).pooler_output
    assert features.shape == (2, 16) and counter.frame_count == 1


def test_progressive_resolution_recompiles_once_per_size():
    """A training forward + backward at each size of a resolution schedule, twice over: one graph per size."""
    model = backbone(evit_layers=[1, 2], keep_rate=0.7)
    model.train()
    counter = CompileCounter()
    model.compile(backend=counter, dynamic=False)
    for size in (16, 32, 16, 32):
        model(torch.randn(2, 3, size, size)).pooler_output.square().mean().backward()
    assert counter.frame_count == 2


def test_nothing_to_compile_is_an_error():
    with pytest.raises(ValueError, match="no XrayVisualModel"):
        compile_for_inference(torch.nn.Linear(2, 2))
