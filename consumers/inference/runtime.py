"""Model runtimes: one interface over ONNX Runtime, TorchScript and the built-in models.

A runtime is created cheaply (no weights read) so the model cache can check its memory
estimate against the budget *before* ``load()`` does the expensive part. ``infer_batch``
takes one input dict per request and returns one output dict per request, in order; the
dynamic batcher relies on that to hand each caller its own result.

User-uploaded catalog models use the generic tensor contract::

    {"inputs": [[0.1, 0.2, ...], ...]}   ->   {"outputs": [[...], ...]}

``inputs`` holds one or more rows (leading batch dimension); a single row without the batch
dimension is accepted too and answered without it. Requests whose rows share a shape are
concatenated into one session call and split back afterwards.
"""

from __future__ import annotations

import logging
import os
import threading
import warnings
from abc import ABC, abstractmethod
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, cast

import numpy as np
import onnxruntime as ort

from consumers.inference.errors import InferenceFailedError, InvalidInputError, ModelLoadError, ModelNotLoadedError
from core.task_types import GENERIC_TASK_TYPE

log = logging.getLogger(__name__)

JsonDict = dict[str, Any]

# ORT keeps the initializers plus arena buffers for activations. Measured on all-MiniLM-L6-v2
# (86 MiB file): RSS grew 108 MiB on load and 163 MiB after two batches of 32 -> 1.6x + 24 MiB.
ORT_MEMORY_FACTOR = 1.6
ORT_BASE_OVERHEAD_BYTES = 24 * 1024 * 1024
TORCH_MEMORY_FACTOR = 1.5
TORCH_BASE_OVERHEAD_BYTES = 16 * 1024 * 1024
# Upper bound of rows per session call, so one huge request cannot allocate without limit.
DEFAULT_MAX_ROWS_PER_CALL = 64


class ModelRuntime(ABC):
    """A model that can be loaded, run on a batch of requests and closed.

    Thread-safety: ``load`` and ``close`` are serialised by the runtime; ``infer_batch`` may be
    called from one thread at a time per runtime (the batcher runs one batch per model at once).
    """

    task_type: str

    def __init__(self, model_id: str) -> None:
        self.model_id = model_id
        self._state_lock = threading.Lock()

    @property
    @abstractmethod
    def loaded(self) -> bool:
        """Whether ``infer_batch`` can run now."""

    @abstractmethod
    def load(self) -> None:
        """Read weights and build sessions. Idempotent; raises ModelLoadError on failure."""

    @abstractmethod
    def infer_batch(self, inputs: list[JsonDict]) -> list[JsonDict]:
        """Run every input; return exactly one output dict per input, in the same order."""

    @property
    @abstractmethod
    def memory_bytes(self) -> int:
        """Estimated resident memory once loaded; known before ``load()`` for the cache budget."""

    @abstractmethod
    def close(self) -> None:
        """Release sessions and weights. Idempotent; ``load()`` may be called again afterwards."""


@dataclass(frozen=True)
class TensorContract:
    """The declared input/output contract of a user model (generic tensor in, tensor out).

    ``input_name``/``output_name`` pick a tensor when the model has several outputs (ONNX) or
    returns a dict (TorchScript); ``None`` means the first. ``input_shape`` (batch dimension
    included, ``None`` for free dimensions) validates requests; for ONNX the model's own
    declared shape is used when this is not given.
    """

    input_name: str | None = None
    output_name: str | None = None
    input_dtype: str = "float32"
    input_shape: tuple[int | None, ...] | None = None


_ORT_DTYPES: dict[str, str] = {
    "tensor(float)": "float32",
    "tensor(double)": "float64",
    "tensor(float16)": "float16",
    "tensor(int64)": "int64",
    "tensor(int32)": "int32",
    "tensor(int8)": "int8",
    "tensor(uint8)": "uint8",
    "tensor(bool)": "bool",
}


def ort_session(path: Path, intra_op_threads: int, *, allow_spinning: bool = True) -> Any:
    """A CPU ONNX Runtime session with a bounded intra-op pool (workers share few cores)."""
    options = ort.SessionOptions()
    options.intra_op_num_threads = max(1, intra_op_threads)
    options.inter_op_num_threads = 1
    options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    if not allow_spinning:
        # Idle pool threads otherwise spin for a while after each run, stealing CPU from other models.
        options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    return ort.InferenceSession(str(path), sess_options=options, providers=["CPUExecutionProvider"])


def _file_size(path: Path) -> int:
    try:
        return path.stat().st_size
    except OSError:
        return 0


def _shape_ok(expected: tuple[int | None, ...], actual: tuple[int, ...]) -> bool:
    """Whether ``actual`` (batch dimension included) fits ``expected`` ignoring the batch size."""
    if len(expected) != len(actual):
        return False
    return all(want is None or want == got for want, got in zip(expected[1:], actual[1:], strict=True))


def _as_rows(item: JsonDict, dtype: str, expected: tuple[int | None, ...] | None) -> tuple[np.ndarray, bool]:
    """The request's ``inputs`` as an array with a batch dimension, and whether one was added."""
    if "inputs" not in item:
        raise InvalidInputError("input must have an 'inputs' field holding a (nested) list of numbers",
                                details={"field": "inputs"})
    try:
        array = np.asarray(item["inputs"], dtype=dtype)
    except (TypeError, ValueError) as exc:
        raise InvalidInputError(f"'inputs' is not a rectangular array of {dtype}: {exc}",
                                details={"field": "inputs"}) from exc
    if array.ndim == 0 or array.size == 0:
        raise InvalidInputError("'inputs' must be a non-empty array", details={"field": "inputs"})
    squeezed = False
    if expected is not None and array.ndim == len(expected) - 1:
        array, squeezed = array[np.newaxis, ...], True
    if expected is not None and not _shape_ok(expected, array.shape):
        want = ["N" if i == 0 else ("?" if d is None else d) for i, d in enumerate(expected)]
        raise InvalidInputError(f"'inputs' has shape {list(array.shape)}, the model expects {want}",
                                details={"field": "inputs", "expected_shape": want, "shape": list(array.shape)})
    return array, squeezed


def _run_grouped(
    arrays: list[np.ndarray],
    run: Callable[[np.ndarray], np.ndarray],
    max_rows: int,
    static_batch: int | None,
) -> list[np.ndarray]:
    """Run ``run(rows) -> ndarray`` over the requests' rows, concatenating same-shaped requests.

    Returns one output array per request (rows in the request's order).
    """
    outputs: list[np.ndarray | None] = [None] * len(arrays)
    groups: dict[tuple[int, ...], list[int]] = {}
    for index, array in enumerate(arrays):
        groups.setdefault(tuple(array.shape[1:]), []).append(index)
    chunk = static_batch or max_rows
    for members in groups.values():
        rows = np.concatenate([arrays[i] for i in members], axis=0)
        parts = [run(rows[start:start + chunk]) for start in range(0, rows.shape[0], chunk)]
        result = np.concatenate(parts, axis=0)
        if result.shape[0] != rows.shape[0]:
            raise InferenceFailedError(f"model returned {result.shape[0]} rows for {rows.shape[0]} inputs")
        offset = 0
        for i in members:
            count = arrays[i].shape[0]
            outputs[i] = result[offset:offset + count]
            offset += count
    done = [out for out in outputs if out is not None]
    if len(done) != len(arrays):
        raise InferenceFailedError("internal error: not every request got an output")
    return done


class OnnxRuntimeModel(ModelRuntime):
    """A user ONNX model on CPU, served with the generic tensor contract."""

    def __init__(
        self,
        model_id: str,
        path: str | os.PathLike[str],
        *,
        contract: TensorContract | None = None,
        task_type: str = GENERIC_TASK_TYPE,
        intra_op_threads: int = 1,
        declared_memory_bytes: int | None = None,
        max_rows_per_call: int = DEFAULT_MAX_ROWS_PER_CALL,
    ) -> None:
        super().__init__(model_id)
        self.task_type = task_type
        self.path = Path(path)
        self.contract = contract or TensorContract()
        self.intra_op_threads = intra_op_threads
        self.max_rows_per_call = max_rows_per_call
        self._declared_memory = declared_memory_bytes
        self._session: Any = None
        self._input_name = ""
        self._output_name = ""
        self._dtype = self.contract.input_dtype
        self._shape: tuple[int | None, ...] | None = self.contract.input_shape
        self._static_batch: int | None = None

    @property
    def loaded(self) -> bool:
        return self._session is not None

    @property
    def memory_bytes(self) -> int:
        if self._declared_memory is not None:
            return self._declared_memory
        return int(_file_size(self.path) * ORT_MEMORY_FACTOR) + ORT_BASE_OVERHEAD_BYTES

    def load(self) -> None:
        with self._state_lock:
            if self._session is not None:
                return
            if not self.path.is_file():
                raise ModelLoadError(f"model file not found: {self.path}", details={"model_id": self.model_id})
            try:
                session = ort_session(self.path, self.intra_op_threads)
            except Exception as exc:  # ORT raises its own exception types for corrupt or unsupported graphs
                raise ModelLoadError(f"ONNX Runtime cannot load {self.path.name}: {exc}",
                                     details={"model_id": self.model_id}) from exc
            inputs = session.get_inputs()
            if self.contract.input_name is not None:
                chosen = [i for i in inputs if i.name == self.contract.input_name]
                if not chosen:
                    raise ModelLoadError(f"model has no input named {self.contract.input_name!r}",
                                         details={"inputs": [i.name for i in inputs]})
            elif len(inputs) == 1:
                chosen = inputs
            else:
                raise ModelLoadError("the generic tensor contract serves models with exactly one input; "
                                     f"this one has {[i.name for i in inputs]}")
            model_input = chosen[0]
            outputs = [o.name for o in session.get_outputs()]
            if self.contract.output_name is not None and self.contract.output_name not in outputs:
                raise ModelLoadError(f"model has no output named {self.contract.output_name!r}",
                                     details={"outputs": outputs})
            self._input_name = model_input.name
            self._output_name = self.contract.output_name or outputs[0]
            self._dtype = _ORT_DTYPES.get(model_input.type, self.contract.input_dtype)
            if self._shape is None:
                self._shape = tuple(d if isinstance(d, int) and d > 0 else None for d in model_input.shape)
            first = model_input.shape[0] if model_input.shape else None
            self._static_batch = first if isinstance(first, int) and first > 0 else None
            self._session = session

    def infer_batch(self, inputs: list[JsonDict]) -> list[JsonDict]:
        session = self._session  # a concurrent close() must not pull the session from under this call
        if session is None:
            raise ModelNotLoadedError(f"model {self.model_id} is not loaded")
        parsed = [_as_rows(item, self._dtype, self._shape) for item in inputs]

        def run(rows: np.ndarray) -> np.ndarray:
            result = session.run([self._output_name], {self._input_name: rows})[0]
            return np.asarray(result)

        try:
            results = _run_grouped([array for array, _ in parsed], run, self.max_rows_per_call, self._static_batch)
        except InvalidInputError:
            raise
        except Exception as exc:
            raise InferenceFailedError(f"ONNX Runtime failed: {exc}", details={"model_id": self.model_id}) from exc
        return [{"outputs": (out[0] if squeezed else out).tolist()}
                for out, (_, squeezed) in zip(results, parsed, strict=True)]

    def close(self) -> None:
        with self._state_lock:
            self._session = None


class TorchScriptModel(ModelRuntime):
    """A user TorchScript model (``torch.jit.save`` output) on CPU, generic tensor contract.

    ``num_threads`` calls ``torch.set_num_threads``, which is process-wide: leave it ``None``
    unless this worker serves TorchScript models only.
    """

    def __init__(
        self,
        model_id: str,
        path: str | os.PathLike[str],
        *,
        contract: TensorContract | None = None,
        task_type: str = GENERIC_TASK_TYPE,
        num_threads: int | None = None,
        declared_memory_bytes: int | None = None,
        max_rows_per_call: int = DEFAULT_MAX_ROWS_PER_CALL,
    ) -> None:
        super().__init__(model_id)
        self.task_type = task_type
        self.path = Path(path)
        self.contract = contract or TensorContract()
        self.num_threads = num_threads
        self.max_rows_per_call = max_rows_per_call
        self._declared_memory = declared_memory_bytes
        self._module: Any = None
        self._param_bytes = 0

    @property
    def loaded(self) -> bool:
        return self._module is not None

    @property
    def memory_bytes(self) -> int:
        if self._declared_memory is not None:
            return self._declared_memory
        if self._param_bytes:
            return int(self._param_bytes * TORCH_MEMORY_FACTOR) + TORCH_BASE_OVERHEAD_BYTES
        return int(_file_size(self.path) * TORCH_MEMORY_FACTOR) + TORCH_BASE_OVERHEAD_BYTES

    def load(self) -> None:
        import torch  # imported here so ONNX-only workers never pay torch's import time

        with self._state_lock:
            if self._module is not None:
                return
            if not self.path.is_file():
                raise ModelLoadError(f"model file not found: {self.path}", details={"model_id": self.model_id})
            if self.num_threads is not None:
                torch.set_num_threads(self.num_threads)
            try:
                with warnings.catch_warnings():
                    # TorchScript is deprecated in torch 2.x but it is what users upload: the notice is noise here.
                    warnings.simplefilter("ignore", DeprecationWarning)
                    module = cast(Any, torch.jit).load(str(self.path), map_location="cpu")
            except Exception as exc:  # torch raises RuntimeError or pickling errors for bad archives
                raise ModelLoadError(f"not a TorchScript archive: {self.path.name}: {exc}",
                                     details={"model_id": self.model_id}) from exc
            module.eval()
            tensors = [*module.parameters(), *module.buffers()]
            self._param_bytes = sum(t.numel() * t.element_size() for t in tensors)
            self._module = module

    def _select(self, result: Any) -> Any:
        """The output tensor named by the contract out of whatever the module returned."""
        import torch

        if isinstance(result, torch.Tensor):
            return result
        if isinstance(result, dict):
            key = self.contract.output_name or next(iter(result))
            if key not in result:
                raise InferenceFailedError(f"model output has no key {key!r}", details={"keys": list(result)})
            return result[key]
        if isinstance(result, list | tuple) and result:
            return result[0]
        raise InferenceFailedError(f"model returned {type(result).__name__}, not a tensor")

    def infer_batch(self, inputs: list[JsonDict]) -> list[JsonDict]:
        import torch

        module = self._module
        if module is None:
            raise ModelNotLoadedError(f"model {self.model_id} is not loaded")
        parsed = [_as_rows(item, self.contract.input_dtype, self.contract.input_shape) for item in inputs]

        def run(rows: np.ndarray) -> np.ndarray:
            with torch.inference_mode():
                out = self._select(module(torch.from_numpy(np.ascontiguousarray(rows))))
            return np.asarray(out.detach().cpu().numpy())

        try:
            results = _run_grouped([array for array, _ in parsed], run, self.max_rows_per_call, None)
        except (InvalidInputError, InferenceFailedError):
            raise
        except Exception as exc:
            raise InferenceFailedError(f"TorchScript model failed: {exc}", details={"model_id": self.model_id}) from exc
        return [{"outputs": (out[0] if squeezed else out).tolist()}
                for out, (_, squeezed) in zip(results, parsed, strict=True)]

    def close(self) -> None:
        with self._state_lock:
            self._module = None
            self._param_bytes = 0
