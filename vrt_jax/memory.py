"""Keeping XLA's peak memory near the model's working set.

XLA's CPU scheduler computes values that depend only on parameters and constants (attention
biases and masks, zero-initialised loop outputs) at the start of the program and keeps them until
their last use, so every layer's copy would be resident at once; it also runs independent
chunks of a computation side by side. `after` ties such a value to the layer's input, `tie`
holds a backward pass's recomputation back until its cotangent exists, and `map_chunks` loops
over chunks one at a time. On the host side, `CompiledPerShape` hands the
compiler's scratch memory back to the OS before the first run (the entry points' huge-pages
restart is in vrt_jax.runtime).
"""

from __future__ import annotations

import ctypes
import gc
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp


def after(t: Any, x: jax.Array) -> Any:
  """`t` (an array or a tree of arrays) unchanged, but computed only once `x` is.

  Adds a zero taken from `x`. The result is materialised, not fused into its consumers: those
  are often loops or reductions that would recompute it (e.g. a bias gather) for every element.
  """
  zero = _zero_of(x)
  return jax.lax.optimization_barrier(jax.tree.map(lambda a: a + zero.astype(a.dtype), t))


def tie(t: Any, x: jax.Array) -> Any:
  """`t` (an array or a tree of arrays) unchanged, computable only once `x` is.

  For hand-written gradients: what the backward pass recomputes from saved residuals then
  waits for the cotangent `x`, instead of being hoisted into the forward pass by XLA's
  scheduler and held until the backward pass reaches it. Unlike `after`, the added zero fuses
  into the consumers (nothing is copied). An optimization barrier alone does not order
  anything by the time XLA's CPU backend schedules the program.
  """
  zero = _zero_of(x)
  return jax.tree.map(lambda a: a + zero.astype(a.dtype), t)


def _zero_of(x: jax.Array) -> jax.Array:
  x0 = x.reshape(-1)[0]
  return jnp.where(jnp.isfinite(x0), x0 * 0, 0)  # Not simplified away; never NaN.


def chunk_size(n: int, item_bytes: int, budget_bytes: int) -> int:
  """The largest divisor of `n` whose items fit in `budget_bytes` (at least 1)."""
  chunk = max(1, min(n, budget_bytes // item_bytes))
  while n % chunk:
    chunk -= 1
  return chunk


def map_chunks(f: Callable[[Any], Any], xs: Any, chunk: int) -> Any:
  """`jax.lax.map(f, xs, batch_size=chunk)` for a batched `f` (leading axis: the chunk).

  The leading axis of every leaf of `xs` must be a multiple of `chunk`; `f` returns an array or
  a tree of arrays. Unlike lax.map, the stacked output buffers come to life with `xs`, not at
  program start.
  """
  leaves = jax.tree.leaves(xs)
  steps = leaves[0].shape[0] // chunk
  if steps == 1:
    return f(xs)
  # jnp: a numpy leaf could not be indexed with the loop's traced step.
  xs = jax.tree.map(lambda t: jnp.asarray(t).reshape(steps, chunk, *t.shape[1:]), xs)
  shapes = jax.eval_shape(f, jax.tree.map(lambda t: t[0], xs))
  init = jax.tree.map(lambda s: after(jnp.zeros((steps, *s.shape), s.dtype), leaves[0]), shapes)

  def step(i, out):
    new = f(jax.tree.map(lambda t: t[i], xs))
    return jax.tree.map(lambda o, n: jax.lax.dynamic_update_index_in_dim(o, n, i, 0), out, new)

  out = jax.lax.fori_loop(0, steps, step, init)
  return jax.tree.map(lambda o: o.reshape(-1, *o.shape[2:]), out)


def release_freed_heap() -> None:
  """Returns freed heap memory to the OS (glibc's malloc_trim; a no-op elsewhere).

  Compiling a full VRT frees about half a GB that glibc would otherwise keep, so it would stay
  part of the process's resident memory while the network runs.
  """
  gc.collect()
  try:
    ctypes.CDLL("libc.so.6").malloc_trim(0)
  except (OSError, AttributeError):
    pass


# XLA's MLIR fusion emitters hold about 350 MiB more host memory while compiling a full VRT than
# its LLVM IR emitters (001 at 1x6x64x64: compile peak 1310 -> 955 MiB RSS), for the same run
# time; compiling takes longer (about 16 -> 25 s), still inside the first-call budget.
LEAN_CPU_COMPILER_OPTIONS = {"xla_cpu_use_fusion_emitters": False}


class CompiledPerShape:
  """A jitted function compiled ahead of time once per argument shape, then the heap trimmed.

  Called like the function (`jit_kwargs`, e.g. shardings, go to jax.jit); `compiled` maps
  (tree structure, leaf shapes and dtypes) to the compiled executable. On CPU it compiles with
  `cpu_compiler_options` (default LEAN_CPU_COMPILER_OPTIONS; {} for XLA's defaults), falling
  back to the defaults where this XLA does not know an option.
  """

  def __init__(self, fn: Callable[..., Any],
               cpu_compiler_options: dict[str, Any] | None = None, **jit_kwargs: Any):
    self.fn = jax.jit(fn, **jit_kwargs)
    self.cpu_compiler_options = dict(LEAN_CPU_COMPILER_OPTIONS if cpu_compiler_options is None
                                     else cpu_compiler_options)
    self.compiled: dict[Any, Any] = {}

  def __call__(self, *args: Any) -> Any:
    leaves, tree = jax.tree.flatten(args)
    key = (tree, tuple((jnp.shape(a), jnp.result_type(a)) for a in leaves))
    if key not in self.compiled:
      lowered = self.fn.lower(*args)
      options = self.cpu_compiler_options if jax.default_backend() == "cpu" else {}
      try:
        compiled = lowered.compile(compiler_options=options or None)
      except jax.errors.JaxRuntimeError as e:
        if "No such compile option" not in str(e):
          raise
        compiled = lowered.compile()  # An option this XLA lacks: compile as it would.
      self.compiled[key] = compiled
      release_freed_heap()
    return self.compiled[key](*args)


def recomputed(f: Callable[..., jax.Array]) -> Callable[..., jax.Array]:
  """`f`, whose backward pass recomputes its intermediates from the inputs.

  Like `jax.checkpoint`, except that the recomputation waits for the output's cotangent: XLA
  would otherwise schedule every layer's recomputation early and hold them all, which is what
  remat is meant to avoid. Arguments are arrays (integer ones get no gradient); the output is
  one array.
  """

  @jax.custom_vjp
  def g(*args):
    return f(*args)

  def fwd(*args):
    return f(*args), args

  def bwd(args, ct):
    _, vjp = jax.vjp(f, *tie(args, ct))
    return vjp(ct)

  g.defvjp(fwd, bwd)
  return g
