"""FedAvg of N updates x P parameters: Tributary's round processor against Flower, in one run.

    python bench/bench_fedavg.py                                  # quick: 50 updates x 2M parameters
    python bench/bench_fedavg.py --params 25000000                # issue 18's size: 50 x 25M
    python bench/bench_fedavg.py --before /work/main              # also the processor of another checkout
    python bench/bench_fedavg.py --flower-python .local/flower-venv/bin/python

Every contender runs in a fresh subprocess, so its time and its peak RSS (VmHWM, reset with
/proc/self/clear_refs just before it starts) are its own; ratios are against Flower measured in the
same run. The inputs are made once: each update as the file a device uploads (torch.save of a
state_dict) and, for Flower, the same tensors as the np.save bytes its Parameters / Array carry.

- ``tributary``: the real ``RoundProcessor.on_update`` for each update, as the round processor runs it,
  on the in-memory fleet store; the updates are read through an ``ArtifactStore`` that streams them
  from local files in 1 MiB chunks (``--s3``: from the S3 at TRIBUTARY_S3_ENDPOINT instead). The time
  includes the sha256 checks, folding, closing the round and storing the aggregate as a model file.
- ``flower-inplace``: ``flwr.server.strategy.aggregate.aggregate_inplace`` over FitRes results.
- ``flower-message``: ``flwr.serverapp.strategy.FedAvg().aggregate_train`` over reply Messages.
  Flower's time is the call alone, its inputs already in memory (as its server holds the replies).

Flower 1.42 pins protobuf<7 and fastapi 0.138, which the project's own pins exclude, so it cannot
live in the project's environment: give ``--flower-python`` an interpreter of a venv with
``pip install 'flwr==1.42.0'`` (see docs/benchmarks.md). Without one, Flower is skipped, saying so.

Peak memory is reported as the RSS above the process's RSS before the contender started, in units
of one model (P x 4 bytes): Flower's includes the N replies it must hold, and its figure above the
loaded replies is given too.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import IO, Any

ROOT = Path(__file__).resolve().parent.parent
T0 = datetime(2026, 1, 1, tzinfo=UTC)


# --- memory ------------------------------------------------------------------------------------


def _status(field: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1]) * 1024
    raise LookupError(field)


def reset_peak() -> int:
    """Reset the peak RSS to the current RSS (Linux clear_refs 5) and return it."""
    Path("/proc/self/clear_refs").write_text("5")
    return _status("VmRSS")


def peak_rss() -> int:
    return _status("VmHWM")


# --- inputs ------------------------------------------------------------------------------------


def shapes(params: int, tensors: int) -> list[tuple[str, tuple[int, ...]]]:
    """A few large weight matrices and a bias, adding up to ``params``."""
    bias = 1024
    per = (params - bias) // tensors
    cols = 1024
    rows = per // cols
    out: list[tuple[str, tuple[int, ...]]] = [(f"layer{i}.weight", (rows, cols)) for i in range(tensors)]
    out.append(("head.bias", (params - rows * cols * tensors,)))
    return out


def make_inputs(directory: Path, updates: int, params: int, tensors: int, with_flower: bool) -> dict[str, Any]:
    """Write the updates (torch.save, as devices upload) and, for Flower, their np.save tensors; the
    float64 weighted mean is written as the reference every contender is checked against."""
    import numpy as np
    import torch

    layout = shapes(params, tensors)
    generator = torch.Generator().manual_seed(18)
    reference = {name: torch.zeros(shape, dtype=torch.float64) for name, shape in layout}
    samples, max_abs = [], 0.0
    for i in range(updates):
        n = 10 + (i * 37) % 200
        samples.append(n)
        state = {name: torch.randn(shape, generator=generator) * 0.05 for name, shape in layout}
        torch.save(state, directory / f"update-{i}.pt")
        for j, (name, tensor) in enumerate(state.items()):
            reference[name].add_(tensor, alpha=n)
            max_abs = max(max_abs, float(tensor.abs().max()))
            if with_flower:
                np.save(directory / f"update-{i}-{j}.npy", tensor.numpy(), allow_pickle=False)
        del state
    total = sum(samples)
    torch.save({name: value / total for name, value in reference.items()}, directory / "reference.pt")
    return {"samples": samples, "layout": layout, "max_abs": max_abs}


def check(result: dict[str, Any], directory: Path) -> dict[str, float]:
    import torch

    reference = torch.load(directory / "reference.pt", weights_only=True)
    worst = 0.0
    for name, value in result.items():
        worst = max(worst, float((torch.as_tensor(value).double() - reference[name]).abs().max()))
    return {"max_abs_error": worst}


# --- contenders (each in its own process) ------------------------------------------------------


class DirArtifactStore:
    """Reads objects from files (what S3 streams, without the network) and writes them to files."""

    def __init__(self, directory: Path) -> None:
        from core.artifacts import ArtifactStore

        self.directory = directory
        ArtifactStore.register(DirArtifactStore)

    def _path(self, key: str) -> Path:
        return self.directory / key.replace("/", "__")

    def put(self, key: str, data: bytes | IO[bytes], content_type: str = "application/octet-stream") -> Any:
        import hashlib

        from core.artifacts import StoredArtifact

        body = data if isinstance(data, bytes) else data.read()
        self._path(key).write_bytes(body)
        return StoredArtifact(key, len(body), hashlib.sha256(body).hexdigest())

    def put_path(self, key: str, path: Path) -> Any:
        """A file copied in chunks, as S3's multipart upload streams it (never whole in memory)."""
        import hashlib

        from core.artifacts import StoredArtifact

        digest = hashlib.sha256()
        with path.open("rb") as source, self._path(key).open("wb") as target:
            while chunk := source.read(1024 * 1024):
                digest.update(chunk)
                target.write(chunk)
        return StoredArtifact(key, path.stat().st_size, digest.hexdigest())

    def stream(self, key: str, chunk_size: int = 1024 * 1024) -> Iterator[bytes]:
        from core.artifacts import ArtifactNotFound

        path = self._path(key)
        if not path.exists():
            raise ArtifactNotFound(key)
        with path.open("rb") as f:
            while chunk := f.read(chunk_size):
                yield chunk

    def get(self, key: str) -> bytes:
        return b"".join(self.stream(key))

    def head(self, key: str) -> Any:
        raise NotImplementedError

    def delete(self, key: str) -> None:
        self._path(key).unlink(missing_ok=True)


class NullSink:
    async def publish(self, message_type: Any, record: dict[str, Any]) -> None:
        return None

    async def audit(self, **_: Any) -> None:
        return None


def run_tributary(directory: Path, samples: list[int], use_s3: bool) -> dict[str, Any]:
    import io

    import torch

    from core.artifacts import S3ArtifactStore
    from settings import Settings

    settings = Settings()
    artifacts: Any = S3ArtifactStore(settings) if use_s3 else DirArtifactStore(directory)
    # Warm-up on a tiny round: lazy imports, the event loop's and the hash's threads, allocator arenas
    # are the process's, not the round's (Flower gets the same warm-up).
    for i in range(2):
        torch.save({"w": torch.ones(8, 8) * i}, directory / f"warmup-{i}.pt")
    warm = _tributary_round(settings, artifacts, [directory / f"warmup-{i}.pt" for i in range(2)], [1, 2], use_s3)
    asyncio.run(warm.drive())
    files = [directory / f"update-{i}.pt" for i in range(len(samples))]
    run = _tributary_round(settings, artifacts, files, samples, use_s3)
    baseline = reset_peak()
    started, cpu = time.perf_counter(), time.process_time()
    asyncio.run(run.drive())
    seconds, cpu_seconds = time.perf_counter() - started, time.process_time() - cpu
    peak = peak_rss() - baseline
    key = run.aggregate_key()
    data = artifacts.get(key) if use_s3 else artifacts._path(key).read_bytes()
    result = torch.load(io.BytesIO(data), weights_only=True)
    if use_s3:  # leave the shared S3 as it was
        for done in (warm, run):
            for record in done.records:
                artifacts.delete(record["artifact_key"])
            artifacts.delete(done.aggregate_key())
    for made in [*directory.glob("warmup-*"), *directory.glob("updates__*"), *directory.glob("models__*"),
                 *directory.glob("rounds__*")]:
        made.unlink()  # what the processor wrote, and the links to the inputs (--dir keeps only the inputs)
    return {"seconds": seconds, "after_last_seconds": run.last_seconds, "cpu_seconds": cpu_seconds,
            "peak_bytes": peak, "inputs_bytes": 0,
            **check(result, directory)}


class _TributaryRound:
    def __init__(self, store: Any, processor: Any, updates: list[Any], records: list[dict[str, Any]],
                 round_id: str) -> None:
        self.store, self.processor, self.updates, self.records = store, processor, updates, records
        self.round_id = round_id
        self.last_seconds = 0.0

    async def drive(self) -> None:
        """Each update as the ingress stores it (its row, then its event) and the round processor consumes it."""
        for update, record in zip(self.updates, self.records, strict=True):
            self.store.add_update(update)
            started = time.perf_counter()
            await self.processor.on_update(record)
            self.last_seconds = time.perf_counter() - started  # the last: fold, aggregate, store the model

    def aggregate_key(self) -> str:
        from core.fleet.models import RoundStatus

        done = self.store.get_round(self.round_id)
        assert done is not None and done.status is RoundStatus.COMPLETED, done
        (version,) = self.store.list_versions(done.aggregated_model_id)
        return str(version.artifact_key)


def _tributary_round(settings: Any, artifacts: Any, files: list[Path], samples: list[int],
                     use_s3: bool) -> _TributaryRound:
    """An active round on the in-memory fleet store with ``files`` stored as its updates."""
    import hashlib

    from core.fleet.memory_store import InMemoryFleetStore
    from core.fleet.models import ModelUpdate, Round, RoundStatus
    from core.fleet.processing import RoundProcessor
    from core.fleet.service import FleetService

    store = InMemoryFleetStore()
    round_ = Round(id=str(uuid.uuid4()), round_number=1, status=RoundStatus.PENDING, target_devices=len(samples),
                   min_devices=len(samples), timeout_seconds=3600, created_at=T0)
    store.create_active_round(round_)
    store.transition_round(round_.id, RoundStatus.PENDING, RoundStatus.ACTIVE,
                           selected_devices=[f"d{i}" for i in range(len(samples))],
                           timeout_at=datetime.now(UTC) + timedelta(hours=1))
    updates, records = [], []
    for i, (path, n) in enumerate(zip(files, samples, strict=True)):
        key = f"updates/{round_.id}/d{i}.pt"
        digest = hashlib.sha256()
        with path.open("rb") as f:
            while chunk := f.read(1 << 20):
                digest.update(chunk)
        if use_s3:
            with path.open("rb") as f:
                artifacts.client.upload_fileobj(f, artifacts.bucket, key)
        else:
            os.link(path, artifacts._path(key))
        update = ModelUpdate(id=str(uuid.uuid4()), round_id=round_.id, device_id=f"d{i}", model_path=f"s3://b/{key}",
                             artifact_key=key, model_size_bytes=path.stat().st_size, sha256=digest.hexdigest(),
                             num_samples=n, created_at=datetime.now(UTC))
        updates.append(update)
        records.append({"update_id": update.id, "round_id": round_.id, "artifact_key": key,
                        "sha256": update.sha256, "num_samples": n})
    sink = NullSink()
    processor = RoundProcessor(settings, store, artifacts, sink, FleetService(settings, store, artifacts, sink))
    return _TributaryRound(store, processor, updates, records, round_.id)


def run_flower(directory: Path, samples: list[int], layout: list[tuple[str, list[int]]], api: str) -> dict[str, Any]:
    import io

    import numpy as np
    from flwr.app import Array, ArrayRecord, Message, Metadata, MetricRecord, RecordDict
    from flwr.common import Code, FitRes, Parameters, Status
    from flwr.server.strategy.aggregate import aggregate_inplace
    from flwr.serverapp.strategy import FedAvg

    def fit_results(blobs: list[list[bytes]], counts: list[int]) -> list[Any]:
        return [(None, FitRes(status=Status(code=Code.OK, message=""),
                              parameters=Parameters(tensors=tensors, tensor_type="numpy.ndarray"),
                              num_examples=n, metrics={}))
                for tensors, n in zip(blobs, counts, strict=True)]

    def replies(blobs: list[list[bytes]], counts: list[int], shapes: list[list[int]]) -> list[Message]:
        """Reply Messages as the SuperLink hands them to the ServerApp."""
        out = []
        for i, (tensors, n) in enumerate(zip(blobs, counts, strict=True)):
            items = {f"t{j}": Array(dtype="float32", shape=tuple(shape), stype="numpy.ndarray", data=data)
                     for j, (data, shape) in enumerate(zip(tensors, shapes, strict=True))}
            content = RecordDict({"arrays": ArrayRecord(items), "metrics": MetricRecord({"num-examples": n})})
            out.append(Message(content=content, metadata=Metadata(
                run_id=1, message_id=f"reply-{i}", src_node_id=i + 1, dst_node_id=0, reply_to_message_id=f"ins-{i}",
                group_id="1", created_at=time.time(), ttl=3600, message_type="train")))
        return out

    def aggregate(blobs: list[list[bytes]], counts: list[int], shapes: list[list[int]]) -> tuple[float, list[Any]]:
        inputs: list[Any] = fit_results(blobs, counts) if api == "inplace" else replies(blobs, counts, shapes)
        blobs.clear()  # only the replies hold the bytes now
        reset_peak()
        started = time.perf_counter()
        if api == "inplace":
            arrays = aggregate_inplace(inputs)
        else:
            aggregated, _ = FedAvg().aggregate_train(1, inputs)
            assert aggregated is not None
            arrays = [aggregated[f"t{j}"].numpy() for j in range(len(shapes))]
        return time.perf_counter() - started, arrays

    def npy(array: Any) -> bytes:
        buffer = io.BytesIO()
        np.save(buffer, array, allow_pickle=False)
        return buffer.getvalue()

    # Warm-up on tiny replies: lazy imports and allocator arenas are the process's (as for Tributary).
    aggregate([[npy(np.full((8, 8), i, dtype=np.float32))] for i in range(2)], [1, 2], [[8, 8]])
    shapes = [shape for _, shape in layout]
    paths = [[directory / f"update-{i}-{j}.npy" for j in range(len(shapes))] for i in range(len(samples))]
    for path in (path for row in paths for path in row):  # into the page cache, as Tributary's setup reads its
        with path.open("rb") as f:                       # updates just before (hashing them)
            while f.read(1 << 24):
                pass
    baseline = reset_peak()
    # The replies Flower's server holds before it aggregates: the np.save bytes of every tensor.
    started, cpu = time.perf_counter(), time.process_time()
    blobs = [[path.read_bytes() for path in row] for row in paths]
    read_seconds = time.perf_counter() - started
    loaded = _status("VmRSS")
    seconds, arrays = aggregate(blobs, samples, shapes)
    cpu_seconds = time.process_time() - cpu
    peak = peak_rss()
    # Checked against the reference in the parent (no torch in Flower's venv).
    np.savez(directory / f"result-{api}.npz", *arrays)
    return {"seconds": seconds, "read_seconds": read_seconds, "cpu_seconds": cpu_seconds,
            "peak_bytes": peak - baseline, "above_inputs_bytes": peak - loaded, "inputs_bytes": loaded - baseline}


# --- orchestration -----------------------------------------------------------------------------


def worker(args: argparse.Namespace) -> None:
    spec = json.loads(Path(args.spec).read_text())
    directory = Path(spec["directory"])
    if args.worker == "tributary":
        out = run_tributary(directory, spec["samples"], spec["made"]["s3"])
    else:
        out = run_flower(directory, spec["samples"], spec["layout"], args.worker.removeprefix("flower-"))
    print("RESULT " + json.dumps(out))


def spawn(python: str, name: str, spec_path: Path, pythonpath: str | None) -> dict[str, Any] | str:
    env = dict(os.environ)
    if pythonpath is not None:
        env["PYTHONPATH"] = pythonpath
    proc = subprocess.run([python, str(Path(__file__).resolve()), "--worker", name, "--spec", str(spec_path)],
                          env=env, capture_output=True, text=True, check=False)
    for line in proc.stdout.splitlines():
        if line.startswith("RESULT "):
            return json.loads(line.removeprefix("RESULT "))  # type: ignore[no-any-return]
    return f"failed (exit {proc.returncode}): {proc.stderr.strip().splitlines()[-1:] or proc.stdout[-300:]}"


def flower_error(directory: Path, api: str) -> float:
    import numpy as np
    import torch

    arrays = np.load(directory / f"result-{api}.npz")
    reference = torch.load(directory / "reference.pt", weights_only=True)
    return max(float(np.abs(arrays[f"arr_{j}"].astype(np.float64) - ref.numpy()).max())
               for j, ref in enumerate(reference.values()))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--updates", type=int, default=50)
    parser.add_argument("--params", type=int, default=2_000_000, help="parameters per model (25000000 for issue 18)")
    parser.add_argument("--tensors", type=int, default=4, help="large weight matrices (plus one bias)")
    parser.add_argument("--flower-python", default=os.environ.get("FLOWER_PYTHON", ""),
                        help="python of a venv with flwr installed; empty = this interpreter if it has flwr")
    parser.add_argument("--before", default="", help="another checkout whose round processor runs too (before)")
    parser.add_argument("--s3", action="store_true", help="read the updates from the S3 at TRIBUTARY_S3_ENDPOINT")
    parser.add_argument("--dir", default="", help="where the inputs go (default: a temporary directory)")
    parser.add_argument("--worker", default="", help=argparse.SUPPRESS)
    parser.add_argument("--spec", default="", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        worker(args)
        return

    flower_python = args.flower_python
    if not flower_python:
        probe = subprocess.run([sys.executable, "-c", "import flwr"], capture_output=True, check=False)
        flower_python = sys.executable if probe.returncode == 0 else ""
    directory = Path(args.dir or tempfile.mkdtemp(prefix="bench-fedavg-"))
    directory.mkdir(parents=True, exist_ok=True)
    try:
        spec_path = directory / "spec.json"
        wanted = {"updates": args.updates, "params": args.params, "tensors": args.tensors,
                  "flower": bool(flower_python), "s3": args.s3}
        previous = json.loads(spec_path.read_text()) if spec_path.exists() else {}
        started = time.perf_counter()
        if previous.get("made") == wanted:  # --dir kept the inputs of an identical run
            made = previous
        else:
            made = make_inputs(directory, args.updates, args.params, args.tensors, bool(flower_python))
            spec_path.write_text(json.dumps({"directory": str(directory), "made": wanted, **made}))
        print(f"inputs: {args.updates} updates x {args.params:,} parameters ({len(made['layout'])} tensors, "
              f"float32, {args.params * 4 / 1e6:.0f} MB a model) ready in {time.perf_counter() - started:.1f} s; "
              f"updates read from {'S3' if args.s3 else 'local files'}")
        contenders: list[tuple[str, str, str, str | None]] = [
            ("tributary", sys.executable, "tributary", str(ROOT))]
        if args.before:
            contenders.append((f"tributary ({args.before})", sys.executable, "tributary", args.before))
        if flower_python:
            contenders += [("flower aggregate_inplace", flower_python, "flower-inplace", None),
                           ("flower FedAvg.aggregate_train", flower_python, "flower-message", None)]
        else:
            print("Flower skipped: flwr is not importable here and no --flower-python was given "
                  "(see docs/benchmarks.md for its venv)")
        results: dict[str, dict[str, Any] | str] = {}
        for label, python, name, pythonpath in contenders:
            result = spawn(python, name, spec_path, pythonpath)
            if isinstance(result, dict) and name.startswith("flower"):
                result["max_abs_error"] = flower_error(directory, name.removeprefix("flower-"))
            results[label] = result
        report(results, args, made)
    finally:
        if not args.dir:
            shutil.rmtree(directory, ignore_errors=True)


def report(results: dict[str, dict[str, Any] | str], args: argparse.Namespace, made: dict[str, Any]) -> None:
    """Times: the contender's own (Tributary: every update read from storage, checked, folded, and the model
    stored; Flower: the aggregate call on replies in memory), then with Flower's reading of its replies from
    the same files added (storage to average for both), the time after the last update, and CPU seconds
    (all threads; on a shared machine the steadier figure). Ratios are to aggregate_inplace."""
    model = args.params * 4
    base = results.get("flower aggregate_inplace")

    def figures(result: dict[str, Any]) -> dict[str, float]:
        return {"seconds": result["seconds"], "total": result["seconds"] + result.get("read_seconds", 0.0),
                "cpu": result["cpu_seconds"]}

    def ratio(result: dict[str, Any], key: str) -> str:
        return f"{figures(result)[key] / figures(base)[key]:.2f}" if isinstance(base, dict) else "-"

    print(f"{'contender':30} {'seconds':>8} {'ratio':>6} {'+ reading':>9} {'ratio':>6} {'after last':>10} "
          f"{'CPU s':>7} {'ratio':>6} {'peak RSS':>8} {'over inputs':>11} {'max|err|':>9}")
    for label, result in results.items():
        if isinstance(result, str):
            print(f"{label:30} {result}")
            continue
        # Flower starts when every reply is in: all of its time comes after the last update.
        after = result.get("after_last_seconds", result["seconds"])
        above = result.get("above_inputs_bytes", result["peak_bytes"])
        print(f"{label:30} {result['seconds']:8.2f} {ratio(result, 'seconds'):>6} {figures(result)['total']:9.2f} "
              f"{ratio(result, 'total'):>6} {after:10.2f} {result['cpu_seconds']:7.2f} {ratio(result, 'cpu'):>6} "
              f"{result['peak_bytes'] / model:8.2f} {above / model:11.2f} {result['max_abs_error']:9.2e}")
    bound = (args.updates + 1) * 2.0**-24 * made["max_abs"]
    print(f"peak RSS in models of {model / 1e6:.0f} MB; float32 bound (N+1)*2^-24*max|x| = {bound:.2e}; "
          f"{os.cpu_count()} cores shared with other work (load average {os.getloadavg()[0]:.1f})")
    print(json.dumps({"updates": args.updates, "params": args.params, "results": results}))


if __name__ == "__main__":
    main()
