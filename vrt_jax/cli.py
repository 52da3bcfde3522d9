"""What the command-line tools share: short errors a person can read (quiet logs: vrt_jax.runtime).

Every user error (a missing file, frames of mixed sizes, an unknown flag, a checkpoint of another
model) ends the program with one or two lines on stderr, what was wrong and how to fix it, and
exit status 2; `--debug` shows the traceback instead. Errors of the program itself (anything
not listed in `USER_ERRORS`) keep their traceback.
"""

from __future__ import annotations

import argparse
import pickle
import sys
from collections.abc import Callable, Sequence
from typing import Any, NoReturn

USAGE_EXIT = 2

# What a user's input or environment causes: bad values, missing or unreadable files, full disks.
USER_ERRORS: tuple[type[BaseException], ...] = (ValueError, OSError, pickle.UnpicklingError)


class UserError(ValueError):
  """An error whose message says what was wrong and how to fix it (no traceback needed)."""


def short_message(error: BaseException) -> str:
  """An error's message in at most two lines: the first (what was wrong) and the last (usually
  how to fix it), with the count of lines left out (shown with --debug)."""
  lines = [line.rstrip() for line in str(error).strip().splitlines() if line.strip()]
  if not lines:
    lines = [type(error).__name__]
  if len(lines) > 2:
    lines = [f"{lines[0]} [{len(lines) - 2} more lines with --debug]", lines[-1].strip()]
  return "\n".join(lines)


def fail(prog: str, message: str) -> NoReturn:
  """Prints `prog: error: message` to stderr and exits with status 2."""
  sys.stderr.write(f"{prog}: error: {message}\n")
  sys.stderr.flush()
  raise SystemExit(USAGE_EXIT)


class ArgumentParser(argparse.ArgumentParser):
  """argparse without abbreviated flags, whose errors are two lines, not the whole usage."""

  def __init__(self, *args: Any, **kwargs: Any):
    kwargs.setdefault("allow_abbrev", False)
    super().__init__(*args, **kwargs)
    self.add_argument("--debug", action="store_true",
                      help="show the full traceback of an error")

  def error(self, message: str) -> NoReturn:
    fail(self.prog, f"{message}\n(run {self.prog} --help for the options)")


def run(main: Callable[[Sequence[str] | None], Any], argv: Sequence[str] | None = None, *,
        prog: str) -> Any:
  """Calls `main(argv)`, turning user errors into two lines on stderr and exit status 2."""
  args = sys.argv[1:] if argv is None else list(argv)
  debug = "--debug" in args
  try:
    return main(argv)
  except KeyboardInterrupt:
    if debug:
      raise
    sys.stderr.write(f"{prog}: interrupted\n")
    raise SystemExit(130) from None
  except USER_ERRORS as e:
    if debug:
      raise
    fail(prog, short_message(e))
