"""Model serving's domain core: synchronous inference over Kafka and its input validation."""
