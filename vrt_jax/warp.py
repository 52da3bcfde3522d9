"""Flow warping and resizing, with the sampling conventions of the reference (PyTorch grid_sample).

All arrays are channels-last: images (N, H, W, C), flows (N, H, W, 2) with channel 0 the horizontal
(x) displacement in pixels. A flow moves the sampling position: out[y, x] = img[y + fy, x + fx].
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np

from vrt_jax import spatial


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


def _band_gather(img: jax.Array, iy: jax.Array, ix: jax.Array, band: spatial.Band,
                 needed: jax.Array) -> tuple[jax.Array, jax.Array]:
  """`_gather` at frame rows iy from img, rows around `band`; also whether every `needed`
  read was inside img."""
  ly = iy - band.start + band.top
  inside = (ly >= 0) & (ly < img.shape[1])
  return _gather(img, jnp.clip(ly, 0, img.shape[1] - 1), ix), inside | ~needed


def bilinear_sample(img: jax.Array, py: jax.Array, px: jax.Array,
                    padding_mode: str = "zeros") -> jax.Array:
  """Bilinear sampling at float positions (pixel units, align_corners=True convention).

  img: (N, H, W, C); py, px: (N, *S) -> (N, *S, C). `zeros`: taps outside the image count as 0;
  `border`: positions are clamped into the image first (grid_sample's padding modes). With the
  rows split over devices (vrt_jax.spatial) and S = (H, W), each band samples its neighbours'
  rows near it.
  """
  if padding_mode not in ("zeros", "border"):
    raise ValueError(f"padding_mode must be 'zeros' or 'border', got {padding_mode!r}")
  return spatial.with_halo(functools.partial(_bilinear_band, padding_mode=padding_mode),
                           img, py, px)


def _bilinear_band(img: jax.Array, py: jax.Array, px: jax.Array, band: spatial.Band, *,
                   padding_mode: str) -> tuple[jax.Array, jax.Array]:
  h, w = band.height, img.shape[2]
  if padding_mode == "border":
    py = jnp.clip(py, 0, h - 1)
    px = jnp.clip(px, 0, w - 1)
  y0 = jnp.floor(py)
  x0 = jnp.floor(px)
  wy1, wx1 = py - y0, px - x0
  wy0, wx0 = 1 - wy1, 1 - wx1
  y0 = y0.astype(jnp.int32)
  x0 = x0.astype(jnp.int32)
  out, ok = 0., True
  for dy, dx, wgt in ((0, 0, wy0 * wx0), (0, 1, wy0 * wx1), (1, 0, wy1 * wx0), (1, 1, wy1 * wx1)):
    yi, xi = y0 + dy, x0 + dx
    valid = (yi >= 0) & (yi < h) & (xi >= 0) & (xi < w)
    vals, inside = _band_gather(img, jnp.clip(yi, 0, h - 1), jnp.clip(xi, 0, w - 1), band,
                                valid)
    out = out + vals * jnp.where(valid, wgt, 0).astype(img.dtype)[..., None]
    ok = ok & inside
  return out, ok


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
  py, px = _positions(flow)
  return spatial.with_halo(_nearest4_band, img, py, px)


def _nearest4_band(img: jax.Array, py: jax.Array, px: jax.Array,
                   band: spatial.Band) -> tuple[jax.Array, jax.Array]:
  h, w = band.height, img.shape[2]
  ys = (jnp.floor(py).astype(jnp.int32), jnp.ceil(py).astype(jnp.int32))
  xs = (jnp.floor(px).astype(jnp.int32), jnp.ceil(px).astype(jnp.int32))
  outs, ok = [], True
  for xi in xs:
    for yi in ys:
      valid = (yi >= 0) & (yi < h) & (xi >= 0) & (xi < w)
      vals, inside = _band_gather(img, jnp.clip(yi, 0, h - 1), jnp.clip(xi, 0, w - 1), band,
                                  valid)
      outs.append(vals * valid.astype(img.dtype)[..., None])
      ok = ok & inside
  return jnp.concatenate(outs, axis=-1), ok


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

  x: (N, H, W, C) -> (N, size[0], size[1], C). With the rows split over devices
  (vrt_jax.spatial), each band resizes its rows from its own and its neighbours' near it.
  """
  _, h, w, _ = x.shape
  if (h, w) == tuple(size):
    return x  # Both conventions then interpolate at the pixels themselves.
  mh = linear_resize_matrix(h, size[0], align_corners)
  x = spatial.with_halo(functools.partial(_resize_rows_band, m=mh), x, out_height=size[0])
  mw = jnp.asarray(linear_resize_matrix(w, size[1], align_corners), x.dtype)
  return jnp.einsum("pw,nowc->nopc", mw, x, precision=jax.lax.Precision.HIGHEST)


def _resize_rows_band(x: jax.Array, band: spatial.Band, *,
                      m: np.ndarray) -> tuple[jax.Array, jax.Array]:
  """The band's rows of (m @ x) along H, x holding rows around the band; also whether every
  output row's weights fell on rows of x. m: (out rows, frame rows) resize weights."""
  start, rows = band.out_rows(m.shape[0])
  pad = x.shape[1]  # Columns of zeros on both sides: a window never leaves the padded matrix.
  padded = jnp.asarray(np.pad(m, ((0, 0), (pad, pad))), x.dtype)
  m_band = jax.lax.dynamic_slice(padded, (start, band.start - band.top + pad),
                                 (rows, x.shape[1]))
  # Each row's weights sum the same over x's rows as over the frame's only if none was cut off.
  full = jax.lax.dynamic_slice(jnp.asarray(m.sum(1), x.dtype), (start,), (rows,))
  ok = m_band.sum(1) == full
  return jnp.einsum("oh,nhwc->nowc", m_band, x, precision=jax.lax.Precision.HIGHEST), ok
