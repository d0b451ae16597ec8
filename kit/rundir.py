"""The run directory: the one place that knows its layout.

Every training run writes one directory; everything else (the engine, resume, chat, export,
evaluation, the reward-model scorer, the widgets) reads and writes it through :class:`RunDir`::

    config.yaml                    the RunConfig the run was started with
    launch.yaml                    the frozen config a multi-process launch hands to its ranks
    events.jsonl                   the event stream (one JSON object per line)
    state.json                     status and final metrics (written atomically)
    checkpoints/checkpoint-N/      Trainer checkpoints; one counts only once FORGE_COMPLETE is in it
    adapter/  or  model/           the final LoRA adapter, or the full weights (with the tokenizer)
    export/                        the default export folder (merged weights or adapter, Modelfile, GGUF)
    eval/<dataset>/                evaluation results (predictions.jsonl, scores.json)
    traceback.txt                  written when a front end meets an unexpected error (a bug report)
    tensorboard/                   TensorBoard's event files (train.report_to: tensorboard)

Why ``export/`` and not ``merged/``: the folder holds whatever the export wrote (merged weights,
or the adapter plus a Modelfile with ``--no-merge``, plus GGUF files), so it is named for the act,
not for one of its modes; the Board's export panel already used it.

``RunDir.weights()`` is the one look-up order for "the weights this run produced" (the kind its
config trains first: ``adapter/`` on the run's base model for LoRA, ``model/`` otherwise); loading,
chat, export and the memory estimate all use it. :class:`ModelCache` keeps loaded models per source and reloads one when the weights on
disk change (a run retrained into the same folder).
"""

from __future__ import annotations

import json
import os
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Optional, TypeVar, Union

from .config import RunConfig
from .errors import ForgeError
from .events import Event, read_events

PathLike = Union[str, "os.PathLike[str]"]
T = TypeVar("T")


class RunDirError(ForgeError, FileNotFoundError):
    """A path is not a run directory, or the run has not produced what was asked for."""


@dataclass(frozen=True)
class Weights:
    """What a run trained: ``model`` is what ``model.name`` must load (the run's ``model/`` folder,
    or for an adapter run its base model's name or path); ``adapter`` the LoRA on top, if any."""

    model: str
    adapter: Optional[Path] = None

    @property
    def kind(self) -> str:
        return "adapter" if self.adapter is not None else "model"

    @property
    def folder(self) -> Path:
        """The run's own folder holding these weights (``adapter/`` or ``model/``)."""
        return self.adapter if self.adapter is not None else Path(self.model)


class RunDir:
    """One run directory. ``RunDir(path)`` names it (nothing is read); ``RunDir.open(path)``
    checks that it is one. Paths are attributes; reading and writing goes through the methods."""

    CONFIG = "config.yaml"
    LAUNCH_CONFIG = "launch.yaml"
    EVENTS = "events.jsonl"
    STATE = "state.json"
    CHECKPOINTS = "checkpoints"
    CHECKPOINT_PREFIX = "checkpoint-"
    COMPLETE_MARKER = "FORGE_COMPLETE"
    ADAPTER = "adapter"
    MODEL = "model"
    EXPORT = "export"
    EVAL = "eval"
    EVAL_SCORES = "scores.json"
    TRACEBACK = "traceback.txt"
    TENSORBOARD = "tensorboard"

    def __init__(self, path: PathLike):
        self.path = Path(path).expanduser()

    # ------------------------------------------------------------ identity

    @classmethod
    def is_run_dir(cls, path: Any) -> bool:
        """Whether ``path`` (anything; non-paths are simply not run dirs) is a run directory."""
        if not isinstance(path, (str, os.PathLike)):
            return False
        return (Path(path).expanduser() / cls.CONFIG).is_file()

    @classmethod
    def open(cls, path: PathLike) -> RunDir:
        """The run directory at ``path``, or RunDirError saying it is not one."""
        rd = cls(path)
        if not cls.is_run_dir(rd.path):
            raise RunDirError(f"{rd.path} is not a run directory (no {cls.CONFIG})")
        return rd

    def __fspath__(self) -> str:
        return str(self.path)

    def __eq__(self, other: object) -> bool:
        return isinstance(other, RunDir) and other.path == self.path

    def __hash__(self) -> int:
        return hash(self.path)

    def __repr__(self) -> str:
        return f"RunDir({str(self.path)!r})"

    # ------------------------------------------------------------ paths

    @property
    def config_path(self) -> Path:
        return self.path / self.CONFIG

    @property
    def launch_config_path(self) -> Path:
        return self.path / self.LAUNCH_CONFIG

    @property
    def events_path(self) -> Path:
        return self.path / self.EVENTS

    @property
    def state_path(self) -> Path:
        return self.path / self.STATE

    @property
    def checkpoints_dir(self) -> Path:
        """Where the Trainer writes ``checkpoint-N`` folders (its ``output_dir``)."""
        return self.path / self.CHECKPOINTS

    @property
    def adapter_dir(self) -> Path:
        return self.path / self.ADAPTER

    @property
    def model_dir(self) -> Path:
        return self.path / self.MODEL

    @property
    def export_dir(self) -> Path:
        """The default export folder."""
        return self.path / self.EXPORT

    @property
    def eval_root(self) -> Path:
        return self.path / self.EVAL

    def eval_dir(self, dataset: str) -> Path:
        """Where ``kit.evaluate`` writes the results of one dataset (predictions and scores)."""
        return self.eval_root / dataset

    @property
    def traceback_path(self) -> Path:
        return self.path / self.TRACEBACK

    @property
    def tensorboard_dir(self) -> Path:
        """Where TensorBoard's callback writes (``train.report_to: tensorboard``)."""
        return self.path / self.TENSORBOARD

    def final_dir(self, kind: str) -> Path:
        """Where the final weights of ``kind`` (``"adapter"`` or ``"model"``) are saved."""
        if kind not in (self.ADAPTER, self.MODEL):
            raise ValueError(f"final weights are 'adapter' or 'model', not {kind!r}")
        return self.path / kind

    # ------------------------------------------------------------ config, events, state

    def config(self) -> RunConfig:
        if not self.config_path.is_file():
            raise RunDirError(f"{self.path} is not a run directory (no {self.CONFIG})")
        return RunConfig.from_yaml(self.config_path)

    def save_config(self, cfg: RunConfig) -> Path:
        self.path.mkdir(parents=True, exist_ok=True)
        return cfg.save(self.config_path)

    def events(self) -> list[Event]:
        """The events written so far ([] before the first)."""
        return read_events(self.events_path) if self.events_path.exists() else []

    def state(self) -> dict:
        """``state.json`` ({} when the run has not written one, or it is unreadable)."""
        try:
            return json.loads(self.state_path.read_text(encoding="utf-8"))
        except (OSError, ValueError):
            return {}

    def write_state(self, state: dict) -> Path:
        """Replace ``state.json`` atomically (a reader never sees half a file)."""
        tmp = self.state_path.with_suffix(".tmp")
        tmp.write_text(json.dumps(state, default=str, indent=1), encoding="utf-8")
        os.replace(tmp, self.state_path)
        return self.state_path

    def eval_scores(self) -> dict[str, dict]:
        """The scores of each evaluation of this run, by dataset ({} before any; unreadable files skipped)."""
        out = {}
        for f in sorted(self.eval_root.glob(f"*/{self.EVAL_SCORES}")):
            try:
                out[f.parent.name] = json.loads(f.read_text(encoding="utf-8"))
            except (OSError, ValueError):
                continue
        return out

    # ------------------------------------------------------------ checkpoints

    def checkpoint_dir(self, step: int) -> Path:
        return self.checkpoints_dir / f"{self.CHECKPOINT_PREFIX}{step}"

    @classmethod
    def checkpoint_step(cls, checkpoint: PathLike) -> int:
        """N of a ``checkpoint-N`` folder."""
        name = Path(checkpoint).name
        if not name.startswith(cls.CHECKPOINT_PREFIX) or not name[len(cls.CHECKPOINT_PREFIX) :].isdigit():
            raise ValueError(f"{checkpoint} is not a checkpoint folder ({cls.CHECKPOINT_PREFIX}N)")
        return int(name[len(cls.CHECKPOINT_PREFIX) :])

    @classmethod
    def is_complete(cls, checkpoint: PathLike) -> bool:
        return (Path(checkpoint) / cls.COMPLETE_MARKER).exists()

    @classmethod
    def mark_complete(cls, checkpoint: PathLike, step: int) -> Path:
        """Write the marker that makes a checkpoint count (after its save has finished)."""
        marker = Path(checkpoint) / cls.COMPLETE_MARKER
        marker.write_text(str(step))
        return marker

    def checkpoints(self) -> list[Path]:
        """Every ``checkpoint-N`` folder, complete or not, oldest first."""
        found = []
        for c in self.checkpoints_dir.glob(f"{self.CHECKPOINT_PREFIX}*"):
            try:
                found.append((self.checkpoint_step(c), c))
            except ValueError:
                continue  # e.g. a temp folder of a save in progress
        return [c for _, c in sorted(found)]

    def complete_checkpoints(self) -> list[Path]:
        """Checkpoints whose save finished (marker present), oldest first."""
        return [c for c in self.checkpoints() if self.is_complete(c)]

    def last_checkpoint(self) -> Optional[Path]:
        """The newest complete checkpoint (what resume continues from), or None."""
        c = self.complete_checkpoints()
        return c[-1] if c else None

    # ------------------------------------------------------------ weights

    def has_final_model(self) -> bool:
        return (self.model_dir / "config.json").is_file()

    def has_final_adapter(self) -> bool:
        return (self.adapter_dir / "adapter_config.json").is_file()

    def weights(self) -> Weights:
        """The weights this run produced, in the one look-up order: first the kind its config trains
        (``adapter/`` for ``adapter.type=lora``, else ``model/``), so a folder retrained with another
        adapter type gives the new weights and not the stale ones; then the other kind. ``adapter/``
        is a LoRA on the run's base model. RunDirError when there are none yet."""
        cfg = self.config()
        order = ("adapter", "model") if cfg.adapter.type == "lora" else ("model", "adapter")
        for kind in order:
            if kind == "model" and self.has_final_model():
                return Weights(model=str(self.model_dir))
            if kind == "adapter" and self.has_final_adapter():
                return Weights(model=str(cfg.model.name), adapter=self.adapter_dir)
        last = self.last_checkpoint()
        hint = f"; its last complete checkpoint is {last} (continue with  forge resume {self.path})" if last else ""
        raise RunDirError(
            f"{self.path} has neither a trained adapter ({self.ADAPTER}/) nor full weights "
            f"({self.MODEL}/): has the run finished?{hint}"
        )

    def model_config(self, **overrides: Any) -> RunConfig:
        """The run's config pointed at its trained weights, ready for ``load_model(with_adapter=True)``:
        the full weights load unquantized; an adapter is applied to the base the run trained."""
        cfg = self.config()
        w = self.weights()
        if w.adapter is None:
            cfg = cfg.replace(model__name=w.model, model__adapter_path=None, quant__bits=None)
        else:
            cfg = cfg.replace(model__adapter_path=str(w.adapter))
        return cfg.replace(**overrides) if overrides else cfg


def find_adapter_dir(path: PathLike) -> Path:
    """A LoRA adapter folder from what a user may name for one: the adapter folder itself, a
    checkpoint, or a run directory (its final ``adapter/``, else its newest complete checkpoint
    holding an adapter). RunDirError when there is none."""
    p = Path(path).expanduser()
    if (p / "adapter_config.json").is_file():
        return p
    rd = RunDir(p)
    if rd.has_final_adapter():
        return rd.adapter_dir
    for ck in reversed(rd.complete_checkpoints()):
        if (ck / "adapter_config.json").is_file():
            return ck
    raise RunDirError(f"no LoRA adapter (adapter_config.json) in {p}, {rd.adapter_dir} or its complete checkpoints")


# ------------------------------------------------------------------ cache of loaded models


_WEIGHT_SUFFIXES = (".safetensors", ".bin", ".gguf", ".json", ".model", ".jinja")


def fingerprint(source: Any) -> tuple:
    """What identifies the weights behind ``source`` on disk: (file, size, mtime) of each weight and
    config file. A run directory is fingerprinted by its final ``model/`` and ``adapter/`` folders
    (both: which one :meth:`RunDir.weights` picks needs the config parsed, and a retrain changes
    either way what is in them), a model folder by its files, a file by itself; names that are not
    paths (registered models, hub ids) give ``()``."""
    if not isinstance(source, (str, os.PathLike)):
        return ()
    p = Path(source).expanduser()
    if RunDir.is_run_dir(p):
        folders = [RunDir(p).model_dir, RunDir(p).adapter_dir]
    elif p.is_file():
        return _stats([p])
    else:
        folders = [p]
    return _stats(
        [
            f
            for d in folders
            if d.is_dir()
            for f in sorted(d.iterdir())
            if f.is_file() and f.name.endswith(_WEIGHT_SUFFIXES)
        ]
    )


def _stats(files: list[Path]) -> tuple:
    out = []
    for f in files:
        st = f.stat()
        out.append((str(f), st.st_size, st.st_mtime_ns))
    return tuple(out)


class ModelCache:
    """Loaded models, one per (kind, source), reloaded when the source's :func:`fingerprint` changes.

    ``MODELS.get("chat", run_dir, lambda: ChatModel.load(run_dir))``: the second call with the same
    run directory returns the same object, until the run is retrained (its weights change), when
    the stale model is dropped and loaded again. Thread-safe; a load holds the lock, so two
    threads asking for the same model load it once.
    """

    def __init__(self) -> None:
        self._entries: dict[tuple[str, str], tuple[tuple, Any]] = {}
        self._lock = threading.Lock()

    @staticmethod
    def _key(kind: str, source: Any) -> tuple[str, str]:
        if isinstance(source, (str, os.PathLike)) and Path(source).expanduser().exists():
            return kind, str(Path(source).expanduser().resolve())
        return kind, str(source)

    def get(self, kind: str, source: Any, load: Callable[[], T]) -> T:
        key, fp = self._key(kind, source), fingerprint(source)
        with self._lock:
            hit = self._entries.get(key)
            if hit is not None and hit[0] == fp:
                return hit[1]
            self._entries.pop(key, None)  # stale: free it before loading the new one
            value = load()
            self._entries[key] = (fp, value)
            return value

    def forget(self, kind: Optional[str] = None) -> None:
        """Drop every cached model (of ``kind``, if given)."""
        with self._lock:
            for key in [k for k in self._entries if kind is None or k[0] == kind]:
                del self._entries[key]

    def __len__(self) -> int:
        return len(self._entries)


MODELS = ModelCache()
"""The process-wide cache of loaded models (chat models, reward models)."""
