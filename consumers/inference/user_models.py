"""Task-typed runtimes for user ONNX models onboarded through the registry.

A registry model's served contract is ``core.fleet.models.served_task_type``; the catalog
(``consumers/inference/catalog.py``) picks the runtime:

- ``txt2embed``: ``OnnxTextEmbedder`` -- the user's ``tokenizer.json`` (stored beside the model)
  turns texts into ``input_ids`` / ``attention_mask`` (and ``token_type_ids`` when the graph has
  it); the first output is the embedding, ``[N, D]``, or ``[N, L, D]`` mean-pooled over the mask.
  Same input/output shapes as the built-in MiniLM (``{"text": ...}`` -> ``{"embedding"|"embeddings",
  "dimensions"}``), L2-normalised unless ``config.normalize`` is false.
- ``img2embed``: ``OnnxImageEmbedder`` -- the image is resized to the graph's ``[N, 3, H, W]`` input
  (``config.image_size`` when H/W are free), scaled to 0..1 and normalised with ``config.mean`` /
  ``config.std`` (ImageNet's by default); the first output, flattened per row, is the embedding.
- anything else: the generic tensor contract (``OnnxRuntimeModel``).

Batching: the worker's batcher hands several requests to one ``infer_batch``; their rows run in
one session call when the graph's first dimension is free, else one call per row.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image
from tokenizers import Tokenizer

from consumers.inference.builtin import DEFAULT_MAX_IMAGE_BYTES, DEFAULT_MAX_TEXTS, _images, _split, _texts
from consumers.inference.errors import InferenceFailedError, ModelLoadError, ModelNotLoadedError
from consumers.inference.runtime import ORT_BASE_OVERHEAD_BYTES, ORT_MEMORY_FACTOR, JsonDict, ModelRuntime, ort_session
from core.task_types import TaskType

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
DEFAULT_MAX_LENGTH = 256
DEFAULT_ROWS_PER_CALL = 32


class _UserOnnxModel(ModelRuntime):
    """Shared by the task-typed user runtimes: one ORT session, memory from the file or the declaration."""

    def __init__(self, model_id: str, path: str | os.PathLike[str], *, config: dict[str, Any],
                 intra_op_threads: int = 1, declared_memory_bytes: int | None = None) -> None:
        super().__init__(model_id)
        self.path = Path(path)
        self.config = config
        self.intra_op_threads = intra_op_threads
        self._declared_memory = declared_memory_bytes
        self._session: Any = None
        self._rows_per_call = DEFAULT_ROWS_PER_CALL  # 1 when the graph's batch dimension is fixed

    @property
    def loaded(self) -> bool:
        return self._session is not None

    @property
    def memory_bytes(self) -> int:
        if self._declared_memory is not None:
            return self._declared_memory
        size = self.path.stat().st_size if self.path.is_file() else 0
        return int(size * ORT_MEMORY_FACTOR) + ORT_BASE_OVERHEAD_BYTES

    def _open_session(self) -> Any:
        try:
            session = ort_session(self.path, self.intra_op_threads)
        except Exception as exc:
            raise ModelLoadError(f"ONNX Runtime cannot load {self.path.name}: {exc}",
                                 details={"model_id": self.model_id}) from exc
        first = session.get_inputs()[0].shape[0] if session.get_inputs()[0].shape else None
        self._rows_per_call = DEFAULT_ROWS_PER_CALL if not (isinstance(first, int) and first > 0) else first
        return session

    def close(self) -> None:
        with self._state_lock:
            self._session = None
            self._forget()

    def _forget(self) -> None:
        """Drop what ``load`` added beside the session."""

    def _run(self, feeds: dict[str, np.ndarray]) -> np.ndarray:
        session = self._session
        if session is None:
            raise ModelNotLoadedError(f"model {self.model_id} is not loaded")
        rows = next(iter(feeds.values())).shape[0]
        parts = []
        for start in range(0, rows, self._rows_per_call):
            chunk = {name: value[start:start + self._rows_per_call] for name, value in feeds.items()}
            parts.append(np.asarray(session.run(None, chunk)[0]))
        return np.concatenate(parts, axis=0)

    def _normalise(self) -> bool:
        return bool(self.config.get("normalize", True))


class OnnxTextEmbedder(_UserOnnxModel):
    task_type = TaskType.TXT2EMBED

    def __init__(self, model_id: str, path: str | os.PathLike[str], tokenizer_path: str | os.PathLike[str], *,
                 config: dict[str, Any], intra_op_threads: int = 1, declared_memory_bytes: int | None = None) -> None:
        super().__init__(model_id, path, config=config, intra_op_threads=intra_op_threads,
                         declared_memory_bytes=declared_memory_bytes)
        self.tokenizer_path = Path(tokenizer_path)
        self._tokenizer: Tokenizer | None = None
        self._inputs: list[str] = []
        self._pad_id = 0

    def load(self) -> None:
        with self._state_lock:
            if self._session is not None:
                return
            try:
                tokenizer = Tokenizer.from_file(str(self.tokenizer_path))
            except Exception as exc:
                raise ModelLoadError(f"cannot read the tokenizer of {self.model_id}: {exc}") from exc
            tokenizer.enable_truncation(max_length=int(self.config.get("max_length", DEFAULT_MAX_LENGTH)))
            tokenizer.no_padding()
            session = self._open_session()
            names = [i.name for i in session.get_inputs()]
            if not {"input_ids", "attention_mask"} <= set(names):
                raise ModelLoadError(f"a txt2embed model needs inputs input_ids and attention_mask; it has {names}",
                                     details={"model_id": self.model_id})
            self._pad_id = tokenizer.token_to_id("[PAD]") or tokenizer.token_to_id("<pad>") or 0
            self._tokenizer, self._inputs, self._session = tokenizer, names, session

    def _forget(self) -> None:
        self._tokenizer = None

    def embed(self, texts: list[str]) -> np.ndarray:
        tokenizer = self._tokenizer
        if tokenizer is None:
            raise ModelNotLoadedError(f"model {self.model_id} is not loaded")
        encodings = tokenizer.encode_batch(texts)
        length = max(len(e.ids) for e in encodings)
        ids = np.full((len(texts), length), self._pad_id, dtype=np.int64)
        mask = np.zeros((len(texts), length), dtype=np.int64)
        for row, encoding in enumerate(encodings):
            ids[row, :len(encoding.ids)] = encoding.ids
            mask[row, :len(encoding.ids)] = 1
        feeds = {"input_ids": ids, "attention_mask": mask}
        if "token_type_ids" in self._inputs:
            feeds["token_type_ids"] = np.zeros_like(ids)
        out = self._run(feeds)
        if out.ndim == 3:  # token embeddings: mean over the real tokens
            weights = mask[..., np.newaxis].astype(np.float32)
            out = (out * weights).sum(axis=1) / np.maximum(weights.sum(axis=1), 1.0)
        return np.asarray(out.reshape(len(texts), -1), dtype=np.float32)

    def infer_batch(self, inputs: list[JsonDict]) -> list[JsonDict]:
        parsed = [_texts(item, DEFAULT_MAX_TEXTS) for item in inputs]
        try:
            vectors = self.embed([text for texts, _ in parsed for text in texts])
        except ModelNotLoadedError:
            raise
        except Exception as exc:
            raise InferenceFailedError(f"{self.model_id} failed: {exc}") from exc
        return _split(vectors, [(len(texts), single) for texts, single in parsed], int(vectors.shape[1]),
                      [self._normalise()] * len(parsed))


class OnnxImageEmbedder(_UserOnnxModel):
    task_type = TaskType.IMG2EMBED

    def __init__(self, model_id: str, path: str | os.PathLike[str], *, config: dict[str, Any],
                 intra_op_threads: int = 1, declared_memory_bytes: int | None = None) -> None:
        super().__init__(model_id, path, config=config, intra_op_threads=intra_op_threads,
                         declared_memory_bytes=declared_memory_bytes)
        self._input = ""
        self._size = (224, 224)

    def load(self) -> None:
        with self._state_lock:
            if self._session is not None:
                return
            session = self._open_session()
            (model_input, *rest) = session.get_inputs()
            shape = model_input.shape or []
            if rest or len(shape) != 4 or shape[1] != 3:
                raise ModelLoadError(f"an img2embed model needs one [N, 3, H, W] input; it has "
                                     f"{[(i.name, i.shape) for i in session.get_inputs()]}",
                                     details={"model_id": self.model_id})
            configured = self.config.get("image_size")
            height = shape[2] if isinstance(shape[2], int) else int(configured or 224)
            width = shape[3] if isinstance(shape[3], int) else int(configured or 224)
            self._input, self._size, self._session = model_input.name, (height, width), session

    def pixels(self, image: Image.Image) -> np.ndarray:
        height, width = self._size
        resized = image.resize((width, height), Image.Resampling.BILINEAR)
        mean = np.asarray(self.config.get("mean", IMAGENET_MEAN), dtype=np.float32)
        std = np.asarray(self.config.get("std", IMAGENET_STD), dtype=np.float32)
        array = (np.asarray(resized, dtype=np.float32) / 255.0 - mean) / std
        return np.ascontiguousarray(array.transpose(2, 0, 1))

    def infer_batch(self, inputs: list[JsonDict]) -> list[JsonDict]:
        parsed = [_images(item, 32, DEFAULT_MAX_IMAGE_BYTES) for item in inputs]
        try:
            batch = np.stack([self.pixels(image) for images, _ in parsed for image in images])
            vectors = self._run({self._input: batch})
            vectors = np.asarray(vectors.reshape(vectors.shape[0], -1), dtype=np.float32)
        except ModelNotLoadedError:
            raise
        except Exception as exc:
            raise InferenceFailedError(f"{self.model_id} failed: {exc}") from exc
        return _split(vectors, [(len(images), single) for images, single in parsed], int(vectors.shape[1]),
                      [self._normalise()] * len(parsed))
