"""vrt_jax.layers: the same values, gradients and parameters as the flax layers they replace."""

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from vrt_jax.layers import Conv, LayerNorm, geglu

# Both implementations of the kernels (vrt_jax.kernels) are held to the same bar.
pytestmark = pytest.mark.usefixtures("kernel_choice")


@pytest.mark.parametrize("kernel, padding", [(3, 1), (7, 3), (1, "VALID"), (3, "VALID"), (3, 2)])
def test_conv_matches_flax_conv_values_and_gradients(kernel, padding):
  rng = np.random.default_rng(0)
  x = jnp.asarray(rng.standard_normal((2, 9, 12, 5)), jnp.float32)
  ours = Conv(4, (kernel, kernel), padding=padding)
  flax_padding = "VALID" if padding == "VALID" else [(padding, padding)] * 2
  theirs = nn.Conv(4, (kernel, kernel), padding=flax_padding)
  params = theirs.init(jax.random.key(0), x)
  params = jax.tree.map(lambda p: p + jnp.asarray(rng.standard_normal(p.shape), p.dtype), params)
  assert jax.tree.structure(ours.init(jax.random.key(0), x)) == jax.tree.structure(params)

  def loss(module, p, x):
    return jnp.sum(jnp.sin(module.apply(p, x)))

  got = jax.jit(jax.value_and_grad(lambda p, x: loss(ours, p, x), (0, 1)))(params, x)
  want = jax.value_and_grad(lambda p, x: loss(theirs, p, x), (0, 1))(params, x)
  np.testing.assert_allclose(got[0], want[0], rtol=1e-5)
  for g, w in zip(jax.tree.leaves(got[1]), jax.tree.leaves(want[1]), strict=True):
    np.testing.assert_allclose(g, w, rtol=1e-4, atol=1e-4)


def test_conv_rejects_other_padding():
  with pytest.raises(ValueError, match="padding"):
    Conv(2, (3, 3), padding="SAME").init(jax.random.key(0), jnp.zeros((1, 8, 8, 1)))


@pytest.mark.parametrize("dtype", [jnp.float32, jnp.bfloat16])
def test_layer_norm_matches_flax_values_and_gradients(dtype):
  rng = np.random.default_rng(1)
  x = jnp.asarray(3 + 2 * rng.standard_normal((2, 3, 4, 7)), jnp.float32)
  ours = LayerNorm(epsilon=1e-5, dtype=dtype)
  theirs = nn.LayerNorm(epsilon=1e-5, use_fast_variance=False, dtype=dtype)
  params = theirs.init(jax.random.key(0), x)
  params = jax.tree.map(lambda p: p + jnp.asarray(rng.standard_normal(p.shape), p.dtype), params)
  assert jax.tree.structure(ours.init(jax.random.key(0), x)) == jax.tree.structure(params)
  np.testing.assert_array_equal(ours.apply(params, x), theirs.apply(params, x))

  def loss(module, p, x):
    return jnp.sum(jnp.sin(module.apply(p, x).astype(jnp.float32)) * jnp.arange(7.))

  got = jax.jit(jax.grad(lambda p, x: loss(ours, p, x), (0, 1)))(params, x)
  want = jax.grad(lambda p, x: loss(theirs, p, x), (0, 1))(params, x)
  tol = 1e-5 if dtype == jnp.float32 else 2e-2
  for g, w in zip(jax.tree.leaves(got), jax.tree.leaves(want), strict=True):
    np.testing.assert_allclose(g, w, rtol=tol, atol=tol)


def test_geglu_matches_exact_gelu_values_and_gradients():
  a = jnp.linspace(-8, 8, 1001, dtype=jnp.float32)
  b = jnp.cos(a)
  np.testing.assert_allclose(geglu(a, b), nn.gelu(a, approximate=False) * b, atol=2e-6)
  got = jax.grad(lambda a, b: jnp.sum(jnp.sin(geglu(a, b))), (0, 1))(a, b)
  want = jax.grad(lambda a, b: jnp.sum(jnp.sin(nn.gelu(a, approximate=False) * b)), (0, 1))(a, b)
  for g, w in zip(got, want, strict=True):
    np.testing.assert_allclose(g, w, atol=1e-5)
