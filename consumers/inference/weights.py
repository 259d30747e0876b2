"""ONNX from bare safetensors weights of an architecture whose code we have (``KNOWN_ARCHITECTURES`` in
``core/onboarding/artifact.py``): the model-download processor's ``weights_builder``.

The module is built from our code (``torch_models``), the weights are read with safetensors (no
pickle) and loaded strictly (every tensor named and shaped as the architecture expects), then the
module is exported to ONNX the way the built-in MiniLM is. Anything that does not fit is refused
with the reason.
"""

from __future__ import annotations

import json
from pathlib import Path

from core.onboarding.fetch import FetchError


def build_onnx(architecture: str, directory: Path, out: Path) -> None:
    """Write ONNX for ``directory``'s ``model.safetensors`` + ``config.json`` of ``architecture``."""
    from consumers.inference import torch_models

    if architecture != "bert-mean-pooling":
        raise FetchError("UNSUPPORTED_FORMAT", f"no builder for architecture {architecture!r}")
    try:
        json.loads((directory / "config.json").read_text())
        model = torch_models.load_minilm(directory)
    except (KeyError, RuntimeError, ValueError, OSError) as exc:  # missing tensors, wrong shapes, bad config
        raise FetchError("INVALID_MODEL_FILE", f"the weights do not fit {architecture}: "
                                               f"{type(exc).__name__}: {str(exc)[:300]}") from exc
    torch_models.export_sentence_embedder(model, out)
