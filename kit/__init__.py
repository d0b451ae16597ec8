"""Forge Kit: fine-tune language models from a notebook, Python, YAML or the `forge` CLI.

import kit
run = kit.train(model="smollm2-135m-instruct", dataset="demo_sft", max_steps=20)
print(kit.chat(run, "What is the capital of France?"))
"""

from __future__ import annotations

__version__ = "0.1.0"

from .runtime import paused_gc as _paused_gc  # noqa: E402  (standard library only)

# torch's import creates ~200k objects; full garbage collections walking them cost ~0.2 s of the
# ~1 s that `import kit` takes (kit.runtime.paused_gc does the same for a run's set-up)
with _paused_gc():
    from .config import ConfigError, RunConfig  # noqa: E402
    from .engine import Run, open_run, train  # noqa: E402

    # bound eagerly (the module is light): a lazy ``from . import evaluate`` in __getattr__ recurses, and
    # the first ``import kit.evaluate`` would leave the module, not the function, at ``kit.evaluate``
    from .evaluate import evaluate  # noqa: E402
    from .export import export  # noqa: E402  (same reason; the module imports only the standard library and config)
    from .infer.hf import ChatModel, chat  # noqa: E402

__all__ = [
    "RunConfig",
    "ConfigError",
    "Run",
    "train",
    "open_run",
    "chat",
    "ChatModel",
    "evaluate",
    "export",
    "__version__",
]


def __getattr__(name: str):
    # heavy or optional parts load on first use, so `import kit` stays fast
    if name == "Board":
        from .widgets import Board

        return Board
    if name in ("score",):
        from .stages.rm import score

        return score
    if name in _SUBMODULES:
        import importlib

        return importlib.import_module(f"kit.{name}")
    raise AttributeError(f"module 'kit' has no attribute {name!r}")


_SUBMODULES = (
    "data",
    "models",
    "widgets",
    "stages",
    "infer",
    "adapters",
    "memory",
    "events",
    "rundir",
    "magics",
    "cli",
    "engine",
    "config",
)


def load_ipython_extension(ipython):  # %load_ext kit
    from .magics import load_ipython_extension as _load

    _load(ipython)
