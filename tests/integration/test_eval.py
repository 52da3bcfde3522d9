"""eval.py on a tiny REDS4-like paired dataset: table, results.json / .csv, images."""

import csv
import json
import os
import subprocess
import sys
from pathlib import Path

import ml_collections
import numpy as np
import pytest
from PIL import Image
from standins import Residual, standin_variables, write_tiny_setup

from vrt_jax import eval_lib, inference, metrics, presets, video
from vrt_jax.data import synthetic, testsets

REPO = Path(__file__).resolve().parents[2]

def make_reds_like(root, clips=("000", "011"), num_frames=6, size=64):
  """root/{lq,gt}/<clip>/%08d.png: motion-blurred synthetic clips and their sharp frames."""
  for i, name in enumerate(clips):
    blurred, sharp = synthetic.make_blurred_clip(i, num_frames=num_frames, size=size, split="test")
    video.write_video(root / "lq" / name, blurred)
    video.write_video(root / "gt" / name, sharp)


@pytest.mark.slow
def test_eval_script_prints_table_and_writes_results(tmp_path):
  cfg, weights = write_tiny_setup(tmp_path)
  make_reds_like(tmp_path)
  out = tmp_path / "results"
  proc = subprocess.run(
      [sys.executable, "eval.py", "--config", str(cfg), "--checkpoint", str(weights),
       "--lq", str(tmp_path / "lq"), "--gt", str(tmp_path / "gt"), "--output", str(out),
       "--tile", "6,64,64", "--tile_overlap", "2,16,16", "--save_images"],
      cwd=REPO, capture_output=True, text=True, timeout=600,
      env={**os.environ, "JAX_PLATFORMS": "cpu"})
  assert proc.returncode == 0, proc.stderr[-3000:]
  lines = proc.stdout.splitlines()
  assert any(line.startswith("000 ") for line in lines)
  assert any(line.startswith("011 ") for line in lines)
  average = [line for line in lines if line.startswith("average")]
  assert average, proc.stdout
  results = json.loads((out / "results.json").read_text())
  assert [c["name"] for c in results["clips"]] == ["000", "011"]
  for key in eval_lib.METRIC_KEYS:
    mean = np.mean([c[key] for c in results["clips"]])
    assert results["average"][key] == pytest.approx(mean)
  assert 5 < results["average"]["psnr"] < 60 and 0 < results["average"]["ssim"] <= 1
  assert f"{results['average']['psnr']:8.2f}" in average[0]
  rows = list(csv.reader(open(out / "results.csv")))
  assert rows[0] == ["clip", "frames", *eval_lib.METRIC_KEYS, "input_psnr"]
  assert rows[-1][0] == "average"
  # The blurred input's PSNR stands beside the output's, in the table and the files.
  want_in = np.mean([metrics.clip_metrics(video.read_images(video.list_frames(tmp_path / "lq" / c)),
                                          video.read_images(video.list_frames(tmp_path / "gt" / c)))
                     ["psnr"] for c in ("000", "011")])
  assert results["average"]["input_psnr"] == pytest.approx(want_in, abs=1e-4)
  assert f"{want_in:8.2f}" in average[0]
  assert "layout paired (" in proc.stdout
  assert len(list((out / "000").glob("*.png"))) == 6
  comparison = video.read_image(out / "comparison.png")
  assert comparison.shape == (64, 3 * 64, 3)


def _standin():
  model = Residual()
  return model, standin_variables(model)


def test_evaluate_scores_the_right_frames(tmp_path):
  # Vimeo-style clip: 8 input frames, only output frame 3 is scored against the one GT frame.
  model, variables = _standin()
  rng = np.random.default_rng(0)
  lq = rng.random((8, 16, 16, 3), dtype=np.float32)
  out = inference.restore(model, variables, lq[None], progress=False)[0]
  gt = np.clip(out[3:4] + 0.02, 0, 1)
  clip = testsets.TestClip("seq", lq, gt, [3], ["im4"])
  res = eval_lib.evaluate(model, variables, [clip], tile=(0, 0, 0), tile_overlap=(0, 0, 0),
                          output_dir=str(tmp_path), save_images=True, log=lambda s: None)
  assert res["clips"][0]["psnr"] == pytest.approx(metrics.clip_metrics(out[3:4], gt)["psnr"])
  assert (tmp_path / "seq" / "im4.png").is_file()
  table = eval_lib.format_table(res)
  assert "average" in table and "seq" in table


def test_evaluate_rejects_mismatched_sizes():
  model, variables = _standin()
  lq = np.zeros((4, 16, 16, 3), np.float32)
  clip = testsets.TestClip("c", lq, np.zeros((4, 32, 32, 3), np.float32), [0, 1, 2, 3],
                           ["0", "1", "2", "3"])
  with pytest.raises(ValueError, match="GT frames are"):
    eval_lib.evaluate(model, variables, [clip], tile=(0, 0, 0), tile_overlap=(0, 0, 0),
                      log=lambda s: None)


def test_defaults_follow_the_official_settings(tmp_path):
  assert eval_lib.default_tiling("001_VRT_videosr_bi_REDS_6frames", "paired") == (
      (40, 128, 128), (2, 20, 20))
  assert eval_lib.default_tiling("009_VRT_videofi_Vimeo_4frames", "vfi_davis") == (
      (0, 256, 256), (0, 20, 20))
  assert eval_lib.default_tiling("003_VRT_videosr_bi_Vimeo_7frames", "vimeo") == (
      (0, 0, 0), (0, 0, 0))
  assert eval_lib.default_layout("denoise", None) == "davis"
  assert eval_lib.default_layout("vfi", None) == "vfi"
  (tmp_path / "sequences").mkdir()
  assert eval_lib.default_layout("sr", str(tmp_path)) == "vimeo"
  with pytest.raises(ValueError, match="unknown layout"):
    eval_lib.make_testset("nope", lq=None, gt=None)
  with pytest.raises(ValueError, match="sigma"):
    (tmp_path / "davis" / "a").mkdir(parents=True)
    eval_lib.make_testset("davis", lq=None, gt=str(tmp_path / "davis"), sigma=0)
  config = ml_collections.ConfigDict(dict(model=presets.tiny(), preset=None, task="deblur",
                                          scale=1))
  assert eval_lib.build_model(config).pa_frames == 2


def test_paired_denoising_set_gets_the_noise_map_and_input_psnr(tmp_path):
  # A paired set of noisy frames (3 channels) for a non-blind denoiser: the noise map sigma/255
  # is appended, as the davis layout does; the noisy input's PSNR stands beside the output's.
  model = Residual(nonblind_denoising=True)
  variables = standin_variables(model)
  rng = np.random.default_rng(1)
  gt = rng.random((4, 16, 16, 3), dtype=np.float32)
  noisy = gt + rng.normal(0, 25 / 255, gt.shape).astype(np.float32)
  clip = testsets.TestClip("c", noisy, gt, [0, 1, 2, 3], ["0", "1", "2", "3"])
  with pytest.raises(ValueError, match="--sigma"):
    eval_lib.evaluate(model, variables, [clip], tile=(0, 0, 0), tile_overlap=(0, 0, 0),
                      log=lambda s: None)
  res = eval_lib.evaluate(model, variables, [clip], tile=(0, 0, 0), tile_overlap=(0, 0, 0),
                          sigma=25, output_dir=str(tmp_path), log=lambda s: None)
  with_map = np.concatenate([noisy, np.full((4, 16, 16, 1), 25 / 255, np.float32)], -1)
  out = inference.restore(model, variables, with_map[None], progress=False)[0]
  assert res["clips"][0]["psnr"] == pytest.approx(metrics.clip_metrics(out, gt)["psnr"])
  want_in = np.mean([metrics.psnr(metrics.to_uint8(np.clip(n, 0, 1)), metrics.to_uint8(g))
                     for n, g in zip(noisy, gt, strict=True)])
  assert res["clips"][0]["input_psnr"] == pytest.approx(want_in)
  assert res["average"]["input_psnr"] == pytest.approx(want_in)
  table = eval_lib.format_table(res)
  assert f"{want_in:8.2f}" in table.splitlines()[-1]
  # The comparison: noisy input (clipped) | output | GT, full size, colours as saved frames.
  mid = 2
  comparison = np.asarray(Image.open(tmp_path / "comparison.png"))
  assert comparison.shape == (16, 3 * 16, 3)
  np.testing.assert_array_equal(comparison[:, :16], metrics.to_uint8(np.clip(noisy[mid], 0, 1)))
  np.testing.assert_array_equal(comparison[:, 16:32], metrics.to_uint8(out[mid]))
  np.testing.assert_array_equal(comparison[:, 32:], metrics.to_uint8(gt[mid]))


def test_super_resolution_input_psnr_is_the_bicubic_upscaled_input(tmp_path):
  from standins import FakeModel

  from vrt_jax.data import imresize

  rng = np.random.default_rng(2)
  lq = rng.random((3, 16, 24, 3), dtype=np.float32)
  gt = np.clip(imresize.imresize(lq, 2) + 0.05, 0, 1)
  clip = testsets.TestClip("sr", lq, gt, [0, 1, 2], ["0", "1", "2"])
  upsample = lambda v, x: np.asarray(x)[..., :3].repeat(2, axis=2).repeat(2, axis=3)
  res = eval_lib.evaluate(FakeModel(upscale=2), None, [clip], tile=(0, 0, 0),
                          tile_overlap=(0, 0, 0), apply_fn=upsample, output_dir=str(tmp_path),
                          log=lambda s: None)
  up = np.clip(imresize.imresize(lq, 2), 0, 1)
  want_in = np.mean([metrics.psnr(metrics.to_uint8(u), metrics.to_uint8(g))
                     for u, g in zip(up, gt, strict=True)])
  assert res["clips"][0]["input_psnr"] == pytest.approx(want_in)
  assert res["clips"][0]["input_psnr"] > res["clips"][0]["psnr"]  # bicubic beats nearest
  # The comparison image is at the output's full size: 32 x (3 x 48).
  assert np.asarray(Image.open(tmp_path / "comparison.png")).shape == (32, 3 * 48, 3)


def test_layout_is_inferred_with_a_reason_and_checked_against_the_model(tmp_path):
  assert eval_lib.infer_layout("denoise", None)[0] == "davis"
  assert eval_lib.infer_layout("denoise", str(tmp_path))[0] == "paired"
  assert "noise map" in eval_lib.infer_layout("denoise", str(tmp_path))[1]
  assert eval_lib.infer_layout("deblur", str(tmp_path)) == (
      "paired", "one subfolder per clip in --lq (and --gt)")
  (tmp_path / "sequences").mkdir()
  assert eval_lib.infer_layout("sr", str(tmp_path))[0] == "vimeo"
  denoiser, plain = Residual(nonblind_denoising=True), Residual()
  vfi = Residual(pa_frames=0)
  eval_lib.check_layout("davis", denoiser, 20)
  eval_lib.check_layout("paired", plain, 0)
  eval_lib.check_layout("vfi", vfi, 0)
  with pytest.raises(ValueError, match="takes no noise map: use --layout paired"):
    eval_lib.check_layout("davis", plain, 20)
  with pytest.raises(ValueError, match="give the noise level with --sigma"):
    eval_lib.check_layout("paired", denoiser, 0)
  with pytest.raises(ValueError, match="use --layout vfi"):
    eval_lib.check_layout("paired", vfi, 0)
  with pytest.raises(ValueError, match="use --layout paired, vimeo or davis"):
    eval_lib.check_layout("vfi", plain, 0)


@pytest.mark.slow
def test_eval_spreads_clips_and_splits_rows_over_devices_and_scores_as_one_device(tmp_path):
  """3 clips on 2 devices: two at a time (data axis; the last call pads with its clip), or each
  clip's rows over both (--space 2); both score every clip as a one-device process does."""
  cfg, weights = write_tiny_setup(tmp_path)
  make_reds_like(tmp_path, clips=("000", "001", "002"))
  results, logs = {}, {}
  for name, devices, space in (("one", 1, 1), ("spread", 2, 1), ("split", 2, 2)):
    out = tmp_path / name
    env = {**os.environ, "JAX_PLATFORMS": "cpu",
           "XLA_FLAGS": f"--xla_force_host_platform_device_count={devices}"}
    proc = subprocess.run(
        [sys.executable, "eval.py", "--config", str(cfg), "--checkpoint", str(weights),
         "--lq", str(tmp_path / "lq"), "--gt", str(tmp_path / "gt"), "--output", str(out),
         "--tile", "6,64,64", "--tile_overlap", "2,16,16", f"--space={space}"],
        cwd=REPO, capture_output=True, text=True, timeout=600, env=env)
    assert proc.returncode == 0, proc.stderr[-3000:]
    results[name] = json.loads((out / "results.json").read_text())
    logs[name] = proc.stdout + proc.stderr
  assert "2 clips at a time on 2 devices" in logs["spread"]
  assert "each clip's rows split over 2 devices" in logs["split"]
  assert "at a time" not in logs["split"]
  assert (results["split"]["space"], results["split"]["devices"]) == (2, 2)
  for name in ("spread", "split"):
    assert [c["name"] for c in results[name]["clips"]] == ["000", "001", "002"]
    for got, want in zip(results[name]["clips"], results["one"]["clips"], strict=True):
      for key in eval_lib.METRIC_KEYS:
        assert got[key] == pytest.approx(want[key], abs=1e-3), (name, got["name"], key)
