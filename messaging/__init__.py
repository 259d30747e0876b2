"""Kafka plumbing shared by the ingress and the workers, over ``producers``' publisher.

- ``reply_consumer``: ``ReplyConsumer``, sync inference replies back to the ingress replica that waits.
- ``dead_letter``: a group's dead-letter topic and bounded retries; ``redrive`` sends dead letters back.
"""
