"""Window attention of VRT: self attention with relative position bias, and mutual attention.

Windows are 3-D (frames x height x width). Window helpers follow the reference exactly: window
order (b, d, h, w), token order (d, h, w) inside a window.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

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
  img_mask = np.zeros((1, d, h, w, 1), np.float32)
  cnt = 0
  slices = [(slice(-ws), slice(-ws, -s), slice(-s, None))
            for ws, s in zip(window_size, shift_size, strict=True)]
  for sd in slices[0]:
    for sh in slices[1]:
      for sw in slices[2]:
        img_mask[:, sd, sh, sw, :] = cnt
        cnt += 1
  mask_windows = _np_window_partition(img_mask, window_size)[..., 0]
  attn_mask = mask_windows[:, None, :] - mask_windows[:, :, None]
  return np.where(attn_mask != 0, np.float32(-100.0), np.float32(0.0))


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


def _attention(q: jax.Array, k: jax.Array, v: jax.Array, scale: float,
               bias: jax.Array | None, mask: np.ndarray | None) -> jax.Array:
  """q, k, v (B_, heads, N, hd); bias (heads, N, N); mask (nW, N, N) -> (B_, N, heads * hd)."""
  b_, nh, n, hd = q.shape
  attn = jnp.einsum("bhqd,bhkd->bhqk", q * scale, k)
  if bias is not None:
    attn = attn + bias[None]
  if mask is not None:
    nw = mask.shape[0]
    attn = attn.reshape(b_ // nw, nw, nh, n, n) + jnp.asarray(mask[:, None], attn.dtype)
    attn = attn.reshape(b_, nh, n, n)
  attn = jax.nn.softmax(attn, axis=-1)
  out = jnp.einsum("bhqk,bhkd->bqhd", attn, v)
  return out.reshape(b_, n, nh * hd)


class WindowAttention(nn.Module):
  """Multi-head self attention in 3-D windows, plus mutual attention between the two frames.

  Self attention uses a learned relative position bias. Mutual attention (VRT, Sec. 3.2) lets the
  tokens of frame 2 query frame 1 and vice versa, with a sine position encoding added to the
  input; its output is concatenated with the self attention's before the projection.

  x: (num_windows * B, N, C) -> (num_windows * B, N, C); mask: (num_windows, N, N) or None.
  """
  dim: int
  window_size: tuple[int, int, int]
  num_heads: int
  qkv_bias: bool = True
  qk_scale: float | None = None
  mut_attn: bool = True

  @nn.compact
  def __call__(self, x: jax.Array, mask: np.ndarray | None = None) -> jax.Array:
    b_, n, c = x.shape
    nh = self.num_heads
    hd = c // nh
    scale = self.qk_scale or hd ** -0.5
    wd, wh, ww = self.window_size
    table = self.param("relative_position_bias_table", nn.initializers.truncated_normal(0.02),
                       ((2 * wd - 1) * (2 * wh - 1) * (2 * ww - 1), nh))
    dense = lambda f, name: nn.Dense(f, use_bias=self.qkv_bias, kernel_init=torch_conv_init(),
                                     name=name)

    def heads(t):  # (B_, N', 3C) -> three (B_, heads, N', hd)
      t = t.reshape(t.shape[0], t.shape[1], 3, nh, hd).transpose(2, 0, 3, 1, 4)
      return t[0], t[1], t[2]

    q, k, v = heads(dense(3 * c, "qkv_self")(x))
    index = relative_position_index(tuple(self.window_size))[:n, :n]
    bias = table[index.reshape(-1)].reshape(n, n, nh).transpose(2, 0, 1)
    out = _attention(q, k, v, scale, bias, None if mask is None else mask[:, :n, :n])

    if self.mut_attn:
      pos = sine_position_encoding((wh, ww), self.dim // 2)
      if 2 * pos.shape[1] != n:
        raise ValueError(
            f"Mutual attention needs two full {wh}x{ww} windows ({2 * wh * ww} tokens), got {n}: "
            "the input is too small for the window.")
      q, k, v = heads(dense(3 * c, "qkv_mut")(x + jnp.asarray(np.tile(pos, (1, 2, 1)), x.dtype)))
      half = n // 2
      m = None if mask is None else mask[:, :half, :half]  # The reference's frame-0 block.
      x1 = _attention(q[:, :, half:], k[:, :, :half], v[:, :, :half], scale, None, m)
      x2 = _attention(q[:, :, :half], k[:, :, half:], v[:, :, half:], scale, None, m)
      out = jnp.concatenate([jnp.concatenate([x1, x2], axis=1), out], axis=2)

    return nn.Dense(self.dim, kernel_init=torch_conv_init(), name="proj")(out)
