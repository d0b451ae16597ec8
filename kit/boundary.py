"""The error boundary of the front ends (the ``forge`` CLI, the ``%forge_train`` magic).

What reaches a user is one of two things, never a raw library traceback:

* **their error** (a :class:`~kit.errors.ForgeError`: a config key, a data row, a model name, an
  export option; a missing file or a full disk; a missing optional package): one line saying what
  to fix, and a non-zero exit;
* **our bug** (anything else): one line naming the exception, "this is a bug in forge-kit; please
  report it", the run directory, and the file the traceback was saved to (``traceback.txt`` in the
  run directory, or ``FORGE_HOME/bug-reports/`` before a run directory exists).

The Python API raises the exceptions themselves; only front ends, which have nobody to raise to,
use this module.
"""

from __future__ import annotations

import errno
import os
import platform
import sys
import time
import traceback
from pathlib import Path
from typing import Any, Optional, TextIO

from .errors import ForgeError
from .paths import forge_home
from .rundir import RunDir

BUG_NOTE = "this is a bug in forge-kit; please report it"

EXIT_USER_ERROR = 2  # as argparse does for bad arguments
EXIT_BUG = 70  # EX_SOFTWARE (sysexits.h): an internal software error
EXIT_INTERRUPTED = 130  # 128 + SIGINT, as a shell reports Ctrl-C

# OSErrors that describe the user's machine, not our code: a path that is not there or not
# writable, a file where a folder belongs (or the reverse), a full or read-only disk
_ENVIRONMENT_ERRNOS = {
    errno.ENOENT,
    errno.EACCES,
    errno.EPERM,
    errno.EISDIR,
    errno.ENOTDIR,
    errno.ENOSPC,
    errno.EROFS,
    errno.EDQUOT,
    errno.EEXIST,
    errno.ENAMETOOLONG,
}
_ENVIRONMENT_ERRORS = (FileNotFoundError, PermissionError, IsADirectoryError, NotADirectoryError, FileExistsError)


def is_user_error(e: BaseException) -> bool:
    """Whether ``e`` is something the user fixes (their input or machine) rather than a bug of ours."""
    if isinstance(e, ForgeError):
        return True
    if isinstance(e, _ENVIRONMENT_ERRORS) or (isinstance(e, OSError) and e.errno in _ENVIRONMENT_ERRNOS):
        return True
    # an optional extra that is not installed: our loaders say which ``pip install`` fixes it
    return isinstance(e, ImportError) and "pip install" in str(e)


def user_message(e: BaseException) -> str:
    """The one line shown for a user error."""
    if isinstance(e, OSError) and not isinstance(e, ForgeError) and e.strerror:
        where = f": {e.filename}" if e.filename else ""
        return f"{e.strerror.lower()}{where}"
    return str(e) or type(e).__name__


def save_traceback(
    e: BaseException, run_dir: Optional[os.PathLike | str] = None, command: Optional[list[str]] = None
) -> Optional[Path]:
    """Write the traceback of ``e`` (with versions and the command) for a bug report; returns the
    file, or None when nothing could be written (the caller then prints the traceback instead)."""
    from importlib import metadata

    def version(pkg: str) -> str:
        try:
            return metadata.version(pkg)
        except metadata.PackageNotFoundError:
            return "not installed"

    head = [
        f"forge-kit {version('forge-kit')}, python {platform.python_version()}, {platform.platform()}",
        "  " + ", ".join(f"{p} {version(p)}" for p in ("torch", "transformers", "peft", "trl", "datasets")),
        f"command: {' '.join(command) if command else '?'}",
        f"run dir: {run_dir or '(none yet)'}",
        "",
    ]
    text = "\n".join(head) + "".join(traceback.format_exception(type(e), e, e.__traceback__))
    candidates = []
    if run_dir is not None and Path(run_dir).is_dir():
        candidates.append(RunDir(run_dir).traceback_path)
    candidates.append(forge_home() / "bug-reports" / f"{time.strftime('%Y%m%d-%H%M%S')}-{os.getpid()}.txt")
    for path in candidates:
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(text, encoding="utf-8")
            return path
        except OSError:
            continue
    return None


class ErrorBoundary:
    """``with ErrorBoundary() as b: ...``: the block's exceptions become one clear message on
    ``stream`` and an exit code in ``b.exit_code`` (0 when nothing escaped); set ``b.run_dir`` as
    soon as the run directory is known so a bug report names it and lands in it."""

    def __init__(self, prog: str = "forge", stream: Optional[TextIO] = None, command: Optional[list[str]] = None):
        self.prog = prog
        self.stream = stream
        self.command = command
        self.run_dir: Optional[Path] = None
        self.exit_code = 0
        self.error: Optional[BaseException] = None

    def __enter__(self) -> ErrorBoundary:
        return self

    def __exit__(self, kind: Any, e: Optional[BaseException], tb: Any) -> bool:
        if e is None or isinstance(e, (SystemExit, GeneratorExit)):
            return False
        self.report(e)
        return True

    def _print(self, text: str) -> None:
        print(text, file=self.stream or sys.stderr)

    def report(self, e: BaseException) -> int:
        """Print ``e`` as a user error or a bug (saving its traceback); returns the exit code."""
        self.error = e
        if isinstance(e, KeyboardInterrupt):
            hint = (
                f": the last complete checkpoint can be resumed with  forge resume {self.run_dir}"
                if self.run_dir
                else ""
            )
            self._print(f"{self.prog}: interrupted{hint}")
            self.exit_code = EXIT_INTERRUPTED
        elif is_user_error(e):
            self._print(f"{self.prog}: error: {user_message(e)}")
            self.exit_code = EXIT_USER_ERROR
        else:
            saved = save_traceback(e, self.run_dir, self.command)
            where = f"run dir {self.run_dir}" if self.run_dir else "no run dir yet"
            self._print(f"{self.prog}: error: {type(e).__name__}: {e}")
            if saved is not None:
                self._print(f"{self.prog}: {BUG_NOTE} ({where}); the traceback is saved in {saved}")
            else:
                self._print(f"{self.prog}: {BUG_NOTE} ({where}); the traceback could not be saved, here it is:")
                self._print("".join(traceback.format_exception(type(e), e, e.__traceback__)).rstrip())
            self.exit_code = EXIT_BUG
        return self.exit_code
