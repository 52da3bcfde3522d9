"""The absl-based tools (`vrt-train`, `vrt-eval`): the same short errors as the argparse ones.

absl accepts no abbreviated flags already; here its flag errors become two lines with exit
status 2 (absl's own is 1), and user errors raised by the program (vrt_jax.cli.USER_ERRORS) two
lines as well, unless --debug is given.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Callable
from typing import Any

from absl import app, flags

from vrt_jax import cli, runtime


def define_debug_flag() -> None:
  if "debug" not in flags.FLAGS:
    flags.DEFINE_bool("debug", False, "Show the full traceback of an error.")


def _parse_flags(argv: list[str]) -> list[str]:
  try:
    return flags.FLAGS(argv)
  except flags.Error as e:
    prog = _prog[0]
    cli.fail(prog, f"{cli.short_message(e)}\n(run {prog} --helpshort for the options)")


_prog = ["vrt"]


def _check_config_file(argv: list[str], prog: str) -> None:
  """A missing --config file, said plainly (ml_collections' own error is four nested lines)."""
  for i, arg in enumerate(argv):
    path = None
    if arg.startswith("--config="):
      path = arg.split("=", 1)[1]
    elif arg == "--config" and i + 1 < len(argv):
      path = argv[i + 1]
    if path is not None and not os.path.isfile(path.split(":", 1)[0]):
      cli.fail(prog, f"config file {path} does not exist\n(give --config configs/<task>.py)")


def precheck(prog: str) -> None:
  """A missing --config file reported before a restart (runtime.reexec_with_huge_pages), which
  would cost a second start-up. (Other flags are parsed only once, by app.run: ml_collections
  defines its override flags while parsing, so a second parse would fail.)"""
  _prog[0] = prog
  _check_config_file(sys.argv[1:], prog)


def run(main: Callable[[list[str]], Any], *, prog: str) -> None:
  """absl's app.run with two-line user errors (exit status 2); tracebacks with --debug."""
  _prog[0] = prog
  _check_config_file(sys.argv[1:], prog)
  main_module = sys.modules.get("__main__")
  if main_module is not None and not (main_module.__doc__ or "").strip():
    # An installed console script has no docstring; absl's --help shows the tool's.
    main_module.__doc__ = sys.modules[main.__module__].__doc__

  def wrapped(argv: list[str]) -> Any:
    runtime.quiet_logs()
    try:
      return main(argv)
    except app.UsageError as e:  # absl would print the whole flag help.
      cli.fail(prog, f"{e}\n(run {prog} --helpshort for the options)")
    except cli.USER_ERRORS as e:
      if flags.FLAGS.debug:
        raise
      cli.fail(prog, cli.short_message(e))

  app.run(wrapped, flags_parser=_parse_flags)
