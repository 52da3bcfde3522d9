"""The VRT optimizer: schedule, the SpyNet/DCN parameter group, freezing then 1/8 learning rate."""

import math

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
import pytest

from vrt_jax import losses, optim


def _optim_config(**overrides) -> ml_collections.ConfigDict:
  c = dict(lr=4e-4, b1=0.9, b2=0.99, eps=1e-8, lr_period=300_000, lr_eta_min=1e-7,
           fix_iter=20_000, fix_lr_mul=0.125, fix_keys=("spynet", "deform"))
  c.update(overrides)
  return ml_collections.ConfigDict(c)


def test_cosine_restarts_matches_torch_formula():
  base, eta, period = 4e-4, 1e-7, 300_000
  sched = optim.cosine_restarts(base, period, eta)
  for t in [0, 1, 1000, 150_000, 299_999, 300_000, 450_000]:
    tc = t % period
    want = eta + (base - eta) * (1 + math.cos(math.pi * tc / period)) / 2
    np.testing.assert_allclose(float(sched(t)), want, rtol=1e-5)
  assert float(sched(300_000)) == pytest.approx(base)  # warm restart
  assert float(sched(299_999)) == pytest.approx(eta, abs=1e-10)


def test_param_labels_select_spynet_and_deform_subtrees():
  params = {"spynet": {"basic_module_0": {"kernel": 1}},
            "stage_1": {"pa_deform": {"conv_offset_0": {"kernel": 2}}, "linear1": {"kernel": 3}},
            "conv_first": {"kernel": 4}}
  labels = optim.param_labels(params, ("spynet", "deform"))
  assert labels == {"spynet": {"basic_module_0": {"kernel": optim.FIXED}},
                    "stage_1": {"pa_deform": {"conv_offset_0": {"kernel": optim.FIXED}},
                                "linear1": {"kernel": optim.DEFAULT}},
                    "conv_first": {"kernel": optim.DEFAULT}}


def test_fixed_params_frozen_before_fix_iter_then_move_at_one_eighth_rate():
  fix_iter = 3
  # A constant learning rate (huge period) makes the comparison exact.
  tx, _ = optim.make_optimizer(_optim_config(lr=1e-2, lr_period=10**9, lr_eta_min=1e-2,
                                             fix_iter=fix_iter))
  params = {"spynet": {"w": jnp.ones(5)}, "stage": {"pa_deform": {"w": jnp.ones(5)}},
            "body": {"w": jnp.ones(5)}}
  grads = jax.tree.map(lambda p: jnp.linspace(-1.0, 2.0, p.size), params)
  opt_state = tx.init(params)
  for step in range(fix_iter + 3):
    updates, opt_state = tx.update(grads, opt_state, params)
    body = np.abs(np.asarray(updates["body"]["w"]))
    assert body.min() > 0
    for fixed in (updates["spynet"]["w"], updates["stage"]["pa_deform"]["w"]):
      if step < fix_iter:
        np.testing.assert_array_equal(np.asarray(fixed), 0.0)
      else:
        # Adam's first (bias-corrected) step moves each weight by ~lr; the fixed group's moments
        # start at release, so its steps are the body's steps of the same age times 1/8.
        np.testing.assert_allclose(np.abs(np.asarray(fixed)), 0.125 * 1e-2, rtol=1e-5)
    params = optax.apply_updates(params, updates)
  np.testing.assert_allclose(np.abs(body), 1e-2, rtol=1e-5)


def test_freeze_until_keeps_inner_state_untouched():
  tx = optim.freeze_until(optax.adam(1.0), steps=2)
  params = {"w": jnp.ones(3)}
  state = tx.init(params)
  for _ in range(2):
    _, state = tx.update({"w": jnp.ones(3)}, state, params)
  adam_state = state.inner_state[0]
  assert int(adam_state.count) == 0
  np.testing.assert_array_equal(np.asarray(adam_state.mu["w"]), 0.0)
  _, state = tx.update({"w": jnp.ones(3)}, state, params)
  assert int(state.inner_state[0].count) == 1


def test_charbonnier_value_and_shape_check():
  pred = jnp.array([[0.0, 0.5], [1.0, 0.25]])
  gt = jnp.zeros((2, 2))
  want = np.mean(np.sqrt(np.square([[0.0, 0.5], [1.0, 0.25]]) + 1e-9))
  np.testing.assert_allclose(float(losses.charbonnier(pred, gt)), want, rtol=1e-6)
  with pytest.raises(ValueError, match="differ in shape"):
    losses.charbonnier(pred, jnp.zeros((2, 3)))


def test_linear_warmup_ramps_then_follows_the_cosine():
  cos = optim.cosine_restarts(1e-3, 100, 1e-5)
  warm = optim.linear_warmup(cos, 10)
  for t in range(10):
    np.testing.assert_allclose(float(warm(t)), float(cos(t)) * (t + 1) / 10, rtol=1e-6)
  for t in (10, 50, 99, 150):
    np.testing.assert_allclose(float(warm(t)), float(cos(t)), rtol=1e-6)
  assert optim.linear_warmup(cos, 0) is cos
