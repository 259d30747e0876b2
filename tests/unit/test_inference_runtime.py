"""Runtimes: the real built-in models (loaded from PyPI package contents) and user-model runtimes.

The built-in ONNX exports are made once and kept in a cache directory shared by test sessions
(``TRIBUTARY_TEST_MODEL_CACHE``, default ``.local/cache/models/builtin``), keyed by package
version, so only the first run pays for the export (~6 s).
"""

from __future__ import annotations

import base64
import io
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from PIL import Image, ImageDraw, ImageFilter, ImageFont

from consumers.inference import builtin
from consumers.inference.builtin import (
    BuiltinModels,
    EfficientNetEmbedder,
    FastTranslateModel,
    MiniLMEmbedder,
    RapidOcrReader,
    translate_vocab_path,
)
from consumers.inference.cache import MODEL_LOAD_FAILED, ModelCache
from consumers.inference.errors import (
    InvalidInputError,
    ModelLoadError,
    ModelNotFoundError,
    ModelNotLoadedError,
    ModelUnavailableError,
)
from consumers.inference.runtime import JsonDict, OnnxRuntimeModel, TensorContract, TorchScriptModel
from consumers.inference.textgen import ON_DELTA, SentencePieceTokens
from core.serving.builtin_specs import (
    BUILTIN_SPECS,
    EFFICIENTNET_ID,
    MINILM_ID,
    OCR_ID,
    TRANSLATE_EN_PT_ID,
    TRANSLATE_PT_EN_ID,
    TXT2IMG_ID,
)
from core.task_types import TaskType

# The tiny user models are made with torch's legacy TorchScript tools on purpose (what users upload).
pytestmark = [pytest.mark.unit, pytest.mark.filterwarnings("ignore::DeprecationWarning")]

REPO_ROOT = Path(__file__).resolve().parents[2]
SENTENCES = [
    "The cat sits on the mat.",
    "A kitten is resting on a rug.",
    "Quarterly revenue grew by twelve percent year over year.",
    "Kafka partitions are replicated across brokers for durability.",
    "Olá, tudo bem? Ünïcödé text with emoji 🚀 and symbols <>&.",
    "",
    "word " * 400,  # longer than the 256-token limit: truncated on both paths
]


@pytest.fixture(scope="session")
def model_cache_dir() -> Path:
    path = Path(os.environ.get("TRIBUTARY_TEST_MODEL_CACHE", REPO_ROOT / ".local" / "cache" / "models" / "builtin"))
    path.mkdir(parents=True, exist_ok=True)
    return path


@pytest.fixture(scope="session")
def models(model_cache_dir: Path) -> BuiltinModels:
    return BuiltinModels(model_cache_dir, intra_op_threads=2)


@pytest.fixture(scope="session")
def minilm(models: BuiltinModels) -> Iterator[MiniLMEmbedder]:
    runtime = models.create(MINILM_ID)
    assert isinstance(runtime, MiniLMEmbedder)
    runtime.load()
    yield runtime
    runtime.close()


@pytest.fixture(scope="session")
def efficientnet(models: BuiltinModels) -> Iterator[EfficientNetEmbedder]:
    runtime = models.create(EFFICIENTNET_ID)
    assert isinstance(runtime, EfficientNetEmbedder)
    runtime.load()
    yield runtime
    runtime.close()


@pytest.fixture(scope="session")
def ocr(models: BuiltinModels) -> Iterator[RapidOcrReader]:
    runtime = models.create(OCR_ID)
    assert isinstance(runtime, RapidOcrReader)
    runtime.load()
    yield runtime
    runtime.close()


@pytest.fixture(scope="session")
def translator(models: BuiltinModels) -> Iterator[FastTranslateModel]:
    runtime = models.create(TRANSLATE_EN_PT_ID)
    assert isinstance(runtime, FastTranslateModel)
    runtime.load()
    yield runtime
    runtime.close()


def b64(image: Image.Image, fmt: str = "PNG") -> str:
    buffer = io.BytesIO()
    image.save(buffer, fmt)
    return base64.b64encode(buffer.getvalue()).decode()


def cosine(a: np.ndarray, b: np.ndarray) -> float:
    return float(a @ b / (np.linalg.norm(a) * np.linalg.norm(b)))


# -- txt2embed ---------------------------------------------------------------------------------


def test_txt2embed_single_and_list_shapes_and_unit_norm(minilm: MiniLMEmbedder) -> None:
    single, many = minilm.infer_batch([{"text": SENTENCES[0]}, {"texts": SENTENCES[:3]}])
    assert minilm.task_type == TaskType.TXT2EMBED
    assert single["dimensions"] == 384 and len(single["embedding"]) == 384
    assert len(many["embeddings"]) == 3 and all(len(v) == 384 for v in many["embeddings"])
    for vector in [single["embedding"], *many["embeddings"]]:
        assert abs(float(np.linalg.norm(vector)) - 1.0) <= 1e-5


def test_txt2embed_onnx_matches_independent_torch_reference(minilm: MiniLMEmbedder) -> None:
    served = np.asarray(minilm.infer_batch([{"text": SENTENCES}])[0]["embeddings"])
    reference = builtin.reference_embedding(SENTENCES)
    for index, text in enumerate(SENTENCES):
        assert cosine(served[index], reference[index]) >= 0.999, text[:40]
    assert np.abs(np.linalg.norm(served, axis=1) - 1.0).max() <= 1e-5


def test_txt2embed_similar_sentences_are_closer_than_unrelated(minilm: MiniLMEmbedder) -> None:
    cat, kitten, revenue, kafka = minilm.embed(SENTENCES[:4])
    assert cosine(cat, kitten) > cosine(cat, revenue) + 0.2
    assert cosine(cat, kitten) > cosine(cat, kafka) + 0.2


def test_txt2embed_batching_does_not_change_results(minilm: MiniLMEmbedder) -> None:
    # Padding to the longest text of a chunk must be masked out completely.
    batched = minilm.infer_batch([{"text": text} for text in SENTENCES])
    alone = [minilm.infer_batch([{"text": text}])[0] for text in SENTENCES]
    for together, solo in zip(batched, alone, strict=True):
        assert cosine(np.asarray(together["embedding"]), np.asarray(solo["embedding"])) >= 0.99999


@pytest.mark.parametrize("item", [{}, {"text": 3}, {"text": []}, {"texts": ["ok", None]}])
def test_txt2embed_rejects_malformed_input(minilm: MiniLMEmbedder, item: JsonDict) -> None:
    with pytest.raises(InvalidInputError) as raised:
        minilm.infer_batch([item])
    assert raised.value.code == "INVALID_INPUT"


def test_onnx_export_is_cached_and_redone_when_its_identity_changes(minilm: MiniLMEmbedder, model_cache_dir: Path,
                                                                   tmp_path: Path) -> None:
    onnx_path = builtin.ensure_minilm_onnx(model_cache_dir)
    stamp = onnx_path.stat().st_mtime_ns
    assert builtin.ensure_minilm_onnx(model_cache_dir).stat().st_mtime_ns == stamp
    assert minilm.memory_bytes > onnx_path.stat().st_size

    # A cache written for another package version (or a corrupt one) is exported again.
    first = builtin.ensure_efficientnet_onnx(tmp_path)
    meta = tmp_path / "efficientnet-lite0.json"
    identity = meta.read_text()
    meta.write_text('{"format": 0}')
    first.write_bytes(b"stale")
    again = builtin.ensure_efficientnet_onnx(tmp_path)
    assert again == first and again.stat().st_size > 1_000_000 and meta.read_text() == identity
    assert sorted(p.name for p in tmp_path.iterdir()) == ["efficientnet-lite0.json", "efficientnet-lite0.onnx"]


# -- img2embed ---------------------------------------------------------------------------------


def scene(shift: int = 0, brightness: int = 0) -> Image.Image:
    image = Image.new("RGB", (320, 240), (40 + brightness, 110 + brightness, 200))
    draw = ImageDraw.Draw(image)
    draw.ellipse((60 + shift, 50, 210 + shift, 200), fill=(250, 210, 20))
    draw.rectangle((230, 150, 300, 220), fill=(200, 30, 30))
    return image


def stripes() -> Image.Image:
    image = Image.new("RGB", (256, 256), "white")
    draw = ImageDraw.Draw(image)
    for x in range(0, 256, 16):
        draw.line((x, 0, x, 255), fill=(0, 0, 0), width=6)
    return image.filter(ImageFilter.GaussianBlur(1))


def test_img2embed_shape_norm_and_torch_reference(efficientnet: EfficientNetEmbedder) -> None:
    image = scene()
    normalised, raw, jpeg = efficientnet.infer_batch([
        {"image": b64(image)},
        {"image": "data:image/png;base64," + b64(image), "parameters": {"normalize": False}},
        {"image": "data:image/jpeg;base64," + b64(image, "JPEG")},
    ])
    assert efficientnet.task_type == TaskType.IMG2EMBED
    assert normalised["dimensions"] == 1280 and len(normalised["embedding"]) == 1280
    assert abs(float(np.linalg.norm(normalised["embedding"])) - 1.0) <= 1e-5
    reference = builtin.reference_image_features([image])[0]  # eager torch, no ONNX
    assert cosine(np.asarray(normalised["embedding"]), reference) >= 0.999
    np.testing.assert_allclose(raw["embedding"], reference, rtol=1e-3, atol=1e-3)
    assert len(jpeg["embedding"]) == 1280 and abs(float(np.linalg.norm(jpeg["embedding"])) - 1.0) <= 1e-5


def test_img2embed_similar_images_are_closer_than_unrelated(efficientnet: EfficientNetEmbedder) -> None:
    [out] = efficientnet.infer_batch([{"images": [b64(scene()), b64(scene(shift=12, brightness=15)),
                                                  b64(stripes())]}])
    base, similar, other = (np.asarray(v) for v in out["embeddings"])
    assert cosine(base, similar) > cosine(base, other)


@pytest.mark.parametrize("value", ["not base64!!", base64.b64encode(b"plain text").decode(),
                                   "https://example.com/cat.png", 42,
                                   b64(Image.new("1", (7000, 7000)))],  # 49 MP: over the pixel cap
                         ids=["not-base64", "not-an-image", "url", "not-a-string", "too-many-pixels"])
def test_img2embed_rejects_undecodable_images(efficientnet: EfficientNetEmbedder, value: Any) -> None:
    with pytest.raises(InvalidInputError):
        efficientnet.infer_batch([{"image": value}])


# -- img2txt -----------------------------------------------------------------------------------


def test_img2txt_reads_rendered_text(ocr: RapidOcrReader) -> None:
    image = Image.new("RGB", (520, 170), "white")
    draw = ImageDraw.Draw(image)
    font = ImageFont.load_default(size=36)
    draw.text((20, 20), "Tributary inference", fill="black", font=font)
    draw.text((20, 100), "Kafka 2024", fill="black", font=font)
    [out] = ocr.infer_batch([{"image": b64(image)}])
    assert ocr.task_type == TaskType.IMG2TXT
    text = out["text"].lower()
    for word in ("tributary", "inference", "kafka", "2024"):
        assert word in text
    assert len(out["lines"]) == 2
    for line in out["lines"]:
        assert len(line["box"]) == 4 and all(len(point) == 2 for point in line["box"])
        assert 0.5 <= line["score"] <= 1.0
    assert out["lines"][0]["box"][0][1] < out["lines"][1]["box"][0][1]  # top line first


def test_img2txt_blank_image_has_no_text(ocr: RapidOcrReader) -> None:
    [out] = ocr.infer_batch([{"image": b64(Image.new("RGB", (200, 80), "white"))}])
    assert out == {"text": "", "lines": []}


# -- txt2txt -----------------------------------------------------------------------------------


def test_txt2txt_translates_both_directions(translator: FastTranslateModel) -> None:
    source = "The children were playing in the garden."
    en_pt, pt_en = translator.infer_batch([
        {"text": source},
        {"text": "Bom dia, como você está?", "parameters": {"direction": "pt-en"}},
    ])
    assert translator.task_type == TaskType.TXT2TXT
    assert en_pt["text"].strip() and en_pt["text"] != source
    assert "crianças" in en_pt["text"].lower()
    assert "morning" in pt_en["text"].lower()


def test_txt2txt_generate_shape(translator: FastTranslateModel) -> None:
    prompt = "Where is the train station?"
    [out] = translator.infer_batch([{"prompt": prompt, "parameters": {"max_tokens": 100}}])
    # carbon_emissions_g is the worker's to attach (it measures the whole batch): see test_batch_carbon.py
    assert set(out) == {"generated_text", "usage", "latency_ms", "finish_reason"}
    assert out["generated_text"] and out["generated_text"] != prompt
    spm = SentencePieceTokens(translate_vocab_path("en-pt"))
    assert out["usage"] == {"prompt_tokens": spm.count(prompt),
                            "completion_tokens": spm.count(out["generated_text"]),
                            "total_tokens": spm.count(prompt) + spm.count(out["generated_text"])}
    assert out["finish_reason"] == "stop" and out["latency_ms"] >= 0


def test_txt2txt_chat_completion_shape_and_usage(translator: FastTranslateModel) -> None:
    messages = [
        {"role": "system", "content": "You translate English to Portuguese."},
        {"role": "user", "content": "Good morning!"},
        {"role": "assistant", "content": "Bom dia!"},
        {"role": "user", "content": "The weather is nice today."},
    ]
    [out] = translator.infer_batch([{"model": "my-alias", "messages": messages, "max_tokens": 64}])
    assert out["object"] == "chat.completion" and out["id"].startswith("chatcmpl-")
    assert out["model"] == "my-alias" and isinstance(out["created"], int)
    [choice] = out["choices"]
    assert choice["index"] == 0 and choice["finish_reason"] == "stop"
    assert choice["message"]["role"] == "assistant"
    content = choice["message"]["content"]
    assert content and content != messages[-1]["content"]
    usage = out["usage"]
    spm = SentencePieceTokens(translate_vocab_path("en-pt"))
    assert usage["prompt_tokens"] == sum(spm.count(m["content"]) for m in messages)
    assert usage["completion_tokens"] == spm.count(content)
    assert usage["total_tokens"] == usage["prompt_tokens"] + usage["completion_tokens"]
    assert "carbon_emissions_g" not in out  # attached by the worker from its measurement


def test_txt2txt_max_tokens_and_stop(translator: FastTranslateModel) -> None:
    long, stopped = translator.infer_batch([
        {"prompt": "The children were playing happily in the big garden.", "parameters": {"max_tokens": 3}},
        {"messages": [{"role": "user", "content": "Good morning, my friend."}], "stop": [","]},
    ])
    assert long["finish_reason"] == "length" and long["usage"]["completion_tokens"] == 3
    assert "," not in stopped["choices"][0]["message"]["content"]
    assert stopped["choices"][0]["finish_reason"] == "stop"


def test_txt2txt_batch_shape(translator: FastTranslateModel) -> None:
    prompts = ["Good morning", "Thank you very much", "   "]
    [out] = translator.infer_batch([{"prompts": prompts}])
    assert [r["prompt"] for r in out["results"]] == prompts
    for result in out["results"]:
        assert result["error"] is None
        assert result["usage"]["total_tokens"] == result["usage"]["prompt_tokens"] + result["usage"][
            "completion_tokens"]
    assert out["results"][0]["generated_text"] and out["results"][2]["generated_text"] == ""
    assert out["total_latency_ms"] >= 0 and "total_carbon_emissions_g" not in out


@pytest.mark.parametrize("item", [
    {"messages": []},
    {"messages": [{"role": "robot", "content": "hi"}]},
    {"messages": [{"role": "system", "content": "only a system prompt"}]},
    {"prompt": ""},
    {"prompts": []},
    {"text": "hello", "parameters": {"direction": "en-fr"}},
    {"nothing": "useful"},
])
def test_txt2txt_rejects_invalid_requests(translator: FastTranslateModel, item: JsonDict) -> None:
    with pytest.raises(InvalidInputError):
        translator.infer_batch([item])


def test_pt_en_model_defaults_to_its_direction(models: BuiltinModels) -> None:
    runtime = models.create(TRANSLATE_PT_EN_ID)
    runtime.load()
    try:
        [out] = runtime.infer_batch([{"text": "Obrigado pela ajuda."}])
        assert "thank" in out["text"].lower()
    finally:
        runtime.close()


def test_tokens_are_the_models_sentencepiece_pieces() -> None:
    import sentencepiece

    path = translate_vocab_path("en-pt")
    assert path.name == "vocab.enpt.spm" and translate_vocab_path("pt-en").name == "vocab.pten.spm"
    spm = SentencePieceTokens(path)
    reference = sentencepiece.SentencePieceProcessor(model_file=str(path))
    for text in ("Hello, world!", "não é? 3.5kg", "The children were playing."):
        assert spm.count(text) == len(reference.encode(text, out_type=str))
    assert spm.count("") == 0
    pieces = reference.encode("Olá, mundo bonito", out_type=str)
    cut, was_cut = spm.truncate("Olá, mundo bonito", 2)
    assert was_cut and reference.encode(cut, out_type=str) == pieces[:2]  # the text of exactly two pieces
    assert spm.truncate("Olá", 5) == ("Olá", False)


def test_a_streamed_request_reports_each_sentence_as_it_is_translated(translator: FastTranslateModel) -> None:
    prompt = "Good morning. The children were playing in the garden. Where is the station?"
    deltas: list[str] = []
    sequences: list[int] = []

    def on_delta(sequence: int, text: str) -> None:
        sequences.append(sequence)
        deltas.append(text)

    [streamed] = translator.infer_batch([{"prompt": prompt, "stream": True, ON_DELTA: on_delta}])
    assert sequences == [0, 1, 2]
    assert len(deltas) == 3 and "".join(deltas) == streamed["generated_text"]
    assert deltas[0] == translator.translate("Good morning.", {})  # one sentence per delta, in order
    assert streamed["usage"]["completion_tokens"] == SentencePieceTokens(translate_vocab_path("en-pt")).count(
        streamed["generated_text"])
    cut: list[str] = []

    def on_cut(sequence: int, text: str) -> None:
        cut.append(text)

    [short] = translator.infer_batch([{"prompt": prompt, "stream": True, "parameters": {"max_tokens": 4},
                                       ON_DELTA: on_cut}])
    assert short["finish_reason"] == "length" and "".join(cut) == short["generated_text"]
    assert short["usage"]["completion_tokens"] == 4 and len(cut) == 2  # cut inside the second sentence
    [unstreamed] = translator.infer_batch([{"prompt": prompt, "stream": False, ON_DELTA: on_cut}])
    assert len(cut) == 2 and unstreamed["generated_text"]  # stream=false: the callback is not used


# -- txt2img -----------------------------------------------------------------------------------


def test_txt2img_raises_a_clear_unavailable_error(models: BuiltinModels) -> None:
    runtime = models.create(TXT2IMG_ID)
    assert runtime.task_type == TaskType.TXT2IMG
    for call in (runtime.load, lambda: runtime.infer_batch([{"text": "a sunset"}])):
        with pytest.raises(ModelUnavailableError) as raised:
            call()
        assert raised.value.code == "TXT2IMG_MODEL_UNAVAILABLE"
        assert "no offline text-to-image model" in raised.value.message.lower()


def test_txt2img_through_the_cache_emits_model_load_failed(models: BuiltinModels) -> None:
    events: list[tuple[str, str, dict[str, Any]]] = []
    cache = ModelCache(1024**3, models, lambda kind, mid, details: events.append((kind, mid, details)))
    with pytest.raises(ModelUnavailableError):
        cache.get_or_load(TXT2IMG_ID)
    assert events[-1][0] == MODEL_LOAD_FAILED
    assert events[-1][2]["error_code"] == "TXT2IMG_MODEL_UNAVAILABLE"


def test_unknown_builtin_model_is_not_found(models: BuiltinModels) -> None:
    with pytest.raises(ModelNotFoundError):
        models.create("no/such-model")
    assert set(models.ids()) >= {MINILM_ID, EFFICIENTNET_ID, OCR_ID, TRANSLATE_EN_PT_ID, TXT2IMG_ID}


def test_builtin_specs_give_each_runtime_its_own_task_type(models: BuiltinModels) -> None:
    # The ingress routes and validates by BUILTIN_SPECS; the worker runs the runtime's task type.
    for model_id, spec in BUILTIN_SPECS.items():
        assert models.create(model_id).task_type == spec.task_type, model_id


# -- user models: ONNX and TorchScript with the generic tensor contract --------------------------


class TinyNet(torch.nn.Module):
    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.linear = torch.nn.Linear(4, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out: torch.Tensor = torch.tanh(self.linear(x))
        return out


class TwoInputs(torch.nn.Module):
    def forward(self, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        return a + b


@pytest.fixture(scope="module")
def tiny(tmp_path_factory: pytest.TempPathFactory) -> tuple[TinyNet, Path, Path]:
    folder = tmp_path_factory.mktemp("user-models")
    net = TinyNet().eval()
    onnx_path, script_path = folder / "tiny.onnx", folder / "tiny.pt"
    torch.onnx.export(net, (torch.zeros(1, 4),), str(onnx_path), input_names=["x"], output_names=["y"],
                      dynamic_axes={"x": {0: "n"}, "y": {0: "n"}}, opset_version=17, dynamo=False)
    torch.jit.save(torch.jit.script(net), str(script_path))
    return net, onnx_path, script_path


def expected(net: TinyNet, rows: list[list[float]]) -> np.ndarray:
    with torch.inference_mode():
        return np.asarray(net(torch.tensor(rows, dtype=torch.float32)).numpy())


def test_onnx_user_model_generic_contract(tiny: tuple[TinyNet, Path, Path]) -> None:
    net, onnx_path, _ = tiny
    runtime = OnnxRuntimeModel("user/tiny", onnx_path, intra_op_threads=1)
    assert runtime.memory_bytes > 0 and not runtime.loaded
    runtime.load()
    rows = [[0.1, 0.2, 0.3, 0.4], [1.0, -1.0, 0.5, 0.0]]
    many, one = runtime.infer_batch([{"inputs": rows}, {"inputs": rows[0]}])
    np.testing.assert_allclose(many["outputs"], expected(net, rows), rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(one["outputs"], expected(net, rows[:1])[0], rtol=1e-5, atol=1e-6)
    assert np.asarray(one["outputs"]).shape == (3,)  # sent without the batch dimension, answered without it
    with pytest.raises(InvalidInputError):
        runtime.infer_batch([{"inputs": [[1.0, 2.0]]}])
    with pytest.raises(InvalidInputError):
        runtime.infer_batch([{"inputs": [["a", "b", "c", "d"]]}])
    runtime.close()
    with pytest.raises(ModelNotLoadedError):
        runtime.infer_batch([{"inputs": rows}])


def test_torchscript_user_model_generic_contract(tiny: tuple[TinyNet, Path, Path]) -> None:
    net, _, script_path = tiny
    runtime = TorchScriptModel("user/tiny-ts", script_path, contract=TensorContract(input_shape=(None, 4)))
    runtime.load()
    rows = [[0.5, 0.5, 0.5, 0.5], [0.0, 0.1, 0.2, 0.3], [3.0, 2.0, 1.0, 0.0]]
    outputs = runtime.infer_batch([{"inputs": rows[:2]}, {"inputs": rows[2:]}])
    np.testing.assert_allclose(outputs[0]["outputs"] + outputs[1]["outputs"], expected(net, rows),
                               rtol=1e-5, atol=1e-6)
    with pytest.raises(InvalidInputError):
        runtime.infer_batch([{"inputs": [[1.0, 2.0, 3.0]]}])
    assert runtime.memory_bytes > 0
    runtime.close()


def test_user_model_load_failures_are_model_load_errors(tmp_path: Path) -> None:
    with pytest.raises(ModelLoadError):
        OnnxRuntimeModel("m", tmp_path / "missing.onnx").load()
    garbage = tmp_path / "garbage.onnx"
    garbage.write_bytes(b"not a model")
    with pytest.raises(ModelLoadError):
        OnnxRuntimeModel("m", garbage).load()
    with pytest.raises(ModelLoadError):
        TorchScriptModel("m", garbage).load()
    two = tmp_path / "two.onnx"
    torch.onnx.export(TwoInputs(), (torch.zeros(1, 2), torch.zeros(1, 2)), str(two), input_names=["a", "b"],
                      output_names=["s"], opset_version=17, dynamo=False)
    with pytest.raises(ModelLoadError, match="exactly one input"):
        OnnxRuntimeModel("m", two).load()
