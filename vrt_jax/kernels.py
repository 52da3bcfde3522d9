"""Which implementation of each kernel runs on which backend, and how blocks are rematerialised.

VRT's heavy operations have two implementations, written beside each other in the model files:

* ``cpu``: tuned for XLA's CPU backend. Hand-written gradients that keep fewer activations,
  cache-sized loops, and values tied in place so that XLA's CPU scheduler neither hoists
  recomputation into the forward pass nor keeps every layer's constants resident
  (vrt_jax.memory).
* ``xla``: plain jnp / lax with autodiff, for TPU and GPU, where those tricks only cost fusions
  and memory; memory is governed by the remat policy instead (`remat`).

`dispatch(cpu=..., xla=...)` makes the choice from the platform the program is *compiled for*,
when it is traced: JAX's default backend, or the platform named by `compiling_for` around the
tracing (an ahead-of-time TPU compile on a CPU host says "tpu" and gets the accelerator path).
`compiling_for(None)` leaves the choice to lowering (`jax.lax.platform_dependent`, for
`jax.export` to several platforms), at the price of tracing both implementations: it doubles a
VRT's tracing time (001 forward 6.9 -> 15.2 s). ``VRT_JAX_KERNELS=cpu`` or ``xla`` forces one
implementation everywhere (tests run both on CPU).
"""

from __future__ import annotations

import contextlib
import contextvars
import functools
import os
from collections.abc import Callable, Iterator
from typing import Any

import flax.linen as nn
import jax

from vrt_jax import presets, spatial

KERNELS_ENV = "VRT_JAX_KERNELS"
KERNEL_CHOICES = ("cpu", "xla")


def forced() -> str | None:
  """The implementation forced by VRT_JAX_KERNELS ('cpu' or 'xla'), or None (per platform)."""
  value = os.environ.get(KERNELS_ENV, "").strip().lower()
  if value in ("", "auto"):
    return None
  if value not in KERNEL_CHOICES:
    raise ValueError(f"{KERNELS_ENV}={value!r} is not a kernel choice: set it to 'cpu' or "
                     "'xla', or unset it to choose per platform")
  return value


# The platform traces are made for: "" for JAX's default backend, None to trace both kernels and
# choose at lowering; see `compiling_for`.
_PLATFORM: contextvars.ContextVar[str | None] = contextvars.ContextVar("vrt_jax_platform",
                                                                      default="")


@contextlib.contextmanager
def compiling_for(platform: str | None) -> Iterator[None]:
  """Programs traced in this context get the kernels of `platform` ('cpu', 'tpu', 'gpu', ...).

  Outside it, they get those of JAX's default backend. None traces both implementations and
  lets lowering keep the one of the platform it lowers for (`jax.export` to several platforms).
  jax.jit caches a function's trace: trace it anew (a new jit, or `jax.clear_caches()`) to
  change the choice.
  """
  token = _PLATFORM.set(platform)
  try:
    yield
  finally:
    _PLATFORM.reset(token)


def _target_platform() -> str:
  """The platform traces are made for: the one `compiling_for` names, else the default backend."""
  return _PLATFORM.get() or jax.default_backend()


def dispatch(*, cpu: Callable[..., Any], xla: Callable[..., Any]) -> Callable[..., Any]:
  """A function that runs `cpu` in programs compiled for CPU and `xla` everywhere else (the
  platform as `compiling_for` says).

  Programs whose rows are split over devices (vrt_jax.spatial) get `xla` on CPU too: the CPU
  kernels flatten frames into rows of pixels and loop over chunks of them, which GSPMD can only
  partition by gathering whole activations. Both must compute the same function, with outputs
  of the same shapes and dtypes. Arguments may be anything (arrays, numpy constants, Python
  numbers): the branches close over them.
  """

  @functools.wraps(xla)
  def kernel(*args: Any, **kwargs: Any) -> Any:
    choice = forced()
    if choice is not None:
      return (cpu if choice == "cpu" else xla)(*args, **kwargs)
    if spatial.row_split() > 1:
      return xla(*args, **kwargs)
    if _PLATFORM.get() is None:
      return jax.lax.platform_dependent(cpu=lambda: cpu(*args, **kwargs),
                                        default=lambda: xla(*args, **kwargs))
    return (cpu if _target_platform() == "cpu" else xla)(*args, **kwargs)

  return kernel


# Remat policies for a TMSA block (`config.model.remat`), after maxtext's configurable ones:
# what each block keeps for the backward pass; the rest is recomputed from the block's input.
# 'auto' (the training configs' choice) is resolved per platform by `resolve_remat`.
REMAT_AUTO = "auto"
REMAT_POLICIES: dict[str, Any] = {
    "none": None,  # Keep what autodiff keeps (the CPU kernels already recompute a good part).
    "full": jax.checkpoint_policies.nothing_saveable,  # Keep the block input only.
    "dots": jax.checkpoint_policies.dots_saveable,  # Keep matmul outputs.
    "dots_no_batch": jax.checkpoint_policies.dots_with_no_batch_dims_saveable,  # Projections.
}


def resolve_remat(policy: str, platform: str | None = None) -> str:
  """The policy to run: 'auto' is 'none' on CPU and 'full' on a TPU or GPU; others as given.

  `platform` is the one the program is compiled for ('cpu', 'tpu', 'gpu', ...); by default
  the one `compiling_for` names, else JAX's default backend. On a
  CPU, whose memory is large and where the CPU kernels already recompute what pays, 'none' is
  fastest; on a 16-32 GB accelerator chip the official recipes need 'full' (the 006 training
  step: 8.3 GiB per v5e chip with it, 90 GiB without).
  """
  if policy == REMAT_AUTO:
    return "none" if (platform or _target_platform()) == "cpu" else "full"
  if policy not in REMAT_POLICIES:
    raise ValueError(f"remat policy {policy!r} is unknown: use one of "
                     f"{', '.join(REMAT_POLICIES)} or {REMAT_AUTO}")
  return policy


def remat(module: type[nn.Module], policy: str, static_argnums: tuple[int, ...] = (2,)
          ) -> type[nn.Module]:
  """`module` (a block called as block(x, train), or as `static_argnums` says: self is 0)
  rematerialised under `policy`.

  Parameter names are unchanged: the wrapped class is instantiated with the same name.
  """
  checkpoint_policy = _checked(policy)
  if checkpoint_policy is None:
    return module
  return nn.remat(module, policy=checkpoint_policy, static_argnums=static_argnums)


def remat_part(fn: Callable[..., Any], policy: str) -> Callable[..., Any]:
  """`fn(module, *arrays)`, a part of `module`'s computation outside its TMSA blocks (e.g. a
  stage's parallel warping), rematerialised under `policy`: the backward pass keeps its inputs
  instead of its activations. Submodules it creates with `parent=module` keep their names."""
  checkpoint_policy = _checked(policy)
  if checkpoint_policy is None:
    return fn
  return nn.remat(fn, policy=checkpoint_policy)


def _checked(policy: str) -> Any:
  """The checkpoint policy named `policy` (None for 'none'); an unknown name is refused."""
  return REMAT_POLICIES[resolve_remat(policy)]


# Precision of float32 matmuls and convolutions (`config.model.matmul_precision`). On a TPU,
# 'default' runs each as one bfloat16 pass with float32 accumulation, 'high' as three
# (bfloat16_3x) and 'highest' as six (about float32); a GPU uses TF32 for 'default' and 'high'
# where it has it. XLA's CPU backend computes float32 under all three. Operands already in
# bfloat16 (`dtype`) are unaffected, and so are the one-hot matmuls that stand in for exact
# gathers (warp, relative position bias), which ask for HIGHEST themselves.
MATMUL_PRECISIONS = presets.MATMUL_PRECISIONS


def check_matmul_precision(name: str) -> str:
  """`name` if it is one of MATMUL_PRECISIONS; a ValueError naming the choices otherwise."""
  if name not in MATMUL_PRECISIONS:
    raise ValueError(f"matmul_precision {name!r} is unknown: use one of "
                     f"{', '.join(MATMUL_PRECISIONS)}")
  return name


def matmul_precision(name: str) -> contextlib.AbstractContextManager[None]:
  """Every matmul and convolution traced in this context that names no precision of its own
  runs at `name` (MATMUL_PRECISIONS). Backward passes traced outside it (jax.grad of a
  function that enters it) need it around the grad as well: hand-written VJPs are traced there.
  """
  return jax.default_matmul_precision(check_matmul_precision(name))
