"""Training losses."""

from __future__ import annotations

import jax
import jax.numpy as jnp


def charbonnier(pred: jax.Array, target: jax.Array, eps: float = 1e-9) -> jax.Array:
  """Charbonnier loss of the VRT recipe: mean(sqrt((pred - target)^2 + eps)).

  pred, target: arrays of the same shape, e.g. (B, T, H, W, 3); returns a scalar.
  eps is added to the squared difference (1e-9, as in KAIR), not to its root.
  """
  if pred.shape != target.shape:
    raise ValueError(f"charbonnier: pred {pred.shape} and target {target.shape} differ in shape")
  diff = pred.astype(jnp.float32) - target.astype(jnp.float32)
  return jnp.mean(jnp.sqrt(diff * diff + eps))
