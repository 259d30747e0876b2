"""A realistic record of every message type, for tests and benchmarks."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime, timedelta
from typing import Any

from schemas.codec import new_envelope


def sample(message_type: str) -> dict[str, Any]:
    env = new_envelope(service="samples", instance="samples-1")
    now = datetime.now(UTC).replace(microsecond=0)
    uid = str(uuid.uuid4())
    bodies: dict[str, dict[str, Any]] = {
        "inference_request": {
            "model_id": "sentence-transformers/all-MiniLM-L6-v2", "task_type": "txt2embed",
            "input_data": {"texts": ["The quick brown fox jumps over the lazy dog. " * 4]},
            "parameters": {"normalize": True}, "priority": "high", "deadline": now + timedelta(seconds=30),
            "timeout_seconds": 30, "job_id": None, "reply_partition": 2,
        },
        "inference_response": {
            "model_id": "m1", "status": "success", "output_data": {"embeddings": [[0.1, 0.2]]},
            "metadata": {"inference_time_ms": 4.2, "device": "cpu"}, "error": None, "job_id": None,
            "reply_partition": 2,
        },
        "job_event": {"job_id": uid, "model_id": "m1", "status": "running", "progress": 0.5,
                      "error_code": None, "error_message": None},
        "model_command": {"command": "load", "model_id": "m1", "version": 3, "reason": "warm-up"},
        "model_download_requested": {"model_id": "org/m1", "request_id": uid,
                                     "source_url": "https://models.example.com/m1.onnx", "sha256": "a" * 64},
        "lifecycle_event": {"event_id": env["message_id"], "event_type": "model_loaded", "model_id": "m1",
                            "details": {"load_ms": 120}},
        "fleet_event": {"event_type": "round_completed", "subject_kind": "round", "subject_id": uid,
                        "details": {"round_number": 18, "aggregated_model_id": uid}},
        "audit_event": {"chain_id": "api-1:0", "seq": 7, "prev_hash": "0" * 64, "hash": "f" * 64,
                        "actor": "key_0123456789abcdef", "action": "round.start", "subject": f"round/{uid}",
                        "outcome": "accepted", "before": None, "after": {"status": "active"}},
        "device_registered": {"device_uuid": uid, "device_id": "laptop-001", "platform": "python",
                              "capabilities": {"cpu": "4-core", "memory_gb": 8}, "api_key_id": "key_0123"},
        "device_heartbeat": {"device_id": "laptop-001", "status": "active",
                             "metrics": {"cpu_usage_percent": 42.5, "battery_level": 85}, "sent_at": now},
        "round_command": {"command": "start", "round_id": uid, "target_devices": 10, "min_devices": 8,
                          "timeout_seconds": 300, "global_model_id": None},
        "round_event": {"event_type": "round_started", "round_id": uid, "round_number": 18, "status": "active",
                        "selected_devices": ["laptop-001"], "aggregated_model_id": None, "failure_reason": None,
                        "details": {}},
        "model_update_submitted": {"update_id": uid, "round_id": uid, "device_id": "laptop-001",
                                   "device_uuid": uid, "artifact_key": f"updates/{uid}/d.pt", "size_bytes": 4521984,
                                   "sha256": "e3b0" * 16, "num_samples": 5000, "local_loss": 0.34,
                                   "local_accuracy": 0.89, "training_time_seconds": 47},
        "learning_graph_submitted": {"graph_id": uid, "device_id_hash": "ab" * 32, "app_version": "1.2.0",
                                     "model_version": "granite-3b-v1", "pending_count": 3,
                                     "retraining_requested": False},
        "training_job_requested": {"job_id": uid, "base_model": "sentence-transformers/all-MiniLM-L6-v2"},
        "key_event": {"key_id": "key_0123456789abcdef", "event": "revoked", "subject_type": "device",
                      "subject_id": "laptop-001", "at": now},
        "rollout_command": {"rollout_id": uid, "command": "pause", "actor": "key_0123456789abcdef",
                            "reason": "p95 looks high on android"},
        "device_telemetry": {"device_id": "laptop-001", "window_start": now - timedelta(seconds=60),
                             "window_end": now, "models": [
                                 {"model_id": "org/m1", "version": 3, "inference_count": 120, "error_count": 1,
                                  "crash_count": 0, "cloud_fallback_count": 4,
                                  "latency_ms": {"p50": 11.5, "p95": 30.25, "p99": 52.0}},
                                 {"model_id": "org/m2", "version": 1, "inference_count": 0, "error_count": 0,
                                  "crash_count": 0, "cloud_fallback_count": 0, "latency_ms": None}]},
    }
    return {**env, **bodies[message_type]}
