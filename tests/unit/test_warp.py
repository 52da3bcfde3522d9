"""Backward warping (flow_warp): identity, integer shifts, half pixels and both padding modes."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from vrt_jax.warp import flow_warp


def _img(h=6, w=7, c=2):
  return jax.random.uniform(jax.random.key(0), (2, h, w, c))


@pytest.mark.parametrize("mode", ["zeros", "border"])
def test_zero_flow_is_the_identity(mode):
  img = _img()
  np.testing.assert_array_equal(flow_warp(img, jnp.zeros((*img.shape[:3], 2)), mode), img)


@pytest.mark.parametrize("dx,dy", [(1, 0), (0, -2), (-3, 1), (2, 2)])
def test_integer_flow_shifts_and_pads_by_mode(dx, dy):
  img = np.asarray(_img())
  _, h, w, _ = img.shape
  flow = jnp.broadcast_to(jnp.array([dx, dy], jnp.float32), (*img.shape[:3], 2))
  zeros, border = np.asarray(flow_warp(img, flow)), np.asarray(flow_warp(img, flow, "border"))
  ys, xs = np.arange(h)[:, None] + dy, np.arange(w)[None, :] + dx
  inside = (ys >= 0) & (ys < h) & (xs >= 0) & (xs < w)
  # Inside, out[y, x] = img[y + dy, x + dx]: a roll; outside, zeros or the nearest edge pixel.
  rolled = np.roll(img, (-dy, -dx), axis=(1, 2))
  np.testing.assert_allclose(zeros[:, inside], rolled[:, inside], atol=1e-6)
  assert not zeros[:, ~inside].any()
  clamped = img[:, np.clip(ys, 0, h - 1)[:, :1].ravel()][:, :, np.clip(xs, 0, w - 1)[0]]
  np.testing.assert_allclose(border, clamped, atol=1e-6)


def test_half_pixel_flow_averages_neighbours():
  img = _img()
  flow = jnp.broadcast_to(jnp.array([0.5, 0.0]), (*img.shape[:3], 2))
  out = flow_warp(img, flow, "border")
  np.testing.assert_allclose(out[:, :, :-1], (img[:, :, :-1] + img[:, :, 1:]) / 2, atol=1e-6)


def test_unknown_padding_mode_is_refused():
  img = _img()
  with pytest.raises(ValueError, match="padding_mode must be 'zeros' or 'border'"):
    flow_warp(img, jnp.zeros((*img.shape[:3], 2)), "reflection")
