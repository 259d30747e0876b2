"""Model weights on the wire and in S3, and streaming FedAvg.

Updates are PyTorch ``state_dict`` files loaded with ``weights_only=True`` (no pickled code
from devices). FedAvg keeps one running weighted sum, so memory stays at about one model
whatever the number of updates; its checkpoint carries the ids it already includes, which
makes redelivered updates idempotent after a restart.
"""

from __future__ import annotations

import io
import zipfile
from dataclasses import dataclass, field
from typing import Any

import torch

from core.errors import DomainError, ErrorKind

StateDict = dict[str, torch.Tensor]


# torch.save stores archive entries uncompressed; a deflated entry that inflates far beyond the
# upload is a zip bomb (torch allocates the declared size and inflates it in memory).
MAX_INFLATION = 4
INFLATION_SLACK_BYTES = 1024 * 1024


def check_archive(data: bytes) -> None:
    """Refuse a zip archive whose entries declare more than ``MAX_INFLATION`` x its size (+1 MiB)."""
    try:
        with zipfile.ZipFile(io.BytesIO(data)) as archive:
            inflated = sum(info.file_size for info in archive.infolist())
    except (zipfile.BadZipFile, ValueError, OSError):
        return  # not a zip: the loader refuses it with its own message
    limit = MAX_INFLATION * len(data) + INFLATION_SLACK_BYTES
    if inflated > limit:
        raise DomainError(
            ErrorKind.UNSUPPORTED, "INVALID_MODEL_FILE",
            f"The archive inflates to {inflated} bytes, more than {limit} allowed for a {len(data)}-byte upload.",
            details={"inflated_bytes": inflated, "max_inflated_bytes": limit},
            hint="Save weights with torch.save (uncompressed entries).",
        )


def load_state_dict(data: bytes) -> StateDict:
    """Parse an uploaded state_dict; anything else is a client error, never a 500."""
    check_archive(data)
    try:
        obj = torch.load(io.BytesIO(data), map_location="cpu", weights_only=True)
    except Exception as exc:
        raise DomainError(
            ErrorKind.UNSUPPORTED, "INVALID_MODEL_FILE",
            "The file is not a PyTorch state_dict saved with torch.save.",
            details={"reason": str(exc)[:300]},
        ) from exc
    if not isinstance(obj, dict) or not obj or not all(
        isinstance(k, str) and isinstance(v, torch.Tensor) for k, v in obj.items()
    ):
        raise DomainError(
            ErrorKind.UNSUPPORTED, "INVALID_MODEL_FILE", "Expected a non-empty mapping of parameter names to tensors."
        )
    return obj


def dump_state_dict(state: StateDict) -> bytes:
    buffer = io.BytesIO()
    torch.save(state, buffer)
    return buffer.getvalue()


@dataclass
class FedAvgAccumulator:
    """Sum of num_samples-weighted parameters (float64) and the total weight."""

    weighted_sum: StateDict = field(default_factory=dict)
    total_samples: int = 0
    included: set[str] = field(default_factory=set)

    def add(self, update_id: str, state: StateDict, num_samples: int) -> bool:
        """Fold one update in; False (and no change) when it was already included."""
        if update_id in self.included:
            return False
        if num_samples <= 0:
            raise ValueError("num_samples must be positive")
        if self.weighted_sum and set(state) != set(self.weighted_sum):
            raise DomainError(
                ErrorKind.INVALID, "INCOMPATIBLE_UPDATE", "The update's parameters do not match the round's model.",
                details={"missing": sorted(set(self.weighted_sum) - set(state))[:10],
                         "unexpected": sorted(set(state) - set(self.weighted_sum))[:10]},
            )
        for name, tensor in state.items():
            contribution = tensor.detach().to(torch.float64) * num_samples
            if name in self.weighted_sum:
                if self.weighted_sum[name].shape != contribution.shape:
                    raise DomainError(
                        ErrorKind.INVALID, "INCOMPATIBLE_UPDATE",
                        f"Parameter '{name}' has shape {tuple(tensor.shape)}, expected "
                        f"{tuple(self.weighted_sum[name].shape)}.",
                    )
                self.weighted_sum[name] += contribution
            else:
                self.weighted_sum[name] = contribution
        self.total_samples += num_samples
        self.included.add(update_id)
        return True

    def average(self, like: StateDict | None = None) -> StateDict:
        """The weighted mean, cast back to each parameter's original dtype when ``like`` is given."""
        if self.total_samples == 0:
            raise ValueError("no updates to average")
        result = {name: total / self.total_samples for name, total in self.weighted_sum.items()}
        if like is not None:
            result = {name: value.to(like[name].dtype) for name, value in result.items()}
        return result

    def to_bytes(self) -> bytes:
        payload: dict[str, Any] = {
            "weighted_sum": self.weighted_sum,
            "total_samples": torch.tensor(self.total_samples, dtype=torch.int64),
            "included": sorted(self.included),
        }
        buffer = io.BytesIO()
        torch.save(payload, buffer)
        return buffer.getvalue()

    @classmethod
    def from_bytes(cls, data: bytes) -> FedAvgAccumulator:
        payload = torch.load(io.BytesIO(data), map_location="cpu", weights_only=True)
        return cls(
            weighted_sum=dict(payload["weighted_sum"]),
            total_samples=int(payload["total_samples"]),
            included=set(payload["included"]),
        )
