"""SpyNet: flow shapes per pyramid level, and the pyramid's arithmetic with known weights."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from vrt_jax.spynet import SpyNet


@pytest.mark.parametrize("levels", [(2, 3, 4, 5), (5,), (0, 4)])
def test_flow_shapes_per_level(levels):
  ref = jax.ShapeDtypeStruct((2, 40, 72, 3), jnp.float32)
  net = SpyNet(return_levels=levels)
  variables = jax.eval_shape(net.init, jax.random.key(1), ref, ref)
  flows = jax.eval_shape(net.apply, variables, ref, ref)
  # Finest first, level l at 1 / 2 ** (5 - l); H and W need not be multiples of 32 (the pyramid
  # works at 64 x 96).
  want = [(2, 40 // 2 ** (5 - lv), 72 // 2 ** (5 - lv), 2) for lv in sorted(levels, reverse=True)]
  assert [f.shape for f in flows] == want
  odd = jax.ShapeDtypeStruct((2, 32, 72, 3), jnp.float32)
  with pytest.raises(ValueError, match="equal shapes"):
    jax.eval_shape(net.apply, variables, ref, odd)


def test_constant_residuals_add_up_through_the_pyramid():
  # Zero kernels and a last-layer bias c make every level predict the residual c on top of the
  # upsampled (x2) flow: level l's flow is (2 ** (l + 1) - 1) * c, whatever the frames.
  ref = jax.random.uniform(jax.random.key(0), (1, 64, 64, 3))
  supp = jax.random.uniform(jax.random.key(1), (1, 64, 64, 3))
  net = SpyNet(return_levels=(0, 2, 5))
  shapes = jax.eval_shape(net.init, jax.random.key(2), ref, supp)["params"]
  params = jax.tree.map(lambda s: jnp.zeros(s.shape, s.dtype), shapes)
  apply = jax.jit(net.apply)
  c = jnp.array([0.25, -0.5])
  for level in range(6):
    params[f"basic_module_{level}"]["basic_module_8"]["bias"] = c
  flows = apply({"params": params}, ref, supp)
  assert [f.shape[1:3] for f in flows] == [(64, 64), (8, 8), (2, 2)]
  for flow, level in zip(flows, (5, 2, 0), strict=True):
    np.testing.assert_allclose(flow, np.broadcast_to((2 ** (level + 1) - 1) * c, flow.shape),
                               rtol=1e-6)
  # All-zero weights: no motion at any level.
  params["basic_module_0"]["basic_module_8"]["bias"] = jnp.zeros(2)
  zero = jax.tree.map(jnp.zeros_like, params)
  assert not any(bool(f.any()) for f in apply({"params": zero}, ref, supp))
