"""Process set-up for the entry points (train.py, eval.py, restore): called by them only.

Importing vrt_jax changes nothing global; a script opts in here.
"""

from __future__ import annotations

import os

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
