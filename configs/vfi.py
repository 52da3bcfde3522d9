"""Video frame interpolation on Vimeo-90K: released model 009_VRT_videofi_Vimeo_4frames.

Frames 1, 3, 5, 7 of a septuplet predict frame 4. No SpyNet / deformable alignment (pa_frames 0),
so nothing is frozen (fix_iter 0).

  python train.py --config configs/vfi.py --workdir workdirs/vfi \
      --config.data.gt_root=datasets/vimeo_septuplet/sequences
"""

import ml_collections

from configs import common


def get_config() -> ml_collections.ConfigDict:
  config = common.recipe("009_VRT_videofi_Vimeo_4frames", task="vfi", scale=1)
  config.optim.fix_iter = 0
  config.data.update(dict(
      layout="vimeo", gt_root="datasets/vimeo_septuplet/sequences", lq_root="",
      degradation="vfi", num_frames=4, gt_patch=192, flip=True, rotate=True, reverse=True))
  return config
