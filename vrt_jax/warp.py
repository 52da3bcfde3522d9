"""Flow warping and resizing, with the sampling conventions of the reference (PyTorch grid_sample).

All arrays are channels-last: images (N, H, W, C), flows (N, H, W, 2) with channel 0 the horizontal
(x) displacement in pixels. A flow moves the sampling position: out[y, x] = img[y + fy, x + fx].
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np


def _gather(img: jax.Array, iy: jax.Array, ix: jax.Array) -> jax.Array:
  """img (N, H, W, C), integer iy/ix (N, *S) inside the image -> (N, *S, C)."""
  n, h, w, c = img.shape
  flat = img.reshape(n, h * w, c)
  idx = (iy * w + ix).reshape(n, -1)
  out = jax.vmap(lambda f, i: f[i])(flat, idx)
  return out.reshape(*iy.shape, c)


def _positions(flow: jax.Array) -> tuple[jax.Array, jax.Array]:
  _, h, w, _ = flow.shape
  gy, gx = jnp.meshgrid(jnp.arange(h, dtype=flow.dtype), jnp.arange(w, dtype=flow.dtype),
                        indexing="ij")
  return gy + flow[..., 1], gx + flow[..., 0]


def bilinear_sample(img: jax.Array, py: jax.Array, px: jax.Array,
                    padding_mode: str = "zeros") -> jax.Array:
  """Bilinear sampling at float positions (pixel units, align_corners=True convention).

  img: (N, H, W, C); py, px: (N, *S) -> (N, *S, C). `zeros`: taps outside the image count as 0;
  `border`: positions are clamped into the image first (grid_sample's padding modes).
  """
  _, h, w, _ = img.shape
  if padding_mode == "border":
    py = jnp.clip(py, 0, h - 1)
    px = jnp.clip(px, 0, w - 1)
  elif padding_mode != "zeros":
    raise ValueError(f"padding_mode must be 'zeros' or 'border', got {padding_mode!r}")
  y0 = jnp.floor(py)
  x0 = jnp.floor(px)
  wy1, wx1 = py - y0, px - x0
  wy0, wx0 = 1 - wy1, 1 - wx1
  y0 = y0.astype(jnp.int32)
  x0 = x0.astype(jnp.int32)
  out = 0.
  for dy, dx, wgt in ((0, 0, wy0 * wx0), (0, 1, wy0 * wx1), (1, 0, wy1 * wx0), (1, 1, wy1 * wx1)):
    yi, xi = y0 + dy, x0 + dx
    valid = (yi >= 0) & (yi < h) & (xi >= 0) & (xi < w)
    vals = _gather(img, jnp.clip(yi, 0, h - 1), jnp.clip(xi, 0, w - 1))
    out = out + vals * jnp.where(valid, wgt, 0).astype(img.dtype)[..., None]
  return out


def flow_warp(img: jax.Array, flow: jax.Array, padding_mode: str = "zeros") -> jax.Array:
  """Backward-warps img with flow, bilinear (the reference's `flow_warp`).

  img: (N, H, W, C), flow: (N, H, W, 2) -> (N, H, W, C).
  """
  py, px = _positions(flow)
  return bilinear_sample(img, py, px, padding_mode)


def nearest4_warp(img: jax.Array, flow: jax.Array) -> jax.Array:
  """The reference's 'nearest4' image warp in front of conv_first.

  Samples img at the floor and ceil of (pixel + flow) in x and y, nearest mode, zero outside, and
  concatenates the four samples in the order (floor x, floor y), (floor x, ceil y),
  (ceil x, floor y), (ceil x, ceil y). img: (N, H, W, C), flow: (N, H, W, 2) -> (N, H, W, 4C).
  """
  _, h, w, _ = img.shape
  py, px = _positions(flow)
  ys = (jnp.floor(py).astype(jnp.int32), jnp.ceil(py).astype(jnp.int32))
  xs = (jnp.floor(px).astype(jnp.int32), jnp.ceil(px).astype(jnp.int32))
  outs = []
  for xi in xs:
    for yi in ys:
      valid = (yi >= 0) & (yi < h) & (xi >= 0) & (xi < w)
      vals = _gather(img, jnp.clip(yi, 0, h - 1), jnp.clip(xi, 0, w - 1))
      outs.append(vals * valid.astype(img.dtype)[..., None])
  return jnp.concatenate(outs, axis=-1)


@functools.cache
def linear_resize_matrix(in_size: int, out_size: int, align_corners: bool) -> np.ndarray:
  """(out_size, in_size) matrix of PyTorch's 1-D linear interpolation weights (no antialias)."""
  dst = np.arange(out_size, dtype=np.float32)
  if align_corners:
    scale = np.float32((in_size - 1) / (out_size - 1)) if out_size > 1 else np.float32(0)
    src = dst * scale
  else:
    scale = np.float32(in_size / out_size)
    src = np.maximum(scale * (dst + np.float32(0.5)) - np.float32(0.5), np.float32(0))
  i0 = np.minimum(np.floor(src).astype(np.int64), in_size - 1)
  i1 = np.minimum(i0 + 1, in_size - 1)
  l1 = (src - i0).astype(np.float32)
  l0 = np.float32(1) - l1
  m = np.zeros((out_size, in_size), np.float32)
  np.add.at(m, (np.arange(out_size), i0), l0)
  np.add.at(m, (np.arange(out_size), i1), l1)
  return m


def resize_bilinear(x: jax.Array, size: tuple[int, int], align_corners: bool = False) -> jax.Array:
  """Bilinear resize as PyTorch's F.interpolate(mode='bilinear'), no antialiasing.

  x: (N, H, W, C) -> (N, size[0], size[1], C).
  """
  _, h, w, _ = x.shape
  mh = jnp.asarray(linear_resize_matrix(h, size[0], align_corners), x.dtype)
  mw = jnp.asarray(linear_resize_matrix(w, size[1], align_corners), x.dtype)
  hp = jax.lax.Precision.HIGHEST
  x = jnp.einsum("oh,nhwc->nowc", mh, x, precision=hp)
  return jnp.einsum("pw,nowc->nopc", mw, x, precision=hp)
