"""Scanned TMSA blocks (TMSAG(scan=True), VRT(scan_blocks=True)) compute what the per-block
loop computes, and checkpoints load in either parameter layout."""

import grain
import jax
import jax.numpy as jnp
import numpy as np
import pytest

import vrt_jax
from vrt_jax import checkpoint, convert, presets, tmsa

# Depth 5: two scanned pairs and an odd last block; window D=2 for mutual attention.
GROUP = dict(dim=16, depth=5, num_heads=2, window_size=(2, 4, 4),
             drop_path=(0.0, 0.3, 0.5, 0.5, 0.4))


def _group_case(mut_attn, remat, train):
  x = jnp.asarray(np.random.default_rng(0).standard_normal((2, 3, 8, 8, 16), np.float32))
  plain = tmsa.TMSAG(**GROUP, mut_attn=mut_attn, remat=remat)
  scanned = tmsa.TMSAG(**GROUP, mut_attn=mut_attn, remat=remat, scan=True)
  params = plain.init(jax.random.key(1), x)["params"]
  rngs = {"dropout": jax.random.key(2)}

  def loss(model, params, x):
    y = model.apply({"params": params}, x, train, rngs=rngs)
    return jnp.mean(y * jnp.cos(y)), y

  def run(model, params):
    return jax.jit(jax.value_and_grad(lambda p, x: loss(model, p, x), (0, 1), has_aux=True))(
        params, x)

  (_, y0), (dp0, dx0) = run(plain, params)
  (_, y1), (dp1, dx1) = run(scanned, tmsa.stack_blocks(params))
  return (y0, dp0, dx0), (y1, tmsa.unstack_blocks(dp1), dx1)


@pytest.mark.parametrize("mut_attn,remat,train", [(True, "none", True), (False, "full", True),
                                                  (True, "dots", False)])
def test_scanned_group_matches_per_block_group(kernel_choice, mut_attn, remat, train):
  """Output and gradients (params and input) within 1e-5, stochastic depth included: block i
  draws its mask from fold_in(the group's key, i) in both layouts."""
  want, got = _group_case(mut_attn, remat, train)
  for w, g in zip(jax.tree.leaves(want), jax.tree.leaves(got), strict=True):
    np.testing.assert_allclose(np.asarray(g), np.asarray(w), atol=1e-5, rtol=0)
  assert jax.tree.structure(want[1]) == jax.tree.structure(got[1])


def test_skipping_flax_invariants_trace_changes_no_draw_and_no_output(monkeypatch):
  # TMSAG skips flax's second trace of the scanned pair outside initialisation. Skipping it at
  # init would change which random parameters a seed gives (earlier runs would not reproduce);
  # in training it must change neither the output nor stochastic depth's draws.
  x = jnp.asarray(np.random.default_rng(0).standard_normal((2, 3, 8, 8, 16), np.float32))
  group = tmsa.TMSAG(**GROUP, scan=True)

  def run():
    params = group.init(jax.random.key(1), x)["params"]
    return params, group.apply({"params": params}, x, True, rngs={"dropout": jax.random.key(2)})

  ours = run()
  scan = tmsa.nn.scan
  monkeypatch.setattr(tmsa.nn, "scan", lambda *a, **kw: scan(
      *a, **{**kw, "check_constancy_invariants": True}))  # Flax's default everywhere.
  jax.tree.map(np.testing.assert_array_equal, ours, run())


def test_drop_path_changes_the_output_in_training():
  """The equality above is not vacuous: with these rates some branch is dropped."""
  x = jnp.asarray(np.random.default_rng(0).standard_normal((2, 3, 8, 8, 16), np.float32))
  model = tmsa.TMSAG(**GROUP, scan=True)
  variables = model.init(jax.random.key(1), x)
  train = model.apply(variables, x, True, rngs={"dropout": jax.random.key(2)})
  test = model.apply(variables, x, False)
  assert float(jnp.max(jnp.abs(train - test))) > 1e-3


def test_layout_round_trip_and_parameter_count():
  kwargs = presets.tiny(depths=[3, 2, 4, 1, 2, 2, 5, 2, 3])
  plain = vrt_jax.VRT(**kwargs, scan_blocks=False)
  scanned = vrt_jax.VRT(**kwargs, scan_blocks=True)
  abstract_plain = convert.abstract_params(plain)
  abstract_scanned = convert.abstract_params(scanned)
  shapes = lambda t: jax.tree.map(lambda a: (a.shape, a.dtype), t)  # noqa: E731
  assert shapes(tmsa.stack_blocks(abstract_plain)) == shapes(abstract_scanned)
  assert shapes(tmsa.unstack_blocks(abstract_scanned)) == shapes(abstract_plain)
  assert convert.param_count(plain) == convert.param_count(scanned)
  assert tmsa.is_scanned(abstract_scanned) and not tmsa.is_scanned(abstract_plain)

  params = checkpoint.random_params(plain)
  stacked = tmsa.stack_blocks(params)
  assert stacked["stage7"]["residual_group1"]["pairs"]["odd"]["norm1"]["scale"].shape == (1, 16)
  assert "blocks_2" in stacked["stage7"]["residual_group1"]  # int(0.75 * 5) = 3 blocks.
  back = tmsa.unstack_blocks(stacked)
  assert jax.tree.structure(back) == jax.tree.structure(params)
  jax.tree.map(np.testing.assert_array_equal, back, params)
  # Idempotent, and random_params draws the same values in either layout.
  jax.tree.map(np.testing.assert_array_equal, tmsa.stack_blocks(stacked), stacked)
  jax.tree.map(np.testing.assert_array_equal, checkpoint.random_params(scanned), stacked)


@pytest.mark.parametrize("saved_scanned", [False, True])
def test_checkpoints_load_into_either_layout(tmp_path, saved_scanned):
  kwargs = presets.tiny(depths=[3] * 9)
  saved_model = vrt_jax.VRT(**kwargs, scan_blocks=saved_scanned)
  params = checkpoint.random_params(saved_model)
  checkpoint.export_params(str(tmp_path / "exp"), params, kwargs)
  manager = checkpoint.make_manager(str(tmp_path / "work"))
  checkpoint.save_state(manager, 1, {"step": jnp.array(1, jnp.int32), "params": params},
                        iter(grain.MapDataset.range(4).to_iter_dataset()))
  manager.wait_until_finished()
  manager.close()
  for scanned in (False, True):
    model = vrt_jax.VRT(**kwargs, scan_blocks=scanned)
    want = tmsa.to_block_layout(params, scanned)
    for path in ("exp", "work"):
      got = checkpoint.load_params(str(tmp_path / path), model)
      assert jax.tree.structure(got) == jax.tree.structure(want), (path, scanned)
      jax.tree.map(np.testing.assert_array_equal, got, want)
    # Fine-tuning transfers a checkpoint of either layout.
    moved, fresh = checkpoint.transfer_params(params, checkpoint.random_params(model, seed=1))
    assert not fresh
    jax.tree.map(np.testing.assert_array_equal, moved, want)


def test_official_weights_convert_to_the_scanned_layout():
  from tests import parity_utils as pu

  sd = pu.params_only(pu.state_dict("parity_deblur"))
  config = pu.config("parity_deblur")
  plain = convert.from_torch(sd, vrt_jax.VRT(**{**config, "scan_blocks": False}))["params"]
  scanned = convert.from_torch(sd, vrt_jax.VRT(**{**config, "scan_blocks": True}))["params"]
  assert tmsa.is_scanned(scanned)
  jax.tree.map(np.testing.assert_array_equal, scanned, tmsa.stack_blocks(plain))


@pytest.mark.slow
def test_scanned_vrt_matches_per_block_vrt(kernel_choice):
  """The whole network, tiny, in training mode (stochastic depth on): same loss and gradients."""
  kwargs = presets.tiny(depths=[3, 2, 2, 2, 2, 2, 2, 3, 2], drop_path_rate=0.3)
  x = jnp.asarray(np.random.default_rng(0).random((1, 3, 64, 64, 3), np.float32))
  params = checkpoint.random_params(vrt_jax.VRT(**kwargs))

  def grads(scanned):
    model = vrt_jax.VRT(**kwargs, scan_blocks=scanned)

    def loss(p):
      y = model.apply({"params": p}, x, True, rngs={"dropout": jax.random.key(3)})
      return jnp.mean(jnp.abs(y - 0.5))

    value, g = jax.jit(jax.value_and_grad(loss))(tmsa.to_block_layout(params, scanned))
    return value, tmsa.unstack_blocks(g)

  v0, g0 = grads(False)
  v1, g1 = grads(True)
  np.testing.assert_allclose(v1, v0, atol=1e-6, rtol=0)
  for w, g in zip(jax.tree.leaves(g0), jax.tree.leaves(g1), strict=True):
    np.testing.assert_allclose(np.asarray(g), np.asarray(w), atol=1e-5, rtol=0)
