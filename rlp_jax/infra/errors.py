"""User errors: what the user asked for cannot be done, as opposed to a bug of ours (docs/design.md §6).

A ``UserError`` names the config key (or the file, or the directory) and the fix. Every command reports it
as one line, ``error: <message>``, with exit status 2 and no traceback, before any work is lost; any other
exception is a bug and keeps its traceback. ``--debug`` shows the traceback of a user error too.

It subclasses ``ValueError`` so that library callers who catch ``ValueError`` keep working.
"""

from __future__ import annotations

import functools
import sys


class UserError(ValueError):
  """A bad config value, workdir, file or dataset: reported in one line, never with a traceback."""


def run(main) -> None:
  """``absl.app.run(main)`` for a command: adds ``--debug``; a ``UserError`` ends the command with
  ``error: ...`` on stderr and exit status 2."""
  from absl import app, flags

  flags.DEFINE_bool("debug", False, "Show the Python traceback of a user error too.")

  @functools.wraps(main)
  def reported(argv):
    try:
      return main(argv)
    except UserError as e:
      if flags.FLAGS.debug:
        raise
      print(f"error: {e}", file=sys.stderr, flush=True)
      sys.exit(2)

  app.run(reported)
