"""Modulated deformable convolution against plain convolution, shifts and finite differences."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.test_util import check_grads

from vrt_jax import deform

N, H, W = 1, 6, 7
# Jitted: run op by op the sampling code would take seconds per call on a busy CPU.
modulated_deform_conv = jax.jit(deform.modulated_deform_conv, static_argnums=5)


def _conv(x, kernel, bias):
  groups = x.shape[-1] // kernel.shape[2]
  y = jax.lax.conv_general_dilated(x, kernel, (1, 1), ((1, 1), (1, 1)),
                                   dimension_numbers=("NHWC", "HWIO", "NHWC"),
                                   feature_group_count=groups,
                                   precision=jax.lax.Precision.HIGHEST)
  return y + bias


def _inputs(cin=4, cout=8, groups=1, seed=0):
  k = jax.random.split(jax.random.key(seed), 3)
  x = jax.random.normal(k[0], (N, H, W, cin))
  kernel = jax.random.normal(k[1], (3, 3, cin // groups, cout)) / 3
  bias = jax.random.normal(k[2], (cout,))
  return x, kernel, bias


@pytest.mark.parametrize("dg,groups", [(1, 1), (2, 1), (2, 2), (4, 4)])
def test_zero_offsets_and_unit_mask_are_a_plain_convolution(kernel_choice, dg, groups):
  x, kernel, bias = _inputs(groups=groups)
  out = modulated_deform_conv(x, jnp.zeros((N, H, W, dg * 18)), jnp.ones((N, H, W, dg * 9)),
                              kernel, bias, dg)
  np.testing.assert_allclose(out, _conv(x, kernel, bias), rtol=1e-5, atol=1e-5)
  # The mask scales every tap: one half of it halves the convolution (bias aside).
  half = modulated_deform_conv(x, jnp.zeros((N, H, W, dg * 18)),
                               jnp.full((N, H, W, dg * 9), 0.5), kernel, bias, dg)
  np.testing.assert_allclose(half - bias, (out - bias) / 2, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("dy,dx", [(1, 0), (0, -2), (2, 1)])
def test_integer_offset_is_a_shifted_convolution(kernel_choice, dy, dx):
  x, kernel, bias = _inputs()
  offset = jnp.tile(jnp.array([dy, dx], jnp.float32), (N, H, W, 9))  # (y, x) per tap
  out = modulated_deform_conv(x, offset, jnp.ones((N, H, W, 9)), kernel, bias, 1)
  # Every tap reads the input moved by (dy, dx): the convolution of the shifted input, away
  # from the borders (where the shifted input's zero padding and the original differ).
  shifted = jnp.roll(x, (-dy, -dx), axis=(1, 2))
  want = _conv(shifted, kernel, bias)
  inner = (slice(None), slice(1 + abs(dy), H - 1 - abs(dy)), slice(1 + abs(dx), W - 1 - abs(dx)))
  np.testing.assert_allclose(out[inner], want[inner], rtol=1e-5, atol=1e-5)


def test_gradients_match_finite_differences(kernel_choice):
  x, kernel, bias = _inputs(cin=2, cout=4)
  k = jax.random.split(jax.random.key(3), 2)
  # Fractional parts in [0.2, 0.8]: finite differences of eps 1e-2 stay inside one bilinear cell.
  offset = jnp.floor(jax.random.uniform(k[0], (N, H, W, 18), minval=-2, maxval=2)) + (
      jax.random.uniform(k[1], (N, H, W, 18), minval=0.2, maxval=0.8))
  mask = jax.random.uniform(k[1], (N, H, W, 9))

  @jax.jit
  def f(x, offset, mask, kernel, bias):
    return jnp.sin(deform.modulated_deform_conv(x, offset, mask, kernel, bias, 1)).sum()

  check_grads(f, (x, offset, mask, kernel, bias), order=1, modes=["rev"], eps=1e-2,
              atol=2e-2, rtol=2e-2)


def test_neighbourhood_table_is_built_along_the_minor_axis():
  """The 2 x 2 neighbourhood table must not pass through an array with (4, channels per group)
  as its two minor axes: TPU tiles pad those to (8, 128), 12x the table for 10 channels."""
  x = jnp.zeros((1, 16, 16, 120))
  offset = jnp.zeros((1, 16, 16, 2 * 9 * 12))
  mask = jnp.ones((1, 16, 16, 9 * 12))
  jaxpr = jax.make_jaxpr(lambda *a: deform._deform_columns(*a, 12, materialise=False))(
      x, offset, mask)
  shapes = [v.aval.shape for eqn in jaxpr.eqns for v in eqn.outvars]
  assert (1, 17, 17, 12, 40) in shapes  # The table before it is flattened to rows.
  assert not [s for s in shapes if s[-2:] == (4, 10)], shapes


@pytest.mark.parametrize("dg,groups", [(2, 1), (2, 2)])
def test_a_band_is_sampled_a_few_rows_at_a_time(monkeypatch, dg, groups):
  """The accelerator path samples a band of rows (a device's share of a split frame) a row per
  step from a table of its rows with halos built once: the band of the whole frame's values,
  and the same gradients, with reads across its steps and into its halos."""
  from vrt_jax import kernels

  monkeypatch.setenv(kernels.KERNELS_ENV, "xla")
  # The band: rows 6-9 of 16, with 4 rows of halo either side (offsets reach 2 + 2 rows).
  h, top, start, rows = 16, 4, 6, 4
  x, kernel, bias = _inputs(groups=groups)
  x = jnp.concatenate([x, x[:, ::-1], x], axis=1)[:, :h]
  x = jnp.concatenate([x, x[:, ::-1]])  # Two frames: the loop over frames runs too.
  k = jax.random.split(jax.random.key(5), 2)
  offset = jax.random.uniform(k[0], (2, h, W, dg * 18), minval=-2, maxval=2)
  mask = jax.random.uniform(k[1], (2, h, W, dg * 9))
  band = deform.Band(top, start, rows, h)
  xe = x[:, start - top:start + rows + top]
  ours = slice(start, start + rows)

  def whole(x, offset, mask, kernel):
    return deform.modulated_deform_conv(x, offset, mask, kernel, bias, dg)[:, ours]

  def banded(x, offset, mask, kernel):
    xe = x[:, start - top:start + rows + top]
    return deform._deform_conv_band(xe, offset[:, ours], mask[:, ours], band, kernel, bias,
                                    dg=dg)[0]

  def value_and_grads(f):
    jax.clear_caches()
    loss = lambda *a: jnp.sin(f(*a)).sum()  # noqa: E731
    return jax.jit(jax.value_and_grad(loss, argnums=(0, 1, 2, 3)))(x, offset, mask, kernel)

  want = value_and_grads(whole)
  monkeypatch.setattr(deform, "_COLUMN_BYTES", 1)  # One output row per step.
  jaxpr = jax.make_jaxpr(lambda *a: deform._deform_conv_band(*a, band, kernel, bias, dg=dg))(
      xe, offset[:, ours], mask[:, ours])
  assert f"length={rows}" in str(jaxpr)  # The loop over the band's rows.
  ok = deform._deform_conv_band(xe, offset[:, ours], mask[:, ours], band, kernel, bias, dg=dg)[1]
  assert bool(jnp.all(ok))  # Every read within the halos: no fallback needed.
  got = value_and_grads(banded)
  for a, b in zip(jax.tree.leaves(got), jax.tree.leaves(want), strict=True):
    np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-5)
