"""The shutdown bound every consumer process honours (``TRIBUTARY_SHUTDOWN_TIMEOUT_S``).

On SIGTERM a consumer stops fetching, finishes its in-flight work, commits and leaves its group.
``arm_shutdown_deadline`` is the backstop: if that has not finished within the bound (a hung
broker call, a model that never returns), the process exits anyway with code 70 rather than
hang until the orchestrator's SIGKILL; what it had not committed is re-delivered to the group.
"""

from __future__ import annotations

import logging
import os
import threading

log = logging.getLogger(__name__)
EXIT_SHUTDOWN_OVERRUN = 70  # EX_SOFTWARE
_armed = threading.Event()


def arm_shutdown_deadline(seconds: float) -> None:
    """Start the countdown once (idempotent: a second SIGTERM does not extend it)."""
    if _armed.is_set():
        return
    _armed.set()

    def expire() -> None:
        log.error("graceful shutdown did not finish within %.0fs; exiting now", seconds)
        logging.shutdown()
        os._exit(EXIT_SHUTDOWN_OVERRUN)

    timer = threading.Timer(seconds, expire)
    timer.daemon = True
    timer.start()
