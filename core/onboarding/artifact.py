"""What a fetched model file is, decided by its bytes, and whether it may be accepted.

Detection is by magic bytes, never by the URL's suffix:

- ``0x80`` + a pickle protocol byte (2..5): a plain pickle -> refused (``PICKLE_REFUSED``). It is
  never unpickled: unpickling runs whatever the file says.
- a zip archive: TorchScript (``torch.jit.save``: ``code/`` and ``constants.pkl``) is accepted if
  ``torch.jit.load`` loads it (TorchScript's loader restores its own IR, not arbitrary objects);
  any other zip (``torch.save`` of a module or state_dict is a pickle inside a zip) -> refused.
- safetensors (8-byte little-endian header length, then a JSON header): bare weights, accepted only
  for a known architecture named by ``config.architecture`` (``KNOWN_ARCHITECTURES``); the
  download processor then builds the module from its code, loads the weights strictly and exports
  ONNX, which is checked like any ONNX upload. Otherwise refused.
- anything else is tried as ONNX: it must load in ONNX Runtime; its input/output signature
  (names, element types, shapes with ``None`` for free dimensions) is recorded.
"""

from __future__ import annotations

import json
import struct
import warnings
import zipfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from core.onboarding.fetch import FetchError
from core.task_types import TaskType

PICKLE_PROTOCOLS = range(2, 6)
# Architectures whose safetensors weights become a servable ONNX model, with the task type they serve:
# "bert-mean-pooling" is a BERT encoder + mean pooling + L2 (sentence-transformers' recipe, e.g.
# all-MiniLM-L6-v2), with config.json and tokenizer.json beside the weights.
KNOWN_ARCHITECTURES: dict[str, str] = {"bert-mean-pooling": TaskType.TXT2EMBED.value}


@dataclass(frozen=True)
class CheckedArtifact:
    format: str  # "onnx" or "pytorch" (TorchScript): the catalog's version formats
    signature: dict[str, Any] = field(default_factory=dict)


def sniff(path: Path) -> str:
    """``pickle``, ``torchscript``, ``zip``, ``safetensors`` or ``onnx`` (the candidate left)."""
    with path.open("rb") as handle:
        head = handle.read(16)
    if len(head) >= 2 and head[0] == 0x80 and head[1] in PICKLE_PROTOCOLS:
        return "pickle"
    if head.startswith(b"PK\x03\x04"):
        try:
            with zipfile.ZipFile(path) as archive:
                names = archive.namelist()
        except zipfile.BadZipFile:
            return "zip"
        if any(n.endswith("constants.pkl") for n in names) and any("/code/" in n for n in names):
            return "torchscript"
        return "zip"
    if len(head) >= 9:
        (header_len,) = struct.unpack("<Q", head[:8])
        if 0 < header_len < path.stat().st_size and head[8:9] == b"{":
            return "safetensors"
    return "onnx"


def _refused(code: str, message: str) -> FetchError:
    return FetchError(code, message)


def _onnx_signature(path: Path) -> dict[str, Any]:
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = 1
    try:
        session = ort.InferenceSession(str(path), sess_options=options, providers=["CPUExecutionProvider"])
    except Exception as exc:  # ORT's own exception types for anything it cannot load
        raise _refused("INVALID_MODEL_FILE", f"not a model ONNX Runtime can load: {str(exc)[:300]}") from exc

    def describe(values: list[Any]) -> list[dict[str, Any]]:
        return [{"name": v.name, "type": v.type,
                 "shape": [d if isinstance(d, int) and d > 0 else None for d in (v.shape or [])]} for v in values]

    return {"inputs": describe(session.get_inputs()), "outputs": describe(session.get_outputs())}


def _torchscript_signature(path: Path) -> dict[str, Any]:
    import torch

    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", DeprecationWarning)
            module = torch.jit.load(str(path), map_location="cpu")  # type: ignore[no-untyped-call]
    except Exception as exc:
        raise _refused("INVALID_MODEL_FILE", f"not a TorchScript archive torch.jit.load accepts: "
                                             f"{str(exc)[:300]}") from exc
    parameters = sum(p.numel() for p in module.parameters())
    return {"engine": "torchscript", "parameters": int(parameters)}


def check_artifact(path: Path, config: dict[str, Any]) -> CheckedArtifact:
    """Accept an ONNX model or a TorchScript archive; refuse pickles, other zips and bare weights."""
    kind = sniff(path)
    if kind == "pickle":
        raise _refused("PICKLE_REFUSED", "the file is a Python pickle; pickles are never loaded (unpickling runs "
                                         "code). Export the model to ONNX or TorchScript.")
    if kind == "zip":
        raise _refused("PICKLE_REFUSED", "the file is a zip archive that is not TorchScript (torch.save archives "
                                         "hold a pickle); export with torch.jit.save or to ONNX.")
    if kind == "safetensors":
        architecture = config.get("architecture")
        raise _refused("UNSUPPORTED_FORMAT", "safetensors weights carry no architecture and "
                       f"{'no' if not architecture else repr(architecture) + ' is not a'} known architecture "
                       f"({', '.join(KNOWN_ARCHITECTURES)}) was named in config.architecture; "
                       "export the model to ONNX.")
    if kind == "torchscript":
        return CheckedArtifact("pytorch", _torchscript_signature(path))
    return CheckedArtifact("onnx", _onnx_signature(path))


def check_tokenizer(path: Path) -> None:
    """A ``tokenizer.json`` the tokenizers library loads (plain JSON: nothing in it executes)."""
    from tokenizers import Tokenizer

    try:
        json.loads(path.read_bytes())
        Tokenizer.from_file(str(path))
    except Exception as exc:
        raise _refused("INVALID_TOKENIZER", f"not a tokenizers tokenizer.json: {str(exc)[:300]}") from exc
