"""User errors: what the user asked for cannot be done, as opposed to a bug of ours (docs/design.md §6).

A ``UserError`` names the config key (or the file, or the directory) and the fix. Every command reports it
as one line, ``error: <message>``, with exit status 2 and no traceback, before any work is lost; any other
exception is a bug and keeps its traceback. ``--debug`` shows the traceback of a user error too.

It subclasses ``ValueError`` so that library callers who catch ``ValueError`` keep working.
"""

from __future__ import annotations

import errno
import functools
import os
import re
import sys


class UserError(ValueError):
  """A bad config value, workdir, file or dataset: reported in one line, never with a traceback."""


def exit_with(message: str) -> None:
  """How every command ends on a user error: one line on stderr, exit status 2.

  The line is the command's last word: stderr is then pointed at /dev/null for the interpreter's shutdown,
  where libraries cut short by the error (Orbax's save threads on a full disk, tensorstore's callbacks into
  a closed event loop) would print tracebacks that are not ours to show."""
  print(f"error: {message}", file=sys.stderr, flush=True)
  sys.stdout.flush()
  try:
    devnull = os.open(os.devnull, os.O_WRONLY)
    os.dup2(devnull, sys.stderr.fileno())
  except (OSError, ValueError, AttributeError):  # no real stderr (e.g. captured in-process): nothing to hide
    pass
  sys.exit(2)


# What the file system refuses (a read-only or full disk, a name too long, no permission): not a bug of ours,
# so one line naming the file, like a UserError.
_FILE_SYSTEM_ERRNOS = {
  errno.EACCES: "check its permissions",
  errno.EPERM: "check its permissions",
  errno.EROFS: "the file system is read-only; use a writable directory",
  errno.ENOSPC: "the disk is full; free space (checkpoints already written stay resumable) and run it again",
  errno.EDQUOT: "the disk quota is exhausted; free space and run it again",
  errno.ENAMETOOLONG: "use a shorter name",
}


def file_system_error(e: OSError) -> str:
  """The one line for an OSError the file system raised: the file, what it said, the fix."""
  where = f"{e.filename}: " if e.filename else ""
  return f"{where}{e.strerror or e}; {_FILE_SYSTEM_ERRNOS.get(e.errno, 'check the path')}."


def run(main, define_flags=None) -> None:
  """``absl.app.run(main)`` for a command, with ``--debug`` added and user errors in one line.

  A ``UserError`` ends the command with ``error: ...`` on stderr and exit status 2. ``define_flags(argv)``,
  if given, defines flags that depend on the command line (offline's ``--config`` is the saved config of
  ``--workdir``), with the same reporting.
  """
  from absl import app, flags

  flags.DEFINE_bool("debug", False, "Show the Python traceback of a user error too.")

  @functools.wraps(main)
  def reported(argv):
    try:
      _check_config_loaded(flags.FLAGS)
      return main(argv)
    except app.UsageError as e:  # e.g. unexpected positional arguments: a user error like any other
      if flags.FLAGS.debug:
        raise
      exit_with(str(e))
    except (UserError, OSError) as e:
      # ml_collections reports a --config file it could not load only when the config is first read.
      config_file = isinstance(e, OSError) and "Failed loading config file" in str(e)
      if not flags.FLAGS.debug and isinstance(e, OSError) and e.errno in _FILE_SYSTEM_ERRNOS:
        exit_with(file_system_error(e))
      if flags.FLAGS.debug or not (isinstance(e, UserError) or config_file):
        raise
      message = str(e)
      if config_file:
        why = [ln.strip() for ln in message.splitlines() if ln.strip().startswith("[Errno")]
        message = (
          f"--config: the config file cannot be loaded ({why[-1] if why else message.splitlines()[0]})."
        )
      exit_with(message)

  app.run(reported, flags_parser=functools.partial(_parse_flags, define_flags=define_flags))


def _check_config_loaded(fv) -> None:
  """Reads --config now, before any work, so that its error is the first thing the command does.

  ml_collections keeps a --config file it could not load as a placeholder that raises only when read.
  """
  if "config" in fv and type(fv["config"].value).__name__ == "_ErrorConfig":
    fv.config.keys  # noqa: B018 -- raises the loading error


def _parse_flags(argv: list[str], define_flags=None) -> list[str]:
  """absl's flag parsing, with its errors in one line too.

  E.g. a config file refusing its arg, a bad value, a --config.KEY the config does not have (ml_collections
  raises AttributeError for that).
  """
  from absl import flags

  for arg in argv[1:]:
    key, eq, value = arg.partition("=")
    if key.startswith("--config.") and eq and value.lstrip().startswith("{") and "--debug" not in argv:
      # ml_collections would replace the whole sub-config by the dict, dropping its other fields.
      exit_with(
        f"{key[2:]}: a whole sub-config cannot be set from one dict; set its fields one at a time, "
        f"e.g. {key}.FIELD=VALUE."
      )
  try:
    if define_flags is not None:
      define_flags(argv)
    return flags.FLAGS(argv)
  except (flags.Error, AttributeError, KeyError) as e:
    if "--debug" in argv:
      raise
    if isinstance(e, flags.Error):
      cause = _user_error(e)
      message = _last_line(str(cause if cause is not None else e))
      required = re.fullmatch(r"flag (--\w+)=None: Flag --\w+ must have a value other than None\.", message)
      if required:
        message = f"{required.group(1)} is required (see --help)."
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
  """The last line of a config file's error, the error itself, without the exception's module path.

  ml_collections re-raises a config file's error with the traceback folded into the message; the user needs
  only its last line.
  """
  if "Traceback (most recent call last)" not in message:
    return message.splitlines()[0] if message else message
  last = [line for line in message.splitlines() if line.strip()][-1]
  prefix = f"{UserError.__module__}.{UserError.__name__}: "
  return last.split(prefix, 1)[-1]
