"""The engine: one :class:`Run` per training job, whatever front end started it.

Life cycle (the same for every stage): load model -> quantize -> attach adapter -> build data ->
stage trainer -> train -> save. Everything a front end needs comes out as events
(:mod:`kit.events`), in memory and in ``<run_dir>/events.jsonl``.

Run directory::

    config.yaml          the RunConfig (what `forge train` / the board / the magic produced)
    events.jsonl         the event stream
    checkpoints/checkpoint-N/   Trainer checkpoints (weights, optimizer, scheduler, RNG); a
                         checkpoint counts only once its FORGE_COMPLETE marker exists
    adapter/ or model/   the final LoRA adapter, or the full weights, with the tokenizer
    state.json           status and final metrics
"""
from __future__ import annotations

import contextlib
import json
import logging
import os
import threading
import time
import traceback
from pathlib import Path
from typing import Any, Callable, Optional

import torch

from .config import RunConfig
from .events import TERMINAL, Event, EventBus, read_events
from .paths import new_run_dir
from .runtime import deferred_bitsandbytes, paused_gc, set_threads, training_allocator

log = logging.getLogger(__name__)

COMPLETE_MARKER = "FORGE_COMPLETE"


class StopRequested(Exception):
    pass


def complete_checkpoints(run_dir: Path) -> list[Path]:
    """Checkpoints whose save finished (marker present), oldest first."""
    ck = Path(run_dir) / "checkpoints"
    found = [c for c in ck.glob("checkpoint-*") if (c / COMPLETE_MARKER).exists()]
    return sorted(found, key=lambda c: int(c.name.split("-")[-1]))


def last_checkpoint(run_dir: Path) -> Optional[Path]:
    c = complete_checkpoints(run_dir)
    return c[-1] if c else None


def _memory_mb(device: str) -> float:
    if device == "cuda" and torch.cuda.is_available():
        return torch.cuda.max_memory_allocated() / 2**20
    try:
        import psutil
        return psutil.Process().memory_info().rss / 2**20
    except ImportError:
        return float("nan")


def _make_callback(run: "Run"):
    """A transformers TrainerCallback that turns trainer hooks into engine events and honours stop()."""
    from transformers import TrainerCallback

    class ForgeEvents(TrainerCallback):
        def __init__(self):
            self.t_last = None
            self.tok_last = (0, 0)

        def on_train_begin(self, args, state, control, **kw):
            self.t_last = time.time()
            run._emit("status", status="training", max_steps=state.max_steps, step=state.global_step)

        def on_log(self, args, state, control, logs=None, **kw):
            logs = dict(logs or {})
            step = state.global_step
            if any(k.startswith("eval_") for k in logs):
                run._emit("eval", step=step, **{k: v for k, v in logs.items() if isinstance(v, (int, float))})
                return
            if "train_runtime" in logs:  # the closing summary
                run.summary.update(logs)
                return
            now = time.time()
            tr = run.trainer
            real = getattr(tr, "forge_real_tokens", 0)
            trained = getattr(tr, "forge_trained_tokens", 0)
            dt = max(now - (self.t_last or now), 1e-9)
            data = {k: v for k, v in logs.items() if isinstance(v, (int, float))}
            if real:
                data["tokens_per_s"] = (real - self.tok_last[0]) / dt
                data["trained_tokens_per_s"] = (trained - self.tok_last[1]) / dt
                data["tokens"] = real
            self.t_last, self.tok_last = now, (real, trained)
            data["memory_mb"] = _memory_mb(run.device)
            data["max_steps"] = state.max_steps
            data["elapsed_s"] = now - run.t_start
            run._emit("step", step=step, **data)

        def on_step_end(self, args, state, control, **kw):
            if run.first_step_s is None:
                run.first_step_s = time.time() - run.t_process
            if run._stop.is_set():
                control.should_save = True
                control.should_training_stop = True
                control.should_log = True

        def on_save(self, args, state, control, **kw):
            ck = Path(args.output_dir) / f"checkpoint-{state.global_step}"
            if ck.exists() and state.is_world_process_zero:
                (ck / COMPLETE_MARKER).write_text(str(state.global_step))
                run._emit("checkpoint", step=state.global_step, path=str(ck))

    return ForgeEvents()


class Run:
    """A training run. Create with :func:`kit.train`.

    Attributes: ``config``, ``run_dir``, ``status`` (pending, running, stopping, finished, stopped,
    failed), ``events`` (list of :class:`~kit.events.Event`), ``history`` (step events),
    ``error`` (the exception if failed), ``model``/``tokenizer`` (after training, for chat).
    """

    def __init__(self, config: RunConfig):
        self.config = config
        out = config.train.output_dir
        self.run_dir = Path(out).expanduser() if out else new_run_dir(config.stage.name)
        if not out:
            self.config = config = config.replace(train__output_dir=str(self.run_dir))
        self.bus = EventBus()
        self.status = "pending"
        self.error: Optional[BaseException] = None
        self.traceback: Optional[str] = None
        self.trainer = None
        self.model = None
        self.tokenizer = None
        self.device = "cpu"
        self.summary: dict = {}
        self.first_step_s: Optional[float] = None
        self.t_process = _process_start_time()
        self.t_start = time.time()
        self._stop = threading.Event()
        self._thread: Optional[threading.Thread] = None
        self._done = threading.Event()

    # ---------------------------------------------------------------- public API

    @property
    def events(self) -> list[Event]:
        return self.bus.events

    @property
    def history(self) -> list[Event]:
        return [e for e in self.bus.events if e.kind == "step"]

    def losses(self) -> list[tuple[int, float]]:
        return [(e.step, e.get("loss")) for e in self.history if e.get("loss") is not None]

    def subscribe(self, fn: Callable[[Event], None], replay: bool = True) -> Callable[[], None]:
        return self.bus.subscribe(fn, replay=replay)

    def start(self, blocking: bool = True) -> "Run":
        if self.status in ("running", "stopping"):
            raise RuntimeError("this run is already running")
        self._stop.clear()
        self._done.clear()
        self.status = "running"
        if blocking:
            self._execute()
        else:
            self._thread = threading.Thread(target=self._execute, name=f"forge-run-{self.run_dir.name}", daemon=True)
            self._thread.start()
        return self

    def stop(self, wait: bool = False, timeout: Optional[float] = None) -> None:
        """Ask the run to stop after the current optimizer step; it saves a checkpoint first."""
        if self.status == "running":
            self.status = "stopping"
        self._stop.set()
        if wait:
            self.wait(timeout)

    def wait(self, timeout: Optional[float] = None) -> "Run":
        self._done.wait(timeout)
        return self

    def resume(self, blocking: bool = True, **overrides: Any) -> "Run":
        """Continue from the last complete checkpoint (after a stop or crash), optionally changing
        settings that do not alter the optimisation state (e.g. ``max_steps``)."""
        if self.status in ("running", "stopping"):
            raise RuntimeError("cannot resume a run that is still running")
        if overrides:
            self.config = self.config.replace(**overrides)
        return self.start(blocking=blocking)

    @property
    def done(self) -> bool:
        return self.status in TERMINAL

    @property
    def last_checkpoint(self) -> Optional[Path]:
        return last_checkpoint(self.run_dir)

    @property
    def global_step(self) -> int:
        steps = [e.step for e in self.events if e.step is not None]
        return max(steps) if steps else 0

    def __repr__(self) -> str:
        return f"<Run {self.config.stage.name} {self.status} step={self.global_step} dir={self.run_dir}>"

    # ---------------------------------------------------------------- internals

    def _emit(self, kind: str, **data: Any) -> Event:
        return self.bus.emit(kind, **data)

    def _execute(self) -> None:
        from .adapters import apply_adapter, estimate_memory_bytes, param_counts
        from .models import load_model
        from .models.loading import needs_bitsandbytes
        from .stages import get_recipe
        from .stages.common import StageContext

        cfg = self.config
        self.t_start = time.time()
        self.run_dir.mkdir(parents=True, exist_ok=True)
        if self.bus._fh is None and is_main_process():
            self.bus.attach_file(self.run_dir / "events.jsonl")
        if is_main_process():
            cfg.save(self.run_dir / "config.yaml")
        resume_from = last_checkpoint(self.run_dir) if cfg.train.resume else None
        self._emit("start", stage=cfg.stage.name, model=cfg.model.name, run_dir=str(self.run_dir), world_size=world_size(),
                   resume_from=str(resume_from) if resume_from else None, config=cfg.to_dict())
        setup = contextlib.ExitStack()  # the garbage collector is paused until training starts
        try:
            setup.enter_context(paused_gc())
            set_threads(cfg.train.num_threads)
            # importing the stage's trainer (TRL, transformers, peft) and attaching the adapter would
            # both import bitsandbytes; runs that do not use it skip that
            with deferred_bitsandbytes(needs_bitsandbytes(cfg)):
                recipe = get_recipe(cfg.stage.name)
                self._emit("status", status="loading model")
                model_cls = None
                if recipe.head == "sequence_classification":
                    from .stages.rm import ScalarHead  # one logit: a reward
                    model_cls = ScalarHead
                loaded = load_model(cfg, with_adapter=False, model_cls=model_cls)
                self.device = loaded.device
                torch.manual_seed(cfg.train.seed)  # LoRA init is part of the seeded state
                task = "SEQ_CLS" if recipe.head == "sequence_classification" else "CAUSAL_LM"
                model = apply_adapter(loaded.model, cfg, task_type=task)
            trainable, total = param_counts(model)
            self._emit("model", trainable_params=trainable, total_params=total,
                       trainable_pct=100.0 * trainable / max(total, 1), device=loaded.device, dtype=str(loaded.dtype),
                       family=loaded.family, memory_estimate=estimate_memory_bytes(model, cfg),
                       load_s=time.time() - self.t_start)
            self.model, self.tokenizer = model, loaded.tokenizer
            self._emit("status", status="preparing data")
            ctx = StageContext(cfg=cfg, model=model, tokenizer=loaded.tokenizer, run_dir=self.run_dir,
                               device=loaded.device, dtype=loaded.dtype, callbacks=[_make_callback(self)],
                               emit=self._emit, loaded=loaded)
            self.trainer = recipe.build(ctx)
            _quiet_trainer(self.trainer)
            if self._stop.is_set():
                raise StopRequested()
            setup.close()
            with training_allocator(loaded.device):
                result = self.trainer.train(resume_from_checkpoint=str(resume_from) if resume_from else None)
            self.model = self.trainer.model
            self._save_final()
            stopped = self._stop.is_set()
            final = {"step": self.trainer.state.global_step, "train_loss": getattr(result, "training_loss", None),
                     "first_step_s": self.first_step_s, **{k: v for k, v in self.summary.items() if isinstance(v, (int, float))}}
            self.status = "stopped" if stopped else "finished"
            self._write_state(final)
            self._emit(self.status, **final)
        except StopRequested:
            self.status = "stopped"
            self._write_state({})
            self._emit("stopped", step=0)
        except BaseException as e:  # noqa: BLE001 - the event must go out whatever failed
            self.status = "failed"
            self.error = e
            self.traceback = traceback.format_exc()
            self._write_state({"error": f"{type(e).__name__}: {e}"})
            self._emit("failed", error=f"{type(e).__name__}: {e}", traceback=self.traceback)
            if self._thread is None:  # foreground: let the caller see the exception
                raise
        finally:
            setup.close()
            self._done.set()

    def _save_final(self) -> None:
        """Save the final adapter (LoRA) or full weights with the tokenizer, atomically."""
        import shutil
        import tempfile

        if not is_main_process():  # other ranks hold the same weights: one writer
            return
        model = self.trainer.model
        name = "adapter" if hasattr(model, "peft_config") else "model"
        target = self.run_dir / name
        tmp = Path(tempfile.mkdtemp(prefix=f".{name}-", dir=str(self.run_dir)))
        model.save_pretrained(str(tmp), safe_serialization=True)
        if self.tokenizer is not None:
            self.tokenizer.save_pretrained(str(tmp))
        if target.exists():
            shutil.rmtree(target)
        os.replace(tmp, target)

    def _write_state(self, extra: dict) -> None:
        if not is_main_process():
            return
        state = {"status": self.status, "run_dir": str(self.run_dir), **extra}
        p = self.run_dir / "state.json"
        tmp = p.with_suffix(".tmp")
        tmp.write_text(json.dumps(state, default=str, indent=1))
        os.replace(tmp, p)


def world_size() -> int:
    """Processes in this job (torchrun / accelerate set WORLD_SIZE); 1 when run alone."""
    return int(os.environ.get("WORLD_SIZE", "1"))


def is_main_process() -> bool:
    """Only rank 0 writes the run directory (events, config, state, final weights)."""
    return int(os.environ.get("RANK", "0")) == 0


def _quiet_trainer(trainer) -> None:
    """Our events drive every display; drop transformers' own stdout printer."""
    from transformers.trainer_callback import PrinterCallback, ProgressCallback

    for cb in (PrinterCallback, ProgressCallback):
        trainer.remove_callback(cb)


def _process_start_time() -> float:
    try:
        import psutil
        return psutil.Process().create_time()
    except Exception:
        return time.time()


def train(config: Any = None, *, blocking: bool = True, **overrides: Any) -> Run:
    """Start a training run and return its :class:`Run`.

    ``kit.train(model="smollm2-135m-instruct", dataset="demo_sft", max_steps=20)`` or
    ``kit.train("run.yaml")`` or ``kit.train(RunConfig(...), blocking=False)``.
    """
    cfg = RunConfig.coerce(config, **overrides)
    return Run(cfg).start(blocking=blocking)


def open_run(run_dir: str | os.PathLike) -> Run:
    """Re-open a run directory (to resume, chat or export); its past events are loaded."""
    p = Path(run_dir).expanduser()
    cfgp = p / "config.yaml"
    if not cfgp.exists():
        raise FileNotFoundError(f"{p} is not a run directory (no config.yaml)")
    run = Run(RunConfig.from_yaml(cfgp))
    run.run_dir = p
    if (p / "events.jsonl").exists():
        run.bus.events.extend(read_events(p / "events.jsonl"))
    state = p / "state.json"
    if state.exists():
        run.status = json.loads(state.read_text()).get("status", "pending")
        if run.status in ("running", "stopping"):
            run.status = "stopped"  # the process that ran it is gone: it crashed
    return run
