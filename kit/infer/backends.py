"""Choosing a back end: ``generate.backend`` -> the engine, its optional library imported only here."""

from __future__ import annotations

from typing import Any

from ..config import ConfigError, RunConfig
from .engine import BACKENDS, ChatEngine


def engine_for_config(cfg: RunConfig, live: Any = None) -> ChatEngine:
    """The engine ``cfg.generate.backend`` names, loading ``cfg.model`` (with its adapter) for it.

    ``live``: a Run trained in this process; the ``hf`` back end uses its model as it is.
    Optional back ends are imported only here, when chosen; one that cannot run on this machine
    says what it needs instead of failing inside the library.
    """
    chosen = cfg.generate.backend
    if chosen not in BACKENDS:
        raise ConfigError(f"unknown back end {chosen!r}; allowed: {', '.join(BACKENDS)}", "generate.backend")
    if chosen == "hf":
        from .batch import HFEngine

        if live is not None:
            return HFEngine(live.model, live.tokenizer, name=str(cfg.model.name))
        return HFEngine.from_config(cfg)
    if chosen == "vllm":
        from .vllm_engine import VLLMEngine

        return VLLMEngine.from_config(cfg)
    from .llamacpp import LlamaCppEngine

    return LlamaCppEngine.from_config(cfg)
