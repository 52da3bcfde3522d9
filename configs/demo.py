"""CPU demo: a small VRT learns to denoise synthetic video and is compared with classical filters.

  python train.py --config configs/demo.py --workdir /tmp/vrt-demo

No download: 4-frame 64x64 clips are rendered from the photographs bundled with scikit-image by
vrt_jax.data.synthetic (a virtual camera gliding over a photo: 0.3-3 pixels of motion per frame,
slight zoom and rotation), with Gaussian noise of sigma 40-60 / 255 (the noise map is the 4th
input channel, as for the released DAVIS model). Held-out clips (photographs never used for
training, sigma 50) are validated every 60 steps. The classical video denoisers of
vrt_jax.baselines (Gaussian, median, total variation, wavelet, non-local means; per frame and over
space and time) are tuned on training clips and scored on the same held-out clips. The run ends
with a table (input, each classical method, VRT; PSNR and SSIM) and writes
<workdir>/samples/step_*.png (input | best classical | VRT | ground truth, with a zoom) and
<workdir>/curves.png.

The model is the real VRT architecture (every stage, TMSA with mutual attention, parallel warping
with SpyNet and flow-guided deformable convolution), only narrower and shallower
(vrt_jax.presets.tiny, temporal window 2, no stochastic depth). SpyNet stays frozen at its random
initialisation (its flows are close to zero): the deformable alignment learns its offsets on its
own. The output convolution starts at zero, so the network starts as the identity. The learning
rate warms up for 30 steps and follows one cosine cycle, because the run is short.
"""

import ml_collections

from configs import common
from vrt_jax import presets

FRAMES, SIZE = 4, 64


def get_config() -> ml_collections.ConfigDict:
  config = common.recipe(None, task="denoise", scale=1)
  config.model = ml_collections.ConfigDict(presets.tiny(
      in_chans=3, nonblind_denoising=True, img_size=[FRAMES, SIZE, SIZE],
      window_size=[2, 8, 8], drop_path_rate=0.0, remat="auto", dtype="float32",
      matmul_precision="default"))
  config.zero_init_last = True

  config.total_steps = 300
  config.batch_size = 1
  config.log_every = 10
  config.checkpoint_every = 60
  config.eval_every = 60
  config.optim.lr = 4e-3
  config.optim.warmup_steps = 30
  config.optim.lr_period = config.total_steps  # One cosine cycle over the run.
  config.optim.lr_eta_min = 4e-5
  config.optim.fix_keys = ("spynet",)
  config.optim.fix_iter = config.total_steps  # Frozen throughout (see the docstring).
  config.eval.baselines = True
  config.eval.baseline_tune_clips = 4

  config.data.update(dict(
      source="synthetic", layout="reds", degradation="noise", sigma_range=(40.0, 60.0),
      num_frames=FRAMES, gt_patch=SIZE, synthetic_clips=64, num_workers=0,
      val_clips=4, val_frames=FRAMES, val_size=SIZE, val_sigma=50.0))
  return config
