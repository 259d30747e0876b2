"""Which event types exist and where each travels.

Seed 001 §4.2.3 gives ``modelmora.lifecycle.events`` five model event types, and its JSON Schema
refuses any other, so that topic (``lifecycle_event``) carries exactly those. Everything else the
platform announces about its catalog, devices, rounds, updates and retraining is ours and travels
as a ``fleet_event`` on ``tributary.fleet.events``. The JSON Schemas (``schemas.json_views``)
take their enums from here, and ``core.events`` refuses a type on the wrong side.
"""

from __future__ import annotations

# seed 001 §4.2.3, in the seed's order
MODEL_LIFECYCLE_EVENT_TYPES: tuple[str, ...] = (
    "model_load_requested", "model_loaded", "model_load_failed", "model_unloaded", "model_evicted",
)

FLEET_EVENT_TYPES: tuple[str, ...] = (
    # the model catalog (registry)
    "model_registered", "model_version_created", "model_deleted",
    # devices
    "device_registered", "device_online", "device_stale", "device_offline", "device_deleted",
    # training rounds and the updates submitted to them
    "round_started", "device_selected", "update_accepted", "update_rejected", "round_aggregating",
    "round_completed", "round_failed", "round_cancelled", "round_aggregation_retried",
    # seed 002's retraining trigger
    "retraining_requested", "retraining_started", "retraining_not_started",
    # seed 003 LoRA training jobs: every status change, and progress (TrainingMetrics) and checkpoints
    "training_job_pending", "training_job_queued", "training_job_running", "training_job_progress",
    "training_job_checkpoint", "training_job_completed", "training_job_failed", "training_job_cancelled",
    # staged rollouts of model versions (core/rollouts/)
    "rollout_created", "rollout_stage_advanced", "rollout_paused", "rollout_resumed", "rollout_completed",
    "rollout_rolled_back",
)

# What a fleet event is about: its subject_id is a model id (or a model version), a device id, a round id,
# a training job id or a rollout id.
FLEET_SUBJECT_KINDS: tuple[str, ...] = ("model", "device", "round", "training_job", "rollout")
