"""Fault injection runs in its own test session (``make faults``, also the last step of ``make test``):
it stops and restarts the servers it started, so nothing else may share them. Kafka and Cassandra
keep their data on disk, so a restart keeps topics, messages, group offsets and tables."""

from __future__ import annotations

from tests.e2e.conftest import caller, system  # noqa: F401 - the same running system as the e2e tests
