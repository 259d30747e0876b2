"""Kafka topology: topics and consumer groups declared once, applied and verified idempotently.

- ``topology.topics``: ``TopicSpec``, ``Topic``, ``Priority``, ``topic_name(settings, Topic.X)``
- ``topology.groups``: ``ConsumerGroupSpec``, ``Group``, ``GROUPS``, ``dlq_for(group)``
- ``topology.admin``: ``apply`` / ``verify`` / ``inspect``
- ``topology.lag``: consumer lag per partition (``topic_lag(settings, group_id)``)
"""
