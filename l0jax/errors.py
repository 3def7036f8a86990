"""Expected failures: bad input a user can fix, reported in one line.

Anything in l0jax that fails because of what the user asked for (a bad config value, a
dataset that is not prepared, a workdir that belongs to another run, a corrupt file)
raises a subclass of :class:`UserError` whose message is one line saying what is wrong
and how to fix it. ``train.py`` / ``eval.py`` run inside :func:`one_line_errors`, which
prints such a failure as ``error: <message>`` and exits non-zero without a traceback;
so it does for the environment's failures (``OSError``: a full disk, a read-only or
missing path) and for Ctrl-C. Anything else is a bug and keeps its traceback.
``L0JAX_DEBUG=1`` in the environment shows the traceback of every failure.
"""

from __future__ import annotations

import contextlib
import os
import sys
import tempfile
import time
from typing import Optional

__all__ = ["UserError", "DEBUG_ENV", "expected_message", "exit_code", "one_line_errors",
           "held_back_stderr"]

DEBUG_ENV = "L0JAX_DEBUG"
INTERRUPTED_EXIT_CODE = 130  # what a shell reports for a process ended by SIGINT


class UserError(Exception):
  """An expected failure; ``str(error)`` is one line a user can act on."""
  exit_code = 1


def show_tracebacks() -> bool:
  """True when ``$L0JAX_DEBUG`` asks for the traceback of expected failures too."""
  return os.environ.get(DEBUG_ENV, "").strip().lower() not in ("", "0", "false", "no")


def _first_line(text: str) -> str:
  return next((line.strip() for line in text.splitlines() if line.strip()), "")


def expected_message(e: BaseException) -> Optional[str]:
  """The one-line message of an expected failure, or None for a bug."""
  if isinstance(e, UserError):
    return " ".join(str(e).split())  # one line, whatever the message held
  if isinstance(e, KeyboardInterrupt):
    return "interrupted (Ctrl-C)"
  if isinstance(e, OSError):
    if e.strerror and e.filename is not None:
      where = f"{e.filename}" + (f" -> {e.filename2}" if e.filename2 else "")
      return f"{e.strerror}: {where}"
    return _first_line(str(e)) or type(e).__name__
  return None


def _wait_until_quiet(fd: int, quiet_s: float = 0.5, limit_s: float = 5.0) -> None:
  """Waits until nothing was written to ``fd`` for ``quiet_s`` (at most ``limit_s``)."""
  deadline, size, since = time.monotonic() + limit_s, -1, time.monotonic()
  while time.monotonic() < deadline:
    now = os.fstat(fd).st_size
    if now != size:
      size, since = now, time.monotonic()
    elif time.monotonic() - since >= quiet_s:
      return
    time.sleep(0.05)


@contextlib.contextmanager
def held_back_stderr():
  """Holds back what is written to stderr (file descriptor 2) inside the block.

  For library calls that print on their way to an expected failure: when an orbax save
  or restore fails (a full disk, a corrupt file), its threads and tensorstore's
  callbacks print a traceback each, up to hundreds of lines before the one-line error
  or warning. What the block wrote is shown when it succeeds, or with
  ``$L0JAX_DEBUG``; after a failure, the block first waits until the writes still in
  flight have failed too.
  """
  sys.stderr.flush()
  saved = os.dup(2)
  ok = False
  with tempfile.TemporaryFile() as held:
    os.dup2(held.fileno(), 2)
    try:
      yield
      ok = True
    finally:
      if not ok:  # the writes still in flight fail (and print) after the first one
        _wait_until_quiet(held.fileno())
      sys.stderr.flush()
      os.dup2(saved, 2)
      os.close(saved)
      if ok or show_tracebacks():
        held.seek(0)
        sys.stderr.write(held.read().decode(errors="replace"))
        sys.stderr.flush()


def exit_code(e: BaseException) -> int:
  if isinstance(e, KeyboardInterrupt):
    return INTERRUPTED_EXIT_CODE
  return getattr(e, "exit_code", 1)


@contextlib.contextmanager
def one_line_errors():
  """Expected failures inside become ``error: <message>`` on stderr and a non-zero exit.

  ``SystemExit`` passes through; a bug (any other exception) keeps its traceback, and
  so does everything when ``$L0JAX_DEBUG`` is set.
  """
  try:
    yield
  except SystemExit:
    raise
  except BaseException as e:  # pylint: disable=broad-except
    message = expected_message(e)
    if message is None or show_tracebacks():
      raise
    sys.stdout.flush()
    sys.stderr.write(f"error: {message}\n")
    sys.stderr.flush()
    raise SystemExit(exit_code(e)) from None
