"""Flow-guided modulated deformable convolution (DCNv2; VRT's parallel warping alignment).

Channels-last. The offset layout follows torchvision's `deform_conv2d`: channel
g * 18 + 2 * k + {0: dy, 1: dx} for deformable group g and kernel point k = ki * 3 + kj; the mask
channel is g * 9 + k.
"""

from __future__ import annotations

import functools
from collections.abc import Sequence
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from vrt_jax import kernels, memory, spatial
from vrt_jax.layers import Conv
from vrt_jax.spynet import torch_conv_init

Band = spatial.Band  # Which rows x holds and which the output has (the whole frame, unsplit).

# Upper bound on the im2col columns materialised at once (bytes); see _deform_conv_1group.
_COLUMN_BYTES = 64 << 20


def modulated_deform_conv(x: jax.Array, offset: jax.Array, mask: jax.Array, kernel: jax.Array,
                          bias: jax.Array | None, deformable_groups: int) -> jax.Array:
  """3x3 modulated deformable convolution, stride 1, padding 1, dilation 1.

  x: (N, H, W, Cin); offset: (N, H, W, dg * 18); mask: (N, H, W, dg * 9);
  kernel: (3, 3, Cin / groups, Cout), the number of groups being Cin / kernel.shape[2]
  -> (N, H, W, Cout). Bilinear taps outside the image are zero. With the rows split over
  devices (vrt_jax.spatial), each band samples its neighbours' rows near it.
  """
  return spatial.with_halo(functools.partial(_deform_conv_band, dg=deformable_groups),
                           x, offset, mask, consts=(kernel, bias))


def _deform_conv_band(x: jax.Array, offset: jax.Array, mask: jax.Array, band: Band,
                      kernel: jax.Array, bias: jax.Array | None, *, dg: int
                      ) -> tuple[jax.Array, jax.Array]:
  """`modulated_deform_conv` of the band's rows (those of offset and mask) from x, rows around
  the band; also whether every read was inside x."""
  n, _, w, cin = x.shape
  h = offset.shape[1]
  cin_g, cout = kernel.shape[2], kernel.shape[3]
  groups = cin // cin_g
  if cin % dg or cin_g * groups != cin or cout % groups:
    raise ValueError(f"modulated_deform_conv: Cin={cin} must split into {dg} deformable groups "
                     f"and kernel {kernel.shape} into whole convolution groups")
  if groups > 1 and dg % groups == 0:
    # A grouped convolution is `groups` independent ones over disjoint channels and deformable
    # groups; each then ends in one plain matmul.
    dgg, cog = dg // groups, cout // groups
    outs = [_deform_conv_1group(x[..., i * cin_g:(i + 1) * cin_g],
                                offset[..., i * dgg * 18:(i + 1) * dgg * 18],
                                mask[..., i * dgg * 9:(i + 1) * dgg * 9],
                                kernel[..., i * cog:(i + 1) * cog], dgg, band)
            for i in range(groups)]
    out = jnp.concatenate(outs, axis=-1)
  elif groups > 1:
    cols = _deform_columns(x, offset, mask, dg, band=band).reshape(n, h, w, 9, groups, cin_g)
    k = kernel.reshape(9, cin_g, groups, cout // groups)
    out = jnp.einsum("nhwkgc,kcgo->nhwgo", cols, k.astype(cols.dtype),
                     preferred_element_type=jnp.float32).reshape(n, h, w, cout)
  else:
    out = _deform_conv_1group(x, offset, mask, kernel, dg, band)
  out = (out if bias is None else out + bias).astype(x.dtype)
  return out, _reads_inside(offset, dg, band, x.shape[1])


def _deform_conv_matmul(x: jax.Array, offset: jax.Array, mask: jax.Array, kernel: jax.Array,
                        dg: int, band: Band, materialise: bool = True,
                        table: jax.Array | None = None) -> jax.Array:
  n, _, w, cin = x.shape
  h = offset.shape[1]
  cols = _deform_columns(x, offset, mask, dg, materialise, band=band, table=table)
  cols = cols.reshape(n * h * w, 9 * cin)
  # (k, Cin)-major columns against the (3, 3, Cin, Cout) kernel: one 2-D matmul.
  out = jnp.dot(cols, kernel.reshape(9 * cin, -1).astype(cols.dtype),
                preferred_element_type=jnp.float32)
  return out.reshape(n, h, w, -1)


def _deform_conv_1group_cpu(x: jax.Array, offset: jax.Array, mask: jax.Array, kernel: jax.Array,
                            dg: int, band: Band) -> jax.Array:
  n, h, w, cin = x.shape
  # Bound the (N, H, W, 9 * Cin) columns: a few frames at a time.
  step = memory.chunk_size(n, h * w * 9 * cin * 4, _COLUMN_BYTES)
  if step < n:
    # The backward pass recomputes each chunk's columns rather than keeping them all.
    chunk_fn = memory.recomputed(lambda *a: _deform_conv_matmul(*a, dg, band))
    return memory.map_chunks(lambda a: chunk_fn(*a, kernel), (x, offset, mask), step)
  return _deform_conv_matmul(x, offset, mask, kernel, dg, band)


def _deform_conv_1group_xla(x: jax.Array, offset: jax.Array, mask: jax.Array, kernel: jax.Array,
                            dg: int, band: Band) -> jax.Array:
  n, hx, w, cin = x.shape
  h = offset.shape[1]
  # On a TPU a gathered 2 x 2 neighbourhood's 4 * Cin / dg floats pad to 128 lanes: a whole
  # 192x192 frame's are 2.5 GiB, and the backward pass holds several such buffers. So a frame,
  # or a band of its rows split over devices, is sampled a few output rows at a time
  # (rematerialised), from a table of neighbourhoods built once: the band's rows with their
  # halos, or the whole frame. (Before the parallel warping and SpyNet were rematerialised,
  # libtpu packed the row loop of unsplit frames worse: docs/spatial_parallelism.md.)
  lanes = max(128, 4 * cin // dg)
  row_bytes = w * 9 * dg * lanes * 4
  rows = memory.chunk_size(h, row_bytes, _COLUMN_BYTES)
  table_bytes = (hx + 1) * (w + 1) * dg * lanes * 4

  def frames(a: tuple[jax.Array, jax.Array, jax.Array]) -> jax.Array:
    x, offset, mask = a
    if rows == h:
      return _deform_conv_matmul(x, offset, mask, kernel, dg, band, materialise=False)
    table = _neighbourhood_table(x, dg)
    steps = h // rows

    def sample(step: tuple[jax.Array, jax.Array, jax.Array]) -> jax.Array:
      i, offset, mask = step
      part = Band(band.top + i * rows, band.start + i * rows, rows, band.height)
      return _deform_conv_matmul(x, offset, mask, kernel, dg, part, materialise=False,
                                 table=table)

    def to_steps(t: jax.Array) -> jax.Array:  # (N, H, ...) -> (steps, N, rows, ...)
      return jnp.moveaxis(t.reshape(t.shape[0], steps, rows, *t.shape[2:]), 1, 0)

    out = jax.lax.map(jax.checkpoint(sample), (jnp.arange(steps, dtype=jnp.int32),
                                               to_steps(offset), to_steps(mask)))
    return jnp.moveaxis(out, 0, 1).reshape(x.shape[0], h, w, -1)

  # Per frame: the gathered neighbourhoods (9x the table's rows), and the table if it outlives them.
  item_bytes = rows * row_bytes + (table_bytes if rows < h else 0)
  return spatial.map_blocks(frames, (x, offset, mask), item_bytes, _COLUMN_BYTES)


_deform_conv_1group = kernels.dispatch(cpu=_deform_conv_1group_cpu, xla=_deform_conv_1group_xla)


def _sample_rows(offset: jax.Array, dg: int, band: Band) -> tuple[jax.Array, jax.Array]:
  """The first row of each bilinear sample, in x's rows and in the frame's: (N, H, W, 9, dg),
  H the output's rows, taps (ky, kx)-major."""
  n, h, w, _ = offset.shape
  top, r0 = band.top, band.start
  off = offset.astype(jnp.float32).reshape(n, h, w, dg, 9, 2).transpose(0, 1, 2, 4, 3, 5)
  ky = np.repeat(np.arange(3) - 1, 3).reshape(-1, 1).astype(np.float32)
  y0 = jnp.floor(np.arange(h, dtype=np.float32)[:, None, None, None] + ky + top + off[..., 0])
  return y0, y0 - top + r0


def _reads_inside(offset: jax.Array, dg: int, band: Band, rows: int) -> jax.Array:
  """Whether each sample's two rows are rows of x (`rows` of them), or the sample lies wholly
  outside the frame (weight 0)."""
  y0, frame_y0 = _sample_rows(offset, dg, band)
  return ((y0 >= 0) & (y0 + 1 < rows)) | (frame_y0 < -1) | (frame_y0 > band.height - 1)


def _neighbourhood_table(x: jax.Array, dg: int) -> jax.Array:
  """(N, H, W, Cin) -> (N, (H + 1) * (W + 1) * dg, 4 * Cin / dg): row (y, x, group) holds the
  2 x 2 neighbourhood of the zero-padded input starting at (y - 1, x - 1), the four corners'
  channels one after another."""
  n, hx, w, cin = x.shape
  cpg = cin // dg
  p = jnp.pad(x.reshape(n, hx, w, dg, cpg), ((0, 0), (1, 1), (1, 1), (0, 0), (0, 0)))
  # Built by concatenating along the minor axis: a stack on a new axis holds (4, cpg) minor
  # dims, which TPU tiles pad to (8, 128) (12x the table's floats).
  table = jnp.concatenate([p[:, :-1, :-1], p[:, :-1, 1:], p[:, 1:, :-1], p[:, 1:, 1:]], axis=-1)
  return table.reshape(n, (hx + 1) * (w + 1) * dg, 4 * cpg)


def _deform_columns(x: jax.Array, offset: jax.Array, mask: jax.Array, dg: int,
                    materialise: bool = True, *, band: Band | None = None,
                    table: jax.Array | None = None) -> jax.Array:
  """The modulated, bilinearly sampled im2col columns: (N, H, W, 9, Cin), Cin ordered as in x.

  XLA's CPU gather costs about the same per index for a 10- or a 40-float row, so instead of one
  gather per bilinear corner (and deformable group) this gathers once from a table whose row
  (y, x) holds the 2 x 2 neighbourhood of the zero-padded input starting at (y - 1, x - 1). The
  modulation mask is folded into the four bilinear weights, and the weighted sum is written as
  elementwise products of slices so that XLA fuses it with the gather (no (..., 4, cpg)
  intermediate). Sampling positions and weights stay in float32.

  band: which frame rows x holds and the output has (those of offset and mask); default: x is
  the whole frame. materialise: the CPU kernel's layout (indices and weights computed once,
  one gather over all frames); else the accelerators' (fused, a gather batched over frames).
  table: x's `_neighbourhood_table`, if already built.
  """
  n, hx, w, cin = x.shape
  h = offset.shape[1]
  band = band or Band(0, 0, hx, hx)
  top, r0, frame_h = band.top, band.start, band.height
  cpg = cin // dg
  table = _neighbourhood_table(x, dg) if table is None else table

  # Positions laid out (N, H, W, 9, dg) so that the columns come out in the kernel's order.
  off = offset.astype(jnp.float32).reshape(n, h, w, dg, 9, 2).transpose(0, 1, 2, 4, 3, 5)
  m = mask.astype(jnp.float32).reshape(n, h, w, dg, 9).transpose(0, 1, 2, 4, 3)
  ky, kx = np.meshgrid(np.arange(3) - 1, np.arange(3) - 1, indexing="ij")
  base_y = np.arange(h, dtype=np.float32)[:, None, None, None] + ky.reshape(-1, 1)  # (H, 1, 9, 1)
  base_x = np.arange(w, dtype=np.float32)[None, :, None, None] + kx.reshape(-1, 1)  # (1, W, 9, 1)
  py = base_y + top + off[..., 0]  # In x's rows.
  px = base_x + off[..., 1]
  y0 = jnp.floor(py)
  x0 = jnp.floor(px)
  wy1, wx1 = py - y0, px - x0
  wy0, wx0 = 1 - wy1, 1 - wx1
  # Corners outside the frame read zeros (padding, or rows beyond it in a band's halo); samples
  # with no corner inside get weight 0.
  frame_y0 = y0 - top + r0
  m = jnp.where((frame_y0 >= -1) & (frame_y0 <= frame_h - 1) & (x0 >= -1) & (x0 <= w - 1), m, 0)
  coefs = [(c * m).astype(x.dtype)[..., None] for c in (wy0 * wx0, wy0 * wx1, wy1 * wx0,
                                                         wy1 * wx1)]
  yi = jnp.clip(y0.astype(jnp.int32) + 1, 0, hx)
  xi = jnp.clip(x0.astype(jnp.int32) + 1, 0, w)
  rows = (yi * (w + 1) + xi) * dg + np.arange(dg, dtype=np.int32)  # Within each frame.
  if materialise:
    # Materialise indices and weights once: fused into XLA CPU's gather they would be
    # recomputed for every gathered element. One gather from all frames' rows at once.
    first_row = (np.arange(n, dtype=np.int32) * ((hx + 1) * (w + 1) * dg))[:, None, None, None,
                                                                             None]
    rows, coefs = jax.lax.optimization_barrier((first_row + rows, coefs))
    vals = table.reshape(-1, 4 * cpg).at[rows].get(mode="promise_in_bounds")
  else:
    # Frame by frame (a batched gather), so that frames split over devices stay split.
    vals = jax.vmap(lambda t, r: t.at[r].get(mode="promise_in_bounds"))(table, rows)
  # vals: (N, H, W, 9, dg, 4 * cpg)
  cols = vals[..., :cpg] * coefs[0]
  for q in range(1, 4):
    cols = cols + vals[..., q * cpg:(q + 1) * cpg] * coefs[q]
  return cols.reshape(n, h, w, 9, cin)


class DCNv2PackFlowGuided(nn.Module, kw_only=True):
  """Flow-guided deformable alignment (BasicVSR++ style) used by VRT's parallel warping.

  The offset/mask head sees the flow-warped neighbours, the current frame and the flows; offsets
  are a bounded residual (max_residue_magnitude * tanh) on top of the flows. For pa_frames 4/6 the
  neighbours are stacked along channels and the convolution is grouped, one group per neighbour.

  x: (N, H, W, (pa_frames / 2) * C) neighbours; x_flow_warpeds: pa_frames / 2 arrays (N, H, W, C);
  x_current: (N, H, W, C); flows: pa_frames / 2 arrays (N, H, W, 2) -> (N, H, W, C).
  """
  features: int
  deformable_groups: int = 16
  max_residue_magnitude: float = 10.
  pa_frames: int = 2
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x: jax.Array, x_flow_warpeds: Sequence[jax.Array], x_current: jax.Array,
               flows: Sequence[jax.Array]) -> jax.Array:
    c = self.features
    dg = self.deformable_groups
    h = jnp.concatenate([*x_flow_warpeds, x_current, *flows], axis=-1)
    for i in range(3):
      h = Conv(c, (3, 3), padding=1, kernel_init=torch_conv_init(), dtype=self.dtype,
               name=f"conv_offset_{2 * i}")(h)
      h = nn.leaky_relu(h, 0.1)
    # Offsets and mask (sampling positions) in float32 whatever the compute dtype.
    h = Conv(27 * dg, (3, 3), padding=1, kernel_init=nn.initializers.zeros, dtype=jnp.float32,
             name="conv_offset_6")(h)
    o1, o2, m = jnp.split(h, 3, axis=-1)
    offset = self.max_residue_magnitude * jnp.tanh(jnp.concatenate([o1, o2], axis=-1))
    parts = jnp.split(offset, len(flows), axis=-1)
    # Each neighbour's share of the offsets is a residual on its own flow, as (dy, dx) pairs.
    offset = jnp.concatenate(
        [p + jnp.tile(f[..., ::-1], (1, 1, 1, p.shape[-1] // 2)) for p, f in zip(parts, flows,
                                                                              strict=True)],
        axis=-1)
    mask = jax.nn.sigmoid(m)

    bound = 1. / np.sqrt(c * 9)
    def init(key, shape, dtype=jnp.float32):  # The reference's U(-1/sqrt(9C), 1/sqrt(9C)).
      return jax.random.uniform(key, shape, dtype, -bound, bound)

    kernel = self.param("kernel", init, (3, 3, c, c))
    bias = self.param("bias", nn.initializers.zeros, (c,))
    return modulated_deform_conv(x.astype(self.dtype), offset, mask, kernel, bias, dg)
