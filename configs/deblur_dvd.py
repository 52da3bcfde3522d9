"""Video deblurring on DVD: released model 005_VRT_videodeblurring_DVD.

  python train.py --config configs/deblur_dvd.py --workdir workdirs/deblur_dvd \
      --config.data.gt_root=datasets/DVD/train_GT \
      --config.data.lq_root=datasets/DVD/train_GT_blurred
"""

import ml_collections

from configs import common


def get_config() -> ml_collections.ConfigDict:
  config = common.recipe("005_VRT_videodeblurring_DVD", task="deblur", scale=1)
  config.data.update(dict(
      layout="dvd", gt_root="datasets/DVD/train_GT", lq_root="datasets/DVD/train_GT_blurred",
      degradation="blur", num_frames=6, gt_patch=192,
      val_gt_root="datasets/DVD/test_GT", val_lq_root="datasets/DVD/test_GT_blurred"))
  return config
