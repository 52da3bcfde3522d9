"""Restoring a user's video: mp4 round trip, frame-folder resume, tiling for a memory budget."""

import fractions
import os
import subprocess
import sys
from pathlib import Path

import av
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from standins import standin_restorer, write_tiny_setup

from vrt_jax import inference, metrics, presets, restore_lib, video

REPO = Path(__file__).resolve().parents[2]


def _clip(num_frames, h, w, seed=0):
  rng = np.random.default_rng(seed)
  base = rng.random((h + num_frames * 2, w + num_frames * 2, 3), dtype=np.float32)
  return np.stack([base[2 * t:2 * t + h, t:t + w] for t in range(num_frames)])


@pytest.mark.slow
def test_mp4_round_trip_keeps_frame_count_and_rate(tmp_path):
  _, weights = write_tiny_setup(tmp_path)  # no --config: the export records its model
  rate = fractions.Fraction(30000, 1001)
  video.write_video(tmp_path / "in.mp4", _clip(7, 64, 64), fps=rate)
  out = tmp_path / "out.mp4"
  proc = subprocess.run(
      [sys.executable, "-m", "vrt_jax.restore", str(tmp_path / "in.mp4"), str(out),
       "--weights", str(weights), "--tile", "6,64,64",
       "--tile_overlap", "2,16,16", "--dtype", "bfloat16", "--matmul_precision", "high"],
      cwd=REPO, capture_output=True, text=True, timeout=600,
      env={**os.environ, "JAX_PLATFORMS": "cpu"})
  assert proc.returncode == 0, proc.stderr[-3000:]
  assert "computing in bfloat16" in proc.stdout
  assert "convolutions at high precision" in proc.stdout
  assert "7 frames written" in proc.stdout
  with av.open(str(out)) as container:
    stream = container.streams.video[0]
    frames = [f.to_ndarray(format="rgb24") for f in container.decode(stream)]
    assert stream.average_rate == rate
  assert len(frames) == 7 and frames[0].shape == (64, 64, 3)


def _restore_cli(tmp_path, name, *flags, devices=1, **extra_env):
  env = {**os.environ, "JAX_PLATFORMS": "cpu",
         "XLA_FLAGS": f"--xla_force_host_platform_device_count={devices}", **extra_env}
  return subprocess.run(
      [sys.executable, "-m", "vrt_jax.restore", str(tmp_path / "in"), str(tmp_path / name),
       "--weights", str(tmp_path / "weights"), "--quiet", *flags],
      cwd=REPO, capture_output=True, text=True, timeout=900, env=env)


@pytest.mark.slow
def test_untiled_restore_split_over_four_devices_equals_one_device(tmp_path):
  """--space 4: each frame's rows split over 4 (fake CPU) devices, the clip restored untiled;
  the frames equal the one-device restore within 1 level of 255.

  SpyNet's flows are steady (a quarter pixel: standins.steady_flows), not a random SpyNet's
  near-zero ones that the parallel warping's floor and ceil turn into another pixel where a
  split program rounds otherwise. The deformable offsets stay random.
  """
  write_tiny_setup(tmp_path, steady=True)
  video.write_video(tmp_path / "in", _clip(6, 64, 96, seed=3))
  one = _restore_cli(tmp_path, "one", "--tile", "0,0,0")
  assert one.returncode == 0, one.stderr[-3000:]
  split = _restore_cli(tmp_path, "split", "--tile", "0,0,0", "--space", "4", devices=4)
  assert split.returncode == 0, split.stderr[-3000:]
  a = video.read_images(video.list_frames(tmp_path / "one"))
  b = video.read_images(video.list_frames(tmp_path / "split"))
  assert a.shape == b.shape == (6, 64, 96, 3)
  assert np.abs(a - b).max() <= 1 / 255 + 1e-6


def test_an_unknown_compute_dtype_is_named_before_loading():
  with pytest.raises(restore_lib.UserError, match="--dtype bf16: choose one of float32, bfloat16"):
    restore_lib.load_restorer(preset=None, weights="006_VRT_videodeblurring_GoPro", dtype="bf16")
  with pytest.raises(restore_lib.UserError, match="--matmul_precision float32: choose one of "
                                                  "default, high, highest"):
    restore_lib.load_restorer(preset=None, weights="006_VRT_videodeblurring_GoPro",
                              matmul_precision="float32")


def test_space_beyond_the_devices_is_a_short_error(tmp_path):
  write_tiny_setup(tmp_path)
  video.write_video(tmp_path / "in", _clip(6, 64, 64))
  proc = _restore_cli(tmp_path, "out", "--space", "4")
  assert proc.returncode == 2
  assert "--space 4 needs 4 devices, but this machine has 1" in proc.stderr
  assert "xla_force_host_platform_device_count=4" in proc.stderr
  assert "Traceback" not in proc.stderr and not (tmp_path / "out").exists()


def test_frame_folder_resume_recomputes_only_missing_chunks(tmp_path):
  clip = _clip(11, 24, 40, seed=1)
  video.write_video(tmp_path / "in", clip)
  r = standin_restorer()
  kw = dict(tile=(4, 16, 16), tile_overlap=(1, 4, 4), progress=False)
  first = restore_lib.restore_video(r, str(tmp_path / "in"), str(tmp_path / "out"), **kw)
  assert first["written"] == 11 and first["skipped"] == 0
  full = video.read_images(video.list_frames(tmp_path / "out"))
  assert full.shape == (11, 24, 40, 3)
  # Streaming from files equals restoring the clip in memory (then quantised to 8 bits).
  frames_in = video.read_images(video.list_frames(tmp_path / "in"))
  want = inference.restore(r.model, r.variables, frames_in[None], tile=(4, 16, 16),
                           tile_overlap=(1, 4, 4), progress=False)[0]
  np.testing.assert_array_equal(metrics.to_uint8(full), metrics.to_uint8(want))
  # Interrupted run: the last frames are missing. Only they are written again, identically.
  for t in (9, 10):
    (tmp_path / "out" / f"{t:08d}.png").unlink()
  mtime = (tmp_path / "out" / "00000000.png").stat().st_mtime_ns
  second = restore_lib.restore_video(r, str(tmp_path / "in"), str(tmp_path / "out"), **kw)
  assert second["written"] == 2 and second["skipped"] == 9
  assert (tmp_path / "out" / "00000000.png").stat().st_mtime_ns == mtime
  np.testing.assert_array_equal(video.read_images(video.list_frames(tmp_path / "out")), full)


def test_denoising_needs_sigma_and_appends_noise_map(tmp_path):
  video.write_video(tmp_path / "in", _clip(4, 16, 16))
  r = standin_restorer(nonblind_denoising=True)
  with pytest.raises(ValueError, match="--sigma"):
    restore_lib.restore_video(r, str(tmp_path / "in"), str(tmp_path / "out"), tile=(4, 16, 16),
                          progress=False)
  summary = restore_lib.restore_video(r, str(tmp_path / "in"), str(tmp_path / "out"), sigma=20,
                                  tile=(4, 16, 16), progress=False)
  assert summary["written"] == 4


def test_bad_inputs_raise(tmp_path):
  r = standin_restorer()
  (tmp_path / "fake.mp4").write_bytes(b"this is not a video")
  with pytest.raises(ValueError, match="not a readable video"):
    restore_lib.restore_video(r, str(tmp_path / "fake.mp4"), str(tmp_path / "o"), progress=False)
  with pytest.raises(ValueError, match="does not exist"):
    restore_lib.restore_video(r, str(tmp_path / "missing.mp4"), str(tmp_path / "o"), progress=False)
  with pytest.raises(ValueError, match="frame folder or a video file"):
    restore_lib.restore_video(r, str(tmp_path / "x.txt"), str(tmp_path / "o"), progress=False)
  (tmp_path / "mixed").mkdir()
  video.write_image(tmp_path / "mixed" / "0.png", np.zeros((16, 16, 3), np.float32))
  video.write_image(tmp_path / "mixed" / "1.png", np.zeros((16, 24, 3), np.float32))
  with pytest.raises(ValueError, match="same size"):
    restore_lib.restore_video(r, str(tmp_path / "mixed"), str(tmp_path / "o"), tile=(2, 16, 16),
                          progress=False)
  with pytest.raises(ValueError, match="--preset"):
    restore_lib.load_restorer(preset=None, weights="w")


def test_tiling_for_memory_budget():
  kw = presets.get_preset("006_VRT_videodeblurring_GoPro")
  official = presets.TEST_SETTINGS["006_VRT_videodeblurring_GoPro"]
  # A generous budget keeps the official tiling.
  tile, overlap = restore_lib.choose_tiling(kw, 100, 720, 1280, budget_bytes=10**12,
                                        preset="006_VRT_videodeblurring_GoPro")
  assert tile == official["tile"] and overlap == official["tile_overlap"]
  # Smaller budgets shrink the tile, and the estimate of the result fits.
  for mb in (4000, 1000):
    tile, overlap = restore_lib.choose_tiling(kw, 100, 720, 1280, budget_bytes=mb * 2**20,
                                          preset="006_VRT_videodeblurring_GoPro")
    assert restore_lib.estimate_tile_bytes(kw, tile) <= mb * 2**20
    assert tile[1] % 8 == 0 and tile[1] >= 64 and tile[0] > overlap[0]
  assert restore_lib.estimate_tile_bytes(kw, (18, 192, 192)) > 4000 * 2**20
  with pytest.raises(ValueError, match="too small"):
    restore_lib.choose_tiling(kw, 100, 720, 1280, budget_bytes=10 * 2**20,
                          preset="006_VRT_videodeblurring_GoPro")
  # A small clip is tested whole when it fits: spatially as tile 0, in time with the tile as
  # given (the 5 frames run unpadded, as the reference runs a clip shorter than its tile).
  tile, _ = restore_lib.choose_tiling(kw, 5, 64, 64, budget_bytes=10**12, tile=(12, 256, 256),
                                  tile_overlap=(2, 20, 20))
  assert tile == (12, 0, 0)
  tile, _ = restore_lib.choose_tiling(kw, 5, 64, 64, budget_bytes=10**12, tile=(0, 256, 256),
                                  tile_overlap=(2, 20, 20))
  assert tile == (0, 0, 0)


@pytest.mark.slow
def test_estimate_bounds_xla_memory_of_tiny_vrt():
  # The rule's constants come from XLA's memory analysis of the tiny VRT; the estimate must stay
  # above it without being far off.
  import vrt_jax
  from vrt_jax import checkpoint

  model = vrt_jax.VRT(**presets.tiny())
  abstract = {"params": checkpoint.abstract_params(model)}
  x = jax.ShapeDtypeStruct((1, 6, 64, 64, 3), jnp.float32)
  compiled = jax.jit(lambda v, x: model.apply(v, x)).lower(abstract, x).compile()
  used = compiled.memory_analysis().temp_size_in_bytes
  estimate = restore_lib.estimate_tile_bytes(presets.tiny(), (6, 64, 64))
  assert used <= estimate <= 3 * used


def test_exported_weights_name_their_model(tmp_path):
  _, weights = write_tiny_setup(tmp_path)
  r = restore_lib.load_restorer(preset=None, weights=str(weights))
  assert r.model_kwargs == presets.tiny() and r.preset is None
  assert r.model.embed_dims == presets.tiny()["embed_dims"]
  (tmp_path / "bare").mkdir()
  with pytest.raises(ValueError, match="does not say which model"):
    restore_lib.load_restorer(preset=None, weights=str(tmp_path / "bare"))
