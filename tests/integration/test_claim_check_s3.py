"""Claim-check objects on the real S3 (SeaweedFS locally): a claim stored and verified, the expiration
rule the stack puts on the bucket (kept beside other rules), and the sweep that deletes expired
claim objects where the S3 does not enforce that rule, leaving every other object alone."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from datetime import timedelta
from typing import Any

import pytest

from core.artifacts import S3ArtifactStore, s3_client
from core.claimcheck import LIFECYCLE_RULE_ID, PREFIX, ClaimCheck, ClaimCheckError, apply_lifecycle, encode, sweep
from infra.local_stack import ensure_buckets
from schemas.clock import utcnow
from settings import Settings

pytestmark = pytest.mark.integration


@pytest.fixture
def bucket(settings: Settings) -> Iterator[tuple[Settings, Any]]:
    """A bucket of this test's own: the sweep must not touch the shared one."""
    own = settings.model_copy(update={"s3_bucket": f"tributary-claims-{uuid.uuid4().hex[:10]}"})
    client = s3_client(own)
    ensure_buckets(own, [own.s3_bucket])
    try:
        yield own, client
    finally:
        for page in client.get_paginator("list_objects_v2").paginate(Bucket=own.s3_bucket):
            for obj in page.get("Contents", []):
                client.delete_object(Bucket=own.s3_bucket, Key=obj["Key"])
        client.delete_bucket(Bucket=own.s3_bucket)


async def test_a_claim_round_trips_through_s3_and_a_changed_object_is_refused(bucket: tuple[Settings, Any]) -> None:
    settings, client = bucket
    check = ClaimCheck(S3ArtifactStore(settings), bucket=settings.s3_bucket, threshold_bytes=1024)
    value = {"image": "A" * 5000}
    sent = await check.offload_input({"input_data": value})
    assert (await check.resolve_input(sent))["input_data"] == value
    client.put_object(Bucket=settings.s3_bucket, Key=sent["input_ref"]["key"], Body=encode({"image": "B" * 5000}))
    with pytest.raises(ClaimCheckError, match="sha256"):
        await check.resolve_input(sent)


def test_the_stack_puts_the_expiration_rule_and_keeps_other_rules(bucket: tuple[Settings, Any]) -> None:
    settings, client = bucket
    rules = client.get_bucket_lifecycle_configuration(Bucket=settings.s3_bucket)["Rules"]
    assert [r for r in rules if r["ID"] == LIFECYCLE_RULE_ID] == [
        {"ID": LIFECYCLE_RULE_ID, "Filter": {"Prefix": PREFIX}, "Status": "Enabled", "Expiration": {"Days": 1}}]
    other = {"ID": "someone-elses", "Filter": {"Prefix": "logs/"}, "Status": "Enabled", "Expiration": {"Days": 30}}
    client.put_bucket_lifecycle_configuration(Bucket=settings.s3_bucket,
                                              LifecycleConfiguration={"Rules": [*rules, other]})
    apply_lifecycle(client, settings.s3_bucket, 3)  # applying again replaces only our rule
    by_id = {r["ID"]: r for r in client.get_bucket_lifecycle_configuration(Bucket=settings.s3_bucket)["Rules"]}
    assert set(by_id) == {LIFECYCLE_RULE_ID, "someone-elses"}
    assert by_id[LIFECYCLE_RULE_ID]["Expiration"] == {"Days": 3}


def test_the_sweep_deletes_only_expired_claim_objects(bucket: tuple[Settings, Any]) -> None:
    settings, client = bucket
    claims = [f"{PREFIX}inputs/2026-12-01/{uuid.uuid4()}.json" for _ in range(3)]
    others = ["models/m/v1/model.onnx", "claimsish/not-a-claim.json"]
    for key in claims + others:
        client.put_object(Bucket=settings.s3_bucket, Key=key, Body=b"{}")

    def keys() -> set[str]:
        return {o["Key"] for o in client.list_objects_v2(Bucket=settings.s3_bucket).get("Contents", [])}

    assert sweep(client, settings.s3_bucket, older_than=timedelta(days=1)) == 0  # all fresh: kept
    assert keys() == set(claims + others)
    # A day and a bit later (the same objects, a later "now"): the claims are expired, the rest stays.
    later = utcnow() + timedelta(days=1, minutes=5)
    assert sweep(client, settings.s3_bucket, older_than=timedelta(days=1), now=later) == 3
    assert keys() == set(others)
