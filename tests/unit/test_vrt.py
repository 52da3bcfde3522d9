"""Model-level behaviour that the golden files do not cover: input checks, stochastic depth,
rematerialisation, parameter collections."""

import contextlib
import io
import re

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.ad_checkpoint import print_saved_residuals

import vrt_jax
from vrt_jax import inference, kernels, shapes
from vrt_jax.tmsa import TMSA, drop_path
from vrt_jax.vrt import VRT


def _shape_check(model, shape, dtype=jnp.float32):
  x = jax.ShapeDtypeStruct(shape, dtype)
  return jax.eval_shape(model.init, jax.random.key(0), x)


@pytest.mark.parametrize("shape, message", [
    ((6, 64, 64, 3), "rank 4"),
    ((1, 6, 64, 64, 4), "expects 3 channels"),
    ((1, 6, 60, 64, 3), "H=60 is not supported"),
    ((1, 6, 64, 56, 3), "W=56 is not supported"),
    ((1, 1, 64, 64, 3), "at least 2 frames"),
])
def test_bad_clip_shapes_raise_value_error(shape, message):
  with pytest.raises(ValueError, match=message):
    _shape_check(VRT(**vrt_jax.presets.tiny()), shape)


def test_other_bad_inputs_raise_value_error():
  with pytest.raises(ValueError, match="float clip"):
    _shape_check(VRT(**vrt_jax.presets.tiny()), (1, 6, 64, 64, 3), jnp.uint8)
  with pytest.raises(ValueError, match="4 channels \\(RGB \\+ noise map"):
    _shape_check(VRT(**vrt_jax.presets.tiny(nonblind_denoising=True)), (1, 6, 64, 64, 3))
  with pytest.raises(ValueError, match="at least 4 frames"):
    _shape_check(VRT(**vrt_jax.presets.tiny(pa_frames=6, embed_dims=[24] * 9,
                                            deformable_groups=12)), (1, 3, 64, 64, 3))
  with pytest.raises(ValueError, match="exactly img_size\\[0\\]=4"):
    _shape_check(VRT(**vrt_jax.presets.tiny(pa_frames=0, img_size=[4, 64, 64],
                                            window_size=[4, 8, 8])), (1, 6, 64, 64, 3))
  with pytest.raises(ValueError, match="upscale 5 is not supported"):
    _shape_check(VRT(**vrt_jax.presets.tiny(upscale=5)), (1, 6, 64, 64, 3))


@pytest.mark.parametrize("window", [2, 3, 4, 8])
@pytest.mark.parametrize("pa_frames", [0, 2])
def test_smallest_frame_is_taken_and_a_smaller_one_refused_clearly(window, pa_frames):
  # With flows, SpyNet's pyramid (five 2x poolings of the next multiple of 32) needs H, W
  # above 32, which small windows alone would allow: then the message says so.
  t = 4 if pa_frames == 0 else 2
  model = VRT(**vrt_jax.presets.tiny(pa_frames=pa_frames, img_size=[t, 64, 64],
                                     window_size=[t, window, window], depths=[1] * 9,
                                     indep_reconsts=[] if pa_frames == 0 else [7, 8]))
  least = vrt_jax.vrt.min_hw(model.window_size, pa_frames)
  assert least[0] == least[1] and least[0] % 8 == 0 and least[0] % window == 0
  assert least[0] >= 8 * window and (pa_frames == 0 or least[0] > 32)
  h = least[0]
  _shape_check(model, (1, t, h, h, 3))
  flows = "above 32 for SpyNet" if pa_frames and 8 * window <= 32 else r"window at scale 8\)"
  for smaller in ((1, t, h - 8, h, 3), (1, t, h, h - 8, 3)):
    with pytest.raises(ValueError, match=f"=({h - 8}) is not supported.*at least {h} .*{flows}"):
      _shape_check(model, smaller)
  assert inference.ModelSpec.from_model(model).min_hw == least
  assert shapes.example_input_shape(model)[2:4] == least  # What model.init is traced with.


def test_output_shapes_per_task():
  tiny = vrt_jax.presets.tiny
  cases = [
      (tiny(upscale=4), (1, 6, 64, 72, 3), (1, 6, 256, 288, 3)),
      (tiny(upscale=1), (2, 3, 72, 64, 3), (2, 3, 72, 64, 3)),
      (tiny(nonblind_denoising=True), (1, 6, 64, 64, 4), (1, 6, 64, 64, 3)),
      (tiny(pa_frames=0, img_size=[4, 64, 64], window_size=[4, 8, 8]), (1, 4, 64, 64, 3),
       (1, 1, 64, 64, 3)),
  ]
  for kwargs, shape, out_shape in cases:
    model = VRT(**kwargs)
    variables = _shape_check(model, shape)
    out = jax.eval_shape(model.apply, variables, jax.ShapeDtypeStruct(shape, jnp.float32))
    assert out.shape == out_shape, kwargs


def test_buffers_are_constants_not_params():
  variables = _shape_check(VRT(**vrt_jax.presets.tiny()), (1, 6, 64, 64, 3))
  assert set(variables) == {"params"}
  names = {"/".join(k.key for k in path)
           for path, _ in jax.tree_util.tree_flatten_with_path(variables["params"])[0]}
  assert not any("relative_position_index" in n or "position_bias" in n and "table" not in n
                 or n.endswith("mean") for n in names)


def test_drop_path_drops_whole_samples_and_rescales():
  class Wrap(TMSA):
    def __call__(self, x, train=False):
      return drop_path(self, x, 0.5, train)

  x = jnp.ones((64, 3, 2))
  mod = Wrap(dim=8, num_heads=2, window_size=(2, 8, 8))
  y = mod.apply({}, x, True, rngs={"dropout": jax.random.key(1)})
  per_sample = np.asarray(y).reshape(64, -1)
  assert set(np.unique(per_sample)) <= {0.0, 2.0}
  assert np.all(per_sample.min(1) == per_sample.max(1))  # one decision per sample
  assert 10 < (per_sample[:, 0] == 0).sum() < 54
  np.testing.assert_array_equal(mod.apply({}, x, False), x)


def test_training_mode_needs_and_uses_dropout_rng():
  model = VRT(**vrt_jax.presets.tiny(drop_path_rate=0.3))
  x = jax.ShapeDtypeStruct((1, 6, 64, 64, 3), jnp.float32)
  variables = _shape_check(model, x.shape)
  jax.eval_shape(lambda v, x: model.apply(v, x, train=True, rngs={"dropout": jax.random.key(0)}),
                 variables, x)
  with pytest.raises(Exception, match="dropout"):
    jax.eval_shape(lambda v, x: model.apply(v, x, train=True), variables, x)


@pytest.mark.parametrize("mut_attn", [True, False])
def test_remat_blocks_match_plain_blocks_and_gradients(mut_attn):
  x = jax.random.normal(jax.random.key(0), (1, 4, 16, 16, 8))
  kw = dict(dim=8, num_heads=2, window_size=(2, 8, 8), shift_size=(1, 4, 4), mut_attn=mut_attn)
  plain = TMSA(**kw)
  remat = TMSA(**kw, use_checkpoint_attn=True)
  v = plain.init(jax.random.key(1), x)
  np.testing.assert_allclose(remat.apply(v, x), plain.apply(v, x), atol=1e-6)
  g1 = jax.grad(lambda v: plain.apply(v, x).sum())(v)
  g2 = jax.grad(lambda v: remat.apply(v, x).sum())(v)
  jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-5), g1, g2)


@pytest.mark.parametrize("checkpoint_attn", [False, True])
def test_block_backward_recomputes_its_parts_and_keeps_their_gradient(checkpoint_attn,
                                                                      monkeypatch):
  # The CPU kernels' recomputation (vrt_jax.kernels), forced: chosen per platform, the
  # residuals of jax's trace also list the accelerator branch's (zeros that the CPU program
  # never computes; the compiled temporaries below are the same either way).
  monkeypatch.setenv(kernels.KERNELS_ENV, "cpu")
  jax.clear_caches()
  x = jax.random.normal(jax.random.key(0), (1, 4, 16, 16, 8))
  block = TMSA(dim=8, num_heads=2, window_size=(2, 8, 8), shift_size=(1, 4, 4), mut_attn=True,
               mlp_ratio=4.,  # MLP hidden width 32: unique.
               use_checkpoint_attn=checkpoint_attn)
  v = block.init(jax.random.key(1), x)

  def plain(v, x):  # The same block from its parts, with no recomputation.
    y = x + block.apply(v, x, method=TMSA.attention_part)
    return y + block.apply(v, y, method=TMSA.ffn_part)

  def loss(f):
    return lambda v, x: jnp.sum(jnp.sin(f(v, x)))

  got = jax.jit(jax.grad(loss(block.apply), (0, 1)))(v, x)
  want = jax.jit(jax.grad(loss(plain), (0, 1)))(v, x)
  jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-5), got, want)

  def widths(f):  # Last-axis sizes of the residuals the backward pass keeps (not arguments).
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
      print_saved_residuals(lambda v: loss(f)(v, x), v)
    return {int(m.group(1)) for line in out.getvalue().splitlines() if "argument" not in line
            for m in [re.match(r"\w+\[[\d,]*,(\d+)\]", line.strip())] if m}

  assert 32 in widths(plain)  # The MLP's hidden activations...
  assert 32 not in widths(block.apply)  # ...are recomputed, not kept.
  if checkpoint_attn:
    assert widths(block.apply) <= {8}  # Only block inputs are kept.

  def temporaries():
    grad = jax.jit(jax.grad(loss(block.apply), (0, 1)))
    return grad.lower(v, x).compile().memory_analysis().temp_size_in_bytes

  forced = temporaries()
  monkeypatch.delenv(kernels.KERNELS_ENV)
  jax.clear_caches()
  assert temporaries() == forced
