"""Tiny real ONNX models built in the tests (no downloads)."""

from __future__ import annotations

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

WEIGHTS = np.array([[1.0, -2.0], [0.5, 0.0], [3.0, 1.0]], dtype=np.float32)
BIAS = np.array([0.25, -1.0], dtype=np.float32)


def linear_onnx(weights: np.ndarray = WEIGHTS, bias: np.ndarray = BIAS) -> bytes:
    """y = x @ W + b for x of shape [N, in]."""
    inputs, outputs = weights.shape
    graph = helper.make_graph(
        [helper.make_node("MatMul", ["input", "W"], ["xw"]), helper.make_node("Add", ["xw", "b"], ["output"])],
        "linear", [helper.make_tensor_value_info("input", TensorProto.FLOAT, ["N", inputs])],
        [helper.make_tensor_value_info("output", TensorProto.FLOAT, ["N", outputs])],
        initializer=[numpy_helper.from_array(weights, "W"), numpy_helper.from_array(bias, "b")])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], producer_name="tributary-tests")
    model.ir_version = 8
    onnx.checker.check_model(model)
    data: bytes = model.SerializeToString()
    return data


def expected(rows: list[list[float]], weights: np.ndarray = WEIGHTS, bias: np.ndarray = BIAS) -> np.ndarray:
    result: np.ndarray = np.asarray(rows, dtype=np.float32) @ weights + bias
    return result
