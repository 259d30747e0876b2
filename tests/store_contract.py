"""One test suite for every ``FleetStore`` implementation (memory in unit, Cassandra in integration).

Each implementation's module defines a ``store`` fixture and does ``from tests.store_contract import *``.
"""

from __future__ import annotations

import threading
import uuid
from dataclasses import replace
from datetime import UTC, datetime, timedelta

import pytest

from core.fleet.models import (
    ApiKeyRecord,
    CatalogModel,
    Device,
    DeviceQuery,
    DeviceStatus,
    Freshness,
    Heartbeat,
    LearningGraph,
    ModelUpdate,
    ModelVersion,
    Platform,
    RetrainingDecision,
    Round,
    RoundStatus,
    Seat,
    SubjectType,
)
from core.fleet.store import FleetStore

T0 = datetime(2026, 11, 1, 12, 0, tzinfo=UTC)


def make_device(device_id: str | None = None) -> tuple[Device, ApiKeyRecord]:
    device_id = device_id or f"dev-{uuid.uuid4().hex[:8]}"
    device = Device(id=str(uuid.uuid4()), device_id=device_id, platform=Platform.PYTHON,
                    capabilities={"cpu": "4-core", "gpu": False}, status=DeviceStatus.ACTIVE,
                    api_key_id=f"key_{device_id}", created_at=T0, updated_at=T0)
    key = ApiKeyRecord(f"hash-{uuid.uuid4().hex}", f"key_{device_id}", SubjectType.DEVICE, device_id, T0)
    return device, key


def make_round(**kw: object) -> Round:
    fields: dict[str, object] = dict(id=str(uuid.uuid4()), round_number=0, status=RoundStatus.PENDING,
                                     target_devices=3, min_devices=2, timeout_seconds=300, created_at=T0)
    fields.update(kw)
    return Round(**fields)  # type: ignore[arg-type]


def make_update(round_id: str, device_id: str) -> ModelUpdate:
    return ModelUpdate(id=str(uuid.uuid4()), round_id=round_id, device_id=device_id, model_path="s3://b/k",
                       artifact_key="k", model_size_bytes=10, sha256="ab", num_samples=5, created_at=T0)


def finish_active(store: FleetStore) -> None:
    active = store.active_round_id()
    if active:
        for status in (RoundStatus.PENDING, RoundStatus.ACTIVE, RoundStatus.AGGREGATING):
            store.transition_round(active, status, RoundStatus.FAILED)


def test_register_device_once(store: FleetStore) -> None:
    device, key = make_device()
    assert store.create_device(device, key) is True
    again, again_key = make_device(device.device_id)
    assert store.create_device(again, again_key) is False
    stored = store.get_device(device.device_id)
    assert stored is not None and stored.id == device.id  # the first registration is kept
    assert stored.capabilities == {"cpu": "4-core", "gpu": False}
    assert store.get_api_key(key.key_hash) == key
    assert store.get_api_key(again_key.key_hash) is None


def test_unknown_device_and_delete(store: FleetStore) -> None:
    assert store.get_device("nope") is None
    assert store.record_heartbeat("nope", T0, None, {}) is None
    device, key = make_device()
    store.create_device(device, key)
    store.delete_device(device.device_id)
    assert store.get_device(device.device_id) is None


def test_heartbeat_never_moves_backwards(store: FleetStore) -> None:
    device, key = make_device()
    store.create_device(device, key)
    later = store.record_heartbeat(device.device_id, T0 + timedelta(seconds=10), "active", {"cpu": 5.0})
    assert later is not None and later.last_heartbeat == T0 + timedelta(seconds=10)
    older = store.record_heartbeat(device.device_id, T0, "active", {"cpu": 99.0})
    assert older is not None and older.last_heartbeat == T0 + timedelta(seconds=10)
    stored = store.get_device(device.device_id)
    assert stored is not None and stored.metrics == {"cpu": 5.0}


def test_heartbeat_stores_the_reported_status(store: FleetStore) -> None:
    device, key = make_device()
    store.create_device(device, key)
    applied = store.record_heartbeat(device.device_id, T0 + timedelta(seconds=1), "inactive", {"battery_level": 3})
    assert applied is not None and applied.status is DeviceStatus.INACTIVE
    stored = store.get_device(device.device_id)
    assert stored is not None and (stored.status, stored.metrics) == (DeviceStatus.INACTIVE, {"battery_level": 3})
    store.record_heartbeat(device.device_id, T0 + timedelta(seconds=2), None, {})  # no status: unchanged
    assert (store.get_device(device.device_id) or device).status is DeviceStatus.INACTIVE
    store.record_heartbeat(device.device_id, T0 + timedelta(seconds=3), "active", {})
    assert (store.get_device(device.device_id) or device).status is DeviceStatus.ACTIVE


def test_heartbeats_are_last_write_wins_by_their_own_time_in_any_order(store: FleetStore) -> None:
    (a, a_key), (b, b_key) = make_device(), make_device()
    store.create_device(a, a_key)
    store.create_device(b, b_key)
    at = [T0 + timedelta(seconds=i) for i in range(4)]
    # One batch, out of order, with an unknown device in it.
    result = store.record_heartbeats([Heartbeat(a.device_id, at[2], "inactive", {"n": 2}),
                                      Heartbeat("nope", at[2], None, {}),
                                      Heartbeat(a.device_id, at[1], "active", {"n": 1}),
                                      Heartbeat(b.device_id, at[1], None, {"n": 10})])
    assert result[1] is None
    for applied in (result[0], result[2]):  # each beat answers the device as it stands after the call
        assert applied is not None and applied.last_heartbeat == at[2] and applied.status is DeviceStatus.INACTIVE
    # Later calls: an older beat (a redelivery, or one a slower processor applies late) changes nothing.
    store.record_heartbeats([Heartbeat(a.device_id, at[0], "active", {"n": 0})])
    store.record_heartbeats([Heartbeat(b.device_id, at[3], None, {"n": 13}),
                             Heartbeat(b.device_id, at[3], None, {"n": 13})])  # the same beat twice
    stored_a, stored_b = store.get_device(a.device_id), store.get_device(b.device_id)
    assert stored_a is not None and stored_b is not None
    assert (stored_a.last_heartbeat, stored_a.status, stored_a.metrics) == (at[2], DeviceStatus.INACTIVE, {"n": 2})
    assert (stored_b.last_heartbeat, stored_b.status, stored_b.metrics) == (at[3], DeviceStatus.ACTIVE, {"n": 13})
    assert store.record_heartbeats([]) == []


def test_concurrent_heartbeat_writers_end_with_the_newest(store: FleetStore) -> None:
    """Two processors racing (a rebalance hands a partition over): whoever writes last, the row
    keeps the newest heartbeat."""
    device, key = make_device()
    store.create_device(device, key)
    beats = [Heartbeat(device.device_id, T0 + timedelta(milliseconds=i), None, {"i": i}) for i in range(40)]
    threads = [threading.Thread(target=store.record_heartbeats, args=(beats[i::2][::-1],)) for i in range(2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    stored = store.get_device(device.device_id)
    assert stored is not None and (stored.last_heartbeat, stored.metrics) == (beats[-1].at, {"i": 39})


def _fleet_in_a_window(store: FleetStore) -> tuple[datetime, dict[str, tuple[str, Platform, datetime]]]:
    """Six devices that beat inside an hour nobody else's test uses: (status, platform, last heartbeat)."""
    start = T0 + timedelta(days=900 + uuid.uuid4().int % 10_000)
    made = {}
    for i, (status, platform) in enumerate([("active", Platform.PYTHON), ("inactive", Platform.PYTHON),
                                            ("active", Platform.IOS), ("active", Platform.ANDROID),
                                            ("inactive", Platform.IOS), ("active", Platform.PYTHON)]):
        device, key = make_device()
        device.platform = platform
        store.create_device(device, key)
        at = start + timedelta(minutes=10 * i)
        store.record_heartbeat(device.device_id, at, status, {})
        made[device.device_id] = (status, platform, at)
    return start, made


def _all_pages(store: FleetStore, query: DeviceQuery) -> list[str]:
    seen: list[str] = []
    while True:
        page = store.find_devices(query)
        assert len(page.devices) <= query.limit
        seen += [d.device_id for d in page.devices]
        if page.next_cursor is None:
            return seen
        query = replace(query, cursor=page.next_cursor)


def test_find_devices_filters_and_pages(store: FleetStore) -> None:
    start, made = _fleet_in_a_window(store)
    window = DeviceQuery(heartbeat_since=start, heartbeat_before=start + timedelta(hours=1), limit=2)
    # every page at most `limit` long, every device exactly once across the pages
    assert sorted(_all_pages(store, window)) == sorted(made)
    active = _all_pages(store, replace(window, status=DeviceStatus.ACTIVE))
    assert sorted(active) == sorted(d for d, (s, _, _) in made.items() if s == "active")
    ios_inactive = _all_pages(store, replace(window, status=DeviceStatus.INACTIVE, platform=Platform.IOS))
    assert ios_inactive == [d for d, (s, p, _) in made.items() if s == "inactive" and p is Platform.IOS]
    older = _all_pages(store, replace(window, heartbeat_before=start + timedelta(minutes=25)))
    assert sorted(older) == sorted(d for d, (_, _, at) in made.items() if at < start + timedelta(minutes=25))


def test_a_cursor_the_store_did_not_make_is_refused(store: FleetStore) -> None:
    for forged in ("%%%", "4pyT_w==", "abc", "é"):  # not base64; invalid UTF-8; bad length; not ASCII
        with pytest.raises(ValueError):
            store.find_devices(DeviceQuery(cursor=forged))


def test_freshness_compare_and_set(store: FleetStore) -> None:
    device, key = make_device()
    store.create_device(device, key)
    assert store.set_freshness(device.device_id, Freshness.OFFLINE, Freshness.ONLINE) is True
    assert store.set_freshness(device.device_id, Freshness.OFFLINE, Freshness.STALE) is False
    stored = store.get_device(device.device_id)
    assert stored is not None and stored.freshness is Freshness.ONLINE


def test_count_devices_by_heartbeat(store: FleetStore) -> None:
    since = T0 + timedelta(days=399)
    before, recent_before = store.count_devices(), store.count_devices(since)
    recent, key = make_device()
    store.create_device(recent, key)
    store.record_heartbeat(recent.device_id, T0 + timedelta(days=400), None, {})
    silent, key2 = make_device()
    store.create_device(silent, key2)
    assert store.count_devices() == before + 2
    assert store.count_devices(since) == recent_before + 1


def test_revoke_key(store: FleetStore) -> None:
    device, key = make_device()
    store.create_device(device, key)
    assert store.revoke_api_key(key.key_hash, T0) is True
    assert store.revoke_api_key(key.key_hash, T0) is False
    revoked = store.get_api_key(key.key_hash)
    assert revoked is not None and revoked.revoked_at == T0


def test_service_and_operator_keys_keep_their_fields_and_are_found_by_id(store: FleetStore) -> None:
    suffix = uuid.uuid4().hex[:8]
    service = ApiKeyRecord(f"hash-{uuid.uuid4().hex}", f"key_svc{suffix}", SubjectType.SERVICE, f"svc-{suffix}", T0,
                           label="search backend", created_by="key_op", rate_limit_per_minute=5000)
    store.put_api_key(service)
    assert store.get_api_key(service.key_hash) == service
    assert store.find_api_key(service.key_id) == service
    assert store.find_api_key(f"key_missing{suffix}") is None
    assert service in store.list_api_keys()


def test_a_subjects_keys_are_listed_oldest_first(store: FleetStore) -> None:
    device, first = make_device()
    store.create_device(device, first)
    second = ApiKeyRecord(f"hash-{uuid.uuid4().hex}", f"{first.key_id}-2", SubjectType.DEVICE, device.device_id,
                          T0 + timedelta(minutes=1))
    store.put_api_key(second)
    other, other_key = make_device()
    store.create_device(other, other_key)
    assert store.list_api_keys(device.device_id) == [first, second]


def test_one_active_round_and_numbering(store: FleetStore) -> None:
    finish_active(store)
    first = make_round()
    assert store.create_active_round(first) is None
    assert first.round_number >= 1
    second = make_round()
    holder = store.create_active_round(second)
    assert holder is not None and holder.id == first.id
    assert store.active_round_id() == first.id
    assert store.transition_round(first.id, RoundStatus.ACTIVE, RoundStatus.COMPLETED) is False  # still pending
    assert store.transition_round(first.id, RoundStatus.PENDING, RoundStatus.ACTIVE,
                                  selected_devices=["a", "b"], started_at=T0) is True
    assert store.transition_round(first.id, RoundStatus.ACTIVE, RoundStatus.FAILED, failure_reason="t") is True
    assert store.active_round_id() is None  # terminal frees the slot
    third = make_round()
    assert store.create_active_round(third) is None
    assert third.round_number == first.round_number + 1
    latest = store.latest_round()
    assert latest is not None and latest.id == third.id
    stored = store.get_round(first.id)
    assert stored is not None and stored.selected_devices == ["a", "b"] and stored.failure_reason == "t"
    assert stored.status is RoundStatus.FAILED
    finish_active(store)


def test_round_counters(store: FleetStore) -> None:
    finish_active(store)
    r = make_round()
    store.create_active_round(r)
    store.update_round_counters(r.id, participated=3, completed=2, failed=1)
    stored = store.get_round(r.id)
    assert stored is not None
    assert (stored.participated_devices, stored.completed_devices, stored.failed_devices) == (3, 2, 1)
    finish_active(store)


def test_one_update_per_device_per_round(store: FleetStore) -> None:
    round_id = str(uuid.uuid4())
    assert store.add_update(make_update(round_id, "d1")) is True
    assert store.add_update(make_update(round_id, "d1")) is False
    assert store.add_update(make_update(round_id, "d2")) is True
    assert sorted(u.device_id for u in store.list_updates(round_id)) == ["d1", "d2"]


def test_a_withdrawn_update_leaves_the_round_and_only_once(store: FleetStore) -> None:
    round_id = str(uuid.uuid4())
    first, second = make_update(round_id, "d1"), make_update(round_id, "d2")
    assert store.add_update(first) and store.add_update(second)
    assert store.withdraw_update(round_id, "d1") == first.id
    assert store.withdraw_update(round_id, "d1") is None
    assert store.withdraw_update(round_id, "d3") is None
    assert [u.id for u in store.list_updates(round_id)] == [second.id]


def test_catalog_versions_listing_and_pagination(store: FleetStore) -> None:
    tag = uuid.uuid4().hex[:6]
    ids = []
    for i in range(5):
        model = CatalogModel(id=str(uuid.uuid4()), is_baseline=i % 2 == 0, created_at=T0 + timedelta(minutes=i),
                             updated_at=T0, framework="sklearn" if i == 4 else "pytorch", task_type=tag)
        assert store.create_model(model) is True
        assert store.create_model(model) is False
        ids.append(model.id)
    page, total = store.list_models(limit=2, offset=0, task_type=tag)
    assert total == 5 and [m.id for m in page] == [ids[4], ids[3]]  # newest first
    page, _ = store.list_models(limit=2, offset=4, task_type=tag)
    assert [m.id for m in page] == [ids[0]]
    _, baselines = store.list_models(limit=10, offset=0, is_baseline=True, task_type=tag)
    assert baselines == 3
    page, total = store.list_models(limit=10, offset=0, framework="sklearn", task_type=tag)
    assert total == 1 and page[0].id == ids[4]

    model_id = ids[0]
    assert [store.next_version(model_id) for _ in range(3)] == [1, 2, 3]
    version = ModelVersion(model_id=model_id, version=2, format="pytorch", artifact_key="k", model_path="s3://b/k",
                           model_size_bytes=3, sha256="ff", uploaded_at=T0, onnx_key="k.onnx")
    store.add_version(version)
    assert store.get_version(model_id, 2) == version
    assert store.get_version(model_id, 9) is None
    assert store.list_versions(model_id) == [version]
    found = store.get_model(model_id)
    assert found is not None
    model = found
    model.latest_version, model.model_hash = 2, "sha256:ff"
    store.update_model(model)
    updated = store.get_model(model_id)
    assert updated is not None and updated.latest_version == 2 and updated.model_hash == "sha256:ff"
    assert store.delete_model(model_id) is True
    assert store.get_model(model_id) is None


def test_learning_graph_pending_count(store: FleetStore) -> None:
    store.take_pending_graphs()
    for i in range(3):
        graph = LearningGraph(str(uuid.uuid4()), "h", "1.0", "m", T0, {"n": i})
        assert store.add_learning_graph(graph) == i + 1
    assert store.take_pending_graphs() == 3
    assert store.take_pending_graphs() == 0


def test_the_first_retraining_decision_holds(store: FleetStore) -> None:
    trigger = str(uuid.uuid4())
    assert store.get_retraining_decision(trigger) is None
    started = RetrainingDecision(trigger, "m-1", 1000, T0, round_id=str(uuid.uuid4()))
    assert store.record_retraining_decision(started) == started
    refused = RetrainingDecision(trigger, "m-1", 1000, T0 + timedelta(seconds=1), reason="ROUND_ALREADY_ACTIVE",
                                 detail="a round is active")
    assert store.record_retraining_decision(refused) == started  # a redelivery does not change the answer
    assert store.get_retraining_decision(trigger) == started and started.started and not refused.started
    other = RetrainingDecision(str(uuid.uuid4()), "m-2", 7, T0, reason="NOT_ENOUGH_DEVICES", detail="0 of 2")
    assert store.record_retraining_decision(other) == other == store.get_retraining_decision(other.trigger_id)


def test_rate_limit_windows(store: FleetStore) -> None:
    subject = f"s-{uuid.uuid4().hex[:6]}"
    assert [store.hit(subject, 60) for _ in range(3)] == [1, 2, 3]
    assert store.hit(subject, 120) == 1


def test_racing_round_starts_have_one_winner(store: FleetStore) -> None:
    finish_active(store)
    rounds = [make_round() for _ in range(8)]
    results: list[Round | None] = [None] * 8
    threads = [threading.Thread(target=lambda i=i: results.__setitem__(i, store.create_active_round(rounds[i])))
               for i in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    winners = [r for r, result in zip(rounds, results, strict=True) if result is None]
    assert len(winners) == 1
    assert store.active_round_id() == winners[0].id
    finish_active(store)


def test_racing_updates_of_one_device_have_one_winner(store: FleetStore) -> None:
    round_id = str(uuid.uuid4())
    results: list[bool] = []
    lock = threading.Lock()

    def submit() -> None:
        ok = store.add_update(make_update(round_id, "same-device"))
        with lock:
            results.append(ok)

    threads = [threading.Thread(target=submit) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sorted(results) == [False] * 7 + [True]


def test_open_selection_fills_the_target_once(store: FleetStore) -> None:
    finish_active(store)
    r = make_round(target_devices=2)
    store.create_active_round(r)
    assert store.select_device(r.id, "a") is Seat.CLOSED  # pending: not yet open
    assert store.select_device(str(uuid.uuid4()), "a") is Seat.CLOSED  # unknown round
    assert store.transition_round(r.id, RoundStatus.PENDING, RoundStatus.ACTIVE, selected_devices=["a"]) is True
    assert store.select_device(r.id, "a") is Seat.HELD
    assert store.select_device(r.id, "b") is Seat.TAKEN
    assert store.select_device(r.id, "b") is Seat.HELD
    assert store.select_device(r.id, "c") is Seat.FULL
    stored = store.get_round(r.id)
    assert stored is not None and stored.selected_devices == ["a", "b"]
    assert store.transition_round(r.id, RoundStatus.ACTIVE, RoundStatus.CANCELLED) is True
    assert store.active_round_id() is None  # cancelled is terminal: the slot is free
    assert store.select_device(r.id, "d") is Seat.CLOSED


def test_a_round_opened_without_devices_takes_them_as_they_come(store: FleetStore) -> None:
    finish_active(store)
    r = make_round(target_devices=1)
    store.create_active_round(r)
    store.transition_round(r.id, RoundStatus.PENDING, RoundStatus.ACTIVE, selected_devices=[], started_at=T0)
    assert store.select_device(r.id, "late") is Seat.TAKEN
    assert store.select_device(r.id, "later") is Seat.FULL
    stored = store.get_round(r.id)
    assert stored is not None and stored.selected_devices == ["late"]
    finish_active(store)


def test_racing_selections_never_exceed_the_target(store: FleetStore) -> None:
    finish_active(store)
    r = make_round(target_devices=3)
    store.create_active_round(r)
    store.transition_round(r.id, RoundStatus.PENDING, RoundStatus.ACTIVE, selected_devices=[])
    results: list[Seat | None] = [None] * 10
    threads = [threading.Thread(target=lambda i=i: results.__setitem__(i, store.select_device(r.id, f"dev-{i}")))
               for i in range(10)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sorted(str(s) for s in results) == ["full"] * 7 + ["taken"] * 3
    stored = store.get_round(r.id)
    assert stored is not None
    assert sorted(stored.selected_devices) == sorted(f"dev-{i}" for i, s in enumerate(results) if s is Seat.TAKEN)
    finish_active(store)


def test_one_aggregation_attempt_holds_a_round_at_a_time(store: FleetStore) -> None:
    finish_active(store)
    r = make_round()
    store.create_active_round(r)
    store.transition_round(r.id, RoundStatus.PENDING, RoundStatus.ACTIVE, selected_devices=["a"])
    assert store.claim_aggregation(r.id, 0, T0) is False  # not aggregating
    assert store.transition_round(r.id, RoundStatus.ACTIVE, RoundStatus.AGGREGATING, aggregation_attempts=1,
                                  aggregation_lease_until=T0) is True
    assert store.claim_aggregation(r.id, 0, T0) is False  # attempt 1 was taken with the transition
    assert store.extend_aggregation(r.id, 1, T0 + timedelta(seconds=5)) is True
    assert store.claim_aggregation(r.id, 1, T0 + timedelta(seconds=30)) is True
    assert store.claim_aggregation(r.id, 1, T0 + timedelta(seconds=30)) is False  # a racing replica lost
    assert store.extend_aggregation(r.id, 1, T0 + timedelta(seconds=60)) is False  # attempt 1 lost the round
    assert store.extend_aggregation(r.id, 2, T0 + timedelta(seconds=40), error="S3 unavailable") is True
    stored = store.get_round(r.id)
    assert stored is not None and stored.status is RoundStatus.AGGREGATING
    assert (stored.aggregation_attempts, stored.aggregation_lease_until, stored.aggregation_error) == (
        2, T0 + timedelta(seconds=40), "S3 unavailable")
    assert store.active_round_id() == r.id  # aggregating still holds the slot
    assert store.transition_round(r.id, RoundStatus.AGGREGATING, RoundStatus.FAILED, failure_reason="gave up") is True
    assert store.claim_aggregation(r.id, 2, T0) is False
    assert store.extend_aggregation(r.id, 2, T0) is False
    assert store.active_round_id() is None
