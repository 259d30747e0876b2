"""What the ingress is wired with: one object built at start-up and shared by every request."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from fastapi import Request
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from fastapi.security.utils import get_authorization_scheme_param

from api.access import route_action
from core.artifacts import ArtifactStore
from core.auth import Action, Authenticator, KeyEventBus, LocalKeyEventBus, Principal, RateLimiter, forbidden
from core.carbon import CarbonStore, InMemoryCarbonStore
from core.datasets.service import DatasetService
from core.datasets.store import DatasetStore, InMemoryDatasetStore
from core.errors import unavailable
from core.events import EventSink
from core.fleet.service import FleetService
from core.fleet.store import FleetStore
from core.keys import KeyService
from core.onboarding.fetch import FetchPolicy
from core.registry import RegistryService
from core.rollouts.assignments import AssignmentService
from core.rollouts.memory_store import InMemoryRolloutStore
from core.rollouts.service import RolloutService
from core.rollouts.store import RolloutStore
from core.serving.jobs_service import JobService
from core.serving.lifecycle import ModelLifecycleService
from core.serving.residency import InMemoryResidencyStore, ResidencyStore
from core.serving.service import InferenceService, builtin_models
from core.training.service import TrainingJobService
from core.training.store import InMemoryTrainingJobStore, TrainingJobStore
from settings import Settings


@dataclass
class AppContext:
    settings: Settings
    store: FleetStore
    artifacts: ArtifactStore
    events: EventSink
    fleet: FleetService = field(init=False)
    authenticator: Authenticator = field(init=False)
    limiter: RateLimiter = field(init=False)
    keys: KeyService = field(init=False)
    # key events to every ingress replica (Kafka in production); None: this process only
    key_events: KeyEventBus | None = None
    registry: RegistryService = field(init=False)
    lifecycle: ModelLifecycleService = field(init=False)
    closers: list[Any] = field(default_factory=list)
    # name -> blocking health probe (core/health.py); empty in unit tests
    probes: dict[str, Any] = field(default_factory=dict)
    # sync inference over Kafka; None where no reply consumer runs (unit tests)
    inference: InferenceService | None = None
    # async jobs (needs ``inference``); None where not wired
    jobs: JobService | None = None
    # where inference workers report loaded models (Cassandra in production)
    residency: ResidencyStore = field(default_factory=InMemoryResidencyStore)
    # carbon records of training jobs and inference batches (Cassandra in production)
    carbon: CarbonStore = field(default_factory=InMemoryCarbonStore)
    # priority -> requests waiting in its topic (consumer lag); None where no broker is wired
    queue_depth: Callable[[], dict[str, int]] | None = None
    # dataset records (Cassandra in production); their files live in ``artifacts``
    dataset_store: DatasetStore = field(default_factory=InMemoryDatasetStore)
    datasets: DatasetService = field(init=False)
    # rollouts (Cassandra in production), and what answers devices' assignments from per-replica caches
    rollout_store: RolloutStore = field(default_factory=InMemoryRolloutStore)
    rollouts: RolloutService = field(init=False)
    assignments: AssignmentService = field(init=False)
    # when this replica started (time.monotonic): uptime for REST and gRPC status
    started: float = field(default_factory=time.monotonic)
    # seed 003 LoRA training jobs (Cassandra in production)
    training_jobs: TrainingJobStore = field(default_factory=InMemoryTrainingJobStore)
    training: TrainingJobService = field(init=False)

    @property
    def uptime_seconds(self) -> int:
        return int(time.monotonic() - self.started)

    def __post_init__(self) -> None:
        self.fleet = FleetService(self.settings, self.store, self.artifacts, self.events, residency=self.residency)
        self.authenticator = Authenticator(self.store, self.settings)
        self.limiter = RateLimiter(self.store, self.settings)
        self.keys = KeyService(self.settings, self.store, self.events, self.authenticator,
                               self.key_events or LocalKeyEventBus(self.authenticator))
        self.registry = RegistryService(self.store, self.events, residency=self.residency,
                                        policy=FetchPolicy.from_settings(self.settings),
                                        download_stale_s=2 * self.settings.model_fetch_timeout_s)
        self.training = TrainingJobService(self.training_jobs, self.dataset_store, self.artifacts, self.events,
                                           bucket=self.settings.s3_bucket, catalog=self.store)
        s3 = getattr(self.artifacts, "client", None)  # s3:// dataset sources read our own S3
        self.datasets = DatasetService(self.settings, self.dataset_store, self.artifacts, self.events,
                                       s3_client=(lambda: s3) if s3 is not None else None)
        self.rollouts = RolloutService(self.rollout_store, self.store, self.events)
        self.assignments = AssignmentService(self.settings, self.rollout_store, self.store)
        self.lifecycle = ModelLifecycleService(self.store, self.residency, self.events, builtins=self.served_builtins,
                                               wait_s=self.settings.model_load_wait_s)

    def inference_service(self) -> InferenceService:
        """Sync inference, or 503 where this ingress has no reply consumer (unit tests wire none)."""
        if self.inference is None:
            raise unavailable("SERVICE_UNAVAILABLE", "Inference is not wired on this ingress.", 5.0)
        return self.inference

    def job_service(self) -> JobService:
        if self.jobs is None:
            raise unavailable("SERVICE_UNAVAILABLE", "Async inference is not wired on this ingress.", 5.0)
        return self.jobs

    def dataset_service(self) -> DatasetService:
        return self.datasets

    def served_builtins(self) -> Mapping[str, str]:
        return self.inference.models if self.inference is not None else builtin_models()


async def context(request: Request) -> AppContext:
    # async: FastAPI runs a plain ``def`` dependency on its thread pool, a thread hop per request.
    ctx: AppContext = request.app.state.context
    return ctx


bearer = HTTPBearer(auto_error=False, bearerFormat="sk_live_*", description="Authorization: Bearer sk_live_...")


def bearer_key(authorization: str | None) -> str | None:
    """The key of an ``Authorization: Bearer <key>`` value, read as ``HTTPBearer`` reads it (scheme in any
    case, surrounding spaces dropped); None for any other scheme. For the transports that do not go
    through FastAPI's dependency (the heartbeat fast path, gRPC metadata)."""
    scheme, credentials = get_authorization_scheme_param(authorization)
    return credentials or None if scheme.lower() == "bearer" else None


async def admit(ctx: AppContext, key: str | None, action: Action | None) -> Principal:
    """Authenticate a Bearer key, count the call against the key's rate limit (which every replica
    and transport, REST and gRPC, shares), then check that the key's role may do ``action`` (None:
    the transport has no rule for this call, which is refused)."""
    principal = ctx.authenticator.try_authenticate(key)
    if principal is None:  # a stored key not in the cache: the store is asked, off the event loop
        assert key is not None
        principal = await asyncio.to_thread(ctx.authenticator.lookup, key)
    await spend(ctx, principal)
    if action is None:
        raise forbidden("No access rule covers this call; it is refused until one does.")
    principal.require(action)
    return principal


async def spend(ctx: AppContext, principal: Principal) -> None:
    """Count one request against the key's rate limit; a thread only when the store must be asked."""
    if not ctx.limiter.try_spend(principal.key_id):
        await asyncio.to_thread(ctx.limiter.check, principal.key_id, ctx.limiter.limit_for(principal))


async def authenticated(request: Request) -> Principal:
    ctx = await context(request)
    credentials: HTTPAuthorizationCredentials | None = await bearer(request)
    key = credentials.credentials if credentials else None
    route = request.scope.get("route")
    action = route_action(request.method, getattr(route, "path_format", ""))
    return await admit(ctx, key, action)
