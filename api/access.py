"""Which ``Action`` each authenticated call is, per transport. What each role may do is
``core.auth.ROLE_ACTIONS``; this only names the calls.

A route or method missing here is refused for every key (``admit``), and
``tests/unit/test_access_matrix.py`` fails for any OpenAPI operation its own table lacks, so a new
route cannot ship without a rule.
"""

from __future__ import annotations

from core.auth import Action

A = Action
# (method, path template as in the OpenAPI document) -> action; open routes are not listed.
ROUTE_ACTIONS: dict[tuple[str, str], Action] = {
    ("GET", "/api/v1/status"): A.STATUS,
    ("POST", "/api/v1/pipelines/validate"): A.STATUS,
    # devices (seed 000)
    ("GET", "/api/v1/devices"): A.FLEET_ADMIN,
    ("GET", "/api/v1/devices/{device_id}"): A.OWN_DEVICE,
    ("PUT", "/api/v1/devices/{device_id}/heartbeat"): A.OWN_DEVICE,
    ("POST", "/api/v1/devices/{device_id}/keys/rotate"): A.OWN_DEVICE,
    ("DELETE", "/api/v1/devices/{device_id}"): A.FLEET_ADMIN,
    ("GET", "/api/v1/devices/{device_id}/assignment"): A.OWN_DEVICE,
    ("POST", "/api/v1/devices/{device_id}/telemetry"): A.OWN_DEVICE,
    # staged rollouts (issue 20)
    ("POST", "/api/v1/rollouts"): A.FLEET_ADMIN,
    ("GET", "/api/v1/rollouts"): A.FLEET_ADMIN,
    ("GET", "/api/v1/rollouts/{rollout_id}"): A.FLEET_ADMIN,
    ("POST", "/api/v1/rollouts/{rollout_id}/pause"): A.FLEET_ADMIN,
    ("POST", "/api/v1/rollouts/{rollout_id}/resume"): A.FLEET_ADMIN,
    ("POST", "/api/v1/rollouts/{rollout_id}/advance"): A.FLEET_ADMIN,
    ("POST", "/api/v1/rollouts/{rollout_id}/rollback"): A.FLEET_ADMIN,
    # training
    ("POST", "/api/v1/training/rounds/start"): A.FLEET_ADMIN,
    ("POST", "/api/v1/training/rounds/{round_id}/cancel"): A.FLEET_ADMIN,
    ("GET", "/api/v1/training/rounds/current"): A.TRAINING,
    ("GET", "/api/v1/training/rounds/{round_id}/status"): A.TRAINING,
    ("POST", "/api/v1/training/rounds/{round_id}/updates"): A.TRAINING,
    ("POST", "/api/v1/learning-graphs/submit"): A.TRAINING,
    # LoRA training jobs (seed 003 §2): they make registry models, so operators only
    ("POST", "/api/v1/training/jobs"): A.TRAINING_JOBS,
    ("GET", "/api/v1/training/jobs"): A.TRAINING_JOBS,
    ("GET", "/api/v1/training/jobs/{job_id}"): A.TRAINING_JOBS,
    ("GET", "/api/v1/training/jobs/{job_id}/metrics"): A.TRAINING_JOBS,
    ("POST", "/api/v1/training/jobs/{job_id}/cancel"): A.TRAINING_JOBS,
    # the catalog and registry
    ("GET", "/api/v1/models"): A.CATALOG_READ,
    ("GET", "/api/v1/models/latest"): A.CATALOG_READ,
    ("GET", "/api/v1/models/{model_id}"): A.CATALOG_READ,
    ("GET", "/api/v1/models/{model_id}/versions/{version}/download"): A.CATALOG_READ,
    ("POST", "/api/v1/models/lock"): A.CATALOG_READ,
    ("POST", "/api/v1/models"): A.REGISTRY_WRITE,
    ("PUT", "/api/v1/models/{model_id}"): A.REGISTRY_WRITE,
    ("DELETE", "/api/v1/models/{model_id}"): A.REGISTRY_WRITE,
    ("POST", "/api/v1/models/{model_id}/versions/upload"): A.REGISTRY_WRITE,
    ("POST", "/api/v1/models/{model_id}/download"): A.REGISTRY_WRITE,
    ("POST", "/api/v1/models/{model_id}/load"): A.REGISTRY_WRITE,
    ("POST", "/api/v1/models/{model_id}/unload"): A.REGISTRY_WRITE,
    ("GET", "/api/v1/models/{model_id}/routing-policy"): A.CATALOG_READ,
    ("PUT", "/api/v1/models/{model_id}/routing-policy"): A.REGISTRY_WRITE,
    # serving
    ("POST", "/api/v1/infer/{model_id}"): A.INFERENCE,
    ("POST", "/api/v1/infer/{model_id}/async"): A.INFERENCE,
    ("POST", "/api/v1/infer/{model_id}/upload"): A.INFERENCE,
    ("GET", "/api/v1/jobs/{job_id}"): A.INFERENCE,
    ("GET", "/api/v1/jobs/{job_id}/result"): A.INFERENCE,
    ("DELETE", "/api/v1/jobs/{job_id}"): A.INFERENCE,
    ("POST", "/api/v1/jobs/{job_id}/cancel"): A.INFERENCE,
    ("POST", "/api/v1/generate"): A.INFERENCE,
    ("POST", "/v1/chat/completions"): A.INFERENCE,
    ("POST", "/v1/completions"): A.INFERENCE,
    # datasets (seed 003 §4)
    ("POST", "/api/v1/datasets"): A.DATASETS_WRITE,
    ("GET", "/api/v1/datasets"): A.DATASETS_READ,
    ("GET", "/api/v1/datasets/{dataset_id}"): A.DATASETS_READ,
    ("DELETE", "/api/v1/datasets/{dataset_id}"): A.DATASETS_WRITE,
    # carbon accounting (seed 003 §5)
    ("GET", "/api/v1/carbon/summary"): A.CARBON_READ,
    ("GET", "/api/v1/carbon/jobs/{job_id}"): A.CARBON_READ,
    ("GET", "/api/v1/carbon/models/{model_id}"): A.CARBON_READ,
    # keys
    ("POST", "/api/v1/keys"): A.KEYS,
    ("GET", "/api/v1/keys"): A.KEYS,
    ("POST", "/api/v1/keys/{key_id}/rotate"): A.KEYS,
    ("POST", "/api/v1/keys/{key_id}/revoke"): A.KEYS,
    ("DELETE", "/api/v1/keys/{key_id}"): A.KEYS,
}

# gRPC modelmora.v1 method name -> action; the open probes are ``api.grpc.calls.OPEN_METHODS``.
GRPC_ACTIONS: dict[str, Action] = {
    "Infer": A.INFERENCE, "InferAsync": A.INFERENCE, "InferStream": A.INFERENCE,
    "GetJobStatus": A.INFERENCE, "GetJobResult": A.INFERENCE, "CancelJob": A.INFERENCE,
    "ListModels": A.CATALOG_READ, "GetModel": A.CATALOG_READ, "GenerateLock": A.CATALOG_READ,
    "RegisterModel": A.REGISTRY_WRITE, "UpdateModel": A.REGISTRY_WRITE, "DeleteModel": A.REGISTRY_WRITE,
    "DownloadModel": A.REGISTRY_WRITE, "LoadModel": A.REGISTRY_WRITE, "UnloadModel": A.REGISTRY_WRITE,
    "GetSystemStatus": A.STATUS,
}


def route_action(method: str, path: str) -> Action | None:
    return ROUTE_ACTIONS.get((method.upper(), path))
