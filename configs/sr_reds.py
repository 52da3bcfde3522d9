"""Video SR x4 (bicubic) on REDS, 6 frames: released model 001_VRT_videosr_bi_REDS_6frames.

  python train.py --config configs/sr_reds.py --workdir workdirs/sr_reds \
      --config.data.gt_root=datasets/REDS/train_sharp \
      --config.data.lq_root=datasets/REDS/train_sharp_bicubic/X4
"""

import ml_collections

from configs import common


def get_config() -> ml_collections.ConfigDict:
  config = common.recipe("001_VRT_videosr_bi_REDS_6frames", task="sr", scale=4)
  config.data.update(dict(
      layout="reds", gt_root="datasets/REDS/train_sharp",
      lq_root="datasets/REDS/train_sharp_bicubic/X4", degradation="bi",
      num_frames=6, gt_patch=256, flip=True, rotate=True, reverse=False))
  return config
