"""Evaluates a VRT checkpoint on a test set (the `vrt-eval` command; vrt_jax/_eval_main.py).

  python eval.py --config configs/sr_reds.py \
      --checkpoint model_zoo/001_VRT_videosr_bi_REDS_6frames.pth \
      --lq testsets/REDS4/sharp_bicubic --gt testsets/REDS4/GT --output results/001

Prints per-clip and average PSNR / SSIM (RGB and Y) and writes results.json, results.csv and
comparison.png (input | output | ground truth) to --output; --save_images adds the frames.
"""

from vrt_jax import _eval_main

if __name__ == "__main__":
  _eval_main.run()
