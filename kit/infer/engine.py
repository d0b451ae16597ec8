"""The one chat-engine interface every front end talks to, and the settings all back ends share.

A back end (``generate.backend``) is a :class:`ChatEngine`:

* ``hf`` (default): transformers on CPU or GPU, our own batched decode loop (:mod:`kit.infer.batch`);
* ``vllm``: vLLM on a CUDA GPU, a run's LoRA adapter served as a ``LoRARequest`` (:mod:`kit.infer.vllm_engine`);
* ``llamacpp``: llama.cpp through ``llama-cpp-python`` on a GGUF file (:mod:`kit.infer.llamacpp`);
* a running OpenAI-compatible server (``forge serve`` or any other) through the ``openai`` client
  (:mod:`kit.infer.remote`).

``kit.chat``, :class:`kit.ChatModel`, the Board's chat tab, ``forge chat``, ``forge serve`` and
``kit.evaluate`` all go through ``generate(requests)`` / ``stream(request)``, so a setting means the
same on every back end::

    engine = load_engine("smollm2-135m-instruct")              # or a run dir, a config, a .gguf file
    req = ChatRequest(messages=[{"role": "user", "content": "Hi"}], settings=GenerationSettings(max_new_tokens=32))
    print(engine.generate([req])[0].text)
    for delta in engine.stream(req):
        print(delta.text, end="")
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any, Iterator, Optional, Protocol, Sequence, runtime_checkable

from ..config import ConfigError, GenerateConfig

BACKENDS = ("hf", "vllm", "llamacpp")

FINISH_STOP = "stop"  # an end-of-turn token or a stop string
FINISH_LENGTH = "length"  # max_new_tokens (or the model's context) reached
FINISH_CANCELLED = "cancelled"  # the caller went away (a closed stream, a disconnected client)


@dataclass(frozen=True)
class GenerationSettings:
    """How to decode one answer; the same meaning on every back end.

    ``temperature`` 0 is greedy; ``top_k`` 0 and ``top_p`` 1 switch those filters off;
    ``repetition_penalty`` 1 is off (CTRL-style: logits of tokens already seen are divided by it);
    ``stop``: strings that end the answer (not included in it); ``seed``: a seeded sampler per
    request, so the same seed gives the same answer whatever else is being generated at the time.
    """

    max_new_tokens: int = 128
    temperature: float = 0.0
    top_p: float = 1.0
    top_k: int = 0
    repetition_penalty: float = 1.0
    stop: tuple[str, ...] = ()
    seed: Optional[int] = None

    def __post_init__(self) -> None:
        stop = self.stop
        if stop is None:
            stop = ()
        elif isinstance(stop, str):
            stop = (stop,)
        object.__setattr__(self, "stop", tuple(stop))
        checks = [
            ("max_new_tokens", self.max_new_tokens, 1, None),
            ("temperature", self.temperature, 0.0, None),
            ("top_p", self.top_p, 0.0, 1.0),
            ("top_k", self.top_k, 0, None),
            ("repetition_penalty", self.repetition_penalty, 0.0, None),
        ]
        for name, value, lo, hi in checks:
            if isinstance(value, bool) or not isinstance(value, (int, float)):
                raise ConfigError(f"expected a number, got {value!r}", f"generate.{name}")
            if value < lo or (hi is not None and value > hi):
                span = f"between {lo} and {hi}" if hi is not None else f">= {lo}"
                raise ConfigError(f"must be {span}, got {value!r}", f"generate.{name}")
        if self.repetition_penalty == 0:
            raise ConfigError("must be > 0 (1: off)", "generate.repetition_penalty")
        for s in self.stop:
            if not isinstance(s, str) or not s:
                raise ConfigError(f"stop strings must be non-empty strings, got {s!r}", "generate.stop")
        if self.seed is not None and (isinstance(self.seed, bool) or not isinstance(self.seed, int)):
            raise ConfigError(f"expected an integer or None, got {self.seed!r}", "generate.seed")

    @property
    def greedy(self) -> bool:
        return not self.temperature or self.temperature <= 0

    @classmethod
    def from_config(cls, gen: Optional[GenerateConfig] = None, **overrides: Any) -> GenerationSettings:
        """The settings of a ``generate`` config group, with keyword overrides (``max_new_tokens=32``).

        Unknown override names fail with the allowed ones (a typo must not be silently ignored).
        """
        gen = gen or GenerateConfig()
        names = [f.name for f in dataclasses.fields(cls)]
        unknown = sorted(set(overrides) - set(names))
        if unknown:
            raise ConfigError(
                f"unknown generation setting(s) {', '.join(map(repr, unknown))}; allowed: {', '.join(names)}",
                f"generate.{unknown[0]}",
            )
        values = {n: getattr(gen, n) for n in names if hasattr(gen, n)}
        values.update({k: v for k, v in overrides.items() if v is not None or k == "seed"})
        return cls(**values)

    def replace(self, **changes: Any) -> GenerationSettings:
        return dataclasses.replace(self, **changes)


@dataclass
class ChatRequest:
    """One thing to answer: a chat (``messages``, rendered with the chat template, ``tools`` too) or a
    raw ``prompt`` (no template: a completion). ``prompt_ids`` is filled in by the engine."""

    messages: Optional[list] = None
    settings: GenerationSettings = field(default_factory=GenerationSettings)
    tools: Optional[list] = None
    prompt: Optional[str] = None
    prompt_ids: Optional[list[int]] = None

    def __post_init__(self) -> None:
        if (self.messages is None) == (self.prompt is None) and self.prompt_ids is None:
            raise ValueError("a ChatRequest needs messages or a prompt (exactly one)")


@dataclass
class Completion:
    """A finished answer: text (stop string and end-of-turn token removed), the generated token ids
    (an end-of-turn token included when one ended the answer), token counts and why it ended."""

    text: str
    token_ids: list[int]
    prompt_tokens: int
    finish_reason: str
    completion_tokens: int = -1  # -1: len(token_ids); a remote server reports the count without the ids

    def __post_init__(self) -> None:
        if self.completion_tokens < 0:
            self.completion_tokens = len(self.token_ids)


@dataclass
class Delta:
    """One streamed piece: new text and the tokens behind it; the last piece of an answer carries its
    ``finish_reason`` (and may have empty text)."""

    text: str
    token_ids: list[int]
    prompt_tokens: int
    completion_tokens: int
    finish_reason: Optional[str] = None


@runtime_checkable
class ChatEngine(Protocol):
    """What a back end provides. ``tokenizer`` is a transformers tokenizer (None for a remote server);
    ``context_length`` the longest prompt + answer the model takes."""

    backend: str
    name: str
    tokenizer: Any
    context_length: int

    def generate(self, requests: Sequence[ChatRequest]) -> list[Completion]:
        """Answer every request (batched where the back end can); results in request order."""
        ...

    def stream(self, request: ChatRequest) -> Iterator[Delta]:
        """Answer one request piece by piece; closing the iterator stops the generation."""
        ...


# ------------------------------------------------------------------ prompts


def as_messages(messages: Any, system: Optional[str] = None) -> list[dict]:
    """A string is one user turn; a list of messages is copied. ``system`` is prepended unless the
    chat already starts with a system message."""
    msgs = [{"role": "user", "content": messages}] if isinstance(messages, str) else [dict(m) for m in messages]
    if system and not (msgs and msgs[0].get("role") == "system"):
        msgs = [{"role": "system", "content": system}] + msgs
    return msgs


def prompt_ids(tokenizer: Any, request: ChatRequest) -> list[int]:
    """The token ids a request's prompt encodes to: the chat template (with tools) for messages, the
    plain text (with the tokenizer's own special tokens, e.g. BOS) for a completion prompt."""
    if request.prompt_ids is None:
        if request.messages is not None:
            from ..data.encode import encode_prompt

            request.prompt_ids = list(encode_prompt(tokenizer, request.messages, tools=request.tools))
        else:
            request.prompt_ids = list(tokenizer(request.prompt)["input_ids"])
    return request.prompt_ids


def check_fits(request: ChatRequest, context_length: int) -> None:
    """Refuse a prompt that leaves no room for an answer in the model's context."""
    n = len(request.prompt_ids or [])
    if n >= context_length:
        raise ContextLengthError(f"the prompt is {n} tokens; the model's context is {context_length} tokens")


class ContextLengthError(ConfigError):
    """The prompt does not fit the model's context."""
