"""vrt-jax: VRT, the Video Restoration Transformer, in JAX/Flax."""

from vrt_jax import presets
from vrt_jax.vrt import VRT

__all__ = ["VRT", "presets", "convert"]


def __getattr__(name):
  # convert pulls in checkpoint I/O; import it on first use.
  if name == "convert":
    import importlib
    return importlib.import_module("vrt_jax.convert")
  raise AttributeError(name)
