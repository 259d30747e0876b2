"""Kafka plumbing shared by the ingress and the workers.

- ``publisher``: one idempotent producer per process, awaitable, with explicit back-pressure.
- ``events``: ``KafkaEventSink``, the core's event sink over the publisher (envelope, Avro, audit chain);
  topic, key and partition come from ``topology.messages``.
- ``replies``: ``ReplyRouter``, sync inference replies back to the ingress replica that waits.
- ``dead_letter``: a group's dead-letter topic and bounded retries; ``redrive`` sends dead letters back.
"""
