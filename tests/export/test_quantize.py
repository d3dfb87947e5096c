"""export/quantize.py: the int8 copy of an ONNX file computes what the float file does on every x86 CPU."""

import numpy as np
import pytest

onnx = pytest.importorskip("onnx")
ort = pytest.importorskip("onnxruntime")

from onnx import TensorProto, helper, numpy_helper  # noqa: E402

from xray_hf.export.quantize import quantize_int8  # noqa: E402


def matmul_file(path, weight: np.ndarray) -> None:
    graph = helper.make_graph(
        [helper.make_node("MatMul", ["x", "w"], ["y"])], "linear",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", weight.shape[0]])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["batch", weight.shape[1]])],
        [numpy_helper.from_array(weight.astype(np.float32), "w")],
    )
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), str(path))


def run(path, x: np.ndarray) -> np.ndarray:
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    return session.run(None, {"x": x})[0]


def test_int8_products_do_not_saturate_on_cpus_without_vnni(tmp_path):
    # Positive activations (GELU's outputs mostly are) quantise near 255, same-sign weights near 127: on AVX2 and
    # AVX-512 CPUs without VNNI, onnxruntime's u8 x s8 kernel adds such pairs of products in int16 and saturates
    # (255 * 127 * 2 > 32767), so full-range weights gave about half the true output. 7-bit weights cannot overflow.
    rng = np.random.default_rng(0)
    weight = rng.uniform(0.5, 1.0, size=(64, 8))
    weight[:, 4:] *= -1
    x = rng.uniform(0.9, 1.0, size=(16, 64)).astype(np.float32)
    matmul_file(tmp_path / "linear.onnx", weight)
    quantize_int8(tmp_path / "linear.onnx", tmp_path / "linear.int8.onnx")
    expected = x @ weight.astype(np.float32)
    got = run(tmp_path / "linear.int8.onnx", x)
    np.testing.assert_allclose(got, expected, rtol=0.02)
    np.testing.assert_allclose(run(tmp_path / "linear.onnx", x), expected, rtol=1e-5)


def test_int8_file_has_integer_weights_and_missing_file_is_named(tmp_path):
    matmul_file(tmp_path / "linear.onnx", np.ones((8, 4)))
    quantize_int8(tmp_path / "linear.onnx", tmp_path / "linear.int8.onnx")
    model = onnx.load(str(tmp_path / "linear.int8.onnx"))
    weights = [numpy_helper.to_array(t) for t in model.graph.initializer if t.data_type == TensorProto.INT8]
    assert weights and all(np.abs(w).max() <= 64 for w in weights)  # 7-bit range
    with pytest.raises(FileNotFoundError, match="no ONNX file"):
        quantize_int8(tmp_path / "missing.onnx", tmp_path / "out.onnx")
