"""A catalog model's routing policy (issue 20 item 5): where devices run it, on device or in the cloud.

The decision itself is ``core.routing.decide``; it reaches devices in their assignments. Included
before the fleet router, whose ``/models/{model_id:path}`` catch-all would otherwise take these paths.
"""

from __future__ import annotations

from typing import Annotated, Literal

from fastapi import APIRouter, Depends
from pydantic import BaseModel, Field

from api.context import AppContext, authenticated, context
from api.routers.fleet import ERRORS, CatalogId, validate_catalog_id
from api.schemas_fleet import PlatformName, StrictBody
from core.auth import Principal
from core.fleet.models import CatalogModel
from core.routing import RoutingMode, RoutingPolicy
from settings import Settings

router = APIRouter(prefix="/api/v1")
Ctx = Annotated[AppContext, Depends(context)]
Caller = Annotated[Principal, Depends(authenticated)]
DownloadNetwork = Literal["wifi", "cellular", "ethernet"]


class RoutingPolicyBody(StrictBody):
    """A model's whole routing policy; a field left out (or null) takes the deployment's default."""

    mode: Literal["auto", "cloud_only"] = Field(
        "auto", description="auto: decide per device by the thresholds; cloud_only: every device calls the cloud")
    min_battery_pct: int | None = Field(
        None, ge=0, le=100, description="Below it, a device that is not charging calls the cloud; 0 = never counts "
                                        "(default TRIBUTARY_ROUTING_MIN_BATTERY_PCT)")
    download_networks: list[DownloadNetwork] | None = Field(
        None, max_length=3, description="Networks devices may download the model on (default "
                                        "TRIBUTARY_ROUTING_DOWNLOAD_NETWORKS)")
    memory_headroom: float | None = Field(
        None, ge=1.0, le=10.0, description="A device needs resource_requirements.memory_mb x this (default "
                                           "TRIBUTARY_ROUTING_MEMORY_HEADROOM)")
    platforms: list[PlatformName] | None = Field(
        None, max_length=4, description="Platforms that may run it on device; null = any")

    def policy(self) -> RoutingPolicy:
        return RoutingPolicy(
            mode=RoutingMode(self.mode), min_battery_pct=self.min_battery_pct,
            download_networks=tuple(dict.fromkeys(self.download_networks)) if self.download_networks is not None
            else None,
            memory_headroom=self.memory_headroom,
            platforms=tuple(dict.fromkeys(self.platforms)) if self.platforms is not None else None)


class EffectivePolicy(BaseModel):
    mode: Literal["auto", "cloud_only"]
    min_battery_pct: int
    download_networks: list[str]
    memory_headroom: float
    platforms: list[str] | None = None


class RoutingPolicyOut(BaseModel):
    model_id: str
    policy: EffectivePolicy = Field(description="What decisions use: the overrides over the defaults")
    overrides: dict[str, object] = Field(description="What the operator set (the rest are defaults)")
    memory_mb: int | None = Field(None, description="The model's resource_requirements.memory_mb that the "
                                                    "memory check uses")

    @classmethod
    def of(cls, model: CatalogModel, policy: RoutingPolicy, settings: Settings) -> RoutingPolicyOut:
        effective = policy.effective(settings)
        memory = (model.extra.get("resource_requirements") or {}).get("memory_mb")
        return cls(model_id=model.id, overrides=policy.overrides(), memory_mb=memory, policy=EffectivePolicy(
            mode=effective.mode.value, min_battery_pct=effective.min_battery_pct or 0,
            download_networks=list(effective.download_networks or ()),
            memory_headroom=effective.memory_headroom or 1.0,
            platforms=list(effective.platforms) if effective.platforms is not None else None))


@router.get("/models/{model_id:path}/routing-policy", response_model=RoutingPolicyOut, tags=["Registry"],
            responses=ERRORS)
async def get_routing_policy(model_id: CatalogId, ctx: Ctx, _: Caller) -> RoutingPolicyOut:
    validate_catalog_id(model_id)
    model, policy = await ctx.registry.routing_policy(model_id)
    return RoutingPolicyOut.of(model, policy, ctx.settings)


@router.put("/models/{model_id:path}/routing-policy", response_model=RoutingPolicyOut, tags=["Registry"],
            responses=ERRORS)
async def put_routing_policy(model_id: CatalogId, body: RoutingPolicyBody, ctx: Ctx,
                             caller: Caller) -> RoutingPolicyOut:
    """Operators: replace the model's routing policy (audited); devices see it in their next assignment."""
    validate_catalog_id(model_id)
    model, policy = await ctx.registry.set_routing_policy(caller, model_id, body.policy())
    return RoutingPolicyOut.of(model, policy, ctx.settings)
