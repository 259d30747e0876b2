"""Seed 002's retraining trigger, consumer side: a learning-graph submission that took the pending
graphs (``retraining_requested``, see ``learning_graphs.py``) starts a federated training round
through ``FleetService.start_round``, the path ``POST /api/v1/training/rounds/start`` takes, or
says in a ``retraining_not_started`` fleet event why it could not (a round is already active,
too few eligible devices, ...).

At-least-once delivery makes every step safe to repeat:

- the round's id is derived from the request (uuid5 of the trigger graph's id), so a delivery
  after a crash finds the round an earlier one started instead of starting a second;
- the decision (the round, or why none) is stored once per request (compare-and-set), so a
  redelivered request gets the answer the first delivery got, even if the fleet changed since;
- the outcome event and audit record follow the stored decision on every delivery, so they are
  published at least once; consumers dedupe on ``details.trigger_id``.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import uuid
from collections.abc import Callable
from datetime import datetime
from typing import Any

from core.auth import Principal
from core.errors import DomainError
from core.events import EventSink, fleet_record
from core.fleet.models import RetrainingDecision, Round, RoundStatus, SubjectType
from core.fleet.service import FleetService
from core.fleet.store import FleetStore
from schemas.clock import utcnow
from settings import Settings
from topology.messages import MessageType

log = logging.getLogger(__name__)
# Namespace of retraining round ids: uuid5(RETRAINING_ROUNDS, trigger graph id).
RETRAINING_ROUNDS = uuid.UUID("5f0c1d9e-2b7a-4e43-9a51-6f4b8e0d7c21")
# The processor acts as an operator would on the REST endpoint; audits name it, not a key.
ACTOR = Principal("processor:retraining", SubjectType.OPERATOR, "operator")


def retraining_round_id(trigger_id: str) -> str:
    return str(uuid.uuid5(RETRAINING_ROUNDS, trigger_id))


class RetrainingTrigger:
    def __init__(self, settings: Settings, store: FleetStore, fleet: FleetService, events: EventSink,
                 clock: Callable[[], datetime] = utcnow) -> None:
        self.settings = settings
        self.store = store
        self.fleet = fleet
        self.events = events
        self.clock = clock

    async def on_graph_submitted(self, record: dict[str, Any]) -> RetrainingDecision | None:
        """Handle one ``learning_graph_submitted`` event; None for a submission that asked for nothing."""
        if not record.get("retraining_requested"):
            return None
        trigger_id = str(record["graph_id"])
        decision = await asyncio.to_thread(self.store.get_retraining_decision, trigger_id)
        if decision is None:
            decision = await self._decide(trigger_id, str(record.get("model_version") or ""),
                                          int(record.get("pending_count") or 0))
            decision = await asyncio.to_thread(self.store.record_retraining_decision, decision)
            outcome = f"round {decision.round_id} started" if decision.started else decision.reason
            log.info("retraining request %s: %s (%s)", trigger_id, outcome, decision.detail or "")
        await self._announce(decision)
        return decision

    async def _decide(self, trigger_id: str, model_version: str, graphs: int) -> RetrainingDecision:
        decided = functools.partial(RetrainingDecision, trigger_id, model_version, graphs, self.clock())
        round_id = retraining_round_id(trigger_id)
        earlier = await asyncio.to_thread(self.store.get_round, round_id)
        if earlier is not None:  # an earlier delivery started it and did not live to store the decision
            return self._from_round(decided, earlier)
        s = self.settings
        eligible = await self.fleet.eligible_device_count()
        if eligible < s.retraining_min_devices:
            # A round selects its devices at start: with fewer than its minimum it could only time out.
            return decided(reason="NOT_ENOUGH_DEVICES",
                           detail=f"{eligible} eligible device(s) (online or stale); "
                                  f"a retraining round needs at least {s.retraining_min_devices}")
        try:
            round_ = await self.fleet.start_round(ACTOR, s.retraining_target_devices, s.retraining_min_devices,
                                                  s.retraining_round_timeout_s, None, round_id=round_id)
        except DomainError as exc:
            if (exc.details or {}).get("round_id") == round_id:
                return decided(round_id=round_id)  # a concurrent delivery of this request holds the slot
            # ROUND_ALREADY_ACTIVE, INVALID_ROUND (settings), EVENTS_UNAVAILABLE (the round was failed)...
            return decided(reason=exc.code, detail=exc.message)
        return self._from_round(decided, round_)

    @staticmethod
    def _from_round(decided: Callable[..., RetrainingDecision], round_: Round) -> RetrainingDecision:
        if round_.status is RoundStatus.FAILED:
            return decided(round_id=round_.id, reason="ROUND_FAILED", detail=round_.failure_reason)
        return decided(round_id=round_.id)

    async def _announce(self, d: RetrainingDecision) -> None:
        event_type = "retraining_started" if d.started else "retraining_not_started"
        details = {"trigger_id": d.trigger_id, "graphs": d.graphs, "round_id": d.round_id, "reason": d.reason,
                   "detail": d.detail}
        await self.events.publish(MessageType.FLEET_EVENT,
                                  fleet_record(event_type, "model", d.model_version, **details))
        await self.events.audit(actor=ACTOR.key_id, action="retraining.decide", subject=f"graph/{d.trigger_id}",
                                outcome="started" if d.started else "not_started",
                                after={k: v for k, v in details.items() if v is not None})
