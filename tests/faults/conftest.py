"""Fault injection runs in its own test session (``make faults``, also the last step of ``make test``):
it stops and restarts the servers it started, so nothing else may share them. The broker runs on
Tansu's s3:// storage there, so a restart keeps its topics, messages and group offsets, as a real
cluster's would."""

from __future__ import annotations

from tests.e2e.conftest import caller, system  # noqa: F401 - the same running system as the e2e tests
