"""How synchronous inference gets its reply back: the contract between ``InferenceService`` and
the transport's reply consumer (``messaging.reply_consumer.ReplyConsumer`` in production).

The core owns it, so the consumer implements it from above and the service never imports the consumer.
"""

from __future__ import annotations

import asyncio
from typing import Any, Protocol, runtime_checkable

Reply = dict[str, Any]


class NoReplyPartition(RuntimeError):
    """This replica owns no responses partition right now (rebalance, or more replicas than partitions)."""


class ReplyPartitionRevoked(RuntimeError):
    """The partition the reply was routed to is no longer ours; the reply will not reach this replica."""

    def __init__(self, partition: int) -> None:
        super().__init__(f"responses partition {partition} was revoked")
        self.partition = partition


class ReplyConsumerClosed(RuntimeError):
    """The ingress is shutting down."""


class ReplySource(Protocol):
    """Where replies come back (``messaging.reply_consumer.ReplyConsumer`` in production)."""

    def owned_partition(self) -> int: ...

    async def wait_for_partition(self, timeout_s: float) -> int: ...

    def expect(self, correlation_id: str, partition: int) -> asyncio.Future[Reply]: ...

    def discard(self, correlation_id: str) -> None: ...


@runtime_checkable
class PartialReplies(Protocol):
    """A reply source that can also hand over a streamed request's partial replies (replies whose
    ``metadata.partial`` is true, each with a ``sequence``) before its final one."""

    def watch_partials(self, correlation_id: str, partials: asyncio.Queue[Reply]) -> None: ...


def is_partial(reply: Reply) -> bool:
    metadata = reply.get("metadata")
    return isinstance(metadata, dict) and metadata.get("partial") is True
