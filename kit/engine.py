"""The engine: one :class:`Run` per training job, whatever front end started it.

Life cycle, the same for every stage (what differs is declared by the stage's
:class:`~kit.stages.Recipe`):

1. **set up** (:meth:`Run._setup`): check the run directory can be written, clear what an
   interrupted run left, open the event stream, load the model (the recipe's model class), attach
   the adapter (the recipe's peft task type), let the recipe build its trainer;
2. **train** (:meth:`Run._train`): the trainer's loop, from the last complete checkpoint if any,
   with the engine's hooks (:mod:`kit.hooks`: events, stop, complete checkpoints) and the numerics
   guard (:mod:`kit.numerics`);
3. **finish** (:meth:`Run._finish`): save the final weights atomically, write the state, send
   the terminal event; or, on any error, :meth:`Run._fail`.

Everything a front end needs comes out as events (:mod:`kit.events`), in memory and in the run
directory (:class:`~kit.rundir.RunDir` owns its layout).
"""

from __future__ import annotations

import errno
import logging
import os
import shutil
import subprocess
import sys
import tempfile
import threading
import time
import traceback
from pathlib import Path
from typing import Any, Callable, Optional

import psutil
import torch

from .config import ConfigError, RunConfig
from .errors import ForgeError
from .events import TERMINAL, Event, EventBus
from .launch import cpu_fsdp, follow_events, full_state_dict, is_sharded, shard_fsdp2, worker_argv
from .paths import new_run_dir
from .rundir import RunDir
from .runtime import deferred_bitsandbytes, is_main_process, paused_gc, set_threads, training_allocator, world_size

__all__ = ["Run", "train", "open_run", "RunDirUnwritable", "is_main_process", "world_size"]

log = logging.getLogger(__name__)

# the probe written before anything loads: a directory that cannot take this much fails at once
PROBE_BYTES = 1 << 20
# where the final weights are written before they replace the old ones (a leftover is removed on start)
TMP_PREFIX = ".forge-tmp-"


class StopRequested(Exception):
    pass


class RunDirUnwritable(ForgeError, OSError):
    """The run directory cannot be created or written, or has no room for what the run saves."""


class Run:
    """A training run. Create with :func:`kit.train`.

    Attributes: ``config``, ``run_dir`` (a path; ``dir`` is its :class:`~kit.rundir.RunDir`),
    ``status`` (pending, running, stopping, finished, stopped, failed), ``events`` (list of
    :class:`~kit.events.Event`), ``history`` (step events), ``error`` (the exception if failed),
    ``model``/``tokenizer`` (after training, for chat).
    """

    def __init__(self, config: RunConfig, nproc: int = 1):
        self.config = config
        # nproc > 1: this process launches nproc torchrun workers and follows the events rank 0 writes
        self.nproc = nproc
        self._workers: Optional[subprocess.Popen] = None
        out = config.train.output_dir
        self.dir = RunDir(out if out else new_run_dir(config.stage.name))
        if not out:
            self.config = config.replace(train__output_dir=str(self.dir.path))
        self.bus = EventBus()
        self.status = "pending"
        self.error: Optional[BaseException] = None
        self.traceback: Optional[str] = None
        self.trainer = None
        self.guard = None
        self.model = None
        self.tokenizer = None
        self.device = "cpu"
        self.summary: dict = {}
        self.first_step_s: Optional[float] = None
        self.t_process = _process_start_time()
        self.t_start = time.time()
        self._resume_from: Optional[Path] = None
        self._result = None
        self._stop = threading.Event()
        self._thread: Optional[threading.Thread] = None
        self._done = threading.Event()

    # ---------------------------------------------------------------- public API

    @property
    def run_dir(self) -> Path:
        return self.dir.path

    @run_dir.setter
    def run_dir(self, path: Path) -> None:
        self.dir = RunDir(path)

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

    def start(self, blocking: bool = True) -> Run:
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
        """Ask the run to stop after the current optimizer step; it saves a checkpoint first.

        A run of launched workers (``nproc`` > 1) ends them instead (SIGTERM to torchrun, which passes
        it on): resume continues from their last complete checkpoint."""
        if self.status == "running":
            self.status = "stopping"
        self._stop.set()
        if self._workers is not None and self._workers.poll() is None:
            self._workers.terminate()
        if wait:
            self.wait(timeout)

    def wait(self, timeout: Optional[float] = None) -> Run:
        self._done.wait(timeout)
        return self

    def resume(self, blocking: bool = True, **overrides: Any) -> Run:
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
        return self.dir.last_checkpoint()

    @property
    def global_step(self) -> int:
        steps = [e.step for e in self.events if e.step is not None]
        return max(steps) if steps else 0

    def __repr__(self) -> str:
        return f"<Run {self.config.stage.name} {self.status} step={self.global_step} dir={self.run_dir}>"

    # ---------------------------------------------------------------- life cycle

    def _emit(self, kind: str, **data: Any) -> Event:
        return self.bus.emit(kind, **data)

    def _execute(self) -> None:
        self.t_start = time.time()
        if self.nproc > 1 and world_size() == 1:
            return self._execute_workers()
        try:
            try:
                # the garbage collector is paused while the run sets up (kit.runtime.paused_gc says why)
                with paused_gc():
                    trainer = self._setup()
                self._train(trainer)
                self._finish()
            except StopRequested:  # stopped before training began
                self.status = "stopped"
                self._write_state({})
                self._emit("stopped", step=0)
        except BaseException as e:  # noqa: BLE001 - the failed event must go out whatever failed
            self._fail(e)
            if self._thread is None:  # foreground: let the caller see the exception
                if _is_disk_full(e) and not isinstance(e, ForgeError):  # a library's own "no space" error
                    raise RunDirUnwritable(self.events[-1].get("error")) from e
                raise
        finally:
            self.bus.close()
            self._done.set()

    def _execute_workers(self) -> None:
        """Launch ``nproc`` torchrun workers on this machine and follow the event stream rank 0
        writes into the run directory: subscribers (the Board, a progress bar) see their events."""
        try:
            argv = worker_argv(self.config, self.nproc, self.dir.launch_config_path)
            offset = self.dir.events_path.stat().st_size if self.dir.events_path.exists() else 0
            self._workers = subprocess.Popen(argv)
            follow_events(
                self.dir.events_path,
                offset,
                lambda: self._workers.poll() is None,
                lambda e: self.bus.emit(e.kind, **e.data),
            )
            code = self._workers.wait()
            last = next((e for e in reversed(self.events) if e.kind in TERMINAL), None)
            if self._stop.is_set() and (last is None or last.kind != "failed"):
                self.status = "stopped"
                if last is None:
                    self._write_state({})
                    self._emit("stopped", step=self.global_step, last_checkpoint=str(self.last_checkpoint))
            elif last is not None and code == 0:
                self.status = last.kind
            else:
                self.status = "failed"
                if last is None or last.kind != "failed":
                    self._emit(
                        "failed",
                        error=f"the {self.nproc} workers exited with code {code} (their output is above)",
                        last_checkpoint=str(self.last_checkpoint),
                    )
        except BaseException as e:  # noqa: BLE001 - the failed event must go out whatever failed
            self._fail(e)
            if self._thread is None:
                raise
        finally:
            self.bus.close()
            self._done.set()

    def _setup(self):
        """Run directory, events, model, adapter and the stage's trainer."""
        from .models.loading import needs_bitsandbytes  # kit.models: light (transformers loads lazily)

        cfg = self.config
        if is_main_process():
            self._open_run_dir()
        self._resume_from = self.dir.last_checkpoint() if cfg.train.resume else None
        self._emit(
            "start",
            stage=cfg.stage.name,
            model=cfg.model.name,
            run_dir=str(self.run_dir),
            world_size=world_size(),
            resume_from=str(self._resume_from) if self._resume_from else None,
            config=cfg.to_dict(),
        )
        set_threads(cfg.train.num_threads)
        # importing the stage's trainer (TRL, transformers, peft) and attaching the adapter would
        # both import bitsandbytes; runs that do not use it skip that
        with deferred_bitsandbytes(needs_bitsandbytes(cfg)):
            # peft, transformers' Trainer and TRL take seconds to import: `import kit` does not pay
            # for them, and a run imports them here, inside the deferral (peft imports bitsandbytes)
            from .adapters import apply_adapter
            from .hooks import RunHooks
            from .memory import checkpoint_bytes, estimate, param_counts
            from .models import load_model
            from .numerics import NumericsGuard
            from .stages import get_recipe
            from .stages.common import StageContext
            from .tracking import attach_trackers  # transformers' callback module: the training stack

            recipe = get_recipe(cfg.stage.name)
            from .data import validate_dataset

            validate_dataset(cfg, recipe.data_kind)  # a bad row fails here, in seconds, before the model loads
            cfg = self._preflight_memory(cfg)  # "will not fit" here, before the weights load (kit.memory)
            self._emit("status", status="loading model")
            loaded = load_model(cfg, with_adapter=False, model_cls=recipe.model_class)
            self.device = loaded.device
            torch.manual_seed(cfg.train.seed)  # LoRA init is part of the seeded state
            model = apply_adapter(loaded.model, cfg, task_type=recipe.peft_task_type)
            if cpu_fsdp(cfg, loaded.device):  # accelerate shards only on GPUs: FSDP2 here (kit.launch)
                if cfg.train.save_steps:
                    raise ConfigError(
                        "FSDP on CPU processes keeps no optimizer state in checkpoints (transformers "
                        "cannot save it for a model it did not shard): set train.save_steps=0, or "
                        "use train.distributed=ddp on CPU.",
                        "train.save_steps",
                    )
                shard_fsdp2(model)
        trainable, total = param_counts(model)
        self._emit(
            "model",
            trainable_params=trainable,
            total_params=total,
            trainable_pct=100.0 * trainable / max(total, 1),
            device=loaded.device,
            dtype=str(loaded.dtype),
            family=loaded.family,
            memory_estimate=estimate(model, cfg).as_dict(),
            sharded="fsdp2" if is_sharded(model) else None,
            load_s=time.time() - self.t_start,
        )
        self.model, self.tokenizer = model, loaded.tokenizer
        if is_main_process():
            self._check_room(checkpoint_bytes(model, cfg), loaded.path)
        self._emit("status", status="preparing data")
        text_config = model.config.get_text_config() if hasattr(model.config, "get_text_config") else model.config
        self.guard = NumericsGuard(
            cfg.train.on_nonfinite,
            recipe.collapse_checks,
            vocab_size=getattr(text_config, "vocab_size", None),
            emit=self._emit,
        )
        ctx = StageContext(
            cfg=cfg,
            model=model,
            tokenizer=loaded.tokenizer,
            run_dir=self.run_dir,
            device=loaded.device,
            dtype=loaded.dtype,
            callbacks=[RunHooks(self), self.guard],
            emit=self._emit,
            loaded=loaded,
        )
        trainer = recipe.build(ctx)
        if hasattr(trainer, "callback_handler"):
            attach_trackers(trainer, cfg, self.run_dir)  # TensorBoard dir, config as hparams (kit.tracking)
        self.guard.watch(trainer)
        _quiet_trainer(trainer)
        self.trainer = trainer
        if self._stop.is_set():
            raise StopRequested()
        return trainer

    def _train(self, trainer) -> None:
        from .hooks import NothingLeftToTrain  # loaded by _setup already (the training stack, see there)
        from .models.loading import is_quantized

        resume = str(self._resume_from) if self._resume_from else None
        with training_allocator(self.device, quantized=is_quantized(trainer.model)):
            try:
                self._result = trainer.train(resume_from_checkpoint=resume)
            except NothingLeftToTrain:  # resumed from the last step's checkpoint: save its weights
                self._result = None
        self.model = trainer.model

    def _finish(self) -> None:
        step = self.trainer.state.global_step
        self.guard.check_weights(self.model, step)  # never save NaN weights as the result
        self._save_final()
        final = {
            "step": step,
            "train_loss": getattr(self._result, "training_loss", None),
            "first_step_s": self.first_step_s,
            **{k: v for k, v in self.summary.items() if isinstance(v, (int, float))},
        }
        self.status = "stopped" if self._stop.is_set() else "finished"
        self._write_state(final)
        self._emit(self.status, **final)

    def _fail(self, e: BaseException) -> None:
        """End as failed. The event goes out first (to subscribers even if the disk is full), after
        removing this attempt's partial outputs, which frees the room it may need; nothing here raises."""
        self.status = "failed"
        self.error = e
        self.traceback = traceback.format_exc()
        if is_main_process():
            self._discard_partial_outputs()
        message = _describe(e, self.dir)
        data: dict[str, Any] = {"error": message, "traceback": self.traceback}
        for key in ("step", "quantity", "value"):  # a NumericsError says where training went wrong
            if hasattr(e, key):
                data[key] = getattr(e, key)
        try:
            last = self.dir.last_checkpoint()
        except OSError:
            last = None
        data["last_checkpoint"] = str(last) if last else None
        self._emit("failed", **data)
        try:
            self._write_state({"error": message})
        except OSError as write_error:
            log.warning("could not write %s: %s", self.dir.state_path, write_error)

    # ---------------------------------------------------------------- the run directory

    def _preflight_memory(self, cfg: RunConfig) -> RunConfig:
        """kit.memory.preflight on the model's config.json: a run that cannot fit fails now (WillNotFit
        names the knob); one that fits only with gradient checkpointing gets it, and says so."""
        from .memory import WillNotFit, checking_disabled, local_model_dir, preflight
        from .models.loading import pick_device, pick_dtype

        path = local_model_dir(cfg.model.name)
        if path is None or checking_disabled() or world_size() > 1:
            return cfg  # nothing on disk to read the shapes from yet, or several ranks share the machine
        device = pick_device(cfg.model.device)
        try:
            plan = preflight(cfg, path, device, pick_dtype(cfg.model.dtype, device).itemsize)
        except WillNotFit:
            raise
        except Exception as e:  # noqa: BLE001 - an estimate that cannot be made must not stop the run
            log.debug("memory pre-flight skipped: %s", e)
            return cfg
        if plan is None or not plan.enable_checkpointing:
            return cfg
        print(f"forge: {plan.message}", file=sys.stderr)
        self._emit("status", status="gradient checkpointing on", message=plan.message)
        self.config = cfg.replace(train__gradient_checkpointing=True)
        if is_main_process():
            self.dir.save_config(self.config)
        return self.config

    def _open_run_dir(self) -> None:
        """Fail early on a directory that cannot be written; clear an interrupted run's leftovers;
        open the event stream; save the config."""
        check_writable(self.dir)
        clean_leftovers(self.dir)
        self.bus.attach_file(self.dir.events_path)
        self.dir.save_config(self.config)

    def _check_room(self, checkpoint_size: int, model_path: str) -> None:
        """Refuse, before training, a directory without room for one checkpoint and the final weights."""
        tokenizer = sum(
            f.stat().st_size
            for f in Path(model_path).glob("*")
            if f.is_file()
            and (f.name.startswith(("tokenizer", "vocab", "merges", "special_tokens")) or f.suffix == ".jinja")
        )
        checkpoints = 1 if self.config.train.save_steps else 0
        need = (checkpoints + 1) * (checkpoint_size + tokenizer)
        free = shutil.disk_usage(self.run_dir).free
        if free < need:
            raise RunDirUnwritable(
                f"the run directory {self.run_dir} has {_mib(free)} free; this run writes about {_mib(need)} "
                f"(a checkpoint and the final weights): free some space or set train.output_dir elsewhere"
            )

    def _discard_partial_outputs(self) -> None:
        """Remove checkpoints without their marker and half-written final weights (never raises)."""
        try:
            clean_leftovers(self.dir)
        except OSError as e:
            log.warning("could not clean %s: %s", self.run_dir, e)

    def _save_final(self) -> None:
        """Save the final adapter (LoRA) or full weights with the tokenizer, atomically: written to a
        temporary folder, then swapped in with two renames (a kill leaves the old weights or a temp
        folder that the next start removes; resume then saves them again)."""
        model = self.trainer.model
        # FSDP2 on CPU (kit.launch): every rank sends its shards; rank 0 writes the whole weights
        state = full_state_dict(model) if is_sharded(model) else None
        if not is_main_process():  # other ranks hold the same weights: one writer
            return
        target = self.dir.final_dir(RunDir.ADAPTER if hasattr(model, "peft_config") else RunDir.MODEL)
        tmp = Path(tempfile.mkdtemp(prefix=f"{TMP_PREFIX}{target.name}-", dir=str(self.run_dir)))
        model.save_pretrained(str(tmp), safe_serialization=True, state_dict=state)
        if self.tokenizer is not None:
            self.tokenizer.save_pretrained(str(tmp))
        if target.exists():
            old = Path(tempfile.mkdtemp(prefix=f"{TMP_PREFIX}old-{target.name}-", dir=str(self.run_dir)))
            os.replace(target, old / target.name)
            os.replace(tmp, target)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(tmp, target)

    def _write_state(self, extra: dict) -> None:
        if is_main_process():
            self.dir.write_state({"status": self.status, "run_dir": str(self.run_dir), **extra})


# ------------------------------------------------------------------ run-directory policies


def check_writable(rd: RunDir) -> None:
    """Create the run directory and write a probe into it; RunDirUnwritable naming the directory if
    it cannot be created, is read-only, or has no room (checked before any model is loaded)."""
    probe = None
    try:
        rd.path.mkdir(parents=True, exist_ok=True)
        fd, probe = tempfile.mkstemp(prefix=TMP_PREFIX + "probe-", dir=str(rd.path))
        with os.fdopen(fd, "wb") as fh:
            fh.write(b"\0" * PROBE_BYTES)
            fh.flush()
            os.fsync(fh.fileno())
    except OSError as e:
        if _is_disk_full(e):
            raise RunDirUnwritable(
                f"the run directory {rd.path} is full ({_free(rd)} free): free some space "
                "or set train.output_dir elsewhere"
            ) from e
        raise RunDirUnwritable(f"cannot create or write the run directory {rd.path}: {e.strerror or e}") from e
    finally:
        if probe is not None:
            Path(probe).unlink(missing_ok=True)


def clean_leftovers(rd: RunDir) -> None:
    """Remove what an interrupted run leaves: checkpoints without their marker (a save or a rotation
    cut short), temporary folders of a final save or a probe, and a state file never swapped in."""
    for ck in rd.checkpoints():
        if not rd.is_complete(ck):
            shutil.rmtree(ck, ignore_errors=True)
    # ".adapter-*" / ".model-*": the temporary folders of final saves by earlier versions
    for tmp in [*rd.path.glob(TMP_PREFIX + "*"), *rd.path.glob(".adapter-*"), *rd.path.glob(".model-*")]:
        if tmp.is_dir():
            shutil.rmtree(tmp, ignore_errors=True)
        else:
            tmp.unlink(missing_ok=True)
    rd.state_path.with_suffix(".tmp").unlink(missing_ok=True)  # RunDir.write_state's temporary file


def _mib(n: float) -> str:
    return f"{n / 2**20:.1f} MiB"


def _free(rd: RunDir) -> str:
    """Free space where the run directory is (or would be), for messages."""
    p = rd.path
    while not p.exists() and p != p.parent:
        p = p.parent
    try:
        return _mib(shutil.disk_usage(p).free)
    except OSError:
        return "?"


_DISK_FULL = (os.strerror(errno.ENOSPC), os.strerror(errno.EDQUOT))


def _is_disk_full(e: BaseException) -> bool:
    """ENOSPC / EDQUOT, also from libraries that raise their own exception with the OS's text (the
    Rust writers of safetensors and tokenizers)."""
    if isinstance(e, OSError) and e.errno in (errno.ENOSPC, errno.EDQUOT):
        return True
    return any(text in str(e) for text in _DISK_FULL)


def _describe(e: BaseException, rd: RunDir) -> str:
    """The failed event's message: ours as written; a full disk named as such, with the directory."""
    for err in (e, e.__cause__, e.__context__):
        if err is not None and not isinstance(err, ForgeError) and _is_disk_full(err):
            return f"no space left on the device of the run directory {rd.path} ({_free(rd)} free): {err}"
    return f"{type(e).__name__}: {e}"


def _quiet_trainer(trainer) -> None:
    """Our events drive every display; drop transformers' own stdout printer."""
    from transformers.trainer_callback import PrinterCallback, ProgressCallback  # loaded with the trainer

    for cb in (PrinterCallback, ProgressCallback):
        trainer.remove_callback(cb)


def _process_start_time() -> float:
    try:
        return psutil.Process().create_time()
    except psutil.Error:
        return time.time()


def train(config: Any = None, *, blocking: bool = True, nproc: int = 1, **overrides: Any) -> Run:
    """Start a training run and return its :class:`Run`.

    ``kit.train(model="smollm2-135m-instruct", dataset="demo_sft", max_steps=20)`` or
    ``kit.train("run.yaml")`` or ``kit.train(RunConfig(...), blocking=False)``. ``nproc=N``: N
    data-parallel workers on this machine (torchrun; gloo on CPU); the returned run follows them.
    """
    cfg = RunConfig.coerce(config, **overrides)
    if nproc < 1:
        raise ConfigError(f"nproc must be >= 1, got {nproc}", "nproc")
    return Run(cfg, nproc=nproc).start(blocking=blocking)


def open_run(run_dir: str | os.PathLike) -> Run:
    """Re-open a run directory (to resume, chat or export); its past events are loaded."""
    rd = RunDir.open(run_dir)
    run = Run(rd.config())
    run.dir = rd
    run.bus.events.extend(rd.events())
    run.status = rd.state().get("status", "pending")
    if run.status in ("running", "stopping"):
        run.status = "stopped"  # the process that ran it is gone: it crashed
    return run
