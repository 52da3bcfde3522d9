"""Optimizer of the VRT recipe: Adam, cosine annealing with warm restarts, frozen alignment nets.

KAIR trains VRT with Adam (betas 0.9, 0.99, no weight decay), a learning rate that follows
CosineAnnealingWarmRestarts stepped every iteration, and treats the optical-flow and
deformable-alignment parameters (names containing "spynet" or "deform") specially: they are
frozen (requires_grad False, so Adam neither moves them nor updates their moments) for the first
`fix_iter` iterations and use `fix_lr_mul` times the learning rate for the whole run.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import ml_collections
import optax

FIXED = "fixed"
DEFAULT = "default"


def cosine_restarts(base_lr: float, period: int, eta_min: float) -> optax.Schedule:
  """torch CosineAnnealingWarmRestarts (T_mult 1) as a function of the update count.

  lr(t) = eta_min + (base_lr - eta_min) * (1 + cos(pi * (t mod period) / period)) / 2.
  """
  if period <= 0:
    raise ValueError(f"cosine_restarts: period must be positive, got {period}")

  def schedule(count: jax.Array) -> jax.Array:
    t = jnp.mod(count, period).astype(jnp.float32)
    return eta_min + (base_lr - eta_min) * 0.5 * (1.0 + jnp.cos(jnp.pi * t / period))

  return schedule


def linear_warmup(schedule: optax.Schedule, steps: int) -> optax.Schedule:
  """`schedule` scaled by (t + 1) / steps for the first `steps` updates (no effect after)."""
  if steps <= 0:
    return schedule
  return lambda count: schedule(count) * jnp.minimum(1.0, (count + 1.0) / steps)


def is_fixed(path: str, fix_keys: Sequence[str]) -> bool:
  """Whether a parameter, named by its key path, belongs to the frozen-then-scaled group."""
  return any(key in path for key in fix_keys)


def param_labels(params: Any, fix_keys: Sequence[str]) -> Any:
  """A pytree like `params` with FIXED for SpyNet / deformable-conv leaves, DEFAULT elsewhere.

  Matching is by substring of the key path, like KAIR's `any(key in name for key in fix_keys)`;
  in the flax tree this selects the `spynet` and `pa_deform` subtrees.
  """
  return jax.tree_util.tree_map_with_path(
      lambda path, _: FIXED if is_fixed(jax.tree_util.keystr(path), fix_keys) else DEFAULT,
      params)


class FreezeState(NamedTuple):
  count: jax.Array
  inner_state: Any


def freeze_until(inner: optax.GradientTransformation, steps: int) -> optax.GradientTransformation:
  """Zero updates and an untouched `inner` state for the first `steps` updates, then `inner`.

  This is torch's requires_grad_(False): Adam's moments and its bias-correction count for these
  parameters start when they are released, not at step 0.
  """

  def init_fn(params):
    return FreezeState(count=jnp.zeros([], jnp.int32), inner_state=inner.init(params))

  def update_fn(updates, state, params=None):
    new_updates, new_inner = inner.update(updates, state.inner_state, params)
    frozen = state.count < steps
    new_updates = jax.tree.map(lambda u: jnp.where(frozen, jnp.zeros_like(u), u), new_updates)
    new_inner = jax.tree.map(lambda old, new: jnp.where(frozen, old, new),
                             state.inner_state, new_inner)
    return new_updates, FreezeState(count=optax.safe_increment(state.count), inner_state=new_inner)

  return optax.GradientTransformation(init_fn, update_fn)


def make_optimizer(optim: ml_collections.ConfigDict
                   ) -> tuple[optax.GradientTransformation, optax.Schedule]:
  """Adam with the VRT schedule and the frozen-then-scaled SpyNet / DCN group.

  `optim` keys: lr, b1, b2, eps, lr_period, lr_eta_min, fix_iter, fix_lr_mul, fix_keys and
  optionally warmup_steps (linear warm-up of the whole schedule; default 0, as KAIR).
  Returns (transformation, schedule); schedule(step) is the learning rate of the other params at
  update `step` (0-based); the fixed group gets schedule(step) * fix_lr_mul once released.
  """
  schedule = linear_warmup(cosine_restarts(optim.lr, optim.lr_period, optim.lr_eta_min),
                           int(optim.get("warmup_steps", 0)))
  fix_iter = int(optim.fix_iter)
  fix_lr_mul = float(optim.fix_lr_mul)

  def fixed_schedule(count):
    # The inner Adam's count starts at release, i.e. at global step fix_iter.
    return schedule(count + fix_iter) * fix_lr_mul

  adam = lambda lr: optax.adam(lr, b1=optim.b1, b2=optim.b2, eps=optim.eps)
  fix_keys = tuple(optim.fix_keys)
  tx = optax.multi_transform(
      {DEFAULT: adam(schedule), FIXED: freeze_until(adam(fixed_schedule), fix_iter)},
      lambda params: param_labels(params, fix_keys))
  return tx, schedule
