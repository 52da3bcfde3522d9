"""A VRT's shapes without compute: the smallest input it takes and its parameter tree.

Shared by the checkpoint format (what a saved tree must look like) and the PyTorch conversion
(what a state_dict must fill); depends on the model only.
"""

from __future__ import annotations

from typing import Any

import jax
import numpy as np

from vrt_jax.vrt import VRT, min_hw


def example_input_shape(model: VRT) -> tuple[int, ...]:
  """(1, T, H, W, Cin): the smallest input `model.init` accepts (H, W: `vrt.min_hw`)."""
  t = model.img_size[0] if model.pa_frames == 0 else max(model.img_size[0], 4)
  c = model.in_chans + (1 if model.nonblind_denoising and model.pa_frames else 0)
  return (1, t, *min_hw(model.window_size, model.pa_frames), c)


def example_input(model: VRT) -> jax.ShapeDtypeStruct:
  """The smallest input `model.init` accepts, float32 of `example_input_shape(model)`.

  Parameter shapes do not depend on H and W, so this serves any training patch size.
  """
  return jax.ShapeDtypeStruct(example_input_shape(model), np.float32)


def abstract_params(model: VRT) -> dict[str, Any]:
  """The model's parameter tree as ShapeDtypeStructs (no compute)."""
  return jax.eval_shape(model.init, jax.random.key(0), example_input(model))["params"]


def param_count(model: VRT) -> int:
  """Number of trainable parameters (the reference's model.parameters())."""
  return sum(int(np.prod(v.shape)) for v in jax.tree.leaves(abstract_params(model)))
