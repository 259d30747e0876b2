"""What produces to Kafka: the one idempotent producer per process and the event sink over it.

- ``publisher``: ``Publisher``, acknowledged (acks=all) publishing with explicit back-pressure.
- ``events``: ``KafkaEventSink``, the core's ``EventSink``: envelope, Avro, the topic, key and
  partition of each message type from ``topology.messages``, and the audit chain.

Below ``messaging`` (dead letters and redrive publish through the ``Publisher``) and the faces.
"""
