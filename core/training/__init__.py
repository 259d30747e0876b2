"""LoRA fine-tuning jobs (seed 003 §2): schemas, validation, the job store and the service the ingress calls.

The trainer process that runs them is ``consumers/training``."""
