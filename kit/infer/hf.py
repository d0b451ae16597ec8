"""``ChatModel``: chat with a model, a run or a config through whichever back end it names.

Every front end (``kit.chat``, the Board's chat tab, ``forge chat``, ``kit.evaluate``) uses this
class; it turns messages and keyword settings into :class:`~kit.infer.engine.ChatRequest` objects for
the :class:`~kit.infer.engine.ChatEngine` underneath (``generate.backend``: transformers by default,
vLLM, llama.cpp, or a running OpenAI-compatible server with :meth:`ChatModel.connect`).
"""

from __future__ import annotations

import os
from typing import Any, Iterator, Optional, Sequence, Union

from ..config import GenerateConfig, RunConfig
from ..rundir import MODELS, RunDir
from .decoding import stop_token_ids
from .engine import ChatEngine, ChatRequest, Completion, GenerationSettings, as_messages

Messages = Union[str, list]
__all__ = ["ChatModel", "chat", "load_engine", "stop_token_ids", "as_messages"]


class ChatModel:
    """Messages in, answers out, through one :class:`~kit.infer.engine.ChatEngine` (``self.engine``).

    ``ChatModel(model, tokenizer)`` wraps a loaded transformers model (the ``hf`` back end);
    :meth:`load` builds the engine a Run / run directory / config / model name asks for;
    :meth:`connect` talks to a running OpenAI-compatible server instead. Keyword settings
    (``temperature=0.7, max_new_tokens=64, stop=["\\n\\n"], seed=1``) override the config's
    ``generate`` group for one call.
    """

    def __init__(
        self,
        model: Any = None,
        tokenizer: Any = None,
        generate: Optional[GenerateConfig] = None,
        *,
        engine: Optional[ChatEngine] = None,
    ):
        if engine is None:
            from .batch import HFEngine

            engine = HFEngine(model, tokenizer)
        self.engine = engine
        self.gen = generate or GenerateConfig()

    # what the hf back end exposes (kit.evaluate scores log-likelihoods on the model itself)
    @property
    def model(self) -> Any:
        return getattr(self.engine, "model", None)

    @property
    def tokenizer(self) -> Any:
        return self.engine.tokenizer

    @property
    def stop_ids(self) -> list[int]:
        return sorted(getattr(self.engine, "stop_ids", ()))

    @property
    def backend(self) -> str:
        return self.engine.backend

    @classmethod
    def load(cls, source: Any = None, **overrides: Any) -> ChatModel:
        """From a Run, a run directory, a RunConfig/dict/YAML, or a model name/path.

        ``overrides``: RunConfig keys, e.g. ``generate__backend="llamacpp"``, ``model__dtype="bfloat16"``.
        """
        from ..engine import Run
        from .backends import engine_for_config

        if isinstance(source, ChatModel):
            return source
        if isinstance(source, Run):
            if source.model is not None and source.tokenizer is not None:
                cfg = source.config.replace(**overrides) if overrides else source.config
                return cls(engine=engine_for_config(cfg, live=source), generate=cfg.generate)
            source = source.run_dir
        if RunDir.is_run_dir(source):
            cfg = RunDir(source).model_config(**overrides)
        elif isinstance(source, (str, os.PathLike)) and not str(source).endswith((".yaml", ".yml")):
            cfg = RunConfig.coerce(None, model=str(source), **overrides)
        else:
            cfg = RunConfig.coerce(source, **overrides)
        return cls(engine=engine_for_config(cfg), generate=cfg.generate)

    @classmethod
    def connect(
        cls,
        url: str,
        *,
        api_key: Optional[str] = None,
        model: Optional[str] = None,
        generate: Optional[GenerateConfig] = None,
    ) -> ChatModel:
        """Chat with a running OpenAI-compatible server (``forge serve``, vLLM, llama.cpp's server...).

        ``api_key`` defaults to FORGE_API_KEY / OPENAI_API_KEY; ``model`` to the server's first model.
        """
        from .remote import RemoteEngine

        return cls(engine=RemoteEngine(url, api_key=api_key, model=model), generate=generate)

    # ---------------------------------------------------------------- requests

    def settings(self, **gen: Any) -> GenerationSettings:
        """The config's generation settings with ``gen`` applied (unknown names are refused)."""
        return GenerationSettings.from_config(self.gen, **gen)

    def request(
        self, messages: Messages, *, system: Optional[str] = None, tools: Optional[list] = None, **gen: Any
    ) -> ChatRequest:
        msgs = as_messages(messages, system if system is not None else self.gen.system)
        return ChatRequest(messages=msgs, tools=tools, settings=self.settings(**gen))

    # ---------------------------------------------------------------- answers

    def stream(self, messages: Messages, *, system: Optional[str] = None, **gen: Any) -> Iterator[str]:
        """Yield the answer piece by piece as tokens are generated (closing the iterator stops it)."""
        stream = self.engine.stream(self.request(messages, system=system, **gen))
        try:
            for delta in stream:
                if delta.text:
                    yield delta.text
        finally:
            close = getattr(stream, "close", None)
            if close is not None:
                close()

    def generate(self, messages: Messages, *, system: Optional[str] = None, **gen: Any) -> str:
        """The whole answer (surrounding whitespace stripped)."""
        return self.engine.generate([self.request(messages, system=system, **gen)])[0].text.strip()

    def generate_ids(self, messages: Messages, **gen: Any) -> list[int]:
        """The answer's token ids (the end-of-turn token included when one ended it)."""
        return self.engine.generate([self.request(messages, **gen)])[0].token_ids

    def generate_many(
        self, conversations: Sequence[Messages], *, system: Optional[str] = None, **gen: Any
    ) -> list[str]:
        """Answers to many conversations at once, batched by the back end; the same answers as one
        ``generate`` call each (greedy)."""
        reqs = [self.request(m, system=system, **gen) for m in conversations]
        return [c.text.strip() for c in self.engine.generate(reqs)]

    def complete(self, requests: Sequence[ChatRequest]) -> list[Completion]:
        """The engine's own answers (text, token ids, usage, finish reason) for prepared requests."""
        return self.engine.generate(list(requests))


def load_engine(source: Any = None, *, backend: Optional[str] = None, **overrides: Any) -> ChatEngine:
    """The engine for ``source`` (a Run, run directory, config, model name/path or ``.gguf`` file),
    on ``backend`` if given, else the one its config names (``generate.backend``)."""
    if backend is not None:
        overrides["generate__backend"] = backend
    return ChatModel.load(source, **overrides).engine


def chat(
    model_or_run: Any = None,
    messages: Messages = "Hello!",
    *,
    stream: bool = False,
    system: Optional[str] = None,
    **gen: Any,
):
    """Answer ``messages`` with a model, a Run, a run directory or a config.

    ``stream=True`` returns an iterator of text pieces; otherwise the full answer string.
    Loaded models are cached per source so repeated calls are fast.
    """
    if isinstance(model_or_run, (str, os.PathLike, type(None))):
        # reloaded when the weights behind the source change (a run retrained in the same folder)
        cm = MODELS.get("chat", model_or_run, lambda: ChatModel.load(model_or_run))
    else:
        cm = ChatModel.load(model_or_run)  # a Run or ChatModel already holds its model
    return cm.stream(messages, system=system, **gen) if stream else cm.generate(messages, system=system, **gen)
