"""CPU demo: a small VRT learns to denoise the embedded synthetic clips in a few minutes.

  python train.py --config configs/demo.py --workdir /tmp/vrt-demo

No download: 2-frame 64x64 clips are rendered from the photographs bundled with
vrt_jax.data.synthetic, with Gaussian noise of sigma 25-50 / 255 (the noise map is the 4th input
channel, as for the released DAVIS model). At the end it prints the validation PSNR of the output
and of the noisy input (sigma 40) on held-out clips and writes <workdir>/samples/step_*.png
(input | output | ground truth).

The model is the real VRT architecture (every stage, TMSA with mutual attention, parallel warping
with SpyNet and flow-guided deformable convolution), only narrower and shallower
(vrt_jax.presets.tiny, 2 frames, no stochastic depth). SpyNet stays frozen at its random
initialisation for the whole run, so its flows are meaningless: the deformable alignment learns
its offsets on its own. Pretrained SpyNet weights would come with a converted official checkpoint
(config.init_from). The learning rate is high (4e-3) and annealed over one cosine cycle because
the run is short.
"""

import ml_collections

from configs import common
from vrt_jax import presets


def get_config() -> ml_collections.ConfigDict:
  config = common.recipe(None, task="denoise", scale=1)
  config.model = ml_collections.ConfigDict(presets.tiny(
      in_chans=3, nonblind_denoising=True, img_size=[2, 64, 64], window_size=[2, 8, 8],
      drop_path_rate=0.0))

  config.total_steps = 160
  config.batch_size = 2
  config.log_every = 10
  config.checkpoint_every = 80
  config.eval_every = 0  # Validation at the end only.
  config.optim.lr = 4e-3
  config.optim.lr_period = config.total_steps  # One cosine cycle over the run.
  config.optim.lr_eta_min = 1e-4
  config.optim.fix_keys = ("spynet",)
  config.optim.fix_iter = config.total_steps  # Frozen throughout (see the docstring).

  config.data.update(dict(
      source="synthetic", layout="reds", degradation="noise", sigma_range=(25.0, 50.0),
      num_frames=2, gt_patch=64, synthetic_clips=64, num_workers=0,
      val_clips=4, val_frames=2, val_size=64, val_sigma=40.0))
  return config
