"""The training step: loss, gradients, optimizer update and metrics, and its compiled form.

One definition, run by train.py (through train_lib), the benchmarks and the accelerator
compile tool (benchmarks/tpu_compile.py), so that what is measured is what trains.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
import optax
from jax.sharding import Mesh

from vrt_jax import checkpoint, kernels, losses, optim, sharding, spatial

State = dict[str, Any]  # {"step": int32 scalar, "params": tree, "opt_state": tree}


def init_state(model: Any, tx: optax.GradientTransformation, rng: jax.Array) -> State:
  """Fresh parameters (model.init on the model's example input) and optimizer state."""
  x = jnp.zeros(checkpoint.example_input(model).shape, jnp.float32)
  params = model.init(rng, x)["params"]
  return {"step": jnp.zeros([], jnp.int32), "params": params, "opt_state": tx.init(params)}


def train_step(state: State, batch: dict[str, jax.Array], *, model: Any,
               tx: optax.GradientTransformation, dropout_rng: jax.Array, loss_eps: float,
               fix_keys: tuple[str, ...] = (), frozen: bool = False,
               nan_policy: str = "stop") -> tuple[State, dict[str, jax.Array]]:
  """One update on batch {"lq": (B, T, h, w, Cin), "gt": (B, T_out, H, W, 3)}.

  Stochastic depth draws from `dropout_rng` folded with the step number. `frozen`: no gradient
  into the parameters matching `fix_keys` (SpyNet and the deformable convolutions before
  fix_iter; XLA then drops their backward pass). nan_policy 'skip': a non-finite loss or
  gradient leaves parameters and optimizer state as they were. Returns the new state and
  {"loss", "grad_norm"}.
  """
  step_rng = jax.random.fold_in(dropout_rng, state["step"])

  def loss_fn(params):
    if frozen:
      params = jax.tree_util.tree_map_with_path(
          lambda p, x: jax.lax.stop_gradient(x)
          if optim.is_fixed(jax.tree_util.keystr(p), fix_keys) else x, params)
    pred = model.apply({"params": params}, batch["lq"], train=True, rngs={"dropout": step_rng})
    return losses.charbonnier(pred, batch["gt"], loss_eps)

  # The hand-written VJPs of the CPU kernels are traced here, outside the model's own context.
  with kernels.matmul_precision(getattr(model, "matmul_precision", "default")):
    loss, grads = jax.value_and_grad(loss_fn)(state["params"])
  grad_norm = optax.global_norm(grads)
  updates, opt_state = tx.update(grads, state["opt_state"], state["params"])
  params = optax.apply_updates(state["params"], updates)
  if nan_policy == "skip":
    finite = jnp.isfinite(loss) & jnp.isfinite(grad_norm)
    keep = lambda new, old: jnp.where(finite, new, old)
    params = jax.tree.map(keep, params, state["params"])
    opt_state = jax.tree.map(keep, opt_state, state["opt_state"])
  new_state = {"step": state["step"] + 1, "params": params, "opt_state": opt_state}
  return new_state, {"loss": loss, "grad_norm": grad_norm}


def state_shardings(model: Any, tx: optax.GradientTransformation, mesh: Mesh) -> Any:
  """The state's shardings (replicated: data parallelism), as a tree like the state."""
  return jax.tree.map(lambda a: a.sharding, abstract_state(model, tx, mesh))


def abstract_state(model: Any, tx: optax.GradientTransformation, mesh: Mesh) -> Any:
  """The state as jax.ShapeDtypeStructs with their shardings (for restoring and AOT compiles)."""
  shapes = jax.eval_shape(functools.partial(init_state, model, tx), jax.random.key(0))
  replicated = sharding.replicated(mesh)
  return jax.tree.map(lambda a: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=replicated),
                      shapes)


def jit_train_step(model: Any, tx: optax.GradientTransformation,
                   config: ml_collections.ConfigDict, mesh: Mesh, dropout_rng: jax.Array, *,
                   frozen: bool, state_sharding: Any = None) -> Callable[..., Any]:
  """`train_step` for `config`, jitted as train.py runs it: state donated, clips split over
  the mesh's data axis and their rows over its space axis, state replicated (`state_sharding`,
  if the caller has it already)."""
  state_sh = state_shardings(model, tx, mesh) if state_sharding is None else state_sharding
  step = functools.partial(
      train_step, model=model, tx=tx, dropout_rng=dropout_rng, loss_eps=config.loss_eps,
      fix_keys=tuple(config.optim.fix_keys), frozen=frozen,
      nan_policy=config.nan_policy)
  if mesh.size > 1:  # The model lays its work out by the mesh (e.g. window attention).
    step = spatial.traced_under(mesh, step)
  return jax.jit(step, in_shardings=(state_sh, sharding.batch_sharding(mesh)),
                 out_shardings=(state_sh, sharding.replicated(mesh)), donate_argnums=0)
