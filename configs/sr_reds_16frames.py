"""Video SR x4 (bicubic) on REDS, 16 frames: released model 002_VRT_videosr_bi_REDS_16frames.

  python train.py --config configs/sr_reds_16frames.py --workdir workdirs/sr_reds_16frames
"""

import ml_collections

from configs import common, sr_reds
from vrt_jax import presets


def get_config() -> ml_collections.ConfigDict:
  config = sr_reds.get_config()
  config.preset = "002_VRT_videosr_bi_REDS_16frames"
  config.model = common.model(config.preset)
  config.eval.tile = tuple(presets.TEST_SETTINGS[config.preset]["tile"])
  config.eval.tile_overlap = tuple(presets.TEST_SETTINGS[config.preset]["tile_overlap"])
  config.data.num_frames = 16
  return config
