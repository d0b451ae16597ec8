"""The numerics guard: a run that stops computing numbers ends as ``failed`` at the step where it
happened, instead of finishing "successfully" with NaN weights.

What it watches, on every optimizer step (a transformers ``TrainerCallback``):

* **non-finite loss or gradient norm**: the loss of each forward pass (the trainer's
  ``training_step`` is wrapped to see it) and the norm of the gradients just before the optimizer
  applies them. ``train.on_nonfinite=fail`` (default) raises :class:`NumericsError` there, so the
  bad update is never applied and never checkpointed; ``skip`` drops the gradients instead (the
  optimizer leaves parameters without a gradient untouched: no update, no moment change), emits a
  ``skipped`` event and goes on, and fails after :data:`MAX_SKIPS_IN_A_ROW` skipped steps in a row.
  Under fp16 mixed precision a non-finite gradient is the loss scaler's business (it skips the
  step and lowers the scale), so only the loss is checked there.
* **collapse** (stages whose recipe asks for it, see ``Recipe.collapse_checks``): a gradient norm of
  exactly 0, or a token cross-entropy within :data:`UNIFORM_LOSS_TOL` of ln(vocab) (the model
  predicts the uniform distribution), for :data:`COLLAPSE_STEPS` steps in a row. Both are what a
  learning rate far too high does to a language model (measured: ``learning_rate=1e6`` on the
  tiny test model gives loss = ln(49152) to 1e-6 and gradient norm 0.0 from step 2 on).
* **weights before a checkpoint is marked complete and before the final save**
  (:meth:`NumericsGuard.check_weights`): no checkpoint or adapter of NaN weights is kept.

Every rank of a multi-process run sees the same all-reduced gradients and the same gathered
logged loss, so all ranks stop at the same step.
"""

from __future__ import annotations

import math
from typing import Any, Callable, Optional

import torch
from transformers import TrainerCallback

from .errors import ForgeError

COLLAPSE_STEPS = 3  # steps in a row that make a collapse
MAX_SKIPS_IN_A_ROW = 5  # skipped non-finite steps in a row after which on_nonfinite=skip fails too
UNIFORM_LOSS_TOL = 1e-4  # |loss - ln(vocab)|: the tiny random test model starts ~4e-3 away, a collapsed one 1e-6


class NumericsError(ForgeError, RuntimeError):
    """Training stopped computing numbers: ``quantity`` (loss, grad_norm, weights) at ``step`` was ``value``."""

    def __init__(self, message: str, step: int, quantity: str, value: float):
        super().__init__(message)
        self.step, self.quantity, self.value = step, quantity, value


def _finite(x: float) -> bool:
    return math.isfinite(x)


class NumericsGuard(TrainerCallback):
    """See the module docstring. ``emit(kind, **data)`` sends the ``skipped`` events."""

    def __init__(
        self,
        on_nonfinite: str = "fail",
        collapse_checks: tuple = (),
        vocab_size: Optional[int] = None,
        emit: Optional[Callable[..., Any]] = None,
    ):
        if on_nonfinite not in ("fail", "skip"):
            raise ValueError(f"on_nonfinite must be 'fail' or 'skip', got {on_nonfinite!r}")
        self.on_nonfinite = on_nonfinite
        self.checks = tuple(collapse_checks)
        self.uniform_loss = math.log(vocab_size) if vocab_size and "uniform_loss" in self.checks else None
        self.emit = emit or (lambda kind, **data: None)
        self._params: list[torch.nn.Parameter] = []
        self._bad_loss: Optional[float] = None  # a non-finite loss seen in this optimizer step
        self._skips_in_a_row = 0
        self._skipped_since_log = 0
        self._zero_grad_steps = 0
        self._uniform_logs = 0

    # ------------------------------------------------------------ wiring

    def watch(self, trainer) -> None:
        """See every forward pass's loss: wraps ``trainer.training_step`` (Trainer's override point)."""
        step_fn = trainer.training_step

        def training_step(*args, **kw):
            loss = step_fn(*args, **kw)
            value = loss.detach().float() if torch.is_tensor(loss) else torch.as_tensor(float(loss))
            if not bool(torch.isfinite(value).all()):
                self._bad_loss = float(value.sum())
            return loss

        trainer.training_step = training_step

    def pop_skipped(self) -> int:
        """Steps skipped since the last call (the engine adds them to its next ``step`` event)."""
        n, self._skipped_since_log = self._skipped_since_log, 0
        return n

    # ------------------------------------------------------------ checks

    def _fail(self, step: int, quantity: str, value: float, why: str) -> None:
        raise NumericsError(f"{quantity} is {value} at step {step}: {why}", step, quantity, value)

    def on_train_begin(self, args, state, control, model=None, **kw):
        self._params = [p for p in model.parameters() if p.requires_grad] if model is not None else []

    def on_pre_optimizer_step(self, args, state, control, **kw):
        step = state.global_step + 1  # the step whose update is about to be applied
        bad_loss, self._bad_loss = self._bad_loss, None
        grads = [p.grad for p in self._params if p.grad is not None]
        if not grads and bad_loss is None:
            return  # nothing to look at (no trainable parameter received a gradient)
        norm = float(torch.nn.utils.get_total_norm(grads)) if grads else float("nan")
        scaled = bool(getattr(args, "fp16", False))  # the GradScaler handles inf gradients itself
        if bad_loss is not None or (not _finite(norm) and not scaled):
            quantity, value = ("loss", bad_loss) if bad_loss is not None else ("grad_norm", norm)
            if self.on_nonfinite == "fail":
                self._fail(
                    step,
                    quantity,
                    value,
                    "training diverged (lower train.learning_rate, or set train.on_nonfinite=skip to skip such steps)",
                )
            for p in self._params:
                p.grad = None  # the optimizer skips parameters without a gradient: nothing changes
            self._skips_in_a_row += 1
            self._skipped_since_log += 1
            self.emit("skipped", step=step, quantity=quantity, value=value, in_a_row=self._skips_in_a_row)
            if self._skips_in_a_row >= MAX_SKIPS_IN_A_ROW:
                self._fail(
                    step,
                    quantity,
                    value,
                    f"{self._skips_in_a_row} steps in a row were skipped: "
                    "training diverged (lower train.learning_rate)",
                )
            return
        self._skips_in_a_row = 0
        if "zero_grad_norm" in self.checks:
            self._zero_grad_steps = self._zero_grad_steps + 1 if norm == 0.0 else 0
            if self._zero_grad_steps >= COLLAPSE_STEPS:
                self._fail(
                    step,
                    "grad_norm",
                    norm,
                    f"the gradient has been exactly zero for {COLLAPSE_STEPS} "
                    "steps: training collapsed (lower train.learning_rate)",
                )

    def on_log(self, args, state, control, logs=None, **kw):
        loss = (logs or {}).get("loss")
        if not isinstance(loss, (int, float)):
            return  # an eval or summary log
        step = state.global_step
        if not _finite(loss) and self.on_nonfinite == "fail":
            self._fail(step, "loss", loss, "training diverged (lower train.learning_rate)")
        if self.uniform_loss is not None:
            uniform = abs(loss - self.uniform_loss) <= UNIFORM_LOSS_TOL
            self._uniform_logs = self._uniform_logs + 1 if uniform else 0
            if self._uniform_logs >= COLLAPSE_STEPS:
                self._fail(
                    step,
                    "loss",
                    loss,
                    f"the loss has been ln(vocab) = {self.uniform_loss:.4f} for "
                    f"{COLLAPSE_STEPS} logged steps: the model predicts the uniform "
                    "distribution, training collapsed (lower train.learning_rate)",
                )

    def check_weights(self, model, step: int) -> None:
        """Raise if a trainable weight is NaN/inf (before a checkpoint counts, before the final save)."""
        for name, p in model.named_parameters():
            if p.requires_grad and not bool(torch.isfinite(p.detach()).all()):
                self._fail(
                    step, "weights", float("nan"), f"parameter {name} is not finite; nothing of this state is saved"
                )
