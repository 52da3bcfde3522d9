"""Spatial parallelism inside the model: a frame's rows split over the mesh's 'space' axis.

Under `config.mesh.space > 1` (vrt_jax.sharding) every activation (..., H, W, C) keeps its rows
split in equal bands, one per device, and GSPMD partitions convolutions, matmuls and the shifted
windows' rolls with neighbour exchanges. Gathers at data-dependent positions (flow warping,
deformable sampling) it can only partition by gathering the whole activation on every device;
`with_halo` runs them per band instead, on the band plus `halo` rows of each neighbour
(`lax.ppermute`), and falls back to the whole activation only when some position reaches
further (a flow longer than the halo): exact either way.

The mesh comes from the trace's context (`jax.sharding.use_abstract_mesh`, set by the callers
that split: train_step and inference); without one, or with one device on 'space', everything
here is the plain single-device computation.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Callable
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
from jax import lax
from jax.sharding import PartitionSpec

from vrt_jax import memory

DATA_AXIS = "data"
SPACE_AXIS = "space"
# Rows of each neighbour a band sees: flows and deformable offsets (flow + up to 10 px) within
# it need no gather of the whole activation (at scales whose bands are shorter, the band's
# height: only direct neighbours are exchanged).
HALO_ROWS = 16
# Bytes of whole frames a band's fallback gathers at once (per device).
FALLBACK_BYTES = 16 << 20


def axis_size(name: str) -> int:
  """Devices on mesh axis `name` of the program being traced (1 without a mesh or that axis)."""
  mesh = jax.sharding.get_abstract_mesh()
  if mesh.empty or name not in mesh.axis_names:
    return 1
  return int(dict(mesh.shape)[name])


def row_split() -> int:
  """Devices splitting the rows of the program being traced (1: not split), also inside a
  per-band function."""
  return axis_size(SPACE_AXIS)


def map_blocks(f: Callable[[Any], Any], xs: Any, item_bytes: int, budget_bytes: int) -> Any:
  """`jax.lax.map` of a batched, rematerialised `f` over chunks of the leading axis (N) of
  every leaf of `xs`, each chunk's items at most `budget_bytes` (`item_bytes` each) per device
  (the chunks as `block_steps` takes them)."""
  f = jax.checkpoint(f)
  n = jax.tree.leaves(xs)[0].shape[0]
  steps, to_steps, from_steps = block_steps(n, item_bytes, budget_bytes)
  if steps == 1:
    return f(xs)
  return jax.tree.map(from_steps, lax.map(f, jax.tree.map(to_steps, xs)))


def block_steps(n: int, item_bytes: int, budget_bytes: int
                ) -> tuple[int, Callable[[Any], Any], Callable[[Any], Any]]:
  """How to visit N items a few at a time, at most `budget_bytes` (`item_bytes` each) per
  device and step: (steps, to_steps: (N, ...) -> (steps, N / steps, ...), from_steps: back).

  Each step takes items from every one of the 'data' axis's blocks of N, so that under a mesh
  that splits N over 'data' every device works on its own items at every step: chunks of N
  taken in order would be one device's items at a time, and GSPMD would gather them all.
  """
  manual = DATA_AXIS in getattr(jax.sharding.get_abstract_mesh(), "manual_axes", ())
  blocks = 1 if manual else axis_size(DATA_AXIS)  # In a shard_map, N is the device's own.
  blocks = blocks if n % blocks == 0 else 1
  per_block = n // blocks
  chunk = memory.chunk_size(per_block, item_bytes, budget_bytes)
  steps = per_block // chunk

  def to_steps(t):
    t = jnp.moveaxis(t.reshape(blocks, steps, chunk, *t.shape[1:]), 1, 0)
    return t.reshape(steps, blocks * chunk, *t.shape[3:])

  def from_steps(t):
    t = jnp.moveaxis(t.reshape(steps, blocks, chunk, *t.shape[2:]), 0, 1)
    return t.reshape(n, *t.shape[3:])

  return steps, to_steps, from_steps


def _in_band() -> bool:
  """Whether the trace is inside a per-band function (`with_halo`'s: its rows are a band)."""
  return SPACE_AXIS in getattr(jax.sharding.get_abstract_mesh(), "manual_axes", ())


class Band(NamedTuple):
  """Where a band of rows lies: x's row `top` is the frame's row `start`, the band's first;
  the band has `rows` rows of a frame of `height` (the whole frame: Band(0, 0, H, H))."""
  top: Any
  start: Any
  rows: int
  height: int

  def out_rows(self, out_height: int) -> tuple[Any, int]:
    """The band's first row and row count in an output of `out_height` rows (e.g. resized)."""
    return self.start * out_height // self.height, self.rows * out_height // self.height


def with_halo(fn: Callable[..., tuple[jax.Array, jax.Array]], x: jax.Array, *args: jax.Array,
              consts: tuple[Any, ...] = (), halo: int = HALO_ROWS,
              out_height: int | None = None) -> jax.Array:
  """fn's output for the whole frame, computed band by band on the 'space' axis.

  x: (N, H, ...), read at data-dependent rows; args: (N, H, ...) arrays aligned with the
  output's rows (positions, offsets); consts: arrays every band needs whole (weights; passed,
  not closed over, so that loops inside fn see them as the band's own); out_height: the
  output's rows, if not H (a resize). `fn(xe, *args_band, band, *consts)` gets `xe`, some rows
  of x around the band (`Band`: where they lie; rows outside the frame are zeros) and the
  band's own args, and returns (out_band, ok) with ok True where every read stayed inside xe. A
  band that is not ok makes every band recompute from the whole x (gathered, a few frames at a
  time: `FALLBACK_BYTES`). Without a split (or with H or out_height not divisible by the
  devices on 'space'), fn runs once on the whole frame.
  """
  space = row_split()
  h = x.shape[1]
  out_height = out_height or h
  if (space == 1 or _in_band() or h % space or out_height % space
      or any(a.shape[1] != h for a in args)):
    return fn(x, *args, Band(0, 0, h, h), *consts)[0]
  rows = h // space
  halo = min(halo, rows)

  def per_band(index: jax.Array, x: jax.Array, args: tuple[jax.Array, ...],
               consts: tuple[Any, ...]) -> jax.Array:
    start = index[0] * rows
    # The last rows of the band above and the first rows of the band below (zeros at the
    # frame's top and bottom edges, where no device sends).
    above = lax.ppermute(x[:, rows - halo:], SPACE_AXIS, [(i, i + 1) for i in range(space - 1)])
    below = lax.ppermute(x[:, :halo], SPACE_AXIS, [(i + 1, i) for i in range(space - 1)])
    out, ok = fn(jnp.concatenate([above, x, below], axis=1), *args,
                 Band(halo, start, rows, h), *consts)
    everywhere = lax.pmin(jnp.all(ok).astype(jnp.int32), SPACE_AXIS) > 0

    def whole_frame() -> jax.Array:
      # A few frames at a time: the branch's buffers are allocated whether it runs or not,
      # and all of x's frames whole would cost more than the band's own computation.
      def frames(a: tuple[jax.Array, tuple[jax.Array, ...]]) -> jax.Array:
        x, args = a
        whole = lax.all_gather(x, SPACE_AXIS, axis=1, tiled=True)
        return fn(whole, *args, Band(start, start, rows, h), *consts)[0]

      with jax.named_scope("halo_fallback"):
        return map_blocks(frames, (x, tuple(args)), h * x[0, 0].size * x.dtype.itemsize,
                          FALLBACK_BYTES)

    return lax.cond(everywhere, lambda: out, whole_frame)

  # Manual over every axis of the mesh: libtpu's SPMD partitioner aborts on a shard_map that
  # leaves the other (data) axes to GSPMD (docs/spatial_parallelism.md). The leading dim
  # (clips x frames) is split over those axes where it divides, else each of their devices
  # computes all of it.
  mesh = jax.sharding.get_abstract_mesh()
  others = tuple(a for a in mesh.axis_names if a != SPACE_AXIS)
  lead = others if others and all(
      a.shape[0] % math.prod(dict(mesh.shape)[o] for o in others) == 0 for a in (x, *args)
  ) else None
  spec = PartitionSpec(lead, SPACE_AXIS)
  # Each band's index as data (the same in every version of the program).
  index = jnp.arange(space, dtype=jnp.int32)
  in_specs = (PartitionSpec(SPACE_AXIS), spec, (spec,) * len(args), PartitionSpec())
  return jax.shard_map(per_band, in_specs=in_specs, out_specs=spec,
                       axis_names=set(mesh.axis_names))(index, x, tuple(args), tuple(consts))


def traced_under(mesh: Any, fn: Callable[..., Any]) -> Callable[..., Any]:
  """`fn`, traced knowing that its activations' rows are split as `mesh` says (to be jitted)."""
  @functools.wraps(fn)
  def traced(*args: Any, **kwargs: Any) -> Any:
    with jax.sharding.use_abstract_mesh(mesh.abstract_mesh):
      return fn(*args, **kwargs)

  return traced
