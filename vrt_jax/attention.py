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

from vrt_jax import memory
from vrt_jax.spynet import torch_conv_init


def window_partition(x: jax.Array, window_size: Sequence[int]) -> jax.Array:
  """(B, D, H, W, C) -> (B * num_windows, wd * wh * ww, C)."""
  b, d, h, w, c = x.shape
  wd, wh, ww = window_size
  x = x.reshape(b, d // wd, wd, h // wh, wh, w // ww, ww, c)
  x = x.transpose(0, 1, 3, 5, 2, 4, 6, 7)
  return x.reshape(-1, wd * wh * ww, c)


def window_reverse(windows: jax.Array, window_size: Sequence[int], b: int, d: int, h: int,
                   w: int) -> jax.Array:
  """(B * num_windows, wd * wh * ww, C) -> (B, D, H, W, C)."""
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


def _attention(q: jax.Array, k: jax.Array, v: jax.Array, scale: float,
               bias: jax.Array | None, labels: np.ndarray | None) -> jax.Array:
  """Softmax attention within windows, looping over windows in cache-sized chunks.

  q, k, v (B_, heads, N, hd) with B_ = B * nW (window-major within each sample); bias
  (heads, N, N); labels (nW, N) region labels of the shifted-window mask (`compute_mask_labels`)
  or None -> (B_, N, heads * hd). The softmax is computed in float32.

  The gradient is FlashAttention's (Dao et al., 2022): the backward pass recomputes each chunk's
  probabilities from the saved log-sum-exp, and takes the softmax's row sums from the output
  (sum(dO * O) over hd) instead of from the N x N probabilities. No logits are kept between the
  passes.
  """
  b_, nh, n, hd = q.shape
  nw = b_ if labels is None else labels.shape[0]
  b = b_ // nw
  step_bytes = b * nh * n * n * 4
  chunk = memory.chunk_size(nw, step_bytes, _LOGITS_BYTES_PER_STEP)

  def to_windows(t):  # (B * nW, ...) -> (nW, B, ...)
    return t.reshape(b, nw, *t.shape[1:]).swapaxes(0, 1)

  # Masks are looked up per window from the few distinct ones: XLA's CPU code for an (N, N)
  # mask built from row and column labels inside the softmax fusion is not vectorised (5x
  # slower). The window index travels as floats (exact small integers) so that it can be an
  # argument of the custom gradient; `after` keeps XLA from computing constants at program start.
  if labels is None:
    masks, index = jnp.zeros((1, 1, 1), jnp.float32), jnp.zeros((nw,), jnp.float32)
  else:
    masks, index = mask_patterns(np.asarray(labels))
    masks, index = memory.after((jnp.asarray(masks), jnp.asarray(index, jnp.float32)), q)
  bias_in = (jnp.zeros((), jnp.float32) if bias is None
             else memory.after(bias.astype(jnp.float32), q))
  attend = _window_attention(float(scale), chunk, labels is not None, bias is not None)
  out = attend(to_windows(q), to_windows(k), to_windows(v), bias_in, masks, index)
  return out.swapaxes(0, 1).reshape(b_, n, nh * hd)  # From (nW, B, N, heads, hd).


@functools.cache
def _window_attention(scale: float, chunk: int, masked: bool,
                      biased: bool) -> Callable[..., jax.Array]:
  """Attention over (nW, B, heads, N, hd) windows, `chunk` windows at a time, with its gradient.

  Returns f(q, k, v, bias, masks, index) -> (nW, B, N, heads, hd); bias (heads, N, N) (ignored
  unless `biased`); masks (P, N, N) and index (nW,) from `mask_patterns` (ignored unless
  `masked`).
  """

  def logits(q, k, bias, masks, index):  # A chunk -> (c, B, heads, N, N) float32.
    s = jnp.einsum("cbhqd,cbhkd->cbhqk", q * jnp.asarray(scale, q.dtype), k,
                   preferred_element_type=jnp.float32)
    if biased:
      s = s + bias
    if masked:
      s = s + masks[index.astype(jnp.int32)][:, None, None]
    return s

  def forward_chunk(q, k, v, bias, masks, index):
    s = logits(q, k, bias, masks, index)
    m = jnp.max(s, axis=-1, keepdims=True)
    e = jnp.exp(s - m)
    total = jnp.sum(e, axis=-1, keepdims=True)
    # Normalised after the matmul: N x hd divisions instead of N x N. Heads-major matmul,
    # transposed after a barrier (see backward_chunk).
    out = jnp.einsum("cbhqk,cbhkd->cbhqd", e.astype(v.dtype), v,
                     preferred_element_type=jnp.float32) / total
    out = jax.lax.optimization_barrier(out.astype(v.dtype)).swapaxes(2, 3)
    return out, (m + jnp.log(total))[..., 0]

  def backward_chunk(q, k, v, bias, masks, index, out, lse, dout):
    p = jnp.exp(logits(q, k, bias, masks, index) - lse[..., None])
    dout_h = dout.swapaxes(2, 3)  # (c, B, heads, N, hd)
    dp = jnp.einsum("cbhqd,cbhkd->cbhqk", dout_h, v, preferred_element_type=jnp.float32)
    rows = jnp.sum(dout.astype(jnp.float32) * out.astype(jnp.float32), axis=-1).swapaxes(2, 3)
    ds = p * (dp - rows[..., None])
    # dV and dK contract over the query axis of P and dS. XLA's CPU matmul is about 3x slower
    # when it has to transpose an N x N operand, so the small operands are transposed instead
    # (dV^T = dO^T P, (hd, N)), behind barriers that keep XLA from folding the transposes back
    # into the matmuls.
    dout_t, q_t = jax.lax.optimization_barrier(
        (dout_h.swapaxes(3, 4), (q * jnp.asarray(scale, q.dtype)).swapaxes(3, 4)))
    ds_c = ds.astype(q.dtype)
    dv_t, dk_t = jax.lax.optimization_barrier(
        (jnp.einsum("cbhdq,cbhqk->cbhdk", dout_t, p.astype(v.dtype)),
         jnp.einsum("cbhdq,cbhqk->cbhdk", q_t, ds_c)))
    dv, dk = dv_t.swapaxes(3, 4), dk_t.swapaxes(3, 4)
    dq = jnp.einsum("cbhqk,cbhkd->cbhqd", ds_c, k) * jnp.asarray(scale, q.dtype)
    # The bias gradient sums over windows: written as additions, as XLA's CPU reduction over a
    # leading axis is several times slower.
    flat = ds.reshape(-1, *ds.shape[2:])
    dbias = functools.reduce(jnp.add, [flat[i] for i in range(flat.shape[0])]) if biased else None
    return dq, dk, dv, dbias

  def run(q, k, v, bias, masks, index):
    if chunk == q.shape[0]:
      return forward_chunk(q, k, v, bias, masks, index)
    return memory.map_chunks(lambda c: forward_chunk(*c[:3], bias, masks, c[3]),
                             (q, k, v, index), chunk)

  @jax.custom_vjp
  def attend(q, k, v, bias, masks, index):
    return run(q, k, v, bias, masks, index)[0]

  def attend_fwd(q, k, v, bias, masks, index):
    out, lse = run(q, k, v, bias, masks, index)
    return out, (q, k, v, bias, masks, index, out, lse)

  def attend_bwd(res, dout):
    q, k, v, bias, masks, index, out, lse = memory.tie(res, dout)
    steps = q.shape[0] // chunk
    if steps == 1:
      dq, dk, dv, dbias = backward_chunk(q, k, v, bias, masks, index, out, lse, dout)
    else:
      def piece(t, i):
        return jax.lax.dynamic_slice_in_dim(t, i * chunk, chunk)

      def step(i, carry):
        dq, dk, dv, dbias = carry
        gq, gk, gv, gb = backward_chunk(*[piece(t, i) for t in (q, k, v)], bias, masks,
                                        *[piece(t, i) for t in (index, out, lse, dout)])
        return (jax.lax.dynamic_update_slice_in_dim(dq, gq, i * chunk, 0),
                jax.lax.dynamic_update_slice_in_dim(dk, gk, i * chunk, 0),
                jax.lax.dynamic_update_slice_in_dim(dv, gv, i * chunk, 0),
                dbias + gb if biased else dbias)

      # The gradient buffers come into being with the cotangent, not at program start.
      init = tuple(memory.after(jnp.zeros(t.shape, t.dtype), dout) for t in (q, k, v, bias))
      dq, dk, dv, dbias = jax.lax.fori_loop(0, steps, step, init)
    if not biased:
      dbias = jnp.zeros_like(bias)
    return dq, dk, dv, dbias, jnp.zeros_like(masks), jnp.zeros_like(index)

  attend.defvjp(attend_fwd, attend_bwd)
  return attend


class WindowAttention(nn.Module):
  """Multi-head self attention in 3-D windows, plus mutual attention between the two frames.

  Self attention uses a learned relative position bias. Mutual attention (VRT, Sec. 3.2) lets the
  tokens of frame 2 query frame 1 and vice versa, with a sine position encoding added to the
  input; its output is concatenated with the self attention's before the projection.

  x: (num_windows * B, N, C) -> (num_windows * B, N, C); mask_labels: (num_windows, N) region
  labels of the shifted-window mask (`compute_mask_labels`) or None.
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
    b_, n, c = x.shape
    nh = self.num_heads
    hd = c // nh
    scale = self.qk_scale or hd ** -0.5
    wd, wh, ww = self.window_size
    table = self.param("relative_position_bias_table", nn.initializers.truncated_normal(0.02),
                       ((2 * wd - 1) * (2 * wh - 1) * (2 * ww - 1), nh))
    dense = lambda f, name: nn.Dense(f, use_bias=self.qkv_bias, kernel_init=torch_conv_init(),
                                     dtype=self.dtype, name=name)

    def heads(t):  # (B_, N', 3C) -> three (B_, heads, N', hd)
      t = t.reshape(t.shape[0], t.shape[1], 3, nh, hd).transpose(2, 0, 3, 1, 4)
      return t[0], t[1], t[2]

    q, k, v = heads(dense(3 * c, "qkv_self")(x))
    index = relative_position_index(tuple(self.window_size))[:n, :n]
    bias = table[index.reshape(-1)].reshape(n, n, nh).transpose(2, 0, 1)
    labels = None if mask_labels is None else mask_labels[:, :n]
    out = _attention(q, k, v, scale, bias, labels)

    if self.mut_attn:
      pos = sine_position_encoding((wh, ww), self.dim // 2)
      if 2 * pos.shape[1] != n:
        raise ValueError(
            f"Mutual attention needs two full {wh}x{ww} windows ({2 * wh * ww} tokens), got {n}: "
            "the input is too small for the window.")
      q, k, v = heads(dense(3 * c, "qkv_mut")(x + jnp.asarray(np.tile(pos, (1, 2, 1)), x.dtype)))
      half = n // 2
      # The reference masks both directions with the frame-0 x frame-0 block of the mask.
      m = None if mask_labels is None else mask_labels[:, :half]
      x1 = _attention(q[:, :, half:], k[:, :, :half], v[:, :, :half], scale, None, m)
      x2 = _attention(q[:, :, :half], k[:, :, half:], v[:, :, half:], scale, None, m)
      out = jnp.concatenate([jnp.concatenate([x1, x2], axis=1), out], axis=2)

    return nn.Dense(self.dim, kernel_init=torch_conv_init(), dtype=self.dtype, name="proj")(out)
