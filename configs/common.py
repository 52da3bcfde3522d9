"""The VRT training recipe shared by every task config (KAIR options of the released models).

Not a config itself: the task files call `recipe(...)` and set their data and model.
"""

from __future__ import annotations

import ml_collections
from ml_collections import config_dict

from vrt_jax import presets
from vrt_jax.data import pipeline

_DERIVED_TYPES = dict(scale=int, reverse=bool, color_jitter=bool, val_frames=int,
                      exclude_clips=tuple)


def model(preset: str) -> ml_collections.ConfigDict:
  """The VRT constructor kwargs of a released model, with the remat policy chosen per platform:
  none on CPU, full on a TPU or GPU chip (kernels.resolve_remat), where every official recipe
  needs it to fit 16 GB; float32 compute (`--config.model.dtype=bfloat16` computes in bfloat16
  with float32 parameters and optimizer state) at the accelerator's default matmul precision
  (one bfloat16 pass on a TPU; `--config.model.matmul_precision=high` or `highest`, 3 or 6)."""
  return ml_collections.ConfigDict(dict(presets.get_preset(preset), remat="auto",
                                        dtype="float32", matmul_precision="default"))


def recipe(preset: str | None, *, task: str, scale: int) -> ml_collections.ConfigDict:
  """The training options common to all released models; `preset` fills config.model."""
  config = ml_collections.ConfigDict()
  config.preset = preset
  config.model = model(preset) if preset else ml_collections.ConfigDict()
  config.task = task
  config.scale = scale

  config.seed = 0
  config.total_steps = 300_000
  config.batch_size = 8  # Global: split over processes and devices.
  config.num_devices = 0  # Devices used; 0 = all.
  # Spatial parallelism: each clip's height is split over `space` devices (the rest of the
  # devices form the data axis; batch_size is divided over those). 1: data parallel only.
  config.mesh = ml_collections.ConfigDict(dict(space=1))
  config.log_every = 100
  config.checkpoint_every = 5_000
  config.max_to_keep = 3
  config.eval_every = 5_000  # 0: at the end only; -1: never.
  # Fine-tune from an official .pth, an exported params dir or a training workdir ('' = scratch).
  config.init_from = ""
  # Start the output convolution at zero (the network then starts as the identity through its
  # residual connection); the reference initialises it at random.
  config.zero_init_last = False
  # The released model that init_from was saved from, when it is not this config's model.
  config.init_from_preset = ""
  # Non-finite loss or gradient: 'stop' (name the step and the last good checkpoint) or 'skip'
  # the update (at most max_nan_skips in a row, then stop).
  config.nan_policy = "stop"
  config.max_nan_skips = 10
  # Resume from the latest earlier checkpoint when the latest one is unreadable (it is renamed
  # to <step>.corrupt); off: an unreadable checkpoint stops the run with an error.
  config.resume_fallback = False

  config.optim = ml_collections.ConfigDict(dict(
      lr=4e-4, b1=0.9, b2=0.99, eps=1e-8,
      lr_period=300_000, lr_eta_min=1e-7,  # CosineAnnealingWarmRestarts, stepped per iteration.
      fix_iter=20_000, fix_lr_mul=0.125, fix_keys=("spynet", "deform")))
  config.loss_eps = 1e-9  # Charbonnier.

  # Validation: PSNR on data.val_clips held-out clips (the first data.val_frames frames, centre
  # crops of data.val_size) through the official tiled test procedure.
  # baselines: also score the task's classical methods (denoising: vrt_jax.baselines), each
  # tuned on baseline_tune_clips clips made from the training data, and report the best.
  config.eval = ml_collections.ConfigDict(dict(
      tile=tuple(presets.TEST_SETTINGS[preset]["tile"]) if preset else (0, 0, 0),
      tile_overlap=tuple(presets.TEST_SETTINGS[preset]["tile_overlap"]) if preset else (0, 0, 0),
      baselines=False, baseline_tune_clips=4))

  # Every data option, at the library's default (pipeline.DATA_DEFAULTS: the one place they are
  # written, with what each means; None = derived from the others), then the recipe's own values.
  data = {**pipeline.DATA_DEFAULTS, **dict(
      source="folders", layout="", degradation="none", gt_patch=192, scale=scale,
      sigma_range=(0.0, 0.0), num_workers=4, synthetic_clips=0, val_clips=4, val_size=256)}
  # A typed placeholder keeps a derived option settable from the command line.
  config.data = ml_collections.ConfigDict({
      k: config_dict.placeholder(_DERIVED_TYPES[k]) if v is None else v for k, v in data.items()})
  return config
