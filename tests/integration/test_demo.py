"""The demo's report: baselines in metrics.jsonl, the table, the figures, a rerun's summary."""

import json
import os
import subprocess
import sys

import jax
import numpy as np
import pytest
from PIL import Image
from test_train import REPO, read_metrics, run_train, train_env

import vrt_jax
from configs import demo
from vrt_jax import baselines, checkpoint, figures, inference, train_lib
from vrt_jax.data import pipeline

# Two validations of one small clip, baselines tuned on one training clip.
DEMO_FLAGS = ("--config.total_steps=2", "--config.eval_every=1", "--config.log_every=1",
              "--config.eval.baselines=True", "--config.eval.baseline_tune_clips=1",
              "--config.data.val_clips=1")


@pytest.mark.slow
def test_demo_reports_baselines_table_figures_and_rerun_summary(tmp_path):
  wd = str(tmp_path / "demo")
  proc = run_train(wd, *DEMO_FLAGS)
  out = proc.stdout
  validations = [r for r in read_metrics(wd) if "val_psnr" in r]
  assert [r["step"] for r in validations] == [1, 2]
  with open(os.path.join(wd, "baselines.json")) as f:
    tuned = json.load(f)
  # Tuned on training photographs, scored on the held-out ones.
  assert tuned["tuned_on"] and all(n.startswith("synthetic_train_") for n in tuned["tuned_on"])
  assert all(n.startswith("synthetic_test_") for n in tuned["clips"])
  best = max(tuned["scores"], key=lambda n: tuned["scores"][n]["psnr"])
  for r in validations:
    assert r["val_baseline"] == best
    assert r["val_psnr_baseline"] == pytest.approx(tuned["scores"][best]["psnr"])
    assert r["val_psnr_input"] < r["val_psnr_baseline"]
    assert {"val_psnr", "val_ssim", "val_ssim_input", "val_ssim_baseline"} <= set(r)

  # The table: input, every classical method, VRT; then the figures, named and present.
  for label in ["input", *tuned["labels"].values(), "VRT (step 2)"]:
    assert label in out
  assert "<- best classical" in out and "Validation PSNR at step 2" in out
  sample = out.split("Side by side: ")[1].split("\n")[0]
  curves = out.split("Curves: ")[1].split("\n")[0]
  assert sample == os.path.join(wd, "samples", "step_0000002.png")
  assert curves == os.path.join(wd, "curves.png")
  for path in (sample, curves):
    with Image.open(path) as im:
      assert im.mode in ("RGB", "RGBA") and min(im.size) > 300
  # Phases instead of a frozen bar.
  assert "compiling the training step:" in out
  assert out.count("classical baselines (tuned on training clips):") == 1
  assert out.count("validation:") == 2

  again = run_train(wd, *DEMO_FLAGS)
  assert "already holds this run's last step (2 of 2)" in again.stdout
  assert "Validation PSNR at step 2" in again.stdout and "<- best classical" in again.stdout
  assert "compiling the training step" not in again.stdout

  # The run's held-out clips restored with matmuls emulated as a TPU runs them: at 'highest'
  # (float32) the validation's PSNR again.
  bench = subprocess.run([sys.executable, "benchmarks/matmul_precision.py", "--workdir", wd],
                         cwd=REPO, env=train_env(), capture_output=True, text=True, timeout=900)
  assert bench.returncode == 0, bench.stderr[-3000:]
  rows = {line.split("|")[1].strip(): line.split("|") for line in bench.stdout.splitlines()
          if line.startswith("| ") and "TPU passes" not in line}
  assert set(rows) == {"default", "high", "highest"}, bench.stdout
  assert float(rows["highest"][3]) == pytest.approx(validations[-1]["val_psnr"], abs=0.01)
  assert f"Reproduce: python benchmarks/matmul_precision.py --workdir {wd}" in bench.stdout


def test_validation_compiles_once_for_repeated_evaluations(tmp_path):
  config = demo.get_config()
  config.data.val_clips = 2
  config.eval.baselines = False
  model = vrt_jax.VRT(**config.model.to_dict())
  params = checkpoint.random_params(model)
  clips = pipeline.make_val_clips(config.data, num_clips=2, seed=1)
  apply_fn = inference.make_apply_fn(model)
  first = train_lib.validate(model, params, clips, config, apply_fn=apply_fn)
  second = train_lib.validate(model, params, clips, config, apply_fn=apply_fn,
                              sample_path=str(tmp_path / "s.png"))
  assert len(apply_fn.compiled) == 1
  assert first == second and os.path.exists(tmp_path / "s.png")


def test_summary_table_lists_every_row_and_the_margin(tmp_path):
  wd = str(tmp_path)
  records = [{"step": 5, "loss": 0.1, "loss_avg": 0.1},
             {"step": 10, "loss": 0.05, "loss_avg": 0.06, "val_psnr": 30.0, "val_ssim": 0.8,
              "val_psnr_input": 15.0, "val_ssim_input": 0.2, "val_psnr_baseline": 28.0,
              "val_baseline": "nlm"}]
  with open(os.path.join(wd, train_lib.METRICS_FILE), "w") as f:
    f.write("".join(json.dumps(r) + "\n" for r in records))
  baseline = {"best": "nlm", "clips": ["a", "b"], "labels": {"gaussian": "Gaussian",
                                                             "nlm": "non-local means"},
              "scores": {"gaussian": {"psnr": 25.0, "ssim": 0.6},
                         "nlm": {"psnr": 28.0, "ssim": 0.7}}}
  config = demo.get_config()
  config.total_steps = 10
  summary = train_lib.write_report(wd, config, baseline, os.path.join(wd, "s.png"))
  text = train_lib.summary_text(train_lib.read_summary(wd))
  assert summary["step"] == 10 and os.path.exists(summary["curves"])
  lines = text.splitlines()
  rows = [line.split() for line in lines[2:6]]
  assert [r[0] for r in rows] == ["input", "Gaussian", "non-local", "VRT"]
  assert "<- best classical" in lines[4] and "30.00" in lines[5] and "0.8000" in lines[5]
  assert "VRT +2.00 dB" in text


def test_side_by_side_zooms_on_detail_and_keeps_colours(tmp_path):
  gt = np.full((64, 64, 3), 0.5, np.float32)
  gt[40:52, 8:20] = np.random.default_rng(0).random((12, 12, 3))  # The only texture.
  assert figures.detail_crop(gt, 12) == (40, 8)
  red = np.zeros_like(gt)
  red[..., 0] = 1.0
  path = figures.side_by_side(str(tmp_path / "x.png"), [("red", red), ("gt", gt)])
  with Image.open(path) as im:
    pixels = np.asarray(im.convert("RGB")).reshape(-1, 3)
  # The red frame is shown red, not through a colour map, and nothing beyond [0, 1] wraps.
  assert np.any(np.all(pixels == [255, 0, 0], axis=-1))


def test_baseline_scores_in_the_report_recompute_independently():
  config = demo.get_config()
  clips = pipeline.make_val_clips(config.data, num_clips=1, seed=1)
  config.eval.baselines = True
  config.eval.baseline_tune_clips = 1
  tuned = train_lib.classical_baselines(config, clips)
  clip = clips[0]
  for name, setting in tuned["settings"].items():
    out = baselines.denoise(name, clip["lq"][..., :3], config.data.val_sigma / 255, setting)
    assert tuned["scores"][name]["psnr"] == pytest.approx(baselines.clip_psnr(out, clip["gt"]))
  assert jax.tree.leaves(tuned["settings"])
