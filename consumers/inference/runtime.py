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


class TensorFileModel(ModelRuntime):
    """A user model file on CPU served with the generic tensor contract; ONNX and TorchScript differ
    only in how they open the file, run rows and estimate memory (the subclasses below).

    The opened engine (an ORT session, a TorchScript module) is the ``loaded`` state: ``infer_batch``
    takes it once, so a concurrent ``close()`` cannot pull it from under a running call.
    """

    engine = "model"  # names the engine in the error that wraps its exceptions
    memory_factor = 1.0
    base_overhead_bytes = 0
    # Errors of ours that reach the caller as they are; anything else is wrapped as INFERENCE_FAILED.
    passed_through: tuple[type[Exception], ...] = (InvalidInputError,)

    def __init__(
        self,
        model_id: str,
        path: str | os.PathLike[str],
        *,
        contract: TensorContract | None = None,
        task_type: str = GENERIC_TASK_TYPE,
        declared_memory_bytes: int | None = None,
        max_rows_per_call: int = DEFAULT_MAX_ROWS_PER_CALL,
    ) -> None:
        super().__init__(model_id)
        self.task_type = task_type
        self.path = Path(path)
        self.contract = contract or TensorContract()
        self.max_rows_per_call = max_rows_per_call
        self._declared_memory = declared_memory_bytes
        self._engine: Any = None
        # What requests are checked against; ONNX refines them from the graph on load.
        self._dtype = self.contract.input_dtype
        self._shape: tuple[int | None, ...] | None = self.contract.input_shape
        self._static_batch: int | None = None

    @property
    def loaded(self) -> bool:
        return self._engine is not None

    @property
    def memory_bytes(self) -> int:
        if self._declared_memory is not None:
            return self._declared_memory
        return int(self._weight_bytes() * self.memory_factor) + self.base_overhead_bytes

    def _weight_bytes(self) -> int:
        return _file_size(self.path)

    def load(self) -> None:
        with self._state_lock:
            if self._engine is not None:
                return
            if not self.path.is_file():
                raise ModelLoadError(f"model file not found: {self.path}", details={"model_id": self.model_id})
            self._engine = self._open()

    @abstractmethod
    def _open(self) -> Any:
        """Open the file (raising ModelLoadError) and return the engine; called under the state lock."""

    @abstractmethod
    def _runner(self, engine: Any) -> Callable[[np.ndarray], np.ndarray]:
        """``rows -> outputs`` over the opened engine."""

    def infer_batch(self, inputs: list[JsonDict]) -> list[JsonDict]:
        engine = self._engine
        if engine is None:
            raise ModelNotLoadedError(f"model {self.model_id} is not loaded")
        parsed = [_as_rows(item, self._dtype, self._shape) for item in inputs]
        try:
            results = _run_grouped([array for array, _ in parsed], self._runner(engine), self.max_rows_per_call,
                                   self._static_batch)
        except self.passed_through:
            raise
        except Exception as exc:
            raise InferenceFailedError(f"{self.engine} failed: {exc}", details={"model_id": self.model_id}) from exc
        return [{"outputs": (out[0] if squeezed else out).tolist()}
                for out, (_, squeezed) in zip(results, parsed, strict=True)]

    def close(self) -> None:
        with self._state_lock:
            self._engine = None
            self._forget()

    def _forget(self) -> None:
        """Drop what was learned on load, beside the engine; called under the state lock."""


class OnnxRuntimeModel(TensorFileModel):
    """A user ONNX model on CPU, served with the generic tensor contract."""

    engine = "ONNX Runtime"
    memory_factor = ORT_MEMORY_FACTOR
    base_overhead_bytes = ORT_BASE_OVERHEAD_BYTES

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
        super().__init__(model_id, path, contract=contract, task_type=task_type,
                         declared_memory_bytes=declared_memory_bytes, max_rows_per_call=max_rows_per_call)
        self.intra_op_threads = intra_op_threads
        self._input_name = ""
        self._output_name = ""

    def _open(self) -> Any:
        try:
            session = ort_session(self.path, self.intra_op_threads)
        except Exception as exc:  # ORT raises its own exception types for corrupt or unsupported graphs
            raise ModelLoadError(f"ONNX Runtime cannot load {self.path.name}: {exc}",
                                 details={"model_id": self.model_id}) from exc
        model_input = self._input_of(session)
        self._output_name = self._output_of(session)
        self._input_name = model_input.name
        self._dtype = _ORT_DTYPES.get(model_input.type, self.contract.input_dtype)
        if self._shape is None:
            self._shape = tuple(d if isinstance(d, int) and d > 0 else None for d in model_input.shape)
        first = model_input.shape[0] if model_input.shape else None
        self._static_batch = first if isinstance(first, int) and first > 0 else None
        return session

    def _input_of(self, session: Any) -> Any:
        """The graph input the contract names, or the only one."""
        inputs = session.get_inputs()
        if self.contract.input_name is not None:
            chosen = [i for i in inputs if i.name == self.contract.input_name]
            if not chosen:
                raise ModelLoadError(f"model has no input named {self.contract.input_name!r}",
                                     details={"inputs": [i.name for i in inputs]})
            return chosen[0]
        if len(inputs) == 1:
            return inputs[0]
        raise ModelLoadError("the generic tensor contract serves models with exactly one input; "
                             f"this one has {[i.name for i in inputs]}")

    def _output_of(self, session: Any) -> str:
        """The name of the graph output the contract names, or the first."""
        outputs = [o.name for o in session.get_outputs()]
        if self.contract.output_name is not None and self.contract.output_name not in outputs:
            raise ModelLoadError(f"model has no output named {self.contract.output_name!r}",
                                 details={"outputs": outputs})
        return self.contract.output_name or outputs[0]

    def _runner(self, engine: Any) -> Callable[[np.ndarray], np.ndarray]:
        def run(rows: np.ndarray) -> np.ndarray:
            return np.asarray(engine.run([self._output_name], {self._input_name: rows})[0])

        return run


class TorchScriptModel(TensorFileModel):
    """A user TorchScript model (``torch.jit.save`` output) on CPU, generic tensor contract.

    ``num_threads`` calls ``torch.set_num_threads``, which is process-wide: leave it ``None``
    unless this worker serves TorchScript models only.
    """

    engine = "TorchScript model"
    memory_factor = TORCH_MEMORY_FACTOR
    base_overhead_bytes = TORCH_BASE_OVERHEAD_BYTES
    # _select names a missing output key itself: that message reaches the caller unwrapped.
    passed_through = (InvalidInputError, InferenceFailedError)

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
        super().__init__(model_id, path, contract=contract, task_type=task_type,
                         declared_memory_bytes=declared_memory_bytes, max_rows_per_call=max_rows_per_call)
        self.num_threads = num_threads
        self._param_bytes = 0

    def _weight_bytes(self) -> int:
        # Once loaded, the parameters' real size; before, the archive's.
        return self._param_bytes or _file_size(self.path)

    def _open(self) -> Any:
        import torch  # imported here so ONNX-only workers never pay torch's import time

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
        return module

    def _forget(self) -> None:
        self._param_bytes = 0

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

    def _runner(self, engine: Any) -> Callable[[np.ndarray], np.ndarray]:
        import torch

        def run(rows: np.ndarray) -> np.ndarray:
            with torch.inference_mode():
                out = self._select(engine(torch.from_numpy(np.ascontiguousarray(rows))))
            return np.asarray(out.detach().cpu().numpy())

        return run
