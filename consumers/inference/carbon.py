"""Carbon of every batch an inference worker runs (method: ``core/carbon.py``, docs/operations.md).

``BatchCarbon`` brackets ``infer_batch`` with a ``CpuTimeMeter`` span and prices it with the
process's ``PowerModel`` (codecarbon's numbers, read once: a codecarbon tracker per batch would
cost 30-80 ms of start/stop on a batch that often takes less). ``CarbonRecorder`` keeps the
batches' records in memory and writes them to the ``CarbonStore`` from its own thread every
``TRIBUTARY_CARBON_FLUSH_INTERVAL_S``, so no batch waits on Cassandra; a failed write keeps the
records for the next round (up to ``max_buffer``; beyond it the oldest are dropped and counted).
"""

from __future__ import annotations

import logging
import threading
import uuid
from collections import deque
from collections.abc import Callable

from core.carbon import CarbonMeasurement, CarbonRecord, CarbonStore, CpuTimeMeter, PowerModel, SubjectKind

log = logging.getLogger(__name__)


class CarbonRecorder:
    def __init__(self, store: Callable[[], CarbonStore], interval_s: float, *, max_buffer: int = 100_000) -> None:
        self._store_factory = store
        self._store: CarbonStore | None = None
        self.interval_s = interval_s
        self._buffer: deque[CarbonRecord] = deque()
        self.max_buffer = max_buffer
        self.dropped = 0
        self.written = 0
        self._lock = threading.Lock()
        self._flush_lock = threading.Lock()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def add(self, record: CarbonRecord) -> None:
        with self._lock:
            if len(self._buffer) >= self.max_buffer:
                self._buffer.popleft()
                self.dropped += 1
            self._buffer.append(record)

    def pending(self) -> int:
        with self._lock:
            return len(self._buffer)

    def flush(self) -> int:
        """Write what is buffered; returns how many records were written (0 after a failed write)."""
        with self._flush_lock:
            with self._lock:  # take them; a failed write puts them back in front
                records = list(self._buffer)
                self._buffer.clear()
            if not records:
                return 0
            try:
                if self._store is None:
                    self._store = self._store_factory()
                self._store.record(records)
            except Exception as exc:  # Cassandra away: keep them for the next round
                log.warning("writing %d carbon record(s) failed: %s", len(records), exc)
                with self._lock:
                    self._buffer.extendleft(reversed(records))
                    while len(self._buffer) > self.max_buffer:
                        self._buffer.popleft()
                        self.dropped += 1
                return 0
            self.written += len(records)
            return len(records)

    def start(self) -> None:
        if self._thread is None:
            self._thread = threading.Thread(target=self._loop, name="carbon-recorder", daemon=True)
            self._thread.start()

    def _loop(self) -> None:
        while not self._stop.wait(self.interval_s):
            self.flush()

    def close(self, timeout: float = 5.0) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout)
        self.flush()


class BatchCarbon:
    """Measures batches; ``power`` is built on first use (``ready()`` at worker start does it early)."""

    def __init__(self, power: Callable[[], PowerModel], recorder: CarbonRecorder | None = None,
                 meter: CpuTimeMeter | None = None) -> None:
        self._power_factory = power
        self._power: PowerModel | None = None
        self._lock = threading.Lock()
        self.recorder = recorder
        self.meter = meter or CpuTimeMeter()

    def ready(self) -> PowerModel:
        with self._lock:
            if self._power is None:
                self._power = self._power_factory()
                log.info("carbon per batch: %s, location %s", self._power.method, self._power.location)
            return self._power

    def start(self) -> int:
        return self.meter.start()

    def finish(self, token: int, model_id: str, requests: int) -> CarbonMeasurement:
        """The span's measurement, also queued as an ``inference_batch`` record of ``model_id``."""
        cpu_s, wall_s = self.meter.stop(token)
        measurement = self.ready().measure(cpu_s, wall_s)
        if self.recorder is not None:
            self.recorder.add(CarbonRecord.of(SubjectKind.INFERENCE_BATCH, uuid.uuid4().hex, model_id, measurement,
                                              requests=requests))
        return measurement
