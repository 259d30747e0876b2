"""The Python client SDK of the REST API (device side and operator side): ``sdk.client``, and the
device agent over it (assignments, routing, cloud fallback, telemetry): ``sdk.agent``.

It speaks HTTP to the ingress and imports nothing of ours; it is not a Kafka producer.
"""
