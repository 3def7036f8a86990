"""The one exception type for expected failures: bad input a user can fix.

Anything in l0jax that fails because of what the user asked for (a bad config value, a
dataset that is not prepared, a workdir that belongs to another run, a corrupt file)
raises a subclass of :class:`UserError` whose message is one line saying what is wrong
and how to fix it. ``train.py`` / ``eval.py`` print it as ``error: <message>`` and exit
non-zero without a traceback; anything else is a bug and keeps its traceback.
"""

from __future__ import annotations

__all__ = ["UserError"]


class UserError(Exception):
  """An expected failure; ``str(error)`` is one line a user can act on."""
