"""The port computes the official VRT's function: golden tensors from the PyTorch reference.

tests/data/parity_{sr_x4,deblur}.npz come from the official implementation with random weights
(see /shared/parity/README.md for how they were made); the reference's own float32 rounding is
~1e-7 to 1e-6, the bar is 1e-4 and we hold the port to 2e-5.
"""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import vrt_jax
from tests import parity_utils as pu
from vrt_jax import convert, tmsa
from vrt_jax.attention import compute_mask
from vrt_jax.deform import DCNv2PackFlowGuided
from vrt_jax.spynet import SpyNet
from vrt_jax.tmsa import TMSA
from vrt_jax.vrt import VRT, Stage
from vrt_jax.warp import flow_warp, nearest4_warp

# Both implementations of the kernels (vrt_jax.kernels) are held to the same bar.
pytestmark = pytest.mark.usefixtures("kernel_choice")

TOL = 2e-5
NAMES = ["parity_sr_x4", "parity_deblur"]


@functools.cache
def _variables(name):
  model = VRT(**pu.config(name))
  return model, convert.from_torch(pu.params_only(pu.state_dict(name)), model)


def _subtree(variables, *path):
  p = tmsa.unstack_blocks(variables["params"])  # Block by block, whether or not scanned.
  for k in path:
    p = p[k]
  return {"params": p}


def _close(got, want, tol=TOL):
  got = np.asarray(got)
  assert got.shape == want.shape
  np.testing.assert_allclose(got, want, atol=tol, rtol=0)


@pytest.mark.slow
@pytest.mark.parametrize("name", NAMES)
def test_full_model_and_stages_match_reference(name):
  z = pu.load(name)
  model, variables = _variables(name)

  @jax.jit
  def run(v, x):
    return model.apply(v, x, capture_intermediates=lambda m, _: isinstance(m, Stage))

  out, inter = run(variables, pu.clip(z["input"]))
  for k in (1, 3, 4, 5, 6):
    _close(inter["intermediates"][f"stage{k}"]["__call__"][0], pu.feat(z[f"inter/stage{k}/out"]))
  _close(out, pu.clip(z["output"]))


@pytest.mark.slow
@pytest.mark.parametrize("name", NAMES)
def test_extra_case_matches_reference(name):
  """sr_x4: T=3 (< the 6-frame window), W=72; deblur: T=8 (temporal padding of the window)."""
  z = pu.load(name)
  model, variables = _variables(name)
  (key,) = [k for k in z if k.startswith("extra/") and k.endswith("/input")]
  out = jax.jit(model.apply)(variables, pu.clip(z[key]))
  _close(out, pu.clip(z[key.replace("/input", "/output")]))


@pytest.mark.parametrize("name", NAMES)
def test_spynet_flows_match_reference(name):
  z = pu.load(name)
  _, variables = _variables(name)
  x = pu.clip(z["input"])[0]
  flows = jax.jit(SpyNet().apply)(_subtree(variables, "spynet"), x[:-1], x[1:])
  for i, f in enumerate(flows):
    _close(f, pu.image(z[f"inter/flows_backward/{i}"][0]), 1e-5)
  flows = jax.jit(SpyNet().apply)(_subtree(variables, "spynet"), x[1:], x[:-1])
  _close(flows[0], pu.image(z["inter/flows_forward/0"][0]), 1e-5)


def test_nearest4_image_warp_matches_conv_first_input():
  z = pu.load("parity_deblur")
  x = pu.clip(z["input"])
  fb = pu.image(z["inter/flows_backward/0"][0])[None]
  ff = pu.image(z["inter/flows_forward/0"][0])[None]
  xb, xf = VRT.aligned_images(jnp.asarray(x), jnp.asarray(fb), jnp.asarray(ff))
  want = pu.feat(z["inter/conv_first/in"])  # [x (3), backward (12), forward (12)]
  _close(jnp.concatenate([x, xb, xf], axis=-1), want, 0)
  # Sanity of the helper itself: a zero flow samples each pixel four times.
  img = jnp.asarray(x[0, :1])
  np.testing.assert_array_equal(nearest4_warp(img, jnp.zeros((*img.shape[:3], 2))),
                                jnp.tile(img, (1, 1, 1, 4)))


@pytest.mark.parametrize("name", NAMES)
@pytest.mark.parametrize("stage", ["stage3", "stage4"])
def test_flow_guided_deformable_conv_matches_reference(name, stage):
  z = pu.load(name)
  _, variables = _variables(name)
  cfg = pu.config(name)
  t = lambda k: pu.image(z[f"inter/{stage}.pa_deform/in/{k}"])
  warped = flow_warp(jnp.asarray(t("x")), jnp.asarray(t("flows/0")))
  _close(warped, t("x_flow_warpeds/0"), 1e-5)
  mod = DCNv2PackFlowGuided(features=cfg["embed_dims"][2],
                            deformable_groups=cfg["deformable_groups"],
                            max_residue_magnitude={"stage3": 2.5, "stage4": 1.25}[stage],
                            pa_frames=2)
  out, inter = mod.apply(_subtree(variables, stage, "pa_deform"), t("x"), [t("x_flow_warpeds/0")],
                         t("x_current"), [t("flows/0")], capture_intermediates=True)
  _close(inter["intermediates"]["conv_offset_6"]["__call__"][0],
         pu.image(z[f"inter/{stage}.pa_deform.conv_offset/out"]))
  _close(out, pu.image(z[f"inter/{stage}.pa_deform/out"]))


@pytest.mark.parametrize("name", NAMES)
def test_shifted_window_mask_matches_reference(name):
  z = pu.load(name)
  want = z["inter/stage4.residual_group1.blocks.1.attn/mask"]
  _, d, h, w, _ = z["inter/stage4.residual_group1.blocks.1/in"].shape
  # Stage 4 is 8 pixels high: the window covers it, so only time and (for W=9) width shift.
  from vrt_jax.attention import get_window_size
  ws, ss = get_window_size((d, h, w), (2, 8, 8), (1, 4, 4))
  pad = [-n % s for n, s in zip((d, h, w), ws, strict=True)]
  got = compute_mask(d + pad[0], h + pad[1], w + pad[2], ws, ss)
  np.testing.assert_array_equal(got, want)


@pytest.mark.parametrize("name", NAMES)
@pytest.mark.parametrize("stage", ["stage3", "stage4"])
def test_mutual_self_attention_block_matches_reference(name, stage):
  z = pu.load(name)
  _, variables = _variables(name)
  cfg = pu.config(name)
  block = TMSA(dim=cfg["embed_dims"][2], num_heads=cfg["num_heads"][2], window_size=(2, 8, 8),
               shift_size=(1, 4, 4), mut_attn=True)
  v = _subtree(variables, stage, "residual_group1", "blocks_1")
  _close(block.apply(v, z[f"inter/{stage}.residual_group1.blocks.1/in"]),
         z[f"inter/{stage}.residual_group1.blocks.1/out"])


@pytest.mark.parametrize("name", NAMES)
def test_self_attention_block_matches_reference(name):
  z = pu.load(name)
  _, variables = _variables(name)
  cfg = pu.config(name)
  block = TMSA(dim=cfg["embed_dims"][3], num_heads=cfg["num_heads"][3],
               window_size=tuple(cfg["window_size"]), shift_size=(0, 0, 0), mut_attn=False)
  v = _subtree(variables, "stage4", "residual_group2", "blocks_0")
  _close(block.apply(v, z["inter/stage4.residual_group2.blocks.0/in"]),
         z["inter/stage4.residual_group2.blocks.0/out"])


@pytest.mark.parametrize("name", NAMES)
def test_stage_reshape_and_fusion_match_reference(name):
  """Stage 4 from its input (stage 3 out) through down-reshape, both groups and parallel warping."""
  z = pu.load(name)
  model, variables = _variables(name)
  cfg = pu.config(name)
  st = Stage(dim=cfg["embed_dims"][3], depth=cfg["depths"][3],
             num_heads=cfg["num_heads"][3], window_size=tuple(cfg["window_size"]),
             pa_frames=2, deformable_groups=cfg["deformable_groups"], reshape="down",
             max_residue_magnitude=1.25, scan_blocks=model.scan_blocks)
  fb = [pu.image(z["inter/flows_backward/3"][0])[None]]
  ff = [pu.image(z["inter/flows_forward/3"][0])[None]]
  out, inter = st.apply({"params": variables["params"]["stage4"]}, pu.feat(z["inter/stage3/out"]),
                        fb, ff, capture_intermediates=True)
  it = inter["intermediates"]
  _close(it["reshape_2"]["__call__"][0], pu.feat(z["inter/stage4.reshape/out"]))
  _close(it["residual_group1"]["__call__"][0], pu.feat(z["inter/stage4.residual_group1/out"]))
  _close(it["pa_fuse"]["__call__"][0], z["inter/stage4.pa_fuse/out"])
  _close(out, pu.feat(z["inter/stage4/out"]))


def test_model_buffers_equal_reference_buffers():
  for name in NAMES:
    sd = pu.state_dict(name)
    expected = convert.expected_buffers(VRT(**pu.config(name)))
    stored = [k for k in sd if k.endswith(("relative_position_index", "position_bias"))]
    assert stored
    for k in stored:
      np.testing.assert_allclose(expected[k], sd[k], atol=1e-6)


def test_public_api_names():
  assert vrt_jax.VRT is VRT
  assert vrt_jax.convert.from_torch is convert.from_torch


def test_a_gradient_may_miss_by_rounding_in_a_few_entries_only():
  want = np.linspace(-1.0, 1.0, 1000)
  near = want.copy()
  near[[3, 500]] += 3e-3  # Two entries off by 3x the tolerance: rounding through a floor.
  pu.assert_close_but_a_few(near, want, atol=1e-3)
  for wrong in (want + 2e-3,  # Every entry off.
                np.where(np.arange(1000) < 6, want + 2e-3, want),  # More than a few.
                np.where(np.arange(1000) == 7, want + 5e-3, want)):  # One off by far more.
    with pytest.raises(AssertionError):
      pu.assert_close_but_a_few(wrong, want, atol=1e-3)


@pytest.mark.slow
# One kernel path per file: the other path's whole-model gradients are held to this one's by
# test_kernels (every path and remat policy).
@pytest.mark.parametrize("kernel_choice, name", [("cpu", "sr_x4"), ("xla", "deblur")],
                         indirect=["kernel_choice"])
def test_gradients_match_reference_in_float64(kernel_choice, name):
  # tests/data/grads_*.npz: the official VRT's gradients of sum(output * R) (R fixed, seed 7)
  # with respect to every parameter and the input, computed in float64, and the reference's
  # own float32 error per tensor. Ours (float32) must be within 1e-3 of each tensor's largest
  # entry, or within 4x the reference's float32 error where that is larger (SpyNet).
  g = pu.load(f"grads_{name}")
  model, variables = _variables(f"parity_{name}")
  z = pu.load(f"parity_{name}")
  x = pu.clip(z["input"])
  r = np.random.default_rng(7).standard_normal(z["output"].shape).astype(np.float32)
  r = pu.clip(r)

  def loss(params, x):
    return jnp.sum(model.apply({"params": params}, x) * r)

  value, (dparams, dx) = jax.jit(jax.value_and_grad(loss, (0, 1)))(variables["params"], x)
  np.testing.assert_allclose(value, g["loss"], rtol=1e-4)
  grads = {k[len("grad/"):]: v for k, v in g.items() if k.startswith("grad/")}
  want_dx = pu.clip(grads.pop("__input__"))
  # Compared block by block (PyTorch's names), whether or not the model scans its blocks.
  dparams = tmsa.unstack_blocks(dparams)
  want = tmsa.unstack_blocks(convert.from_torch(grads, model)["params"])
  errs = {k[len("f32err/"):]: float(v) for k, v in g.items() if k.startswith("f32err/")}
  flat_got = dict(jax.tree_util.tree_leaves_with_path(dparams))
  checked = 0
  for path, w in jax.tree_util.tree_leaves_with_path(want):
    torch_name = convert.torch_name(tuple(k.key for k in path))
    tol = max(1e-3 * float(np.max(np.abs(w))), 4 * errs[torch_name])
    pu.assert_close_but_a_few(flat_got[path], w, atol=tol, err_msg=torch_name)
    checked += 1
  assert checked == len(grads) == len(jax.tree.leaves(dparams))
  tol = max(1e-3 * float(np.max(np.abs(want_dx))), 4 * errs["__input__"])
  np.testing.assert_allclose(dx, want_dx, atol=tol, rtol=0)
