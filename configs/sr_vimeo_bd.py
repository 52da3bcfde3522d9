"""Video SR x4 (blur-downsample) on Vimeo-90K: released model 004_VRT_videosr_bd_Vimeo_7frames.

BD: Gaussian blur sigma 1.6, then every 4th pixel. Fine-tuned from 002 like 003.

  python train.py --config configs/sr_vimeo_bd.py --workdir workdirs/sr_vimeo_bd \
      --config.init_from=checkpoints/002_VRT_videosr_bi_REDS_16frames.pth
"""

import ml_collections

from configs import common, sr_vimeo_bi


def get_config() -> ml_collections.ConfigDict:
  config = sr_vimeo_bi.get_config()
  config.preset = "004_VRT_videosr_bd_Vimeo_7frames"
  config.model = common.model(config.preset)
  config.data.degradation = "bd"
  return config
