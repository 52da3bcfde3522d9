"""Video deblurring on REDS: released model 007_VRT_videodeblurring_REDS.

  python train.py --config configs/deblur_reds.py --workdir workdirs/deblur_reds \
      --config.data.gt_root=datasets/REDS/train_sharp \
      --config.data.lq_root=datasets/REDS/train_blur
"""

import ml_collections

from configs import common


def get_config() -> ml_collections.ConfigDict:
  config = common.recipe("007_VRT_videodeblurring_REDS", task="deblur", scale=1)
  config.data.update(dict(
      layout="reds", gt_root="datasets/REDS/train_sharp", lq_root="datasets/REDS/train_blur",
      degradation="blur", num_frames=6, gt_patch=192))
  return config
