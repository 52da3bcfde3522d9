"""Non-blind video denoising on DAVIS: released model 008_VRT_videodenoising_DAVIS.

Noise is made on the fly: sigma ~ U[0, 50]/255 per clip, Gaussian, not clipped; the noise map
(sigma/255) is appended to the input as a fourth channel.

  python train.py --config configs/denoise.py --workdir workdirs/denoise \
      --config.data.gt_root=datasets/DAVIS/JPEGImages/480p
"""

import ml_collections

from configs import common


def get_config() -> ml_collections.ConfigDict:
  config = common.recipe("008_VRT_videodenoising_DAVIS", task="denoise", scale=1)
  config.data.update(dict(
      layout="davis", gt_root="datasets/DAVIS/JPEGImages/480p", lq_root="",
      degradation="noise", sigma_range=(0.0, 50.0), num_frames=6, gt_patch=192,
      val_gt_root="datasets/DAVIS-test/JPEGImages/480p", val_sigma=30.0))
  return config
