"""The nine released VRT models, as the official constructor keyword arguments.

Keys are the official model names. 002 follows the official test script (pa_frames 6,
deformable_groups 24), which is what its released checkpoint was saved from.
`TEST_SETTINGS` gives the official test-time tiling of each model (`main_test_vrt.py`).
"""

from __future__ import annotations

import copy
from typing import Any

_SR_BODY = dict(
    depths=[8, 8, 8, 8, 8, 8, 8, 4, 4, 4, 4, 4, 4],
    indep_reconsts=[11, 12],
    embed_dims=[120, 120, 120, 120, 120, 120, 120, 180, 180, 180, 180, 180, 180],
    num_heads=[6] * 13,
)
_RESTORE_BODY = dict(
    depths=[8, 8, 8, 8, 8, 8, 8, 4, 4, 4, 4],
    indep_reconsts=[9, 10],
    embed_dims=[96, 96, 96, 96, 96, 96, 96, 120, 120, 120, 120],
    num_heads=[6] * 11,
)

# What a model's `dtype` (its compute precision) may be in a config, a workdir or `--dtype`;
# parameters are float32 either way.
COMPUTE_DTYPES = ("float32", "bfloat16")
# What a model's `matmul_precision` may be (vrt_jax.kernels.matmul_precision says what each is).
MATMUL_PRECISIONS = ("default", "high", "highest")

PRESETS: dict[str, dict[str, Any]] = {
    "001_VRT_videosr_bi_REDS_6frames": dict(
        upscale=4, img_size=[6, 64, 64], window_size=[6, 8, 8], pa_frames=2,
        deformable_groups=12, **_SR_BODY),
    "002_VRT_videosr_bi_REDS_16frames": dict(
        upscale=4, img_size=[16, 64, 64], window_size=[8, 8, 8], pa_frames=6,
        deformable_groups=24, **_SR_BODY),
    "003_VRT_videosr_bi_Vimeo_7frames": dict(
        upscale=4, img_size=[8, 64, 64], window_size=[8, 8, 8], pa_frames=4,
        deformable_groups=16, **_SR_BODY),
    "004_VRT_videosr_bd_Vimeo_7frames": dict(
        upscale=4, img_size=[8, 64, 64], window_size=[8, 8, 8], pa_frames=4,
        deformable_groups=16, **_SR_BODY),
    "005_VRT_videodeblurring_DVD": dict(
        upscale=1, img_size=[6, 192, 192], window_size=[6, 8, 8], pa_frames=2,
        deformable_groups=16, **_RESTORE_BODY),
    "006_VRT_videodeblurring_GoPro": dict(
        upscale=1, img_size=[6, 192, 192], window_size=[6, 8, 8], pa_frames=2,
        deformable_groups=16, **_RESTORE_BODY),
    "007_VRT_videodeblurring_REDS": dict(
        upscale=1, img_size=[6, 192, 192], window_size=[6, 8, 8], pa_frames=2,
        deformable_groups=16, **_RESTORE_BODY),
    "008_VRT_videodenoising_DAVIS": dict(
        upscale=1, img_size=[6, 192, 192], window_size=[6, 8, 8], pa_frames=2,
        deformable_groups=16, nonblind_denoising=True, **_RESTORE_BODY),
    "009_VRT_videofi_Vimeo_4frames": dict(
        upscale=1, out_chans=3, img_size=[4, 192, 192], window_size=[4, 8, 8], pa_frames=0,
        **_RESTORE_BODY, ),
}
PRESETS["009_VRT_videofi_Vimeo_4frames"]["indep_reconsts"] = []

# Official test-time tiling: tile = (frames, height, width), tile_overlap likewise.
# 003/004 on Vimeo-90K-T use (8, 0, 0) / (0, 20, 20); 009 on DAVIS uses (0, 256, 256) / (0, 20, 20).
TEST_SETTINGS: dict[str, dict[str, tuple[int, int, int]]] = {
    "001_VRT_videosr_bi_REDS_6frames": dict(tile=(40, 128, 128), tile_overlap=(2, 20, 20)),
    "002_VRT_videosr_bi_REDS_16frames": dict(tile=(40, 128, 128), tile_overlap=(2, 20, 20)),
    "003_VRT_videosr_bi_Vimeo_7frames": dict(tile=(32, 128, 128), tile_overlap=(2, 20, 20)),
    "004_VRT_videosr_bd_Vimeo_7frames": dict(tile=(32, 128, 128), tile_overlap=(2, 20, 20)),
    "005_VRT_videodeblurring_DVD": dict(tile=(12, 256, 256), tile_overlap=(2, 20, 20)),
    "006_VRT_videodeblurring_GoPro": dict(tile=(18, 192, 192), tile_overlap=(2, 20, 20)),
    "007_VRT_videodeblurring_REDS": dict(tile=(12, 256, 256), tile_overlap=(2, 20, 20)),
    "008_VRT_videodenoising_DAVIS": dict(tile=(12, 256, 256), tile_overlap=(2, 20, 20)),
    "009_VRT_videofi_Vimeo_4frames": dict(tile=(0, 0, 0), tile_overlap=(0, 0, 0)),
}


def get_preset(name: str) -> dict[str, Any]:
  """Returns a copy of the constructor kwargs of a released model, by official name."""
  if name not in PRESETS:
    raise ValueError(f"Unknown preset {name!r}; choose one of: {', '.join(PRESETS)}")
  return copy.deepcopy(PRESETS[name])


def tiny(**overrides: Any) -> dict[str, Any]:
  """A small but complete VRT (all stages, TMSA, parallel warping, SpyNet) for tests and demos."""
  kwargs = dict(
      upscale=1, in_chans=3, out_chans=3, img_size=[6, 64, 64], window_size=[6, 8, 8],
      depths=[2, 2, 2, 2, 2, 2, 2, 2, 2], indep_reconsts=[7, 8],
      embed_dims=[16, 16, 16, 16, 16, 16, 16, 24, 24], num_heads=[2] * 9,
      pa_frames=2, deformable_groups=4, nonblind_denoising=False)
  kwargs.update(overrides)
  return kwargs
