"""Kafka topology: topics and consumer groups declared once, applied and verified idempotently.

- ``topology.topics``: ``TopicSpec`` (``spec.full_name(settings)`` is the name on the wire), ``Priority``
- ``topology.messages``: ``MessageType`` and ``MESSAGES``, the one table of type → topic, key (and partition)
- ``topology.groups``: ``ConsumerGroupSpec``, ``Group``, ``GROUPS``, ``dlq_for(group)``
- ``topology.admin``: ``apply`` / ``verify`` / ``inspect``
- ``topology.lag``: consumer lag per partition (``topic_lag(settings, group_id)``)
"""
