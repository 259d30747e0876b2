"""Task-typed runtimes of user ONNX models (consumers/inference/user_models.py) on tiny graphs built here:
txt2embed with a tokenizer.json, img2embed, and how many session calls a batch of requests costs."""

from __future__ import annotations

import base64
import io
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper
from PIL import Image
from tokenizers import Tokenizer

from consumers.inference.builtin import minilm_model_dir
from consumers.inference.errors import ModelLoadError
from consumers.inference.user_models import IMAGENET_MEAN, IMAGENET_STD, OnnxImageEmbedder, OnnxTextEmbedder

pytestmark = pytest.mark.unit
TOKENIZER = minilm_model_dir() / "tokenizer.json"


def save(model: onnx.ModelProto, path: Path) -> Path:
    model.ir_version = 8
    onnx.checker.check_model(model)
    path.write_bytes(model.SerializeToString())
    return path


def token_embedding_graph(path: Path, table: np.ndarray, batch: int | str = "N") -> Path:
    """input_ids [batch, L] -> Gather from ``table`` -> [batch, L, D] token embeddings (mean-pooled by the runtime)."""
    graph = helper.make_graph(
        [helper.make_node("Gather", ["table", "input_ids"], ["tokens"])], "tokens",
        [helper.make_tensor_value_info("input_ids", TensorProto.INT64, [batch, "L"]),
         helper.make_tensor_value_info("attention_mask", TensorProto.INT64, [batch, "L"])],
        [helper.make_tensor_value_info("tokens", TensorProto.FLOAT, [batch, "L", table.shape[1]])],
        initializer=[numpy_helper.from_array(table, "table")])
    return save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), path)


class CountingSession:
    def __init__(self, session: Any) -> None:
        self.session, self.calls = session, 0

    def run(self, *args: Any) -> Any:
        self.calls += 1
        return self.session.run(*args)

    def get_inputs(self) -> Any:
        return self.session.get_inputs()


def reference(table: np.ndarray, texts: list[str]) -> np.ndarray:
    tokenizer = Tokenizer.from_file(str(TOKENIZER))
    tokenizer.enable_truncation(max_length=256)
    tokenizer.no_padding()  # its json pads; the runtime pads per batch and masks the padding out
    rows = [table[tokenizer.encode(t).ids].mean(axis=0) for t in texts]
    vectors = np.stack(rows)
    return np.asarray(vectors / np.linalg.norm(vectors, axis=1, keepdims=True))


@pytest.fixture(scope="module")
def table() -> np.ndarray:
    vocab = Tokenizer.from_file(str(TOKENIZER)).get_vocab_size()
    return np.random.default_rng(7).standard_normal((vocab, 4)).astype(np.float32)


def test_txt2embed_batches_the_requests_rows_into_one_call_when_the_batch_dimension_is_free(
        tmp_path: Path, table: np.ndarray) -> None:
    runtime = OnnxTextEmbedder("org/text", token_embedding_graph(tmp_path / "t.onnx", table), TOKENIZER, config={})
    runtime.load()
    counting = CountingSession(runtime._session)
    runtime._session = counting
    requests: list[dict[str, Any]] = [
        {"text": "one short text"}, {"text": ["a longer text with more tokens in it", "x"]}, {"texts": ["third"]}]
    outputs = runtime.infer_batch(requests)
    assert counting.calls == 1  # three requests, four rows, one session call
    assert outputs[0]["dimensions"] == 4 and set(outputs[0]) == {"embedding", "dimensions"}
    got = np.array([outputs[0]["embedding"], *outputs[1]["embeddings"], *outputs[2]["embeddings"]])
    np.testing.assert_allclose(got, reference(table, ["one short text", "a longer text with more tokens in it", "x",
                                                      "third"]), rtol=1e-5, atol=1e-6)


def test_a_fixed_batch_dimension_runs_row_by_row(tmp_path: Path, table: np.ndarray) -> None:
    runtime = OnnxTextEmbedder("org/fixed", token_embedding_graph(tmp_path / "f.onnx", table, batch=1), TOKENIZER,
                               config={"normalize": False})
    runtime.load()
    counting = CountingSession(runtime._session)
    runtime._session = counting
    outputs = runtime.infer_batch([{"text": ["a", "b c"]}])
    assert counting.calls == 2
    assert not np.isclose(np.linalg.norm(outputs[0]["embeddings"][1]), 1.0)  # config.normalize false


def test_txt2embed_refuses_a_graph_without_the_token_inputs(tmp_path: Path) -> None:
    from tests.onnx_models import linear_onnx

    (tmp_path / "linear.onnx").write_bytes(linear_onnx())
    with pytest.raises(ModelLoadError, match="input_ids and attention_mask"):
        OnnxTextEmbedder("org/linear", tmp_path / "linear.onnx", TOKENIZER, config={}).load()


def test_img2embed_resizes_normalises_and_embeds(tmp_path: Path) -> None:
    graph = helper.make_graph(
        [helper.make_node("ReduceMean", ["pixels"], ["features"], axes=[2, 3], keepdims=0)], "pool",
        [helper.make_tensor_value_info("pixels", TensorProto.FLOAT, ["N", 3, 8, 8])],
        [helper.make_tensor_value_info("features", TensorProto.FLOAT, ["N", 3])])
    path = save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)]), tmp_path / "pool.onnx")
    runtime = OnnxImageEmbedder("org/pool", path, config={"normalize": False})
    runtime.load()
    image = Image.fromarray(np.random.default_rng(3).integers(0, 255, (20, 30, 3), dtype=np.uint8))
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    (out,) = runtime.infer_batch([{"image": base64.b64encode(buffer.getvalue()).decode()}])
    resized = np.asarray(image.resize((8, 8), Image.Resampling.BILINEAR), dtype=np.float32) / 255.0
    expected = ((resized - np.asarray(IMAGENET_MEAN)) / np.asarray(IMAGENET_STD)).mean(axis=(0, 1))
    np.testing.assert_allclose(out["embedding"], expected, rtol=1e-5, atol=1e-5)
    assert out["dimensions"] == 3
