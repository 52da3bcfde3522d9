"""Every config: the official recipe values, and a few training steps on a fake dataset."""

import importlib
import os
import sys

import pytest
from fake_datasets import write_fake_dataset
from test_train import REPO, losses, run_train

from vrt_jax import presets
from vrt_jax.data import pipeline

sys.path.insert(0, REPO)

# config file -> (preset, task, layout, GT patch, frames)
TASK_CONFIGS = {
    "sr_reds": ("001_VRT_videosr_bi_REDS_6frames", "sr", "reds", 256, 6),
    "sr_reds_16frames": ("002_VRT_videosr_bi_REDS_16frames", "sr", "reds", 256, 16),
    "sr_vimeo_bi": ("003_VRT_videosr_bi_Vimeo_7frames", "sr", "vimeo", 256, 8),
    "sr_vimeo_bd": ("004_VRT_videosr_bd_Vimeo_7frames", "sr", "vimeo", 256, 8),
    "deblur_dvd": ("005_VRT_videodeblurring_DVD", "deblur", "dvd", 192, 6),
    "deblur": ("006_VRT_videodeblurring_GoPro", "deblur", "gopro", 192, 6),
    "deblur_reds": ("007_VRT_videodeblurring_REDS", "deblur", "reds", 192, 6),
    "denoise": ("008_VRT_videodenoising_DAVIS", "denoise", "davis", 192, 6),
    "vfi": ("009_VRT_videofi_Vimeo_4frames", "vfi", "vimeo", 192, 4),
}
ALL_CONFIGS = sorted(TASK_CONFIGS) + ["demo"]


def get_config(name):
  return importlib.import_module(f"configs.{name}").get_config()


def test_every_config_file_is_covered():
  files = {f[:-3] for f in os.listdir(os.path.join(REPO, "configs"))
           if f.endswith(".py") and f not in ("__init__.py", "common.py")}
  assert files == set(ALL_CONFIGS)


@pytest.mark.parametrize("name", ALL_CONFIGS)
def test_config_has_required_keys_and_command_line(name):
  config = get_config(name)
  for key in ("total_steps", "batch_size", "log_every", "checkpoint_every", "eval_every", "seed",
              "model", "task", "scale", "data", "optim", "preset", "init_from"):
    assert key in config, key
  module = importlib.import_module(f"configs.{name}")
  assert f"python train.py --config configs/{name}.py" in module.__doc__


@pytest.mark.parametrize("name", sorted(TASK_CONFIGS))
def test_task_config_follows_the_official_recipe(name):
  preset, task, layout, patch, frames = TASK_CONFIGS[name]
  c = get_config(name)
  # Remat per platform: none on CPU, full on a TPU or GPU chip (every recipe needs it there).
  assert c.preset == preset and c.model.to_dict() == dict(presets.get_preset(preset),
                                                          remat="auto", dtype="float32",
                                                          matmul_precision="default")
  assert (c.task, c.data.layout, c.data.gt_patch, c.data.num_frames) == (task, layout, patch,
                                                                           frames)
  assert c.scale == c.data.scale == c.model.upscale
  assert (c.total_steps, c.batch_size) == (300_000, 8)
  o = c.optim
  assert (o.lr, o.b1, o.b2, o.lr_period, o.lr_eta_min) == (4e-4, 0.9, 0.99, 300_000, 1e-7)
  assert (o.fix_iter, o.fix_lr_mul) == ((0 if task == "vfi" else 20_000), 0.125)
  assert tuple(o.fix_keys) == ("spynet", "deform")
  s = pipeline.settings_from_config(c.data)
  assert s.reverse == (layout == "vimeo")  # KAIR reverses Vimeo-90K clips only.
  assert s.flip and s.rotate
  if task == "denoise":
    assert tuple(c.data.sigma_range) == (0.0, 50.0)
  # 003 / 004 are fine-tuned from 002.
  assert bool(c.init_from) == (layout == "vimeo" and task == "sr")


@pytest.mark.parametrize("name", ALL_CONFIGS)
def test_every_data_option_is_in_every_config_with_one_default(name):
  """The data defaults are written once (pipeline.DATA_DEFAULTS): every config lists every
  option (so each can be set with --config.data.X), the dataclass agrees with the table, and a
  misspelt option is an error, not a silently ignored key."""
  c = get_config(name)
  assert set(c.data.keys()) == set(pipeline.DATA_DEFAULTS)
  assert pipeline.settings_from_config({}) == pipeline.DataSettings()
  assert pipeline.settings_from_config({"degradation": "vfi"}).color_jitter
  data = c.data.to_dict()
  data["gt_pach"] = 64
  with pytest.raises(ValueError, match="unknown data option.*gt_pach"):
    pipeline.settings_from_config(data)


def _tiny_model_override(name):
  """Python source setting config.model to a tiny VRT with the task's structure."""
  preset, task, _, _, _ = TASK_CONFIGS[name]
  p = presets.get_preset(preset)
  frames = {0: 4, 2: 2, 4: 3, 6: 4}[p["pa_frames"]]
  kwargs = presets.tiny(upscale=p["upscale"], pa_frames=p["pa_frames"],
                        nonblind_denoising=p.get("nonblind_denoising", False),
                        img_size=[frames, 64, 64], window_size=[frames, 8, 8])
  if p["pa_frames"] == 6:
    # pa_frames 6 aligns with a 3-group convolution: channels must divide by 3 (120 in 002).
    kwargs["embed_dims"] = [24] * 9
  if p["pa_frames"] == 0:
    kwargs["indep_reconsts"] = []
  return kwargs, frames


@pytest.mark.slow
@pytest.mark.parametrize("name", sorted(TASK_CONFIGS))
def test_config_trains_on_fake_dataset(name, tmp_path):
  _, task, layout, _, _ = TASK_CONFIGS[name]
  c = get_config(name)
  scale = c.scale
  gt_patch = 64 * scale
  data_keys = write_fake_dataset(layout, str(tmp_path / "data"), task=task,
                                 size=(gt_patch, gt_patch + 16))
  model, frames = _tiny_model_override(name)
  # The denoising recipe trains in bfloat16 compute here and the interpolation one at the
  # highest matmul precision, so every setting trains end to end.
  model["dtype"] = "bfloat16" if task == "denoise" else "float32"
  model["matmul_precision"] = "highest" if task == "vfi" else "default"
  data = dict(data_keys, gt_patch=gt_patch, num_workers=0)
  if task != "vfi":
    data["num_frames"] = frames
  if task == "sr" and layout == "vimeo":
    data["lq_root"] = ""  # BI / BD made on the fly from GT, as the config does.
  config_file = tmp_path / "config.py"
  config_file.write_text(
      "import ml_collections\n"
      f"from configs import {name} as base\n\n"
      "def get_config():\n"
      "  c = base.get_config()\n"
      f"  c.model = ml_collections.ConfigDict({model!r})\n"
      f"  c.data.update({data!r})\n"
      "  c.init_from = ''\n"
      "  return c\n")
  wd = str(tmp_path / "run")
  proc = run_train(wd, "--config.total_steps=2", "--config.batch_size=1",
                   "--config.checkpoint_every=2", config=str(config_file))
  assert ("computing in bfloat16" in proc.stderr) == (task == "denoise")
  assert ("convolutions at highest precision" in proc.stderr) == (task == "vfi")
  got = losses(wd)
  assert sorted(got) == [1, 2]
  assert all(v == v and 0 < v < 10 for v in got.values())
