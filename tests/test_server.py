"""forge serve: the official openai client against a real uvicorn server on 127.0.0.1 (a free port,
in a thread), on the tiny model, plus one short test on the default model.

Streaming and not, usage counts, several clients at once (distinct prompts, no mixing), tool
calls, the API key on every route, bad requests (each gets its 4xx in OpenAI's error shape and the
server keeps answering), a vanished client, and the remote (openai-client) back end of ChatModel.
"""

from __future__ import annotations

import json
import threading
import time
from typing import Iterator, Sequence

import pytest

openai = pytest.importorskip("openai")
pytest.importorskip("fastapi")
pytest.importorskip("uvicorn")
httpx = pytest.importorskip("httpx")

from kit.infer import ChatModel, ChatRequest, Completion, Delta  # noqa: E402
from kit.infer.server import BackgroundServer, Limits, ServeError, build, check_bind, create_app  # noqa: E402

NAME = "tiny"
KEY = "sk-test-0123456789"
PROMPTS = [
    "Hello there",
    "What is the capital of France?",
    "Count to five.",
    "Name a colour.",
    "Write a haiku about rain.",
    "What is 2+2?",
]


@pytest.fixture(scope="module")
def tiny(tiny_model_dir):
    # chatml_tools: a template that renders tools, so the tool tests can use this model too
    return ChatModel.load(str(tiny_model_dir), model__template="chatml_tools")


@pytest.fixture(scope="module")
def server(tiny):
    app = create_app(
        tiny.engine,
        name=NAME,
        limits=Limits(max_body_bytes=64 * 1024, max_messages=8, max_tokens=64),
        defaults=tiny.settings(max_new_tokens=16),
    )
    with BackgroundServer(app) as srv:
        yield srv


@pytest.fixture(scope="module")
def client(server):
    return openai.OpenAI(base_url=server.url, api_key="unused-on-localhost", max_retries=0, timeout=120)


def _solo(tiny, prompt, n=12) -> str:
    return tiny.engine.generate([tiny.request(prompt, max_new_tokens=n)])[0].text


def _assert_error(resp, status: int, *, param=None, code=None, words: str = ""):
    assert resp.status_code == status, resp.text
    body = resp.json()
    assert set(body) == {"error"} and set(body["error"]) == {"message", "type", "param", "code"}, body
    err = body["error"]
    assert err["param"] == param and err["code"] == code and words in err["message"], err
    return err


# ------------------------------------------------------------------ the happy paths


def test_models_chat_and_completions(tiny, client):
    assert [m.id for m in client.models.list().data] == [NAME]
    r = client.chat.completions.create(model=NAME, messages=[{"role": "user", "content": PROMPTS[1]}], max_tokens=12)
    want = tiny.engine.generate([tiny.request(PROMPTS[1], max_new_tokens=12)])[0]
    assert r.choices[0].message.content == want.text and r.choices[0].message.role == "assistant"
    assert r.choices[0].finish_reason == ("length" if want.finish_reason == "length" else "stop")
    assert r.usage.prompt_tokens == want.prompt_tokens and r.usage.completion_tokens == len(want.token_ids)
    assert r.usage.total_tokens == r.usage.prompt_tokens + r.usage.completion_tokens

    chunks = list(
        client.chat.completions.create(
            model=NAME,
            messages=[{"role": "user", "content": PROMPTS[1]}],
            max_tokens=12,
            stream=True,
            stream_options={"include_usage": True},
        )
    )
    assert chunks[0].choices[0].delta.role == "assistant"
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == want.text
    assert [c.choices[0].finish_reason for c in chunks if c.choices][-1] == r.choices[0].finish_reason
    assert chunks[-1].choices == [] and chunks[-1].usage.completion_tokens == r.usage.completion_tokens
    assert len({c.id for c in chunks}) == 1

    c = client.completions.create(model=NAME, prompt=["Once upon a time", "The sky is"], max_tokens=5)
    solo = [
        tiny.engine.generate([ChatRequest(prompt=p, settings=tiny.settings(max_new_tokens=5))])[0]
        for p in ("Once upon a time", "The sky is")
    ]
    assert [ch.text for ch in c.choices] == [s.text for s in solo] and [ch.index for ch in c.choices] == [0, 1]
    assert c.usage.completion_tokens == sum(len(s.token_ids) for s in solo)
    streamed = "".join(
        ch.choices[0].text
        for ch in client.completions.create(model=NAME, prompt="Once upon a time", max_tokens=5, stream=True)
        if ch.choices
    )
    assert streamed == solo[0].text


def test_settings_reach_the_model(tiny, client):
    full = tiny.engine.generate([tiny.request(PROMPTS[4], max_new_tokens=20)])[0]
    mid = len(full.token_ids) // 2
    stop = tiny.tokenizer.decode(full.token_ids[mid : mid + 1])  # surely in the answer
    r = client.chat.completions.create(
        model=NAME, messages=[{"role": "user", "content": PROMPTS[4]}], max_tokens=20, stop=[stop]
    )
    assert r.choices[0].message.content == full.text[: full.text.find(stop)] and r.choices[0].finish_reason == "stop"
    a, b = (
        client.chat.completions.create(
            model=NAME, messages=[{"role": "user", "content": PROMPTS[0]}], max_tokens=10, temperature=1.0, seed=7
        )
        .choices[0]
        .message.content
        for _ in range(2)
    )
    assert a == b  # seeded sampling repeats


def test_concurrent_clients_get_their_own_answers(tiny, client):
    want = {p: _solo(tiny, p) for p in PROMPTS}
    got: dict = {}
    errors: list = []

    def ask(i: int, p: str) -> None:
        try:
            if i % 2:
                s = client.chat.completions.create(
                    model=NAME, messages=[{"role": "user", "content": p}], max_tokens=12, stream=True
                )
                got[p] = "".join(c.choices[0].delta.content or "" for c in s if c.choices)
            else:
                got[p] = (
                    client.chat.completions.create(model=NAME, messages=[{"role": "user", "content": p}], max_tokens=12)
                    .choices[0]
                    .message.content
                )
        except Exception as e:  # pragma: no cover - reported below
            errors.append(e)

    threads = [threading.Thread(target=ask, args=(i, p)) for i, p in enumerate(PROMPTS)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(120)
    assert not errors and got == want  # batched together, yet every client got exactly its own answer


# ------------------------------------------------------------------ bad requests


def test_bad_requests_get_openai_errors_and_the_server_keeps_answering(server, client):
    url = server.url
    post = lambda body, **kw: httpx.post(f"{url}/chat/completions", json=body, timeout=60, **kw)  # noqa: E731
    user = [{"role": "user", "content": "hi"}]
    _assert_error(
        httpx.post(
            f"{url}/chat/completions",
            content=b'{"model": "tiny", "messages": [',
            timeout=60,
            headers={"content-type": "application/json"},
        ),
        400,
        code="invalid_json",
        words="not valid JSON",
    )
    _assert_error(post([1, 2]), 400, words="JSON object")
    _assert_error(
        post({"model": NAME, "messages": [{"role": "wizard", "content": "hi"}]}),
        400,
        param="messages[0].role",
        words="allowed: system",
    )
    _assert_error(post({"model": NAME, "messages": [{"role": "user", "content": 5}]}), 400, param="messages[0].content")
    _assert_error(post({"model": NAME, "messages": []}), 400, param="messages")
    _assert_error(post({"model": NAME, "messages": user * 9}), 400, param="messages", words="max_messages")
    _assert_error(
        post({"model": NAME, "messages": user, "max_tokens": 65}), 400, param="max_tokens", words="max_tokens limit"
    )
    _assert_error(post({"model": NAME, "messages": user, "temperature": -1}), 400, param="temperature")
    _assert_error(post({"model": NAME, "messages": user, "n": 2}), 400, param="n")
    _assert_error(post({"model": NAME, "messages": user, "stop": ["a"] * 5}), 400, param="stop", words="max_stop")
    _assert_error(post({"messages": user}), 400, param="model")
    _assert_error(post({"model": "gpt-4", "messages": user}), 404, param="model", code="model_not_found")
    _assert_error(
        post({"model": NAME, "messages": [{"role": "user", "content": "x" * 70000}]}),
        413,
        code="request_too_large",
        words="max_body_bytes",
    )
    # a body without Content-Length is counted as it arrives
    chunks = (b"x" * 8192 for _ in range(10))
    _assert_error(httpx.post(f"{url}/chat/completions", content=chunks, timeout=60), 413, code="request_too_large")
    _assert_error(
        post({"model": NAME, "messages": [{"role": "user", "content": "word " * 1100}]}),
        400,
        param="messages",
        code="context_length_exceeded",
        words="context is 1024 tokens",
    )
    _assert_error(
        post({"model": NAME, "messages": [{"role": "user", "content": "word " * 1000}], "max_tokens": 60}),
        400,
        param="max_tokens",
        code="context_length_exceeded",
    )
    _assert_error(httpx.get(f"{url}/nothing/here", timeout=60), 404, code="not_found")
    _assert_error(httpx.get(f"{url}/chat/completions", timeout=60), 405, code="method_not_allowed")
    with pytest.raises(openai.NotFoundError):
        client.chat.completions.create(model="nope", messages=user)
    with pytest.raises(openai.BadRequestError):
        client.completions.create(model=NAME, prompt="hi", echo=True)
    # and it still answers
    assert client.chat.completions.create(model=NAME, messages=user, max_tokens=3).usage.completion_tokens >= 1


def test_a_vanished_streaming_client_is_cancelled(server):
    service = server.app.state.service
    with httpx.stream(
        "POST",
        f"{server.url}/chat/completions",
        timeout=60,
        json={
            "model": NAME,
            "messages": [{"role": "user", "content": "Tell me everything."}],
            "max_tokens": 64,
            "stream": True,
        },
    ) as r:
        for line in r.iter_lines():
            if line.startswith("data:") and "content" in line:
                break  # read one piece, then hang up
    t0 = time.time()
    while service.scheduler.active() and time.time() - t0 < 30:
        time.sleep(0.05)
    assert service.scheduler.active() == 0


# ------------------------------------------------------------------ the API key


def test_an_api_key_guards_every_route(tiny):
    app = create_app(tiny.engine, name=NAME, api_key=KEY, defaults=tiny.settings(max_new_tokens=4))
    with BackgroundServer(app) as srv:
        for path in ("/models", "/chat/completions", "/nothing"):
            r = httpx.get(srv.url + path, timeout=60)
            _assert_error(r, 401, code="invalid_api_key", words="missing API key")
            r = httpx.get(srv.url + path, headers={"Authorization": "Bearer wrong"}, timeout=60)
            _assert_error(r, 401, code="invalid_api_key", words="invalid API key")
        with pytest.raises(openai.AuthenticationError):
            openai.OpenAI(base_url=srv.url, api_key="wrong", max_retries=0).models.list()
        good = openai.OpenAI(base_url=srv.url, api_key=KEY, max_retries=0)
        assert good.chat.completions.create(model=NAME, messages=[{"role": "user", "content": "hi"}]).choices
        assert KEY not in json.dumps(httpx.get(srv.url + "/models", timeout=60).json())


def test_listening_beyond_localhost_needs_a_key(monkeypatch, capsys):
    check_bind("127.0.0.1", None)
    check_bind("0.0.0.0", KEY)
    with pytest.raises(ServeError, match="refusing to listen on 0.0.0.0 without an API key"):
        check_bind("0.0.0.0", None)
    from kit.cli import main

    monkeypatch.delenv("FORGE_API_KEY", raising=False)
    assert main(["serve", "no-such-model-is-loaded", "--host", "0.0.0.0"]) == 2  # refused before loading anything
    assert "without an API key" in capsys.readouterr().err


# ------------------------------------------------------------------ tools


class ScriptedEngine:
    """A ChatEngine that answers with fixed text (tokenized by a real tokenizer), to drive the
    server's tool-call parsing without a model trained to call tools."""

    backend = "scripted"

    def __init__(self, tokenizer, answer: str):
        self.tokenizer, self.answer, self.name, self.context_length = tokenizer, answer, "scripted", 4096
        self.seen: list[ChatRequest] = []

    def prepare(self, request):
        from kit.infer.engine import prompt_ids

        return prompt_ids(self.tokenizer, request)

    def stream(self, request) -> Iterator[Delta]:
        self.prepare(request)
        self.seen.append(request)
        ids = self.tokenizer(self.answer, add_special_tokens=False)["input_ids"]
        for i, t in enumerate(ids):
            yield Delta(
                self.tokenizer.decode([t]), [t], len(request.prompt_ids), i + 1, "stop" if i == len(ids) - 1 else None
            )

    def generate(self, requests: Sequence[ChatRequest]) -> list[Completion]:
        return [Completion(self.answer, [], len(self.prepare(r)), "stop") for r in requests]


TOOLS = [
    {
        "type": "function",
        "function": {
            "name": "get_weather",
            "description": "Current weather of a city.",
            "parameters": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]},
        },
    }
]


def test_tools_are_rendered_and_tool_calls_come_back(tiny):
    answer = 'Let me check.\n<tool_call>\n{"name": "get_weather", "arguments": {"city": "Paris"}}\n</tool_call>'
    engine = ScriptedEngine(tiny.tokenizer, answer)
    with BackgroundServer(create_app(engine, name="scripted")) as srv:
        c = openai.OpenAI(base_url=srv.url, api_key="x", max_retries=0)
        msgs = [{"role": "user", "content": "Weather in Paris?"}]
        r = c.chat.completions.create(model="scripted", messages=msgs, tools=TOOLS)
        call = r.choices[0].message.tool_calls[0]
        assert r.choices[0].finish_reason == "tool_calls" and r.choices[0].message.content == "Let me check."
        assert call.function.name == "get_weather" and json.loads(call.function.arguments) == {"city": "Paris"}
        assert "get_weather" in tiny.tokenizer.decode(engine.seen[-1].prompt_ids)  # the template listed the tool
        chunks = list(c.chat.completions.create(model="scripted", messages=msgs, tools=TOOLS, stream=True))
        text = "".join(ch.choices[0].delta.content or "" for ch in chunks if ch.choices)
        calls = [tc for ch in chunks if ch.choices for tc in (ch.choices[0].delta.tool_calls or [])]
        assert text == "Let me check.\n" and "<tool_call>" not in text
        assert calls[0].function.name == "get_weather" and chunks[-1].choices[0].finish_reason == "tool_calls"
        # the call and its result go back in as the next turn's history
        follow = msgs + [
            r.choices[0].message.model_dump(exclude_none=True),
            {"role": "tool", "tool_call_id": call.id, "content": '{"temp_c": 18}'},
        ]
        c.chat.completions.create(model="scripted", messages=follow, tools=TOOLS)
        rendered = tiny.tokenizer.decode(engine.seen[-1].prompt_ids)
        assert '"city": "Paris"' in rendered and "<tool_response>" in rendered and "temp_c" in rendered
        # tool_choice none: the tools are not rendered
        c.chat.completions.create(model="scripted", messages=msgs, tools=TOOLS, tool_choice="none")
        assert "get_weather" not in tiny.tokenizer.decode(engine.seen[-1].prompt_ids)


def test_tools_on_a_template_that_cannot_render_them_are_refused(tiny_model_dir):
    plain = ChatModel.load(str(tiny_model_dir))  # SmolLM2's own template drops tools
    with BackgroundServer(create_app(plain.engine, name=NAME)) as srv:
        r = httpx.post(
            f"{srv.url}/chat/completions",
            json={"model": NAME, "tools": TOOLS, "messages": [{"role": "user", "content": "hi"}]},
            timeout=60,
        )
        _assert_error(r, 400, param="tools", words="does not render tools")


# ------------------------------------------------------------------ the remote back end


def test_chat_model_connects_to_a_running_server(tiny, server):
    remote = ChatModel.connect(server.url)
    assert remote.backend == "remote" and remote.engine.name == NAME
    want = tiny.generate(PROMPTS[2], max_new_tokens=10)
    assert remote.generate(PROMPTS[2], max_new_tokens=10) == want
    assert "".join(remote.stream(PROMPTS[2], max_new_tokens=10)).strip() == want
    assert remote.generate_many(PROMPTS[:3], max_new_tokens=6) == [
        tiny.generate(p, max_new_tokens=6) for p in PROMPTS[:3]
    ]
    from kit.infer.remote import RemoteError

    with pytest.raises(RemoteError, match="max_tokens"):
        remote.generate("hi", max_new_tokens=1000)
    with pytest.raises(RemoteError, match="cannot reach"):
        ChatModel.connect("http://127.0.0.1:9/v1")


# ------------------------------------------------------------------ the default model


@pytest.mark.e2e
def test_default_model_served_streaming_and_not(default_model_dir):
    cm = ChatModel.load("smollm2-135m-instruct")
    with BackgroundServer(build(cm, name="smollm2-135m-instruct")) as srv:
        c = openai.OpenAI(base_url=srv.url, api_key="x", max_retries=0, timeout=300)
        msgs = [{"role": "user", "content": "What is the capital of France?"}]
        r = c.chat.completions.create(model="smollm2-135m-instruct", messages=msgs, max_tokens=16)
        assert r.choices[0].message.content == cm.engine.generate([cm.request(msgs, max_new_tokens=16)])[0].text
        assert "Paris" in r.choices[0].message.content
        s = c.chat.completions.create(model="smollm2-135m-instruct", messages=msgs, max_tokens=16, stream=True)
        assert "".join(ch.choices[0].delta.content or "" for ch in s if ch.choices) == r.choices[0].message.content


def test_the_boards_chat_tab_talks_to_a_running_server(tiny, server):
    pytest.importorskip("ipywidgets")
    from kit.widgets.chat import ChatPanel

    panel = ChatPanel(url=server.url, max_new_tokens=8)
    got = panel.send("Hello there", wait=True)
    want = tiny.engine.generate([tiny.request("Hello there", max_new_tokens=8)])[
        0
    ].text  # the streamed text, unstripped
    assert got["tuned"] == want and panel.model().backend == "remote"
