"""Type checks for uploaded model artifacts and their conversion to ONNX where possible.

A PyTorch upload is a TorchScript archive or a ``torch.export`` program (both carry their
architecture, so both convert to ONNX when the exporter can express them), or a plain
state_dict (weights only: no architecture, so no ONNX). Nothing uploaded is unpickled beyond
torch's ``weights_only`` loader; an exported program is a JSON graph plus tensors.
"""

from __future__ import annotations

import io
import json
import warnings
import zipfile

from core.errors import DomainError, ErrorKind

HDF5_MAGIC = b"\x89HDF\r\n\x1a\n"


def _unsupported(message: str) -> DomainError:
    return DomainError(ErrorKind.UNSUPPORTED, "INVALID_MODEL_FILE", message)


def check_artifact(fmt: str, data: bytes) -> None:
    """Refuse files whose content does not match the declared format."""
    if fmt == "pytorch":
        if not zipfile.is_zipfile(io.BytesIO(data)):
            raise _unsupported("A PyTorch upload must be a torch.save or TorchScript archive.")
        from core.fleet.weights import check_archive

        check_archive(data)  # before TorchScript detection: its conversion inflates every entry too
        if _is_torchscript(data) or _is_exported_program(data):
            return
        from core.fleet.weights import load_state_dict

        load_state_dict(data)
    elif fmt == "onnx":
        import onnx

        try:
            onnx.checker.check_model(onnx.load_from_string(data))
        except Exception as exc:
            raise _unsupported(f"Not a valid ONNX model: {str(exc)[:200]}") from exc
    elif fmt == "tensorflow":
        if not data.startswith(HDF5_MAGIC):
            raise _unsupported("A TensorFlow upload must be an HDF5 (.h5) file.")
    elif fmt == "sklearn":
        if not data[:1] == b"\x80":
            raise _unsupported("A scikit-learn upload must be a pickle (.pkl) file.")
    elif fmt == "xgboost":
        try:
            json.loads(data)
        except ValueError as exc:
            raise _unsupported("An XGBoost upload must be a JSON model file.") from exc


def _is_torchscript(data: bytes) -> bool:
    with zipfile.ZipFile(io.BytesIO(data)) as archive:
        return any(name.endswith("constants.pkl") or "/code/" in name for name in archive.namelist())


def _is_exported_program(data: bytes) -> bool:
    """A ``torch.export.save`` archive (``<root>/models/model.json`` + ``archive_format``)."""
    with zipfile.ZipFile(io.BytesIO(data)) as archive:
        names = archive.namelist()
        return any(n.endswith("/archive_format") for n in names) and any(n.endswith("models/model.json")
                                                                          for n in names)


def convert_to_onnx(fmt: str, data: bytes) -> bytes | None:
    """ONNX bytes for a TorchScript upload whose input shape we can infer, or for an exported
    program (its own example inputs); None when there is no architecture or the exporter fails."""
    if fmt != "pytorch":
        return None
    import torch

    module: object
    example: object | None
    # TorchScript is exported in eval mode; an exported program's module refuses train() and
    # its mode was fixed when it was exported.
    mode = torch.onnx.TrainingMode.EVAL
    if _is_torchscript(data):
        module = torch.jit.load(io.BytesIO(data), map_location="cpu")  # type: ignore[no-untyped-call]
        example = _example_input(module)
    elif _is_exported_program(data):
        try:
            program = torch.export.load(io.BytesIO(data))
        except Exception:
            return None
        args: tuple[object, ...] = tuple(program.example_inputs[0]) if program.example_inputs else ()
        module, mode = program.module(), torch.onnx.TrainingMode.PRESERVE
        example = args[0] if len(args) == 1 else None  # the tensor contract: one input tensor
    else:
        return None
    if example is None:
        return None
    # TorchScript exports with a dynamic batch; an exported program is specialised to its
    # example shapes unless it says otherwise, so a fixed batch is the fallback.
    for dynamic_axes in ({"input": {0: "batch"}, "output": {0: "batch"}}, None):
        out = io.BytesIO()
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                torch.onnx.export(
                    module, (example,), out,  # type: ignore[arg-type]  # a BytesIO target works
                    opset_version=17, dynamo=False, input_names=["input"], output_names=["output"],
                    dynamic_axes=dynamic_axes, training=mode,
                )
            return out.getvalue()
        except Exception:
            continue  # architecture the exporter cannot express: the original stays downloadable
    return None


def _example_input(module: object) -> object | None:
    """Guess a batch-of-one input from the first weight: Linear → (1, in), Conv2d → (1, C, 32, 32)."""
    import torch

    params = [p for p in module.parameters() if p.dim() >= 2]  # type: ignore[attr-defined]
    if not params:
        return None
    first = params[0]
    if first.dim() == 2:
        return torch.zeros(1, first.shape[1])
    if first.dim() == 4:
        return torch.zeros(1, first.shape[1], 32, 32)
    return None
