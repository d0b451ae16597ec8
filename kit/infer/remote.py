"""A chat engine that is a running OpenAI-compatible server, through the official ``openai`` client.

``forge chat --url http://127.0.0.1:8000/v1``, ``kit.ChatModel.connect(url)`` and the Board's chat
tab (``ChatPanel(url=...)``) use it to talk to ``forge serve`` (or vLLM's, llama.cpp's, or any
other OpenAI-compatible server). ``top_k`` and ``repetition_penalty`` are not OpenAI parameters:
they are sent in the request body's extras (vLLM and ``forge serve`` read them) only when set.
"""

from __future__ import annotations

import os
from concurrent.futures import ThreadPoolExecutor
from typing import Any, Iterator, Optional, Sequence

from ..errors import ForgeError
from .engine import FINISH_LENGTH, FINISH_STOP, ChatRequest, Completion, Delta, GenerationSettings

ENV_KEYS = ("FORGE_API_KEY", "OPENAI_API_KEY")


class RemoteError(ForgeError, RuntimeError):
    """The server refused the request or could not be reached; the message is the server's."""


def _base_url(url: str) -> str:
    url = url.rstrip("/")
    return url if url.endswith("/v1") else url + "/v1"


def _finish(reason: Optional[str]) -> str:
    return FINISH_LENGTH if reason == "length" else FINISH_STOP


class RemoteEngine:
    """``ChatEngine`` over HTTP. ``concurrency``: requests of one ``generate`` call sent at once, so
    a batching server answers them together."""

    backend = "remote"
    tokenizer = None
    context_length = 1 << 30  # the server checks its own context

    def __init__(
        self,
        url: str,
        *,
        api_key: Optional[str] = None,
        model: Optional[str] = None,
        timeout: float = 600.0,
        concurrency: int = 8,
    ):
        try:
            import openai
        except ImportError as e:
            raise RemoteError("talking to a server needs the openai client: pip install forge-kit[serve]") from e
        self._openai = openai
        key = api_key or next((os.environ[k] for k in ENV_KEYS if os.environ.get(k)), None) or "none"
        self.url = _base_url(url)
        self.client = openai.OpenAI(base_url=self.url, api_key=key, timeout=timeout, max_retries=0)
        self.concurrency = concurrency
        self.name = model or self._first_model()

    def _first_model(self) -> str:
        try:
            models = self.client.models.list().data
        except self._openai.APIError as e:
            raise self._error(e) from e
        if not models:
            raise RemoteError(f"the server at {self.url} serves no models")
        return models[0].id

    def _error(self, e: Exception) -> RemoteError:
        body = getattr(e, "body", None)
        msg = body.get("message") if isinstance(body, dict) and body.get("message") else str(e)
        if isinstance(e, self._openai.APIConnectionError):
            msg = f"cannot reach {self.url}: is the server running? ({e})"
        return RemoteError(f"{self.url}: {msg}")

    @staticmethod
    def _params(s: GenerationSettings) -> dict:
        kw: dict[str, Any] = {"max_tokens": s.max_new_tokens, "temperature": s.temperature, "top_p": s.top_p}
        if s.stop:
            kw["stop"] = list(s.stop)
        if s.seed is not None:
            kw["seed"] = s.seed
        extra = {}
        if s.top_k:
            extra["top_k"] = s.top_k
        if s.repetition_penalty != 1.0:
            extra["repetition_penalty"] = s.repetition_penalty
        if extra:
            kw["extra_body"] = extra
        return kw

    def _call(self, request: ChatRequest, stream: bool):
        kw = self._params(request.settings)
        if stream:
            kw.update(stream=True, stream_options={"include_usage": True})
        try:
            if request.messages is not None:
                if request.tools:
                    kw["tools"] = request.tools
                return self.client.chat.completions.create(model=self.name, messages=request.messages, **kw)
            return self.client.completions.create(model=self.name, prompt=request.prompt, **kw)
        except self._openai.APIError as e:
            raise self._error(e) from e

    def _one(self, request: ChatRequest) -> Completion:
        r = self._call(request, stream=False)
        choice = r.choices[0]
        text = choice.message.content if request.messages is not None else choice.text
        usage = r.usage
        return Completion(
            text=text or "",
            token_ids=[],
            prompt_tokens=usage.prompt_tokens if usage else 0,
            finish_reason=_finish(choice.finish_reason),
            completion_tokens=usage.completion_tokens if usage else 0,
        )

    def generate(self, requests: Sequence[ChatRequest]) -> list[Completion]:
        if len(requests) <= 1:
            return [self._one(r) for r in requests]
        with ThreadPoolExecutor(max_workers=min(self.concurrency, len(requests))) as pool:
            return list(pool.map(self._one, requests))

    def stream(self, request: ChatRequest) -> Iterator[Delta]:
        s = self._call(request, stream=True)
        n_prompt = n_out = 0
        finish = None
        try:
            for chunk in s:
                if chunk.usage is not None:
                    n_prompt, n_out = chunk.usage.prompt_tokens, chunk.usage.completion_tokens
                for c in chunk.choices:
                    text = (c.delta.content if request.messages is not None else c.text) or ""
                    if c.finish_reason:
                        finish = _finish(c.finish_reason)
                    if text:
                        n_out += 1
                        yield Delta(text=text, token_ids=[], prompt_tokens=n_prompt, completion_tokens=n_out)
            yield Delta(
                text="",
                token_ids=[],
                prompt_tokens=n_prompt,
                completion_tokens=n_out,
                finish_reason=finish or FINISH_STOP,
            )
        except self._openai.APIError as e:
            raise self._error(e) from e
        finally:
            s.close()
