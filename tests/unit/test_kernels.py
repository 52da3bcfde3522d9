"""vrt_jax.kernels: per-platform choice of implementation, and that every choice and remat
policy computes the same function and gradients."""

import contextlib
import functools
import io
import re

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from jax.ad_checkpoint import print_saved_residuals
from standins import steady_flows

import vrt_jax
from tests import parity_utils as pu
from vrt_jax import checkpoint, kernels, train_step

_both = kernels.dispatch(cpu=lambda x: x + 11.0, xla=lambda x: x + 22.0)


def test_environment_forces_a_kernel_choice(monkeypatch):
  x = jnp.zeros(3)
  monkeypatch.setenv(kernels.KERNELS_ENV, "xla")
  assert float(jax.jit(lambda x: _both(x))(x)[0]) == 22.0
  monkeypatch.setenv(kernels.KERNELS_ENV, "cpu")
  assert float(jax.jit(lambda x: _both(x)[0] + 0)(x)) == 11.0
  monkeypatch.setenv(kernels.KERNELS_ENV, "gpu")
  with pytest.raises(ValueError, match="VRT_JAX_KERNELS='gpu'.*'cpu' or 'xla'"):
    _both(x)


@pytest.mark.parametrize("platform, kept, dropped", [("cpu", "1.100000e+01", "2.200000e+01"),
                                                     ("tpu", "2.200000e+01", "1.100000e+01"),
                                                     ("cuda", "2.200000e+01", "1.100000e+01")])
@pytest.mark.parametrize("chosen_when", ["traced", "lowered"])
def test_choice_follows_the_platform_compiled_for(monkeypatch, platform, kept, dropped,
                                                  chosen_when):
  # Lowered on this CPU host for another platform (as an ahead-of-time TPU compile is), the
  # program holds only that platform's implementation: named when tracing, or left to lowering.
  monkeypatch.delenv(kernels.KERNELS_ENV, raising=False)
  with kernels.compiling_for(platform if chosen_when == "traced" else None):
    exported = jax.export.export(jax.jit(lambda x: _both(x)), platforms=[platform])(
        jax.ShapeDtypeStruct((3,), jnp.float32))
  text = exported.mlir_module()
  assert kept in text and dropped not in text
  if platform == "cpu":
    np.testing.assert_array_equal(exported.call(jnp.zeros(3)), np.full(3, 11.0))


def test_default_choice_is_made_once_when_tracing_for_the_default_backend(monkeypatch):
  # Only the default backend's implementation is traced: tracing both doubles a VRT's tracing.
  monkeypatch.delenv(kernels.KERNELS_ENV, raising=False)
  traced = []
  both = kernels.dispatch(cpu=lambda x: traced.append("cpu") or x + 11.0,
                          xla=lambda x: traced.append("xla") or x + 22.0)
  assert float(jax.jit(lambda x: both(x))(jnp.zeros(()))) == 11.0  # This host is a CPU.
  assert traced == ["cpu"]
  with kernels.compiling_for("tpu"):
    jax.jit(lambda x: both(x)).trace(jnp.zeros(()))
  assert traced == ["cpu", "xla"]
  with kernels.compiling_for(None):
    assert float(jax.jit(lambda x: both(x))(jnp.zeros(()))) == 11.0
  assert traced == ["cpu", "xla", "cpu", "xla"]


def test_unknown_remat_policy_is_refused():
  with pytest.raises(ValueError, match="remat policy 'everything' is unknown: use one of none"):
    kernels.remat(vrt_jax.tmsa.TMSA, "everything")
  with pytest.raises(ValueError, match="dots_no_batch or auto"):
    kernels.resolve_remat("everything", "tpu")


def test_auto_remat_is_none_on_cpu_and_full_on_accelerators():
  # The training configs' 'auto': CPU memory is large and the CPU kernels recompute what pays;
  # a 16-32 GB chip needs 'full' for every official recipe.
  assert kernels.resolve_remat("auto", "cpu") == "none"
  for platform in ("tpu", "gpu", "cuda", "rocm"):
    assert kernels.resolve_remat("auto", platform) == "full"
  assert kernels.resolve_remat("auto") == "none"  # This host's default backend.
  for policy in kernels.REMAT_POLICIES:  # A named policy is kept on every platform.
    assert kernels.resolve_remat(policy, "tpu") == kernels.resolve_remat(policy, "cpu") == policy
  assert kernels.remat(vrt_jax.tmsa.TMSA, "auto") is vrt_jax.tmsa.TMSA  # 'none' here.


@pytest.mark.parametrize("choice", ["cpu", "xla"])
def test_full_remat_keeps_no_activation_of_parallel_warping_or_spynet(monkeypatch, choice):
  # Outside the TMSA blocks, the parallel warping (its offset head has 27 * dg channels) and
  # SpyNet (32 and 64 channels at every pyramid level; 64 is also a reshaped stage's) kept the
  # most activations for the backward pass; under 'full' only their inputs remain.
  monkeypatch.setenv(kernels.KERNELS_ENV, choice)
  kwargs = vrt_jax.presets.tiny(img_size=[3, 64, 64], window_size=[2, 8, 8],
                                depths=[2] * 9, drop_path_rate=0.0)
  x = jnp.asarray(np.random.default_rng(0).random((1, 3, 64, 64, 3)), jnp.float32)
  params = checkpoint.random_params(vrt_jax.VRT(**kwargs))
  heads = {27 * kwargs["deformable_groups"], 32}  # No other layer has these widths.

  def kept(remat):
    model = vrt_jax.VRT(**kwargs, remat=remat)
    loss = lambda p: jnp.sum(model.apply({"params": p}, x, train=True))  # noqa: E731
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
      print_saved_residuals(loss, params)
    # Activations only: parameters ('from the argument') and constants are kept anyway.
    shapes = re.findall(r"^\w+\[([\d,]+)\] output of", out.getvalue(), re.MULTILINE)
    assert shapes, out.getvalue()[:500]
    dims = [tuple(int(d) for d in s.split(",")) for s in shapes]
    return {d for d in dims if len(d) >= 3 and d[-1] in heads}

  assert kept("none")  # The check can fail: these activations exist and are kept by default.
  assert not kept("full")


@pytest.mark.slow
def test_both_kernel_paths_and_remat_policies_give_the_same_loss_and_gradients(monkeypatch):
  kwargs = vrt_jax.presets.tiny(img_size=[4, 64, 64], window_size=[2, 8, 8],
                                depths=[2] * 9, drop_path_rate=0.0)
  base = vrt_jax.VRT(**kwargs)
  # Steady flows: paths that round differently must not pick other pixels in the parallel warp.
  params = steady_flows(checkpoint.random_params(base))
  rng = np.random.default_rng(0)
  x = jnp.asarray(rng.random((1, 4, 64, 64, 3)), jnp.float32)
  gt = jnp.asarray(rng.random((1, 4, 64, 64, 3)), jnp.float32)

  def grads(choice, remat):
    monkeypatch.setenv(kernels.KERNELS_ENV, choice)
    if remat != "none":  # The parallel warping then aligns one pair of frames per step.
      monkeypatch.setattr(vrt_jax.vrt, "_ALIGN_BYTES", 1)
    jax.clear_caches()
    model = vrt_jax.VRT(**kwargs, remat=remat)

    def loss(p, x):
      return jnp.mean(jnp.abs(model.apply({"params": p}, x, train=True) - gt))

    return jax.jit(jax.value_and_grad(loss, argnums=(0, 1)))(params, x)

  want_loss, want = grads("cpu", "none")
  # (cpu, none) and (xla, none) are held to the reference's gradients by test_parity.
  for choice, remat in (("xla", "full"), ("cpu", "dots_no_batch")):
    got_loss, got = grads(choice, remat)
    np.testing.assert_allclose(got_loss, want_loss, rtol=1e-5, err_msg=f"{choice}/{remat}")
    for (path, g), w in zip(jax.tree_util.tree_leaves_with_path(got), jax.tree.leaves(want),
                            strict=True):
      name = jax.tree_util.keystr(path)
      # Gradients that reach a parameter through sampling positions (SpyNet's flows, the
      # deformable offsets) carry float32 rounding up to ~1e-2 of their largest entry: so do
      # the reference's own float32 gradients against its float64 ones (tests/data/grads_*).
      rel = 2e-2 if "spynet" in name or "conv_offset" in name else 1e-3
      pu.assert_close_but_a_few(g, w, atol=rel * float(np.max(np.abs(w))),
                                err_msg=f"{choice}/{remat} {name}")
  jax.clear_caches()


def _matmul_precisions(jaxpr) -> list:
  """The precision of every dot_general and convolution in `jaxpr` and the jaxprs it holds."""
  found = []
  for eqn in jaxpr.eqns:
    if eqn.primitive.name in ("dot_general", "conv_general_dilated"):
      found.append(eqn.params["precision"])
    for value in eqn.params.values():
      for sub in value if isinstance(value, (tuple, list)) else (value,):
        if isinstance(sub, jax.extend.core.ClosedJaxpr):
          found += _matmul_precisions(sub.jaxpr)
        elif isinstance(sub, jax.extend.core.Jaxpr):
          found += _matmul_precisions(sub)
  return found


def test_unknown_matmul_precision_is_refused():
  with pytest.raises(ValueError, match="'bf16' is unknown: use one of default, high, highest"):
    kernels.matmul_precision("bf16")


@pytest.mark.slow
@pytest.mark.parametrize("choice", ["cpu", "xla"])
def test_matmul_precision_reaches_every_matmul_and_convolution(monkeypatch, choice):
  # In the training step (forward and backward, hand-written VJPs included), every matmul and
  # convolution runs at the setting; only the one-hot matmuls that stand in for exact gathers
  # stay HIGHEST under every setting. (The forward alone is traced at the setting by
  # benchmarks/matmul_precision.py, run by test_demo.)
  monkeypatch.setenv(kernels.KERNELS_ENV, choice)
  kwargs = vrt_jax.presets.tiny(img_size=[3, 64, 64], window_size=[2, 8, 8], depths=[2] * 9,
                                drop_path_rate=0.0)
  rng = np.random.default_rng(0)
  batch = {"lq": jnp.asarray(rng.random((1, 3, 64, 64, 3)), jnp.float32),
           "gt": jnp.asarray(rng.random((1, 3, 64, 64, 3)), jnp.float32)}
  tx = optax.adam(1e-4)

  def precisions(setting):
    model = vrt_jax.VRT(**kwargs, matmul_precision=setting)
    state = jax.eval_shape(lambda: train_step.init_state(model, tx, jax.random.key(0)))
    step = jax.make_jaxpr(functools.partial(train_step.train_step, model=model, tx=tx,
                                            dropout_rng=jax.random.key(1), loss_eps=1e-3))
    return _matmul_precisions(step(state, batch).jaxpr)

  as_named = {s: (jax.lax.Precision(s), jax.lax.Precision(s)) for s in kernels.MATMUL_PRECISIONS}
  default = precisions("default")
  exact = default.count(as_named["highest"])  # The one-hot gathers.
  assert len(default) > 100 and exact > 0
  assert default.count(as_named["default"]) == len(default) - exact
  high = precisions("high")
  assert len(high) == len(default) and high.count(as_named["high"]) == len(high) - exact
