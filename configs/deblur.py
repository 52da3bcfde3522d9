"""Video deblurring on GoPro: released model 006_VRT_videodeblurring_GoPro.

  python train.py --config configs/deblur.py --workdir workdirs/deblur \
      --config.data.gt_root=datasets/GoPro/train_GT \
      --config.data.lq_root=datasets/GoPro/train_GT_blurred
"""

import ml_collections

from configs import common


def get_config() -> ml_collections.ConfigDict:
  config = common.recipe("006_VRT_videodeblurring_GoPro", task="deblur", scale=1)
  config.data.update(dict(
      layout="gopro", gt_root="datasets/GoPro/train_GT", lq_root="datasets/GoPro/train_GT_blurred",
      degradation="blur", num_frames=6, gt_patch=192,
      val_gt_root="datasets/GoPro/test_GT", val_lq_root="datasets/GoPro/test_GT_blurred"))
  return config
