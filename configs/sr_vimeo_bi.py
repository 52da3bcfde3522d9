"""Video SR x4 (bicubic) on Vimeo-90K septuplets: released model 003_VRT_videosr_bi_Vimeo_7frames.

Fine-tuned from the 16-frame REDS model (002), as in the paper; the 7 frames of a septuplet are
padded to 8 by repeating the last one (num_frames 8), random temporal reversal.

  python train.py --config configs/sr_vimeo_bi.py --workdir workdirs/sr_vimeo_bi \
      --config.init_from=checkpoints/002_VRT_videosr_bi_REDS_16frames.pth
"""

import ml_collections

from configs import common


def get_config() -> ml_collections.ConfigDict:
  config = common.recipe("003_VRT_videosr_bi_Vimeo_7frames", task="sr", scale=4)
  config.init_from = "checkpoints/002_VRT_videosr_bi_REDS_16frames.pth"
  # 002 has pa_frames 6 and 24 deformable groups: its parallel-warping weights do not fit and
  # keep their initialisation (listed in the log); everything else is copied.
  config.init_from_preset = "002_VRT_videosr_bi_REDS_16frames"
  config.data.update(dict(
      layout="vimeo", gt_root="datasets/vimeo_septuplet/sequences", lq_root="",
      degradation="bi", num_frames=8, gt_patch=256, val_frames=8,
      flip=True, rotate=True, reverse=True))
  return config
