"""The trainer: a consumer group (``trainers``) that runs seed 003 LoRA training jobs (``tributary trainer``)."""
