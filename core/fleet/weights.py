"""Model weights on the wire and in S3, and streaming FedAvg.

Updates are PyTorch ``state_dict`` files loaded with ``weights_only=True`` (no pickled code
from devices). FedAvg keeps one running weighted sum and the ids it includes, so redelivered
updates are idempotent and memory stays at about one model whatever the number of updates:
an update is spooled from S3 to a temporary file and memory-mapped (its tensors are views of
the page cache, not a second copy), then added into the sum in place.
"""

from __future__ import annotations

import ctypes
import functools
import hashlib
import io
import os
import sys
import tempfile
import zipfile
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from contextlib import contextmanager, suppress
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import torch

from core.errors import DomainError, ErrorKind

StateDict = dict[str, torch.Tensor]


# torch.save stores archive entries uncompressed; a deflated entry that inflates far beyond the
# upload is a zip bomb (torch allocates the declared size and inflates it in memory).
MAX_INFLATION = 4
INFLATION_SLACK_BYTES = 1024 * 1024


def check_archive(data: bytes | Path) -> None:
    """Refuse a zip archive whose entries declare more than ``MAX_INFLATION`` x its size (+1 MiB)."""
    size = data.stat().st_size if isinstance(data, Path) else len(data)
    try:
        with zipfile.ZipFile(data if isinstance(data, Path) else io.BytesIO(data)) as archive:
            inflated = sum(info.file_size for info in archive.infolist())
    except (zipfile.BadZipFile, ValueError, OSError):
        return  # not a zip: the loader refuses it with its own message
    limit = MAX_INFLATION * size + INFLATION_SLACK_BYTES
    if inflated > limit:
        raise DomainError(
            ErrorKind.UNSUPPORTED, "INVALID_MODEL_FILE",
            f"The archive inflates to {inflated} bytes, more than {limit} allowed for a {size}-byte upload.",
            details={"inflated_bytes": inflated, "max_inflated_bytes": limit},
            hint="Save weights with torch.save (uncompressed entries).",
        )


def load_state_dict(data: bytes) -> StateDict:
    """Parse an uploaded state_dict; anything else is a client error, never a 500."""
    check_archive(data)
    return _load(io.BytesIO(data), mmap=False)


def load_state_dict_file(path: Path) -> StateDict:
    """Parse an update spooled to disk without reading it into memory: the tensors of a zip archive
    (what torch.save writes) are mapped from the file; a legacy archive is read as usual."""
    check_archive(path)
    return _load(path, mmap=zipfile.is_zipfile(path))


def load_update_file(path: Path) -> tuple[StateDict, Callable[[torch.Tensor], None] | None]:
    """``load_state_dict_file`` for a fold: also the function that gives a folded tensor's pages back
    (``release_mapped_pages``) when the tensors are mapped from the file, None when they were read."""
    state = load_state_dict_file(path)
    return state, release_mapped_pages if zipfile.is_zipfile(path) and sys.platform == "linux" else None


_PAGE = os.sysconf("SC_PAGE_SIZE") if hasattr(os, "sysconf") else 4096
_MADV_DONTNEED = 4  # Linux


def release_mapped_pages(tensor: torch.Tensor) -> None:
    """Drop this process's pages of a tensor mapped read-only from a file (``madvise(MADV_DONTNEED)``).

    A mapped update's pages stay in the process's memory until the whole mapping goes, so a fold held
    the sum plus the entire update (2.05 models at peak). Releasing each tensor once it is added keeps
    the sum plus one tensor. Only whole pages inside the tensor are released, and clean pages of a
    private file mapping are only dropped, never lost: touched again, they are read back from the file.
    Never call it on memory that is not such a mapping: there it would discard data."""
    size = tensor.numel() * tensor.element_size()
    start = tensor.untyped_storage().data_ptr() + tensor.storage_offset() * tensor.element_size()
    first, last = -(-start // _PAGE) * _PAGE, (start + size) // _PAGE * _PAGE
    if last > first:
        _libc().madvise(ctypes.c_void_p(first), ctypes.c_size_t(last - first), _MADV_DONTNEED)


@functools.cache
def _libc() -> ctypes.CDLL:
    return ctypes.CDLL(None, use_errno=True)


def _load(source: io.BytesIO | Path, *, mmap: bool) -> StateDict:
    try:
        obj = torch.load(source, map_location="cpu", weights_only=True, mmap=mmap)
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




@contextmanager
def _temporary_file(prefix: str, directory: str | None) -> Iterator[tuple[int, Path]]:
    """A new temporary ``.pt`` file (its open descriptor and path), removed when the block ends."""
    fd, name = tempfile.mkstemp(prefix=prefix, suffix=".pt", dir=directory)
    try:
        yield fd, Path(name)
    finally:
        with suppress(FileNotFoundError):
            os.unlink(name)


@contextmanager
def saved_state_dict(state: StateDict, directory: str | None = None) -> Iterator[Path]:
    """``torch.save`` ``state`` to a temporary file, then empty ``state`` (its tensors are freed unless
    referenced elsewhere) and yield the file's path; the file is removed after."""
    with _temporary_file("tributary-model-", directory) as (fd, path):
        with os.fdopen(fd, "wb") as out:
            torch.save(state, out)
        state.clear()
        yield path


_HASHER = ThreadPoolExecutor(max_workers=1, thread_name_prefix="sha256")


@contextmanager
def spooled(chunks: Iterable[bytes], directory: str | None = None) -> Iterator[tuple[Path, str]]:
    """Write ``chunks`` to a temporary file and yield its path and sha256; the file is removed after.
    The chunks are never joined in memory (an update can be as large as the upload limit)."""
    with _temporary_file("tributary-update-", directory) as (fd, path):
        digest = hashlib.sha256()
        hashing: Future[None] | None = None
        with os.fdopen(fd, "wb") as out:
            for chunk in chunks:
                # sha256 was the largest cost of a fold (py-spy): it runs on its own thread beside the
                # read and the write (all three release the GIL), one chunk behind, in order.
                if hashing is not None:
                    hashing.result()
                hashing = _HASHER.submit(digest.update, chunk)
                out.write(chunk)
            if hashing is not None:
                hashing.result()
        yield path, digest.hexdigest()


SumPrecision = Literal["float32", "float64"]


def _dtype(name: str) -> torch.dtype:
    dtype = getattr(torch, name.removeprefix("torch."), None)
    if not isinstance(dtype, torch.dtype):
        raise ValueError(f"unknown dtype {name!r}")
    return dtype


@dataclass
class FedAvgAccumulator:
    """Sum of num_samples-weighted parameters and the total weight.

    ``precision="float32"`` sums float32/float16/bfloat16 parameters in float32 (one model of float32
    in memory, as Flower's ``aggregate_inplace`` does); float64 parameters and integer buffers are
    always summed in float64. The float32 sum of N updates is within (N + 1) * 2**-24 * max|x| of the
    float64 one per parameter (the bound of recursive summation); ``"float64"`` doubles the memory.
    """

    precision: SumPrecision = "float32"
    weighted_sum: StateDict = field(default_factory=dict)
    dtypes: dict[str, torch.dtype] = field(default_factory=dict)  # each parameter's own, for the average
    total_samples: int = 0
    included: set[str] = field(default_factory=set)

    def sum_dtype(self, dtype: torch.dtype) -> torch.dtype:
        if dtype.is_floating_point and dtype != torch.float64 and self.precision == "float32":
            return torch.float32
        return torch.float64

    def add(self, update_id: str, state: StateDict, num_samples: int,
            release: Callable[[torch.Tensor], None] | None = None) -> bool:
        """Fold one update in; False (and no change) when it was already included. An incompatible
        update is refused before anything is added, so the sum stays that of ``included``.
        ``release`` is called with each tensor once it is added (``load_update_file``'s)."""
        if update_id in self.included:
            return False
        if num_samples <= 0:
            raise ValueError("num_samples must be positive")
        self._check_compatible(state)
        for name, tensor in state.items():
            total = self.weighted_sum.get(name)
            if total is None:
                # copy=True: the sum must not alias the update (a view of a mapped file)
                self.weighted_sum[name] = tensor.detach().to(self.sum_dtype(tensor.dtype), copy=True).mul_(num_samples)
                self.dtypes[name] = tensor.dtype
            else:
                total.add_(tensor.detach(), alpha=num_samples)  # in place: no temporary of the parameter's size
            if release is not None:
                release(tensor)
        self.total_samples += num_samples
        self.included.add(update_id)
        return True

    def _check_compatible(self, state: StateDict) -> None:
        for name, tensor in state.items():
            if tensor.is_complex():
                raise DomainError(ErrorKind.INVALID, "INCOMPATIBLE_UPDATE", f"Parameter '{name}' is complex.")
        if not self.weighted_sum:
            return
        if set(state) != set(self.weighted_sum):
            raise DomainError(
                ErrorKind.INVALID, "INCOMPATIBLE_UPDATE", "The update's parameters do not match the round's model.",
                details={"missing": sorted(set(self.weighted_sum) - set(state))[:10],
                         "unexpected": sorted(set(state) - set(self.weighted_sum))[:10]},
            )
        for name, tensor in state.items():
            expected = self.weighted_sum[name].shape
            if tensor.shape != expected:
                raise DomainError(
                    ErrorKind.INVALID, "INCOMPATIBLE_UPDATE",
                    f"Parameter '{name}' has shape {tuple(tensor.shape)}, expected {tuple(expected)}.",
                )

    def take_average(self) -> StateDict:
        """The weighted mean in each parameter's own dtype, divided in place so that no second model is
        held: the accumulator is spent afterwards (it holds no sum) and must not be added to again."""
        if self.total_samples == 0:
            raise ValueError("no updates to average")
        result: StateDict = {}
        for name in list(self.weighted_sum):
            total = self.weighted_sum.pop(name).div_(self.total_samples)
            result[name] = total.to(self.dtypes[name])  # no copy when the sum has the parameter's dtype
        return result

    def to_bytes(self) -> bytes:
        payload: dict[str, Any] = {
            "format": 2,
            "precision": self.precision,
            "weighted_sum": self.weighted_sum,
            "dtypes": {name: str(dtype) for name, dtype in self.dtypes.items()},
            "total_samples": self.total_samples,
            "included": sorted(self.included),
        }
        buffer = io.BytesIO()
        torch.save(payload, buffer)
        return buffer.getvalue()

    @classmethod
    def from_bytes(cls, data: bytes) -> FedAvgAccumulator:
        """A checkpoint written by ``to_bytes``; ValueError for anything else (an older format too)."""
        payload = torch.load(io.BytesIO(data), map_location="cpu", weights_only=True)
        if not isinstance(payload, dict) or payload.get("format") != 2:
            raise ValueError("not a format-2 FedAvg checkpoint")
        weighted_sum = dict(payload["weighted_sum"])
        dtypes = {name: _dtype(value) for name, value in payload["dtypes"].items()}
        if set(dtypes) != set(weighted_sum):
            raise ValueError("checkpoint dtypes do not match its parameters")
        return cls(precision=payload["precision"], weighted_sum=weighted_sum, dtypes=dtypes,
                   total_samples=int(payload["total_samples"]), included=set(payload["included"]))
