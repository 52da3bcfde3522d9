"""Window attention of VRT: self attention with relative position bias, and mutual attention.

Windows are 3-D (frames x height x width). Window helpers follow the reference exactly: window
order (b, d, h, w), token order (d, h, w) inside a window.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Callable, Sequence
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from vrt_jax import kernels, memory, spatial
from vrt_jax.spynet import torch_conv_init


def window_partition(x: jax.Array, window_size: Sequence[int], grid: bool = False
                     ) -> jax.Array:
  """(B, D, H, W, C) -> (B * num_windows, wd * wh * ww, C), or with `grid` the windows kept on
  their grid: (B, D // wd, H // wh, W // ww, wd * wh * ww, C), same order."""
  b, d, h, w, c = x.shape
  wd, wh, ww = window_size
  x = x.reshape(b, d // wd, wd, h // wh, wh, w // ww, ww, c)
  x = x.transpose(0, 1, 3, 5, 2, 4, 6, 7)
  if grid:
    return x.reshape(*x.shape[:4], wd * wh * ww, c)
  return x.reshape(-1, wd * wh * ww, c)


def window_reverse(windows: jax.Array, window_size: Sequence[int], b: int, d: int, h: int,
                   w: int) -> jax.Array:
  """(B * num_windows, wd * wh * ww, C) or the grid form -> (B, D, H, W, C)."""
  wd, wh, ww = window_size
  x = windows.reshape(b, d // wd, h // wh, w // ww, wd, wh, ww, -1)
  x = x.transpose(0, 1, 4, 2, 5, 3, 6, 7)
  return x.reshape(b, d, h, w, -1)


def get_window_size(x_size: Sequence[int], window_size: Sequence[int],
                    shift_size: Sequence[int]) -> tuple[tuple[int, ...], tuple[int, ...]]:
  """Shrinks the window to the input where a dimension is <= the window (and drops its shift)."""
  ws, ss = list(window_size), list(shift_size)
  for i, n in enumerate(x_size):
    if n <= window_size[i]:
      ws[i] = n
      ss[i] = 0
  return tuple(ws), tuple(ss)


def _relative_position_bias_cpu(table: jax.Array, window_size: tuple[int, int, int], n: int
                                ) -> jax.Array:
  index = relative_position_index(tuple(window_size))[:n, :n]
  return table[index.reshape(-1)].reshape(n, n, -1).transpose(2, 0, 1)


def _relative_position_bias_xla(table: jax.Array, window_size: tuple[int, int, int], n: int
                                ) -> jax.Array:
  """`_relative_position_bias_cpu` without a gather: the table contracted with one-hot
  tensors, exact at HIGHEST precision (a one-hot times a float32 is the float32). On a TPU a
  gather of 6-float rows (heads) costs a 4 KiB tile per row, N^2 of them per block. The
  contractions keep a window's (h * w)^2 in-plane pairs as the minor axis: one einsum over
  the three axes' (N, N, 2s - 1) one-hots has an 8-wide minor axis that TPU tiles pad 16-fold
  (54 MiB per bias of a 6x8x8 window, held by every TMSA layer's backward)."""
  d, h, w = window_size
  t = table.reshape(2 * d - 1, (2 * h - 1) * (2 * w - 1), -1).astype(jnp.float32)
  hw = h * w
  # [p, (k, m), (l, n)] = 1 where p is the in-plane offset (k - l, m - n) of token pair
  # (k, m), (l, n); built from iota (no large constant in the program).
  r, c = np.divmod(np.arange(hw), w)
  offset = ((r[:, None] - r[None, :] + h - 1) * (2 * w - 1)
            + c[:, None] - c[None, :] + w - 1).reshape(-1)
  plane = (jnp.arange(t.shape[1], dtype=jnp.int32)[:, None]
           == jnp.asarray(offset, jnp.int32)[None, :]).astype(jnp.float32)
  u = jnp.einsum("apz,pq->azq", t, plane, precision=jax.lax.Precision.HIGHEST)
  i = np.arange(d)
  depth = np.eye(2 * d - 1, dtype=np.float32)[i[:, None] - i[None, :] + d - 1]  # (d, d, 2d - 1)
  bias = jnp.einsum("ija,azq->ijzq", depth, u, precision=jax.lax.Precision.HIGHEST)
  # (d, d, heads, hw * hw) -> (heads, d, hw, d, hw) -> (heads, N, N).
  bias = bias.reshape(d, d, -1, hw, hw).transpose(2, 0, 3, 1, 4)
  return bias.reshape(-1, d * hw, d * hw)[:, :n, :n].astype(table.dtype)


relative_position_bias = kernels.dispatch(cpu=_relative_position_bias_cpu,
                                          xla=_relative_position_bias_xla)
relative_position_bias.__doc__ = """(heads, n, n) bias of the first n tokens of a window from the
(relative positions, heads) table, as the reference's table[relative_position_index[:n, :n]]."""


@functools.cache
def compute_mask(d: int, h: int, w: int, window_size: tuple[int, int, int],
                 shift_size: tuple[int, int, int]) -> np.ndarray:
  """The shifted-window attention mask (0 or -100) for a padded input of size (d, h, w).

  Returns (num_windows, N, N). Region labels are assigned with the reference's slices, including
  its behaviour when a shift is 0 (the last slice then covers the whole axis).
  """
  labels = compute_mask_labels(d, h, w, window_size, shift_size)
  return mask_from_labels(labels)


@functools.cache
def compute_mask_labels(d: int, h: int, w: int, window_size: tuple[int, int, int],
                        shift_size: tuple[int, int, int]) -> np.ndarray:
  """Region label of every token of every window, (num_windows, N) int32.

  Two tokens of a window may attend to each other iff their labels are equal; this is the compact
  form of `compute_mask` (N times smaller), expanded window by window inside the attention.
  """
  img_mask = np.zeros((1, d, h, w, 1), np.int32)
  cnt = 0
  slices = [(slice(-ws), slice(-ws, -s), slice(-s, None))
            for ws, s in zip(window_size, shift_size, strict=True)]
  for sd in slices[0]:
    for sh in slices[1]:
      for sw in slices[2]:
        img_mask[:, sd, sh, sw, :] = cnt
        cnt += 1
  return _np_window_partition(img_mask, window_size)[..., 0]


def mask_from_labels(labels: np.ndarray | jax.Array) -> np.ndarray | jax.Array:
  """(..., N) region labels -> (..., N, N) additive mask: -100 across regions, else 0."""
  xp = np if isinstance(labels, np.ndarray) else jnp
  diff = labels[..., None, :] != labels[..., :, None]
  return xp.where(diff, xp.float32(-100.0), xp.float32(0.0))


def _np_window_partition(x: np.ndarray, window_size: Sequence[int]) -> np.ndarray:
  b, d, h, w, c = x.shape
  wd, wh, ww = window_size
  x = x.reshape(b, d // wd, wd, h // wh, wh, w // ww, ww, c).transpose(0, 1, 3, 5, 2, 4, 6, 7)
  return x.reshape(-1, wd * wh * ww, c)


@functools.cache
def relative_position_index(window_size: tuple[int, int, int]) -> np.ndarray:
  """(N, N) index into the relative position bias table; buffer `relative_position_index`."""
  coords = np.stack(np.meshgrid(*[np.arange(s) for s in window_size], indexing="ij"))
  coords = coords.reshape(3, -1)
  rel = (coords[:, :, None] - coords[:, None, :]).transpose(1, 2, 0)
  rel = rel + np.array(window_size) - 1
  rel[..., 0] *= (2 * window_size[1] - 1) * (2 * window_size[2] - 1)
  rel[..., 1] *= 2 * window_size[2] - 1
  return rel.sum(-1).astype(np.int32)


@functools.cache
def sine_position_encoding(hw: tuple[int, int], num_pos_feats: int,
                           temperature: float = 10000.) -> np.ndarray:
  """DETR-style normalised sine encoding of an h x w window; buffer `position_bias`.

  Returns (1, h * w, 2 * num_pos_feats): y features first, each interleaving sin / cos; tokens
  h-major.
  """
  scale = np.float32(2 * math.pi)
  not_mask = np.ones((1, hw[0], hw[1]), np.float32)
  y_embed = not_mask.cumsum(1, dtype=np.float32)
  x_embed = not_mask.cumsum(2, dtype=np.float32)
  eps = np.float32(1e-6)
  y_embed = y_embed / (y_embed[:, -1:, :] + eps) * scale
  x_embed = x_embed / (x_embed[:, :, -1:] + eps) * scale
  dim_t = np.arange(num_pos_feats, dtype=np.float32)
  dim_t = np.float32(temperature) ** (2 * (dim_t // 2) / np.float32(num_pos_feats))
  pos_x = x_embed[..., None] / dim_t
  pos_y = y_embed[..., None] / dim_t

  def interleave(p):
    return np.stack((np.sin(p[..., 0::2]), np.cos(p[..., 1::2])), axis=4).reshape(*p.shape[:3], -1)

  pos = np.concatenate((interleave(pos_y), interleave(pos_x)), axis=3)  # (1, h, w, 2F)
  return pos.reshape(1, hw[0] * hw[1], -1).astype(np.float32)


# Per step of the window loop, the attention logits of this many bytes or fewer: small enough to
# stay in cache between the two matmuls and the softmax (on CPU 2-4x faster than materialising
# the logits of all windows at once, and far less memory).
_LOGITS_BYTES_PER_STEP = 4 << 20
# The same on accelerators (`_attention_xla`): a chunk's logits stay in on-chip memory; larger
# chunks mean fewer loop iterations.
_XLA_LOGITS_BYTES_PER_STEP = 16 << 20


def mask_patterns(labels: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
  """The distinct shifted-window masks and which one each window uses.

  labels (nW, N) region labels (`compute_mask_labels`) -> masks (P, N, N) (0 or -100) and
  index (nW,) int32 with mask[w] == masks[index[w]]. Shifted windows fall into a handful of
  patterns (interior, edge, corner), so P is small however many windows there are.
  """
  canonical = np.empty_like(labels)
  for w, row in enumerate(labels):  # Regions renumbered in order of first appearance.
    _, first, inverse = np.unique(row, return_index=True, return_inverse=True)
    canonical[w] = np.argsort(np.argsort(first))[inverse]
  unique, index = np.unique(canonical, axis=0, return_inverse=True)
  return mask_from_labels(unique), index.reshape(-1).astype(np.int32)


def _attention_xla(qkv: jax.Array, qkv_mut: jax.Array | None, num_heads: int, scale: float,
                   bias: jax.Array | None, labels: np.ndarray | None) -> jax.Array:
  """`_attention_cpu`'s function in plain XLA (einsums and a float32 softmax), with autodiff.

  Windows are still visited in chunks (a loop whose body is rematerialised): all windows at
  once would put every window's N x N logits in HBM (172 GiB of temporaries for 001's official
  40x128x128 test tile, against 12 GiB chunked), and on a TPU a chunk's logits stay on chip.

  qkv, qkv_mut may also be on the window grid, (B, nD, nH, nW, N, 3C). When the program's
  clips or rows are split over devices (a mesh with several devices on 'data' or 'space') the
  loop then runs over window columns and frame windows, and every step takes all window rows
  of every clip: the split axes (clips, window rows) stay whole array axes, so GSPMD keeps each
  device on its own windows. Flattened into the loop's (steps, chunk), a device's windows are
  not one block of the steps, and GSPMD gathers all of them on every device.
  """
  grid = qkv.shape[:-2]
  n, c3 = qkv.shape[-2:]
  split, data = spatial.row_split(), spatial.axis_size(spatial.DATA_AXIS)
  on_grid = len(grid) == 4 and split * data > 1
  if not on_grid:  # (B_, N, 3C): one loop over all windows.
    qkv, qkv_mut = (None if t is None else t.reshape(-1, n, c3) for t in (qkv, qkv_mut))

  def to_loop(t):  # (B, nD, nH, nW, ...) -> (nD * nW, B, nH, ...)
    t = jnp.moveaxis(t, (1, 3), (0, 1))
    return t.reshape(t.shape[0] * t.shape[1], *t.shape[2:])

  masks = {}
  if labels is not None:
    parts = {"self": slice(None), "mutual": slice(0, n // 2)}
    for name in ("self", "mutual") if qkv_mut is not None else ("self",):
      m, index = mask_patterns(np.asarray(labels)[:, parts[name]])
      if on_grid:  # Window order (d, h, w) -> (d * w, 1, h): the same for every clip.
        index = to_loop(index.reshape(1, *grid[1:]))
      else:
        index = np.tile(index, qkv.shape[0] // labels.shape[0])
      masks[name] = (jnp.asarray(m), jnp.asarray(index))
  if on_grid:
    qkv, qkv_mut = (None if t is None else to_loop(t) for t in (qkv, qkv_mut))
  # Windows a device holds per step of the loop: clips split over 'data', window rows over
  # 'space' (an estimate where they do not divide).
  per_step = 1 if not on_grid else max(1, grid[0] // data) * max(1, grid[2] // split)
  steps_total = qkv.shape[0]
  chunk = memory.chunk_size(steps_total, per_step * num_heads * n * n * 4,
                            _XLA_LOGITS_BYTES_PER_STEP)

  def heads(t):  # (..., N, 3C) -> q, k, v (..., N, heads, hd)
    t = t.reshape(*t.shape[:-1], 3, num_heads, -1)
    return t[..., 0, :, :], t[..., 1, :, :], t[..., 2, :, :]

  def attend(q, k, v, b):  # jax.nn.dot_product_attention's XLA path, for any batch axes.
    logits = jnp.einsum("...qhd,...khd->...hqk", q, k, preferred_element_type=jnp.float32)
    logits = logits * jnp.float32(scale)
    if b is not None:
      logits = logits + b
    probs = jax.nn.softmax(logits, axis=-1).astype(v.dtype)
    out = jnp.einsum("...hqk,...khd->...qhd", probs, v)
    return out.reshape(*out.shape[:-2], -1)

  def window_mask(name, idx):  # -> (..., 1, N', N') for the heads axis.
    return masks[name][0][idx[name]][..., None, :, :]

  def window_chunk(xs):
    t, t_mut, idx = xs
    b = None if bias is None else bias.astype(jnp.float32)
    if "self" in masks:
      b = window_mask("self", idx) if b is None else b + window_mask("self", idx)
    out = attend(*heads(t), b)
    if t_mut is None:
      return out
    q, k, v = heads(t_mut)
    half = n // 2
    m = window_mask("mutual", idx) if "mutual" in masks else None
    # Frame 2 queries frame 1, then frame 1 queries frame 2, along the tokens.
    x1 = attend(q[..., half:, :, :], k[..., :half, :, :], v[..., :half, :, :], m)
    x2 = attend(q[..., :half, :, :], k[..., half:, :, :], v[..., half:, :, :], m)
    return jnp.concatenate([jnp.concatenate([x1, x2], axis=-2), out], axis=-1)

  xs = (qkv, qkv_mut, {name: index for name, (_, index) in masks.items()})
  steps = steps_total // chunk
  if steps == 1:
    out = window_chunk(xs)
  else:
    xs = jax.tree.map(lambda t: t.reshape(steps, chunk, *t.shape[1:]), xs)
    out = jax.lax.map(jax.checkpoint(window_chunk), xs)
    out = out.reshape(steps_total, *out.shape[2:])
  if on_grid:  # (nD * nW, B, nH, N, C') -> (B, nD, nH, nW, N, C')
    out = out.reshape(grid[1], grid[3], *out.shape[1:])
    return jnp.moveaxis(out, (0, 1), (1, 3))
  return out.reshape(*grid, n, out.shape[-1])


def _attention_cpu(qkv: jax.Array, qkv_mut: jax.Array | None, num_heads: int, scale: float,
                   bias: jax.Array | None, labels: np.ndarray | None) -> jax.Array:
  """Self attention, and mutual attention, within windows, in cache-sized chunks of windows.

  qkv, qkv_mut (B_, N, 3 * C): the projections in the Dense layers' layout (q, k, v; heads;
  head dim), B_ = B * nW window-major within each sample; qkv_mut None for self attention
  only; bias (heads, N, N) relative position bias or None; labels (nW, N) region labels of the
  shifted-window mask (`compute_mask_labels`) or None. Returns (B_, N, 2C): [mutual | self]
  (frame 2 querying frame 1, then frame 1 querying frame 2, along the tokens), or (B_, N, C)
  without qkv_mut. The softmax is computed in float32.

  Heads are split off window by window inside the loop, from the projections as the Dense
  layers wrote them: up front they would be nine full-size transposed copies, each faulting in
  fresh memory when training. The gradient is FlashAttention's (Dao et al., 2022): the backward
  pass recomputes each chunk's probabilities from the saved log-sum-exp, and takes the
  softmax's row sums from the output (sum(dO * O) over hd) instead of from the N x N
  probabilities. No logits are kept between the passes.
  """
  grid = qkv.shape[:-2]
  qkv, qkv_mut = (None if t is None else t.reshape(-1, *t.shape[-2:]) for t in (qkv, qkv_mut))
  b_, n, c3 = qkv.shape
  nw = b_ if labels is None else labels.shape[0]
  chunk = memory.chunk_size(b_, num_heads * n * n * 4, _LOGITS_BYTES_PER_STEP)

  # Masks are looked up per window from the few distinct ones: XLA's CPU code for an (N, N)
  # mask built from row and column labels inside the softmax fusion is not vectorised (5x
  # slower). Window indices travel as floats (exact small integers) so that they can be
  # arguments of the custom gradient; `after` keeps XLA from computing constants at program
  # start. The reference masks both directions of the mutual attention with the frame-0 x
  # frame-0 block of the mask.
  unmasked = (jnp.zeros((1, 1, 1), jnp.float32), jnp.zeros((b_,), jnp.float32))
  masks = []
  for part, used in ((slice(None), True), (slice(0, n // 2), qkv_mut is not None)):
    if labels is None or not used:
      masks.append(unmasked)
    else:
      m, index = mask_patterns(np.asarray(labels)[:, part])
      masks.append(memory.after((jnp.asarray(m), jnp.asarray(np.tile(index, b_ // nw),
                                                              jnp.float32)), qkv))
  bias_in = (jnp.zeros((), jnp.float32) if bias is None
             else memory.after(bias.astype(jnp.float32), qkv))
  mut_in = jnp.zeros((b_, 0, c3), qkv.dtype) if qkv_mut is None else qkv_mut
  attend = _window_attention(num_heads, float(scale), chunk, labels is not None,
                             bias is not None, qkv_mut is not None)
  out = attend(qkv, mut_in, bias_in, *masks[0], *masks[1])
  return out.reshape(*grid, *out.shape[-2:])


_attention = kernels.dispatch(cpu=_attention_cpu, xla=_attention_xla)


@functools.cache
def _window_attention(nh: int, scale: float, chunk: int, masked: bool, biased: bool,
                      mutual: bool) -> Callable[..., jax.Array]:
  """`_attention`'s loop over chunks of windows, with its gradient.

  Returns f(qkv, qkv_mut, bias, masks, index, masks_mut, index_mut) -> (B_, N, 2C or C);
  masks (P, N, N) and index (B_,) from `mask_patterns` for the self attention, masks_mut and
  index_mut for the mutual attention (all ignored unless `masked`); bias ignored unless
  `biased`, qkv_mut unless `mutual`.
  """

  def split(t):  # (c, N, 3C) -> q, k, v (c, heads, N, hd)
    t = t.reshape(t.shape[0], t.shape[1], 3, nh, -1).transpose(2, 0, 3, 1, 4)
    return t[0], t[1], t[2]

  def merge(dq, dk, dv):  # The inverse of split.
    t = jnp.stack([dq, dk, dv]).transpose(1, 3, 0, 2, 4)
    return t.reshape(t.shape[0], t.shape[1], -1)

  def logits(q, k, bias, mask):  # -> (c, heads, Nq, Nk) float32.
    s = jnp.einsum("chqd,chkd->chqk", q * jnp.asarray(scale, q.dtype), k,
                   preferred_element_type=jnp.float32)
    if bias is not None:
      s = s + bias
    if mask is not None:
      s = s + mask[:, None]
    return s

  def forward_one(q, k, v, bias, mask):  # -> out (c, Nq, heads * hd), lse (c, heads, Nq)
    s = logits(q, k, bias, mask)
    m = jnp.max(s, axis=-1, keepdims=True)
    e = jnp.exp(s - m)
    total = jnp.sum(e, axis=-1, keepdims=True)
    # Normalised after the matmul: N x hd divisions instead of N x N. Heads-major matmul,
    # transposed after a barrier (see backward_one).
    out = jnp.einsum("chqk,chkd->chqd", e.astype(v.dtype), v,
                     preferred_element_type=jnp.float32) / total
    out = jax.lax.optimization_barrier(out.astype(v.dtype)).swapaxes(1, 2)
    return out.reshape(out.shape[0], out.shape[1], -1), (m + jnp.log(total))[..., 0]

  def backward_one(q, k, v, bias, mask, out, lse, dout):  # out, dout (c, Nq, heads * hd)
    p = jnp.exp(logits(q, k, bias, mask) - lse[..., None])
    c, nq = dout.shape[:2]
    dout_h = dout.reshape(c, nq, nh, -1).swapaxes(1, 2)  # (c, heads, Nq, hd)
    dp = jnp.einsum("chqd,chkd->chqk", dout_h, v, preferred_element_type=jnp.float32)
    rows = jnp.sum((dout.astype(jnp.float32) * out.astype(jnp.float32)).reshape(c, nq, nh, -1),
                   axis=-1).swapaxes(1, 2)
    ds = p * (dp - rows[..., None])
    # dV and dK contract over the query axis of P and dS. XLA's CPU matmul is about 3x slower
    # when it has to transpose an N x N operand, so the small operands are transposed instead
    # (dV^T = dO^T P, (hd, N)), behind barriers that keep XLA from folding the transposes back
    # into the matmuls.
    dout_t, q_t = jax.lax.optimization_barrier(
        (dout_h.swapaxes(2, 3), (q * jnp.asarray(scale, q.dtype)).swapaxes(2, 3)))
    ds_c = ds.astype(q.dtype)
    dv_t, dk_t = jax.lax.optimization_barrier(
        (jnp.einsum("chdq,chqk->chdk", dout_t, p.astype(v.dtype)),
         jnp.einsum("chdq,chqk->chdk", q_t, ds_c)))
    dq = jnp.einsum("chqk,chkd->chqd", ds_c, k) * jnp.asarray(scale, q.dtype)
    return dq, dk_t.swapaxes(2, 3), dv_t.swapaxes(2, 3), ds

  def chunk_masks(masks, index):
    return masks[index.astype(jnp.int32)] if masked else None

  def directions(q, k, v):  # Mutual attention: frame 2 queries frame 1, then the reverse.
    half = q.shape[2] // 2
    first, second = slice(0, half), slice(half, None)
    return ((q[:, :, second], k[:, :, first], v[:, :, first]),
            (q[:, :, first], k[:, :, second], v[:, :, second]))

  def forward_chunk(qkv, qkv_mut, bias, masks, index, masks_mut, index_mut):
    bias = bias if biased else None
    out, lse = forward_one(*split(qkv), bias, chunk_masks(masks, index))
    if not mutual:
      return out, (lse,)
    mask = chunk_masks(masks_mut, index_mut)
    (x1, l1), (x2, l2) = (forward_one(*qkv_d, None, mask)
                          for qkv_d in directions(*split(qkv_mut)))
    out = jnp.concatenate([jnp.concatenate([x1, x2], axis=1), out], axis=2)
    return out, (lse, jnp.concatenate([l1, l2], axis=2))

  def backward_chunk(qkv, qkv_mut, bias, masks, index, masks_mut, index_mut, out, lse, dout):
    c = out.shape[-1] // 2 if mutual else out.shape[-1]
    self_out, self_dout = out[..., -c:], dout[..., -c:]
    dq, dk, dv, ds = backward_one(*split(qkv), bias if biased else None,
                                  chunk_masks(masks, index), self_out, lse[0], self_dout)
    # The bias gradient sums over windows: written as additions, as XLA's CPU reduction over a
    # leading axis is several times slower.
    dbias = functools.reduce(jnp.add, [ds[i] for i in range(ds.shape[0])]) if biased else None
    grads = [merge(dq, dk, dv)]
    if mutual:
      mask = chunk_masks(masks_mut, index_mut)
      mo, md = out[..., :c], dout[..., :c]
      half = mo.shape[1] // 2
      # Output tokens [:half] are direction 1's queries, [half:] direction 2's.
      (dq1, dk1, dv1, _), (dq2, dk2, dv2, _) = (
          backward_one(*qkv_d, None, mask, mo[:, rows], lse[1][..., rows], md[:, rows])
          for qkv_d, rows in zip(directions(*split(qkv_mut)),
                                 (slice(0, half), slice(half, None)), strict=True))
      cat = lambda a, b: jnp.concatenate([a, b], axis=2)
      grads.append(merge(cat(dq2, dq1), cat(dk1, dk2), cat(dv1, dv2)))
    return grads, dbias

  def run(qkv, qkv_mut, bias, masks, index, masks_mut, index_mut):
    return memory.map_chunks(
        lambda t: forward_chunk(t[0], t[1], bias, masks, t[2], masks_mut, t[3]),
        (qkv, qkv_mut, index, index_mut), chunk)

  @jax.custom_vjp
  def attend(qkv, qkv_mut, bias, masks, index, masks_mut, index_mut):
    return run(qkv, qkv_mut, bias, masks, index, masks_mut, index_mut)[0]

  def attend_fwd(*args):
    out, lse = run(*args)
    return out, (*args, out, lse)

  def attend_bwd(res, dout):
    res = memory.tie(res, dout)
    qkv, qkv_mut, bias, masks, index, masks_mut, index_mut, out, lse = res
    steps = qkv.shape[0] // chunk

    def piece(t, i):
      return jax.lax.dynamic_slice_in_dim(t, i * chunk, chunk)

    def step(i, carry):
      dqkv, dqkv_mut, dbias = carry
      sliced = [piece(t, i) for t in (qkv, qkv_mut, index, index_mut, out, dout)]
      grads, gb = backward_chunk(sliced[0], sliced[1], bias, masks, sliced[2], masks_mut,
                                 sliced[3], sliced[4], [piece(t, i) for t in lse], sliced[5])
      dqkv = jax.lax.dynamic_update_slice_in_dim(dqkv, grads[0], i * chunk, 0)
      if mutual:
        dqkv_mut = jax.lax.dynamic_update_slice_in_dim(dqkv_mut, grads[1], i * chunk, 0)
      return dqkv, dqkv_mut, dbias + gb if biased else dbias

    # The gradient buffers come into being with the cotangent, not at program start.
    init = tuple(memory.after(jnp.zeros(t.shape, t.dtype), dout) for t in (qkv, qkv_mut, bias))
    dqkv, dqkv_mut, dbias = (step(0, init) if steps == 1
                             else jax.lax.fori_loop(0, steps, step, init))
    zeros = [jnp.zeros_like(t) for t in (masks, index, masks_mut, index_mut)]
    return dqkv, dqkv_mut, dbias, *zeros

  attend.defvjp(attend_fwd, attend_bwd)
  return attend


class WindowAttention(nn.Module, kw_only=True):
  """Multi-head self attention in 3-D windows, plus mutual attention between the two frames.

  Self attention uses a learned relative position bias. Mutual attention (VRT, Sec. 3.2) lets the
  tokens of frame 2 query frame 1 and vice versa, with a sine position encoding added to the
  input; its output is concatenated with the self attention's before the projection.

  x: (num_windows * B, N, C) or on the window grid, (B, nD, nH, nW, N, C) -> the same shape;
  mask_labels: (num_windows, N) region labels of the shifted-window mask
  (`compute_mask_labels`) or None.
  """
  dim: int
  window_size: tuple[int, int, int]
  num_heads: int
  qkv_bias: bool = True
  qk_scale: float | None = None
  mut_attn: bool = True
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x: jax.Array, mask_labels: np.ndarray | None = None) -> jax.Array:
    n, c = x.shape[-2:]
    nh = self.num_heads
    hd = c // nh
    scale = self.qk_scale or hd ** -0.5
    wd, wh, ww = self.window_size
    table = self.param("relative_position_bias_table", nn.initializers.truncated_normal(0.02),
                       ((2 * wd - 1) * (2 * wh - 1) * (2 * ww - 1), nh))
    dense = lambda f, name: nn.Dense(f, use_bias=self.qkv_bias, kernel_init=torch_conv_init(),
                                     dtype=self.dtype, name=name)

    qkv = dense(3 * c, "qkv_self")(x)
    bias = relative_position_bias(table, tuple(self.window_size), n)
    labels = None if mask_labels is None else mask_labels[:, :n]
    qkv_mut = None
    if self.mut_attn:
      pos = sine_position_encoding((wh, ww), self.dim // 2)
      if 2 * pos.shape[1] != n:
        raise ValueError(
            f"Mutual attention needs two full {wh}x{ww} windows ({2 * wh * ww} tokens), got {n}: "
            "the input is too small for the window.")
      qkv_mut = dense(3 * c, "qkv_mut")(x + jnp.asarray(np.tile(pos[0], (2, 1)), x.dtype))
    out = _attention(qkv, qkv_mut, nh, scale, bias, labels)

    return nn.Dense(self.dim, kernel_init=torch_conv_init(), dtype=self.dtype, name="proj")(out)
