"""Tiled inference reproduces the official test_video / test_clip procedure."""

import functools

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest
import standins

from vrt_jax import inference


# ----------------------------------------------------------------------------------------------
# Oracle: a literal numpy port of main_test_vrt.py's test_video / test_clip (channels-last).
# ----------------------------------------------------------------------------------------------
def oracle_test_clip(lq, model_fn, *, tile, overlap, window, sf, nonblind):
  # The reference uses tile[1] / tile_overlap[1] for both axes and decides tiled-or-whole on
  # tile[1] alone; this port runs its loop per axis (H from [1], W from [2]), identical when the
  # two are equal, so rectangular tiles and one-axis tiling can be checked too. A whole axis
  # (tile 0) is mirror-padded to the window as the reference's untiled branch does, then is a
  # single "tile" (no overlap zeroing), then cropped.
  b, d, h_old, w_old, c = lq.shape
  c = c - 1 if nonblind else c
  h_pad = (window[1] - h_old % window[1]) % window[1] if not tile[1] else 0
  w_pad = (window[2] - w_old % window[2]) % window[2] if not tile[2] else 0
  lq = np.concatenate([lq, np.flip(lq[:, :, -h_pad:], 2)], 2) if h_pad else lq
  lq = np.concatenate([lq, np.flip(lq[:, :, :, -w_pad:], 3)], 3) if w_pad else lq
  h, w = lq.shape[2:4]
  size_h, size_w = tile[1] or h, tile[2] or w
  ov_h, ov_w = overlap[1], overlap[2]
  h_idx_list = list(range(0, h - size_h, size_h - ov_h)) + [max(0, h - size_h)]
  w_idx_list = list(range(0, w - size_w, size_w - ov_w)) + [max(0, w - size_w)]
  E = np.zeros((b, d, h * sf, w * sf, c), np.float32)
  W = np.zeros_like(E)
  for h_idx in h_idx_list:
    for w_idx in w_idx_list:
      in_patch = lq[:, :, h_idx:h_idx + size_h, w_idx:w_idx + size_w]
      out_patch = np.array(model_fn(in_patch), np.float32)
      if out_patch.shape[1] == 1 < d:  # frame interpolation: torch broadcasts the one frame
        out_patch = np.repeat(out_patch, d, axis=1)
      out_patch_mask = np.ones_like(out_patch)
      if h_idx < h_idx_list[-1]:
        out_patch[:, :, -ov_h // 2:, :] *= 0
        out_patch_mask[:, :, -ov_h // 2:, :] *= 0
      if w_idx < w_idx_list[-1]:
        out_patch[:, :, :, -ov_w // 2:] *= 0
        out_patch_mask[:, :, :, -ov_w // 2:] *= 0
      if h_idx > h_idx_list[0]:
        out_patch[:, :, :ov_h // 2, :] *= 0
        out_patch_mask[:, :, :ov_h // 2, :] *= 0
      if w_idx > w_idx_list[0]:
        out_patch[:, :, :, :ov_w // 2] *= 0
        out_patch_mask[:, :, :, :ov_w // 2] *= 0
      hs = slice(h_idx * sf, h_idx * sf + out_patch.shape[2])
      ws = slice(w_idx * sf, w_idx * sf + out_patch.shape[3])
      E[:, :, hs, ws] += out_patch
      W[:, :, hs, ws] += out_patch_mask
  return (E / W)[:, :, :h_old * sf, :w_old * sf]


def oracle_test_video(lq, model_fn, *, tile, overlap, window, sf, nonblind):
  kw = dict(tile=tile, overlap=overlap, window=window, sf=sf, nonblind=nonblind)
  num_frame_testing = tile[0]
  if num_frame_testing:
    num_frame_overlapping = overlap[0]
    b, d, h, w, c = lq.shape
    c = c - 1 if nonblind else c
    stride = num_frame_testing - num_frame_overlapping
    d_idx_list = list(range(0, d - num_frame_testing, stride)) + [max(0, d - num_frame_testing)]
    E = np.zeros((b, d, h * sf, w * sf, c), np.float32)
    W = np.zeros((b, d, 1, 1, 1), np.float32)
    for d_idx in d_idx_list:
      lq_clip = lq[:, d_idx:d_idx + num_frame_testing]
      out_clip = oracle_test_clip(lq_clip, model_fn, **kw)
      out_clip_mask = np.ones((b, min(num_frame_testing, d), 1, 1, 1), np.float32)
      E[:, d_idx:d_idx + num_frame_testing] += out_clip
      W[:, d_idx:d_idx + num_frame_testing] += out_clip_mask
    return E / W
  d_old = lq.shape[1]
  d_pad = (window[0] - d_old % window[0]) % window[0]
  lq = np.concatenate([lq, np.flip(lq[:, -d_pad:], 1)], 1) if d_pad else lq
  return oracle_test_clip(lq, model_fn, **kw)[:, :d_old]


# ----------------------------------------------------------------------------------------------
# A cheap deterministic stand-in whose output depends on temporal and spatial context, so any
# tiling mistake changes the result.
# ----------------------------------------------------------------------------------------------
FakeModel = functools.partial(standins.FakeModel, upscale=2)


def fake_fn(x, sf=2, pa_frames=2):
  x = np.asarray(x, np.float32)
  rgb = x[..., :3]
  ctx = rgb.mean(axis=(1, 2, 3), keepdims=True)  # global context: tiling changes it
  pad = np.pad(rgb, ((0, 0), (0, 0), (1, 1), (1, 1), (0, 0)), mode="edge")
  box = sum(pad[:, :, i:i + rgb.shape[2], j:j + rgb.shape[3]] for i in range(3) for j in range(3))
  tmix = np.roll(rgb, 1, axis=1)
  ramp = np.arange(1, rgb.shape[1] + 1)[:, None, None, None]
  y = rgb + 0.1 * ctx + 0.02 * box + 0.05 * tmix * ramp
  if x.shape[-1] == 4:
    y = y + x[..., 3:]
  if pa_frames == 0:
    y = y.mean(axis=1, keepdims=True)
  return y.repeat(sf, axis=2).repeat(sf, axis=3).astype(np.float32)


def _clip(shape, seed=0):
  return np.random.default_rng(seed).random(shape, dtype=np.float32)


@pytest.mark.parametrize("shape,tile,overlap", [
    ((1, 11, 40, 56, 3), (4, 16, 16), (1, 4, 4)),    # several tiles in every dimension
    ((2, 7, 37, 45, 3), (3, 16, 16), (2, 5, 5)),     # odd sizes and overlap, batch 2
    ((1, 6, 40, 53, 3), (4, 16, 24), (2, 6, 5)),     # rectangular tiles
    ((1, 6, 32, 48, 3), (0, 16, 16), (0, 4, 4)),     # untiled time (padded to window)
    ((1, 9, 33, 47, 3), (4, 0, 0), (2, 0, 0)),       # untiled space (padded to 8)
    ((1, 5, 35, 41, 3), (0, 0, 0), (0, 0, 0)),       # everything untiled
])
def test_tiled_restore_matches_reference_procedure(shape, tile, overlap):
  lq = _clip(shape)
  model = FakeModel()
  got = inference.restore(model, None, lq, tile=tile, tile_overlap=overlap,
                          apply_fn=lambda v, x: fake_fn(x), progress=False)
  want = oracle_test_video(lq, fake_fn, tile=tile, overlap=overlap, window=model.window_size,
                           sf=2, nonblind=False)
  assert got.shape == want.shape
  np.testing.assert_allclose(got, want, rtol=0, atol=1e-6)


def test_tiles_at_least_the_clip_run_it_whole():
  lq = _clip((1, 5, 30, 42, 3), seed=2)
  model = FakeModel()
  fn = lambda v, x: fake_fn(x)
  untiled = inference.restore(model, None, lq, tile=(0, 0, 0), tile_overlap=(0, 0, 0),
                              apply_fn=fn, progress=False)
  big = inference.restore(model, None, lq, tile=(8, 48, 48), tile_overlap=(2, 8, 8),
                          apply_fn=fn, progress=False)
  # Tile 0, the reference's padding: T 5 -> 6 (flip last frame), H 30 -> 32, W 42 -> 48, crop.
  spatial = np.concatenate([lq, lq[:, :, -2:][:, :, ::-1]], 2)
  spatial = np.concatenate([spatial, spatial[:, :, :, -6:][:, :, :, ::-1]], 3)
  padded = np.concatenate([spatial, spatial[:, -1:]], 1)
  np.testing.assert_array_equal(untiled, fake_fn(padded)[:, :5, :60, :84])
  # A longer temporal tile runs the 5 frames as they are (H, W padded only because the model
  # needs multiples of 8).
  want = fake_fn(spatial)[:, :, :60, :84]
  np.testing.assert_array_equal(big, want)
  from_jax = inference.restore(model, None, jnp.asarray(lq), tile=(8, 48, 48),
                               tile_overlap=(2, 8, 8), apply_fn=fn, progress=False)
  np.testing.assert_array_equal(from_jax, want)


def test_zero_spatial_overlap_concatenates_tiles():
  # The reference zeroes whole tiles for overlap 0 (NaN output); we drop nothing instead.
  lq = _clip((1, 4, 32, 32, 3), seed=3)
  got = inference.restore(FakeModel(), None, lq, tile=(4, 16, 16), tile_overlap=(0, 0, 0),
                          apply_fn=lambda v, x: fake_fn(x), progress=False)
  assert np.isfinite(got).all()
  np.testing.assert_allclose(got[:, :, :32, :32], fake_fn(lq[:, :, :16, :16]), atol=1e-6)
  np.testing.assert_allclose(got[:, :, 32:, 32:], fake_fn(lq[:, :, 16:, 16:]), atol=1e-6)


def test_denoising_noise_map_channel_and_interpolation():
  model = FakeModel(upscale=1, nonblind_denoising=True)
  lq = _clip((1, 6, 32, 32, 4), seed=4)
  fn = lambda v, x: fake_fn(x, sf=1)
  got = inference.restore(model, None, lq, tile=(4, 16, 16), tile_overlap=(2, 4, 4), apply_fn=fn,
                          progress=False)
  want = oracle_test_video(lq, lambda x: fake_fn(x, sf=1), tile=(4, 16, 16), overlap=(2, 4, 4),
                           window=(2, 8, 8), sf=1, nonblind=True)
  assert got.shape == (1, 6, 32, 32, 3)
  np.testing.assert_allclose(got, want, atol=1e-6)

  vfi = FakeModel(upscale=1, pa_frames=0, img_size=(4, 16, 16))
  lq = _clip((1, 4, 32, 48, 3), seed=5)
  fn = lambda v, x: fake_fn(x, sf=1, pa_frames=0)
  got = inference.restore(vfi, None, lq, tile=(0, 16, 16), tile_overlap=(0, 4, 4), apply_fn=fn,
                          progress=False)
  # Reference: test_clip broadcasts the single output frame, then keeps frame 0.
  want = oracle_test_video(lq, lambda x: fake_fn(x, sf=1, pa_frames=0), tile=(0, 16, 16),
                           overlap=(0, 4, 4), window=(4, 8, 8), sf=1, nonblind=False)[:, :1]
  assert got.shape == (1, 1, 32, 48, 3)
  np.testing.assert_allclose(got, want, atol=1e-6)
  with pytest.raises(ValueError, match="img_size"):
    inference.restore(vfi, None, _clip((1, 5, 32, 32, 3)), apply_fn=fn, progress=False)


class ConvStandIn(standins.Residual):
  """Residual plus the clip's mean: output depends on the whole tile (compile-count check)."""

  @nn.compact
  def __call__(self, x, train=False):
    y = nn.Conv(self.out_chans, (1, 3, 3))(x)
    return x + y + jnp.mean(x, axis=(1, 2, 3), keepdims=True)


def test_one_compilation_for_all_tiles_and_streaming_resume():
  model = ConvStandIn()
  lq = _clip((1, 13, 40, 56, 3), seed=6)
  variables = model.init(jax.random.key(0), lq[:, :4, :16, :16])
  apply_fn = inference.make_apply_fn(model)
  got = inference.restore(model, variables, lq, tile=(4, 16, 16), tile_overlap=(1, 4, 4),
                          apply_fn=apply_fn, progress=False)
  assert len(apply_fn.compiled) == 1  # 5 temporal x 3 x 4 spatial tiles, one shape
  want = oracle_test_video(lq, lambda x: model.apply(variables, x), tile=(4, 16, 16),
                           overlap=(1, 4, 4), window=(2, 8, 8), sf=1, nonblind=False)
  np.testing.assert_allclose(got, want, atol=1e-5)

  # Resume: frames 0..6 already written; the tiles covering only them are skipped and the rest
  # are identical to the full run.
  reads = []

  def read(a, b):
    reads.append((a, b))
    return lq[:, a:b]

  out = dict(inference.restore_stream(
      model, variables, read, 13, tile=(4, 16, 16), tile_overlap=(1, 4, 4),
      frame_done=lambda t: t < 7, apply_fn=apply_fn, progress=False))
  assert sorted(out) == list(range(7, 13))
  assert reads == [(6, 10), (9, 13)]  # starts [0, 3, 6, 9]: tiles 0 and 3 skipped
  for t, frame in out.items():
    np.testing.assert_allclose(frame, got[:, t], atol=1e-6)


@pytest.mark.parametrize("bad,match", [
    (np.zeros((4, 16, 16, 3), np.float32), "B, T, H, W, C"),
    (np.zeros((1, 4, 16, 16, 3), np.uint8), "floating point"),
    (np.zeros((1, 4, 16, 16, 2), np.float32), "3 channels"),
    (np.full((1, 4, 16, 16, 3), 200.0, np.float32), "Divide by 255"),
    (np.full((1, 4, 16, 16, 3), np.nan, np.float32), "NaN"),
])
def test_bad_input_raises(bad, match):
  with pytest.raises(ValueError, match=match):
    inference.restore(FakeModel(), None, bad, apply_fn=lambda v, x: fake_fn(x), progress=False)


def test_bad_tiles_raise():
  lq = _clip((1, 4, 16, 16, 3))
  with pytest.raises(ValueError, match="multiple of window"):
    inference.restore(FakeModel(), None, lq, tile=(4, 12, 12), tile_overlap=(0, 2, 2),
                      apply_fn=lambda v, x: fake_fn(x), progress=False)
  with pytest.raises(ValueError, match="smaller than"):
    inference.restore(FakeModel(), None, lq, tile=(4, 16, 16), tile_overlap=(4, 2, 2),
                      apply_fn=lambda v, x: fake_fn(x), progress=False)


@pytest.mark.slow
def test_tiny_vrt_tiled_matches_reference_procedure():
  import vrt_jax
  from vrt_jax import checkpoint, presets

  model = vrt_jax.VRT(**presets.tiny())
  variables = {"params": checkpoint.random_params(model)}
  rng = np.random.default_rng(7)
  lq = np.clip(0.5 + 0.1 * np.cumsum(rng.standard_normal((1, 8, 64, 72, 3)), axis=3), 0, 1)
  lq = lq.astype(np.float32)
  apply_fn = inference.make_apply_fn(model)
  got = inference.restore(model, variables, lq, tile=(6, 64, 64), tile_overlap=(2, 16, 16),
                          apply_fn=apply_fn, progress=False)
  want = oracle_test_video(lq, lambda x: apply_fn(variables, x), tile=(6, 64, 64),
                           overlap=(2, 16, 16), window=(6, 8, 8), sf=1, nonblind=False)
  assert np.isfinite(got).all()
  np.testing.assert_allclose(got, want, atol=1e-6)
  # Tiles covering the clip: exactly the untiled model output (no padding needed here).
  whole = inference.restore(model, variables, lq[:, :6, :, :64], tile=(6, 64, 64),
                            tile_overlap=(2, 16, 16), apply_fn=apply_fn, progress=False)
  np.testing.assert_array_equal(whole, np.asarray(apply_fn(variables, lq[:, :6, :, :64])))
  # A clip shorter than the temporal tile runs at its own 5 frames, as the reference's single
  # tile lq[:, 0:6] does (it was once mirror-padded to 6, which is off by up to ~0.4); H, W
  # 60 -> 64 are padded only because the model needs multiples of 8, then cropped.
  small = lq[:, :5, :60, :60]
  spatial = np.concatenate([small, small[:, :, -4:][:, :, ::-1]], 2)
  spatial = np.concatenate([spatial, spatial[:, :, :, -4:][:, :, :, ::-1]], 3)
  got = inference.restore(model, variables, small, tile=(6, 64, 64), tile_overlap=(2, 16, 16),
                          apply_fn=apply_fn, progress=False)
  np.testing.assert_array_equal(got, np.asarray(apply_fn(variables, spatial))[:, :, :60, :60])
  want = oracle_test_video(lq[:, :5, :64, :64], lambda x: apply_fn(variables, x),
                           tile=(8, 72, 72), overlap=(2, 16, 16), window=(6, 8, 8), sf=1,
                           nonblind=False)
  got = inference.restore(model, variables, lq[:, :5, :64, :64], tile=(8, 72, 72),
                          tile_overlap=(2, 16, 16), apply_fn=apply_fn, progress=False)
  np.testing.assert_array_equal(got, want)
  assert len(apply_fn.compiled) == 2  # the 6-frame tiles and the 5-frame clip


# ----------------------------------------------------------------------------------------------
# The whole class: each of T, H, W tiled with a tile of 0 (whole), longer than, equal to or
# shorter than the clip, in every combination, against the reference's loop.
# ----------------------------------------------------------------------------------------------
CLASS_SHAPE = (1, 7, 40, 56, 3)  # T, H, W; the stand-in's window is (2, 8, 8), sf 2.
CLASS_TILES = {  # relation -> tile per axis
    "0": (0, 0, 0), ">": (10, 48, 64), "=": (7, 40, 56), "<": (4, 16, 24)}


@pytest.mark.parametrize("overlap", [(2, 4, 6), (1, 5, 3), (0, 1, 2)])
@pytest.mark.parametrize("rel_w", list(CLASS_TILES))
@pytest.mark.parametrize("rel_h", list(CLASS_TILES))
@pytest.mark.parametrize("rel_t", list(CLASS_TILES))
def test_every_tile_relation_matches_the_reference(rel_t, rel_h, rel_w, overlap):
  tile = (CLASS_TILES[rel_t][0], CLASS_TILES[rel_h][1], CLASS_TILES[rel_w][2])
  lq = _clip(CLASS_SHAPE, seed=11)
  calls = []

  def fn(x):
    calls.append(x.shape)
    return fake_fn(x)

  got = inference.restore(FakeModel(), None, lq, tile=tile, tile_overlap=overlap,
                          apply_fn=lambda v, x: fn(x), progress=False)
  ours = list(calls)
  calls.clear()
  want = oracle_test_video(lq, fn, tile=tile, overlap=overlap, window=(2, 8, 8), sf=2,
                           nonblind=False)
  assert got.shape == want.shape == (1, 7, 80, 112, 3)
  np.testing.assert_allclose(got, want, rtol=0, atol=1e-6)
  # The model sees exactly the reference's inputs: a temporal tile longer than the clip runs
  # the clip at its own length (7 frames), only tile 0 pads T to the window (8).
  assert sorted(ours) == sorted(calls)
  assert {s[1] for s in ours} == {8 if rel_t == "0" else min(7, tile[0])}


@pytest.mark.parametrize("pa_frames,window", [(2, (2, 8, 8)), (4, (4, 8, 8))])
@pytest.mark.parametrize("num_frames", [1, 2, 3, 5])
def test_temporal_tile_longer_than_a_short_clip(num_frames, pa_frames, window):
  # A clip the model can take runs unpadded; one too short for the parallel warping (which the
  # reference cannot run at all) is padded like tile 0.
  model = FakeModel(pa_frames=pa_frames, window_size=window)
  lq = _clip((1, num_frames, 16, 16, 3), seed=num_frames)
  calls = []
  if 2 * num_frames < inference.ModelSpec.from_model(model).min_frames:
    with pytest.raises(ValueError, match="at least 2 input frames"):  # mirroring only doubles
      inference.restore(model, None, lq, tile=(6, 16, 16), tile_overlap=(2, 4, 4),
                        apply_fn=lambda v, x: fake_fn(x), progress=False)
    return
  got = inference.restore(model, None, lq, tile=(6, 16, 16), tile_overlap=(2, 4, 4),
                          apply_fn=lambda v, x: calls.append(x.shape) or fake_fn(x),
                          progress=False)
  short = num_frames < inference.ModelSpec.from_model(model).min_frames
  want = oracle_test_video(lq, fake_fn, tile=(0 if short else 6, 16, 16), overlap=(2, 4, 4),
                           window=window, sf=2, nonblind=False)
  np.testing.assert_allclose(got, want, rtol=0, atol=1e-6)
  assert calls[0][1] == (min(2 * num_frames, window[0]) if short else num_frames)


@pytest.mark.parametrize("h,w", [(37, 45), (5, 7), (33, 64)])
def test_spatial_tile_longer_than_a_size_the_model_cannot_take(h, w):
  # Frames the model cannot take at their own size (not a multiple of the window / below its
  # minimum, where PyTorch VRT fails) are padded like tile 0 and cropped back.
  lq = _clip((1, 4, h, w, 3), seed=h)
  got = inference.restore(FakeModel(), None, lq, tile=(4, 72, 72), tile_overlap=(1, 4, 4),
                          apply_fn=lambda v, x: fake_fn(x), progress=False)
  want = oracle_test_video(lq, fake_fn, tile=(4, 0, 0), overlap=(1, 0, 0), window=(2, 8, 8),
                           sf=2, nonblind=False)
  np.testing.assert_allclose(got, want, rtol=0, atol=1e-6)


def test_describe_tiling_reports_the_tiles_run():
  model = FakeModel()
  assert inference.describe_tiling(model, (7, 40, 56), (4, 16, 24), (2, 4, 6)) == (
      "3 temporal x 3 x 3 spatial tiles of 4 x 16 x 24 (overlap 2, 4, 6)")
  assert inference.describe_tiling(model, (7, 40, 56), (10, 48, 64), (2, 4, 6)) == (
      "1 temporal x 1 x 1 spatial tile of 7 x 40 x 56")
  assert inference.describe_tiling(model, (7, 37, 56), (0, 0, 24), (0, 0, 6)) == (
      "1 temporal x 1 x 3 spatial tiles of 8 x 40 x 24 (overlap 0, 0, 6); "
      "mirror-padded T 7 -> 8, H 37 -> 40")
  with pytest.raises(ValueError, match="temporal tile 1 is too short"):
    inference.describe_tiling(model, (7, 40, 56), (1, 16, 16), (0, 4, 4))


@pytest.mark.parametrize("shape, tile, space, split", [
    ((6, 60, 96), (0, 0, 0), 4, True),     # Padded to 64 rows: 2 at the 1/8 scale per device.
    ((6, 72, 96), (0, 0, 0), 4, False),    # 72 rows (9 at 1/8) do not split 4 ways.
    ((6, 72, 96), (0, 0, 0), 3, True),
    ((6, 200, 96), (0, 64, 0), 4, True),   # Tiles of 64 rows, whatever the frame's height.
    ((6, 200, 96), (0, 72, 0), 2, False),
    ((6, 72, 96), (0, 0, 0), 1, True),     # No split asked for: nothing to say.
])
def test_space_split_note_says_when_rows_cannot_be_split(shape, tile, space, split):
  model = FakeModel()
  note = inference.space_split_note(model, shape, tile, (0, 0, 0), space)
  assert (note == "") == split
  if not split:
    assert f"not a multiple of {8 * space}" in note and "--tile" in note


def test_progress_shows_compiling_and_keeps_it_out_of_the_rate(capsys):
  # The first call of a tile shape (compiling, here a 2 s stand-in) is labelled as such, and
  # the bar's rate counts only the tiles run after it (instant here).
  import re
  import time

  seen = set()

  def fn(v, x):
    if x.shape not in seen:
      seen.add(x.shape)
      time.sleep(2)
    return fake_fn(x)

  inference.restore(FakeModel(), None, _clip((1, 13, 40, 56, 3)), tile=(4, 16, 16),
                    tile_overlap=(1, 4, 4), apply_fn=fn, progress=True)
  err = capsys.readouterr().err
  assert "compiling for 4x16x16" in err
  final = err.replace("\r", "\n").strip().splitlines()[-1]
  assert "60/60" in final, final  # 5 temporal x 3 x 4 spatial tiles
  rate = re.search(r"([\d.]+)(tile/s|s/tile)", final)
  assert rate and rate.group(2) == "tile/s" and float(rate.group(1)) > 20, final
  # The bar's clock (which its rate and ETA divide by) did not run while compiling.
  assert re.search(r"\[00:0[01]<", final), final
