"""``forge serve``: an OpenAI-compatible HTTP API over any chat engine (FastAPI + uvicorn).

    forge serve RUN_DIR_OR_CONFIG_OR_MODEL [--port 8000] [--api-key KEY] [key=value ...]

    from openai import OpenAI
    client = OpenAI(base_url="http://127.0.0.1:8000/v1", api_key="unused-on-localhost")
    client.chat.completions.create(model="<served name>", messages=[{"role": "user", "content": "Hi"}])

Routes: ``GET /v1/models``, ``POST /v1/chat/completions`` (streaming over SSE too, with
``stream_options.include_usage``), ``POST /v1/completions``, ``GET /health``. Tools go through the
chat template and come back as ``tool_calls`` (:mod:`kit.infer.tools`). Every error has OpenAI's
shape ``{"error": {"message", "type", "param", "code"}}`` and a 4xx status when the request is at fault.

Safe by default:

* binds 127.0.0.1; any other address needs an API key (``--api-key`` or ``FORGE_API_KEY``), and
  then every route (404s included) checks ``Authorization: Bearer <key>`` in constant time. The key
  is never printed or logged.
* limits (:class:`Limits`): request body size, number of messages, ``max_tokens``, stop strings,
  prompt + answer within the model's context, queued requests. Each refusal names the limit.
* concurrency: requests go to a scheduler (:mod:`kit.infer.scheduler`) that batches them (the
  ``hf`` back end decodes all running requests in one forward pass) and hands each its own stream;
  a slow reader never blocks the scheduler, and a closed connection cancels its request.

Needs the ``serve`` extra (``pip install forge-kit[serve]``: fastapi, uvicorn, openai).
"""

from __future__ import annotations

import asyncio
import hmac
import json
import logging
import os
import socket
import threading
import time
import uuid
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Any, AsyncIterator, Optional, Sequence

from fastapi import Request  # module level: FastAPI resolves the handlers' annotations in this namespace

from ..config import ConfigError
from ..errors import ForgeError
from .decoding import StopStrings
from .engine import FINISH_LENGTH, ChatRequest, ContextLengthError, GenerationSettings, prompt_ids
from .tools import OPEN, openai_messages_to_chat, parse_tool_calls, supports_tools

log = logging.getLogger("kit.serve")

LOCAL_HOSTS = ("127.0.0.1", "localhost", "::1")
ROLES = ("system", "developer", "user", "assistant", "tool")
API_KEY_ENV = "FORGE_API_KEY"


class ServeError(ForgeError, ValueError):
    """The server cannot start as asked (e.g. a public address without an API key)."""


@dataclass(frozen=True)
class Limits:
    """What one request may ask for. ``max_tokens``: the largest ``max_tokens`` accepted (the
    model's context bounds prompt + answer as well); ``max_pending``: requests waiting for a slot
    before new ones get 429."""

    max_body_bytes: int = 1 << 20
    max_messages: int = 256
    max_tokens: int = 4096
    max_stop: int = 4
    max_prompts: int = 16
    max_pending: int = 64


class APIError(Exception):
    """A request we refuse, with its HTTP status and OpenAI's error fields."""

    def __init__(
        self,
        status: int,
        message: str,
        *,
        type: str = "invalid_request_error",
        param: Optional[str] = None,
        code: Optional[str] = None,
    ):
        super().__init__(message)
        self.status, self.message, self.type, self.param, self.code = status, message, type, param, code

    def body(self) -> dict:
        return {"error": {"message": self.message, "type": self.type, "param": self.param, "code": self.code}}


def check_bind(host: str, api_key: Optional[str]) -> None:
    """Refuse to listen beyond this machine without an API key."""
    if host not in LOCAL_HOSTS and not api_key:
        raise ServeError(
            f"refusing to listen on {host} without an API key: anyone who can reach it could use the "
            f"model. Give --api-key KEY (or set {API_KEY_ENV}), or bind 127.0.0.1"
        )


# ------------------------------------------------------------------ the guard (every route)


class Guard:
    """Pure ASGI middleware: the API key on every request (before routing, so unknown routes too)
    and the declared body size. Bodies without a Content-Length are counted as they arrive
    (:func:`read_body`)."""

    def __init__(self, app: Any, api_key: Optional[str], max_body_bytes: int):
        self.app = app
        self._key = api_key.encode() if api_key else None
        self.max_body_bytes = max_body_bytes

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        headers = dict(scope.get("headers") or [])
        if self._key is not None:
            auth = headers.get(b"authorization", b"")
            token = auth[7:].strip() if auth[:7].lower() == b"bearer " else b""
            if not hmac.compare_digest(token, self._key):
                msg = "missing API key: send Authorization: Bearer <key>" if not token else "invalid API key"
                return await _send(send, APIError(401, msg, type="authentication_error", code="invalid_api_key"))
        length = headers.get(b"content-length")
        if length is not None:
            try:
                n = int(length)
            except ValueError:
                return await _send(send, APIError(400, "bad Content-Length header", param="Content-Length"))
            if n > self.max_body_bytes:
                return await _send(send, _too_large(self.max_body_bytes))
        return await self.app(scope, receive, send)


def _too_large(limit: int) -> APIError:
    return APIError(
        413, f"the request body is larger than the limit of {limit} bytes (max_body_bytes)", code="request_too_large"
    )


async def _send(send, err: APIError) -> None:
    body = json.dumps(err.body()).encode()
    await send(
        {
            "type": "http.response.start",
            "status": err.status,
            "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())],
        }
    )
    await send({"type": "http.response.body", "body": body})


async def read_body(request: Any, limit: int) -> bytes:
    chunks, size = [], 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            raise _too_large(limit)
        chunks.append(chunk)
    return b"".join(chunks)


# ------------------------------------------------------------------ reading a request


def _get_number(
    data: dict, key: str, lo: float, hi: Optional[float], *, integer: bool = False, limit_name: Optional[str] = None
) -> Any:
    v = data.get(key)
    if v is None:
        return None
    if isinstance(v, bool) or not isinstance(v, (int, float)) or (integer and not float(v).is_integer()):
        raise APIError(400, f"'{key}' must be {'an integer' if integer else 'a number'}, got {v!r}", param=key)
    if v < lo or (hi is not None and v > hi):
        span = f"between {lo} and {hi}" if hi is not None else f">= {lo}"
        raise APIError(400, f"'{key}' must be {span}{f' ({limit_name})' if limit_name else ''}, got {v!r}", param=key)
    return int(v) if integer else float(v)


def _refuse_unsupported(data: dict) -> None:
    n = data.get("n")
    if n not in (None, 1):
        raise APIError(400, "only n=1 is supported", param="n")
    for key in ("presence_penalty", "frequency_penalty"):
        if data.get(key) not in (None, 0, 0.0):
            raise APIError(400, f"'{key}' is not supported (use repetition_penalty)", param=key)
    if data.get("logprobs") not in (None, False, 0) or data.get("top_logprobs"):
        raise APIError(400, "logprobs are not supported", param="logprobs")
    fmt = data.get("response_format")
    if fmt not in (None, {"type": "text"}):
        raise APIError(400, "only response_format {'type': 'text'} is supported", param="response_format")


def _stop(data: dict, limits: Limits) -> tuple[str, ...]:
    stop = data.get("stop")
    if stop is None:
        return ()
    if isinstance(stop, str):
        stop = [stop]
    if not isinstance(stop, list) or not all(isinstance(s, str) and s for s in stop):
        raise APIError(400, "'stop' must be a non-empty string or a list of them", param="stop")
    if len(stop) > limits.max_stop:
        raise APIError(400, f"at most {limits.max_stop} stop strings (max_stop), got {len(stop)}", param="stop")
    return tuple(stop)


def _messages(data: dict, limits: Limits) -> list[dict]:
    msgs = data.get("messages")
    if not isinstance(msgs, list) or not msgs:
        raise APIError(400, "'messages' must be a non-empty list", param="messages")
    if len(msgs) > limits.max_messages:
        raise APIError(
            400, f"at most {limits.max_messages} messages per request (max_messages), got {len(msgs)}", param="messages"
        )
    for i, m in enumerate(msgs):
        if not isinstance(m, dict):
            raise APIError(400, f"messages[{i}] must be an object", param=f"messages[{i}]")
        role = m.get("role")
        if role not in ROLES:
            raise APIError(
                400, f"messages[{i}].role is {role!r}; allowed: {', '.join(ROLES)}", param=f"messages[{i}].role"
            )
        content = m.get("content")
        ok = (
            content is None
            and (role == "assistant" and m.get("tool_calls"))
            or isinstance(content, str)
            or (
                isinstance(content, list)
                and all(
                    isinstance(p, dict) and p.get("type") == "text" and isinstance(p.get("text"), str) for p in content
                )
            )
        )
        if not ok:
            raise APIError(
                400, f"messages[{i}].content must be a string or a list of text parts", param=f"messages[{i}].content"
            )
    if msgs[-1]["role"] == "assistant":
        raise APIError(
            400,
            "the last message is the assistant's: nothing to answer (continuing an answer is not supported)",
            param=f"messages[{len(msgs) - 1}].role",
        )
    return msgs


def _tools(data: dict, tokenizer: Any) -> Optional[list]:
    tools, choice = data.get("tools"), data.get("tool_choice")
    if not tools or choice == "none":
        return None
    if not isinstance(tools, list) or not all(
        isinstance(t, dict) and t.get("type") == "function" and isinstance((t.get("function") or {}).get("name"), str)
        for t in tools
    ):
        raise APIError(400, "'tools' must be a list of {'type': 'function', 'function': {'name', ...}}", param="tools")
    if choice not in (None, "auto"):
        raise APIError(
            400, "tool_choice must be 'auto' or 'none' (forcing a call is not supported)", param="tool_choice"
        )
    if not supports_tools(tokenizer):
        raise APIError(
            400,
            "this model's chat template does not render tools; serve it with a template that does "
            "(e.g. model.template=chatml_tools)",
            param="tools",
        )
    return tools


# ------------------------------------------------------------------ the app


class Service:
    """What the routes share: the engine, its scheduler, the defaults and the limits."""

    def __init__(self, engine: Any, name: str, defaults: GenerationSettings, limits: Limits):
        from .scheduler import scheduler_for

        self.engine, self.name, self.defaults, self.limits = engine, name, defaults, limits
        self.scheduler = scheduler_for(engine)
        self.created = int(time.time())

    def settings(self, data: dict, default_max_tokens: int) -> GenerationSettings:
        lim = self.limits
        _refuse_unsupported(data)
        max_tokens = data.get("max_completion_tokens", data.get("max_tokens"))
        if max_tokens is not None:
            max_tokens = _get_number(
                {"max_tokens": max_tokens}, "max_tokens", 1, lim.max_tokens, integer=True, limit_name="max_tokens limit"
            )
        values: dict[str, Any] = {
            "max_new_tokens": max_tokens or min(default_max_tokens, lim.max_tokens),
            "temperature": _get_number(data, "temperature", 0.0, 2.0),
            "top_p": _get_number(data, "top_p", 0.0, 1.0),
            "top_k": _get_number(data, "top_k", 0, None, integer=True),
            "repetition_penalty": _get_number(data, "repetition_penalty", 1e-6, None),
            "seed": _get_number(data, "seed", -(2**63), 2**63 - 1, integer=True),
            "stop": _stop(data, lim) or self.defaults.stop,
        }
        explicit = {k: v for k, v in values.items() if v is not None}
        return self.defaults.replace(**explicit)

    def check_model(self, data: dict) -> None:
        model = data.get("model")
        if not isinstance(model, str) or not model:
            raise APIError(400, "'model' is required (see GET /v1/models)", param="model")
        if model != self.name:
            raise APIError(
                404,
                f"the model {model!r} does not exist; this server serves {self.name!r}",
                param="model",
                code="model_not_found",
            )

    def submit(self, req: ChatRequest, explicit_max: bool) -> Any:
        """Encode and check the prompt, then queue it; returns the ticket."""
        if self.scheduler.pending() >= self.limits.max_pending:
            raise APIError(
                429,
                f"the server is busy: {self.limits.max_pending} requests are waiting (max_pending); retry shortly",
                type="rate_limit_error",
                code="server_busy",
            )
        ctx = self.engine.context_length
        try:
            n = len(prompt_ids(self.engine.tokenizer, req))
        except Exception as e:  # a chat template that rejects these messages (roles out of order...)
            raise APIError(
                400, f"the messages cannot be rendered with this model's chat template: {e}", param="messages"
            ) from e
        param = "messages" if req.messages is not None else "prompt"
        if n >= ctx:
            raise APIError(
                400,
                f"the prompt is {n} tokens; this model's context is {ctx} tokens",
                param=param,
                code="context_length_exceeded",
            )
        if n + req.settings.max_new_tokens > ctx:
            if explicit_max:
                raise APIError(
                    400,
                    f"the prompt ({n} tokens) plus max_tokens ({req.settings.max_new_tokens}) exceed "
                    f"this model's context of {ctx} tokens",
                    param="max_tokens",
                    code="context_length_exceeded",
                )
            req.settings = req.settings.replace(max_new_tokens=ctx - n)
        try:
            return self.scheduler.submit(req, loop=asyncio.get_running_loop())
        except ContextLengthError as e:
            raise APIError(400, str(e), param=param, code="context_length_exceeded") from e
        except ConfigError as e:
            raise APIError(400, str(e), param=getattr(e, "key", None)) from e


def _finish(reason: Optional[str]) -> str:
    return "length" if reason == FINISH_LENGTH else "stop"


def _usage(prompt: int, completion: int) -> dict:
    return {"prompt_tokens": prompt, "completion_tokens": completion, "total_tokens": prompt + completion}


def _sse(obj: Any) -> str:
    return f"data: {json.dumps(obj, ensure_ascii=False)}\n\n"


async def _collect(ticket: Any, request: Any) -> tuple[str, Any]:
    """The whole answer of a non-streaming request; a client that disconnects meanwhile cancels it."""

    async def watch():
        while not ticket.cancelled.is_set():
            if await request.is_disconnected():
                ticket.cancel()
                return
            await asyncio.sleep(0.25)

    watcher = asyncio.create_task(watch())
    text, last = [], None
    try:
        async for d in ticket.aiter():
            text.append(d.text)
            last = d
    finally:
        watcher.cancel()
    return "".join(text), last


def create_app(
    engine: Any,
    *,
    name: Optional[str] = None,
    api_key: Optional[str] = None,
    limits: Optional[Limits] = None,
    defaults: Optional[GenerationSettings] = None,
) -> Any:
    """The FastAPI app serving ``engine`` (a :class:`~kit.infer.engine.ChatEngine` with a tokenizer)
    under the model id ``name``. ``defaults``: the generation settings a request does not override."""
    from fastapi import FastAPI
    from fastapi.exceptions import RequestValidationError
    from fastapi.responses import JSONResponse, StreamingResponse
    from starlette.exceptions import HTTPException

    limits = limits or Limits()
    svc: dict[str, Service] = {}

    @asynccontextmanager
    async def lifespan(app):
        yield
        svc["s"].scheduler.close()

    app = FastAPI(title="Forge Kit", lifespan=lifespan, docs_url=None, redoc_url=None, openapi_url=None)
    svc["s"] = service = Service(engine, name or engine.name, defaults or GenerationSettings(), limits)
    app.state.service = service
    app.add_middleware(Guard, api_key=api_key, max_body_bytes=limits.max_body_bytes)

    @app.exception_handler(APIError)
    async def _api_error(request, exc: APIError):
        return JSONResponse(exc.body(), status_code=exc.status)

    @app.exception_handler(HTTPException)
    async def _http_error(request, exc):
        code = {404: "not_found", 405: "method_not_allowed"}.get(exc.status_code)
        msg = f"no route {request.method} {request.url.path}" if exc.status_code in (404, 405) else str(exc.detail)
        return JSONResponse(APIError(exc.status_code, msg, code=code).body(), status_code=exc.status_code)

    @app.exception_handler(RequestValidationError)
    async def _validation_error(request, exc):
        return JSONResponse(APIError(400, str(exc)).body(), status_code=400)

    @app.exception_handler(Exception)
    async def _server_error(request, exc):
        log.exception("unexpected error")
        return JSONResponse(APIError(500, "internal server error", type="server_error").body(), status_code=500)

    async def read_json(request: Request) -> dict:
        body = await read_body(request, limits.max_body_bytes)
        try:
            data = json.loads(body)
        except ValueError as e:
            raise APIError(400, f"the request body is not valid JSON: {e}", code="invalid_json") from e
        if not isinstance(data, dict):
            raise APIError(400, "the request body must be a JSON object")
        return data

    def model_card() -> dict:
        return {"id": service.name, "object": "model", "created": service.created, "owned_by": "forge-kit"}

    @app.get("/health")
    async def health():
        return {"status": "ok", "model": service.name, "backend": engine.backend}

    @app.get("/v1/models")
    async def models():
        return {"object": "list", "data": [model_card()]}

    @app.get("/v1/models/{model_id:path}")
    async def model(model_id: str):
        if model_id != service.name:
            raise APIError(404, f"the model {model_id!r} does not exist", param="model", code="model_not_found")
        return model_card()

    @app.post("/v1/chat/completions")
    async def chat_completions(request: Request):
        data = await read_json(request)
        service.check_model(data)
        messages = _messages(data, limits)
        tools = _tools(data, engine.tokenizer)
        settings = service.settings(data, service.defaults.max_new_tokens)
        explicit = data.get("max_completion_tokens", data.get("max_tokens")) is not None
        req = ChatRequest(messages=openai_messages_to_chat(messages), tools=tools, settings=settings)
        ticket = service.submit(req, explicit)
        cid, created = f"chatcmpl-{uuid.uuid4().hex}", int(time.time())
        if data.get("stream"):
            opts = data.get("stream_options") or {}
            return StreamingResponse(
                _chat_stream(ticket, cid, created, bool(opts.get("include_usage")), tools is not None),
                media_type="text/event-stream",
                headers={"Cache-Control": "no-cache"},
            )
        text, last = await _collect(ticket, request)
        message: dict[str, Any] = {"role": "assistant", "content": text}
        finish = _finish(last.finish_reason if last else None)
        if tools is not None:
            content, calls = parse_tool_calls(text)
            if calls:
                message = {"role": "assistant", "content": content, "tool_calls": calls}
                finish = "tool_calls"
        n_prompt = len(req.prompt_ids or [])
        return {
            "id": cid,
            "object": "chat.completion",
            "created": created,
            "model": service.name,
            "choices": [{"index": 0, "message": message, "finish_reason": finish, "logprobs": None}],
            "usage": _usage(n_prompt, last.completion_tokens if last else 0),
        }

    async def _chat_stream(ticket, cid: str, created: int, include_usage: bool, tools_on: bool) -> AsyncIterator[str]:
        def chunk(delta: dict, finish: Optional[str] = None) -> str:
            return _sse(
                {
                    "id": cid,
                    "object": "chat.completion.chunk",
                    "created": created,
                    "model": service.name,
                    "choices": [{"index": 0, "delta": delta, "finish_reason": finish, "logprobs": None}],
                }
            )

        hold = StopStrings([OPEN]) if tools_on else None  # text from "<tool_call>" on is held for parsing
        last, full = None, []
        try:
            yield chunk({"role": "assistant", "content": ""})
            async for d in ticket.aiter():
                last = d
                full.append(d.text)
                piece = hold.push(d.text) if hold is not None else d.text
                if piece:
                    yield chunk({"content": piece})
            finish = _finish(last.finish_reason if last else None)
            if hold is not None:
                if hold.stopped:  # hold.text is the answer before the marker, streamed already
                    content, calls = parse_tool_calls("".join(full)[len(hold.text) :])
                    if calls:
                        yield chunk({"tool_calls": [dict(c, index=i) for i, c in enumerate(calls)]})
                        finish = "tool_calls"
                    if content:
                        yield chunk({"content": content})
                else:
                    rest = hold.flush()
                    if rest:
                        yield chunk({"content": rest})
            yield chunk({}, finish)
            if include_usage:
                n_prompt = len(ticket.request.prompt_ids or [])
                yield _sse(
                    {
                        "id": cid,
                        "object": "chat.completion.chunk",
                        "created": created,
                        "model": service.name,
                        "choices": [],
                        "usage": _usage(n_prompt, last.completion_tokens if last else 0),
                    }
                )
            yield "data: [DONE]\n\n"
        except Exception as e:  # generation failed mid-stream: the status is sent already, so say it in-band
            log.exception("stream failed")
            yield _sse(APIError(500, f"generation failed: {type(e).__name__}", type="server_error").body())
        finally:
            ticket.cancel()  # a disconnected client lands here (the generator is closed): free its row

    @app.post("/v1/completions")
    async def completions(request: Request):
        data = await read_json(request)
        service.check_model(data)
        prompt = data.get("prompt")
        prompts = [prompt] if isinstance(prompt, str) else prompt
        if not isinstance(prompts, list) or not prompts or not all(isinstance(p, str) for p in prompts):
            raise APIError(400, "'prompt' must be a string or a list of strings", param="prompt")
        if len(prompts) > limits.max_prompts:
            raise APIError(400, f"at most {limits.max_prompts} prompts per request (max_prompts)", param="prompt")
        for key, off in (("echo", False), ("suffix", None), ("best_of", 1)):
            v = data.get(key)
            if v is not None and v != off or (key == "echo" and v not in (None, False)):
                raise APIError(400, f"'{key}' is not supported", param=key)
        settings = service.settings(data, 16)  # OpenAI's default for completions
        explicit = data.get("max_tokens") is not None
        stream = bool(data.get("stream"))
        if stream and len(prompts) > 1:
            raise APIError(400, "streaming takes one prompt at a time", param="prompt")
        reqs = [ChatRequest(prompt=p, settings=settings) for p in prompts]
        tickets = []
        try:
            for r in reqs:
                tickets.append(service.submit(r, explicit))
        except APIError:
            for t in tickets:
                t.cancel()
            raise
        cid, created = f"cmpl-{uuid.uuid4().hex}", int(time.time())
        if stream:
            opts = data.get("stream_options") or {}
            return StreamingResponse(
                _completion_stream(tickets[0], cid, created, bool(opts.get("include_usage"))),
                media_type="text/event-stream",
                headers={"Cache-Control": "no-cache"},
            )
        results = await asyncio.gather(*[_collect(t, request) for t in tickets])
        choices, n_out = [], 0
        for i, (text, last) in enumerate(results):
            choices.append(
                {
                    "index": i,
                    "text": text,
                    "logprobs": None,
                    "finish_reason": _finish(last.finish_reason if last else None),
                }
            )
            n_out += last.completion_tokens if last else 0
        n_in = sum(len(r.prompt_ids or []) for r in reqs)
        return {
            "id": cid,
            "object": "text_completion",
            "created": created,
            "model": service.name,
            "choices": choices,
            "usage": _usage(n_in, n_out),
        }

    async def _completion_stream(ticket, cid: str, created: int, include_usage: bool) -> AsyncIterator[str]:
        def chunk(text: str, finish: Optional[str] = None) -> str:
            return _sse(
                {
                    "id": cid,
                    "object": "text_completion",
                    "created": created,
                    "model": service.name,
                    "choices": [{"index": 0, "text": text, "logprobs": None, "finish_reason": finish}],
                }
            )

        last = None
        try:
            async for d in ticket.aiter():
                last = d
                if d.text:
                    yield chunk(d.text)
            yield chunk("", _finish(last.finish_reason if last else None))
            if include_usage:
                yield _sse(
                    {
                        "id": cid,
                        "object": "text_completion",
                        "created": created,
                        "model": service.name,
                        "choices": [],
                        "usage": _usage(len(ticket.request.prompt_ids or []), last.completion_tokens if last else 0),
                    }
                )
            yield "data: [DONE]\n\n"
        except Exception as e:
            log.exception("stream failed")
            yield _sse(APIError(500, f"generation failed: {type(e).__name__}", type="server_error").body())
        finally:
            ticket.cancel()

    return app


# ------------------------------------------------------------------ running it


def served_name(source: Any) -> str:
    """The model id clients use: the run directory's or model's name."""
    from pathlib import Path

    if source is None:
        from ..config import DEFAULT_MODEL

        return DEFAULT_MODEL
    if isinstance(source, (str, os.PathLike)):
        p = Path(source)
        return p.stem if p.suffix in (".gguf", ".yaml", ".yml") else (p.name or str(source))
    return type(source).__name__.lower()


def build(
    source: Any = None,
    *,
    api_key: Optional[str] = None,
    name: Optional[str] = None,
    limits: Optional[Limits] = None,
    **overrides: Any,
) -> Any:
    """Load ``source`` through :class:`~kit.ChatModel` (its ``generate`` group gives the defaults) and
    return the app."""
    from .hf import ChatModel

    cm = source if isinstance(source, ChatModel) else ChatModel.load(source, **overrides)
    return create_app(
        cm.engine,
        name=name or (cm.engine.name if isinstance(source, ChatModel) else served_name(source)),
        api_key=api_key,
        limits=limits,
        defaults=cm.settings(),
    )


def serve(
    source: Any = None,
    *,
    host: str = "127.0.0.1",
    port: int = 8000,
    api_key: Optional[str] = None,
    name: Optional[str] = None,
    limits: Optional[Limits] = None,
    log_level: str = "info",
    **overrides: Any,
) -> None:
    """Serve ``source`` until interrupted (what ``forge serve`` runs)."""
    import uvicorn

    api_key = api_key or os.environ.get(API_KEY_ENV) or None
    check_bind(host, api_key)
    app = build(source, api_key=api_key, name=name, limits=limits, **overrides)
    service = app.state.service
    where = f"[{host}]" if ":" in host else host
    print(
        f"serving {service.name!r} ({service.engine.backend} back end) at http://{where}:{port}/v1"
        f"{'; API key required' if api_key else ''}",
        flush=True,
    )
    uvicorn.run(app, host=host, port=port, log_level=log_level)


class BackgroundServer:
    """A server on a free local port in a background thread (tests, notebooks)::

    with BackgroundServer(kit.infer.server.build("smollm2-135m-instruct")) as srv:
        client = OpenAI(base_url=srv.url, api_key="x")
    """

    def __init__(self, app: Any, host: str = "127.0.0.1", port: int = 0, log_level: str = "warning"):
        import uvicorn

        self.app = app
        self._sock = socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET)
        self._sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self._sock.bind((host, port))
        self.host, self.port = host, self._sock.getsockname()[1]
        self.server = uvicorn.Server(uvicorn.Config(app, log_level=log_level))
        self._thread = threading.Thread(
            target=self.server.run, kwargs={"sockets": [self._sock]}, daemon=True, name="forge-serve"
        )

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}/v1"

    def start(self, timeout: float = 60.0) -> BackgroundServer:
        self._thread.start()
        t0 = time.time()
        while not self.server.started:
            if not self._thread.is_alive() or time.time() - t0 > timeout:
                raise RuntimeError("the server did not start")
            time.sleep(0.02)
        return self

    def stop(self) -> None:
        self.server.should_exit = True
        self._thread.join(timeout=10)
        self._sock.close()

    def __enter__(self) -> BackgroundServer:
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()


def serve_main(
    source: Any,
    pairs: Sequence[str] = (),
    *,
    host: str = "127.0.0.1",
    port: int = 8000,
    api_key: Optional[str] = None,
    name: Optional[str] = None,
    max_tokens: Optional[int] = None,
) -> int:
    """``forge serve``: ``pairs`` are ``key=value`` config overrides; bare generation knobs
    (``max_new_tokens=64``) mean the ``generate`` group, as in ``forge chat``."""
    import dataclasses

    import yaml

    from ..config import GenerateConfig

    gen_fields = {f.name for f in dataclasses.fields(GenerateConfig)}
    overrides = {}
    for p in pairs:
        if "=" not in p:
            raise ServeError(f"setting {p!r} must look like key=value (e.g. max_new_tokens=64)")
        k, v = p.split("=", 1)
        overrides["generate." + k if k in gen_fields else k] = yaml.safe_load(v)
    limits = Limits(max_tokens=max_tokens) if max_tokens else None
    serve(source, host=host, port=port, api_key=api_key, name=name, limits=limits, **overrides)
    return 0
