"""Process set-up for the entry points (train.py, eval.py, restore, vrt-convert): called by them
only.

Importing vrt_jax changes nothing global (no environment variable, JAX option, logger level or
restart); a program opts in here: `enable_compilation_cache` (compiled programs kept between
runs), `reexec_with_huge_pages` (glibc's malloc on transparent huge pages, which needs a restart)
and `quiet_logs` (library chatter off). `quiet_logs_while` is the scoped form for library calls
that read checkpoints (vrt_jax.load): it leaves the loggers as it found them.
"""

from __future__ import annotations

import contextlib
import logging
import os
import platform
import sys
from collections.abc import Iterator

# Set to a directory to keep compiled programs there, or to '' to turn the cache off.
CACHE_ENV = "VRT_JAX_COMPILATION_CACHE"


def compilation_cache_dir() -> str:
  """Where compiled programs are kept between runs ('' = nowhere).

  JAX's own JAX_COMPILATION_CACHE_DIR wins, then VRT_JAX_COMPILATION_CACHE, then
  $XDG_CACHE_HOME/vrt-jax/xla (~/.cache/vrt-jax/xla).
  """
  if "JAX_COMPILATION_CACHE_DIR" in os.environ:
    return os.environ["JAX_COMPILATION_CACHE_DIR"]
  if CACHE_ENV in os.environ:
    return os.environ[CACHE_ENV]
  home = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
  return os.path.join(home, "vrt-jax", "xla")


def enable_compilation_cache() -> str:
  """Turns on JAX's persistent compilation cache (`compilation_cache_dir`); returns the dir.

  A full VRT takes from half a minute (a forward) to minutes (a training step) to compile; with
  the cache, a restarted run, every eval of the same tile shape and every host of a pod job
  after the first load the program instead.
  """
  import jax

  directory = compilation_cache_dir()
  if directory:
    os.makedirs(directory, exist_ok=True)
    jax.config.update("jax_compilation_cache_dir", directory)
  return directory


HUGE_PAGES_TUNABLE = "glibc.malloc.hugetlb=1"
# Set (to anything) to keep the malloc settings the process was started with.
KEEP_MALLOC_ENV = "VRT_JAX_KEEP_MALLOC"


def huge_pages_env(environ: dict[str, str] | None = None) -> dict[str, str]:
  """`environ` (default os.environ) with glibc's malloc set to use transparent huge pages.

  Returns a copy with `glibc.malloc.hugetlb=1` added to GLIBC_TUNABLES, or an unchanged copy
  where it does not apply (not Linux with glibc >= 2.35, huge pages off, KEEP_MALLOC_ENV set,
  or GLIBC_TUNABLES already choosing hugetlb).

  Why: XLA's CPU runtime allocates its temporaries from its worker threads, whose malloc arenas
  map every block over 64 MiB afresh and unmap it when freed. Each execution then faults its
  whole working set in again, 4 KiB at a time: about 1.6M page faults and 6-9 s of system time
  in a 006 training step (1x6x64x64), which huge pages cut to about 6k and 3 s.
  """
  env = dict(os.environ if environ is None else environ)
  tunables = env.get("GLIBC_TUNABLES", "")
  if (KEEP_MALLOC_ENV in env or "glibc.malloc.hugetlb" in tunables
      or not _huge_pages_available()):
    return env
  env["GLIBC_TUNABLES"] = f"{tunables}:{HUGE_PAGES_TUNABLE}" if tunables else HUGE_PAGES_TUNABLE
  return env


def _huge_pages_available() -> bool:
  if sys.platform != "linux":
    return False
  libc, version = platform.libc_ver()
  try:
    if libc != "glibc" or tuple(int(v) for v in version.split(".")[:2]) < (2, 35):
      return False  # The hugetlb tunable came with glibc 2.35.
    with open("/sys/kernel/mm/transparent_hugepage/enabled") as f:
      return "[never]" not in f.read()
  except (OSError, ValueError):
    return False


def reexec_with_huge_pages() -> None:
  """Restarts this program (same interpreter, options and arguments) under `huge_pages_env`.

  For entry points (train.py, eval.py, `python -m vrt_jax.restore`), before any work: glibc
  reads its tunables only at process start. A no-op where `huge_pages_env` changes nothing, so
  the restarted process goes on; costs the imports done so far (about a second).
  """
  env = huge_pages_env()
  if env.get("GLIBC_TUNABLES") == os.environ.get("GLIBC_TUNABLES"):
    return
  sys.stdout.flush()
  sys.stderr.flush()
  os.execve(sys.executable, [sys.executable, *sys.orig_argv[1:]], env)


class _DropLibraryInfo(logging.Filter):
  """Drops records below WARNING that libraries (Orbax, grain) log through absl's logger."""

  NOISY = (f"{os.sep}orbax{os.sep}", f"{os.sep}grain{os.sep}", f"{os.sep}etils{os.sep}")
  # Orbax warnings that are expected and harmless here: a training checkpoint's `state` item
  # is read on its own, without the step's metadata file.
  HARMLESS = ("Metadata file does not exist",)

  def filter(self, record: logging.LogRecord) -> bool:
    if not any(part in record.pathname for part in self.NOISY):
      return True
    if record.levelno >= logging.ERROR:
      return True
    message = record.getMessage()
    return record.levelno >= logging.WARNING and not any(h in message for h in self.HARMLESS)


def quiet_logs() -> None:
  """Silences library chatter that says nothing to a user of the tools.

  Orbax logs every checkpoint step at INFO through absl (dozens of lines per save or restore);
  JAX warns on every run that it fell back to CPU. vrt-jax's own INFO lines and every warning
  and error stay. Set VRT_JAX_VERBOSE=1 to keep everything.
  """
  if os.environ.get("VRT_JAX_VERBOSE"):
    return
  absl_logger = logging.getLogger("absl")
  if not any(isinstance(f, _DropLibraryInfo) for f in absl_logger.filters):
    absl_logger.addFilter(_DropLibraryInfo())
  for name in ("orbax", "grain", "etils"):
    logging.getLogger(name).setLevel(logging.WARNING)
  logging.getLogger("jax._src.xla_bridge").setLevel(logging.ERROR)  # the CPU fallback banner


@contextlib.contextmanager
def quiet_logs_while() -> Iterator[None]:
  """`quiet_logs` for the duration of a `with` block, then the loggers as they were.

  For library functions (vrt_jax.load) whose checkpoint reads would otherwise print Orbax's
  lines into a user's notebook, without changing the logging of the user's program.
  """
  names = ("absl", "orbax", "grain", "etils", "jax._src.xla_bridge")
  saved = {n: (logging.getLogger(n).level, list(logging.getLogger(n).filters)) for n in names}
  quiet_logs()
  try:
    yield
  finally:
    for n, (level, filters) in saved.items():
      logger = logging.getLogger(n)
      logger.setLevel(level)
      logger.filters[:] = filters
