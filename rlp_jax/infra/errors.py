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


def exit_with(message: str) -> None:
  """How every command ends on a user error: one line on stderr, exit status 2."""
  print(f"error: {message}", file=sys.stderr, flush=True)
  sys.exit(2)


def run(main) -> None:
  """``absl.app.run(main)`` for a command: adds ``--debug``; a ``UserError`` ends the command with
  ``error: ...`` on stderr and exit status 2."""
  from absl import app, flags

  flags.DEFINE_bool("debug", False, "Show the Python traceback of a user error too.")

  @functools.wraps(main)
  def reported(argv):
    try:
      return main(argv)
    except (UserError, OSError) as e:
      # ml_collections reports a --config file it could not load only when the config is first read.
      config_file = isinstance(e, OSError) and "Failed loading config file" in str(e)
      if flags.FLAGS.debug or not (isinstance(e, UserError) or config_file):
        raise
      message = str(e)
      if config_file:
        why = [ln.strip() for ln in message.splitlines() if ln.strip().startswith("[Errno")]
        message = (
          f"--config: the config file cannot be loaded ({why[-1] if why else message.splitlines()[0]})."
        )
      exit_with(message)

  app.run(reported, flags_parser=_parse_flags)


def _parse_flags(argv: list[str]) -> list[str]:
  """absl's flag parsing, with its errors in one line too: a config file refusing its arg, a bad value,
  a --config.KEY the config does not have (ml_collections raises AttributeError for that)."""
  from absl import flags

  try:
    return flags.FLAGS(argv)
  except (flags.Error, AttributeError, KeyError) as e:
    if "--debug" in argv:
      raise
    if isinstance(e, flags.Error):
      cause = _user_error(e)
      message = _last_line(str(cause if cause is not None else e))
    else:
      said = str(e).strip("'\"").replace("\\'", "'").replace("\\n", " ").replace("\n", " ")
      message = f"--config.*: no such config key ({said}); check the spelling."
    exit_with(message)


def _user_error(e: BaseException) -> UserError | None:
  """The UserError behind a flag-parsing error (config files run inside absl's parser), if any."""
  seen = set()
  while e is not None and id(e) not in seen:
    if isinstance(e, UserError):
      return e
    seen.add(id(e))
    e = e.__cause__ or e.__context__
  return None


def _last_line(message: str) -> str:
  """ml_collections re-raises a config file's error with the traceback folded into the message; the user
  needs its last line, the error itself, without the exception's module path."""
  if "Traceback (most recent call last)" not in message:
    return message.splitlines()[0] if message else message
  last = [line for line in message.splitlines() if line.strip()][-1]
  prefix = f"{UserError.__module__}.{UserError.__name__}: "
  return last.split(prefix, 1)[-1]
