"""vrt-jax: VRT, the Video Restoration Transformer, in JAX/Flax.

`vrt_jax.load(name_or_path)` gives a restorer: `restorer(frames)` (vrt_jax.api).
"""

from vrt_jax import presets
from vrt_jax.vrt import VRT

__all__ = ["VRT", "presets", "convert", "load", "VideoRestorer"]


def __getattr__(name):
  # convert reads PyTorch files, api pulls in the restore tools; import them on first use.
  import importlib

  if name == "convert":
    return importlib.import_module("vrt_jax.convert")
  if name in ("load", "VideoRestorer"):
    return getattr(importlib.import_module("vrt_jax.api"), name)
  raise AttributeError(name)
