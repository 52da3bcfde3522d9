"""`vrt-eval` and `python eval.py`: evaluates a checkpoint on a test set.

  vrt-eval --config configs/sr_reds.py \
      --checkpoint 001_VRT_videosr_bi_REDS_6frames --lq testsets/REDS4/sharp_bicubic \
      --gt testsets/REDS4/GT --output results/001

Prints per-clip and average PSNR / SSIM (RGB and Y) of the output and of the input, and writes
results.json, results.csv and comparison.png (input | output | ground truth, full size) to
--output; --save_images adds the frames. Layouts: paired (one subfolder per clip; with --sigma,
a denoising set of noisy inputs whose noise map is appended), vimeo (Vimeo-90K-T), davis
(denoising, GT only, noise added at --sigma), vfi (frame interpolation: Vimeo, DAVIS or UCF101);
the layout used is printed. Tiling defaults to the official setting of the config's preset.
"""

from absl import app, flags
from ml_collections import config_flags

from vrt_jax import absl_cli, eval_lib, runtime

_CONFIG = config_flags.DEFINE_config_file("config", None, "Config file (configs/<task>.py).")
_CHECKPOINT = flags.DEFINE_string(
    "checkpoint", None, "Released model name (downloaded once), official .pth, exported params "
    "directory or training workdir.")
_LQ = flags.DEFINE_string("lq", None, "Low-quality input root.")
_GT = flags.DEFINE_string("gt", None, "Ground-truth root.")
_OUTPUT = flags.DEFINE_string("output", None, "Directory for results.json / .csv and images.")
_LAYOUT = flags.DEFINE_enum("layout", None, list(eval_lib.LAYOUTS),
                            "Test-set layout; default inferred from the task and folders.")
_SIGMA = flags.DEFINE_float("sigma", 0, "Noise level (/255) for denoising test sets.")
_TILE = flags.DEFINE_list("tile", None, "Tile T,H,W (0 = whole dimension).")
_TILE_OVERLAP = flags.DEFINE_list("tile_overlap", None, "Tile overlap t,h,w.")
_SPACE = flags.DEFINE_integer(
    "space", 1, "Split each tile's rows over this many devices (spatial parallelism).",
    lower_bound=1)
_SAVE_IMAGES = flags.DEFINE_bool("save_images", False, "Save the restored frames as PNG.")
_FALLBACK = flags.DEFINE_bool(
    "checkpoint_fallback", False,
    "If the latest checkpoint of a training workdir is unreadable, use the latest readable "
    "earlier one (with a warning) instead of failing.")
absl_cli.define_debug_flag()


def _triple(values: list[str] | None, name: str) -> tuple[int, int, int] | None:
  if values is None:
    return None
  try:
    parsed = tuple(int(v) for v in values)
  except ValueError:
    parsed = ()
  if len(parsed) != 3:
    raise app.UsageError(f"--{name} takes three integers T,H,W; got {','.join(values)}")
  return parsed


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"Unexpected arguments: {argv[1:]}")
  runtime.enable_compilation_cache()  # Each tile shape compiles once, across runs too.
  eval_lib.evaluate_from_config(
      _CONFIG.value, checkpoint=_CHECKPOINT.value, lq=_LQ.value, gt=_GT.value,
      output_dir=_OUTPUT.value, layout=_LAYOUT.value, sigma=_SIGMA.value,
      tile=_triple(_TILE.value, "tile"), tile_overlap=_triple(_TILE_OVERLAP.value, "tile_overlap"),
      save_images=_SAVE_IMAGES.value, checkpoint_fallback=_FALLBACK.value, space=_SPACE.value)


def run() -> None:
  """Entry point of `vrt-eval` and `python eval.py`."""
  flags.mark_flags_as_required(["config", "checkpoint", "output"])
  absl_cli.precheck("vrt-eval")
  runtime.reexec_with_huge_pages()  # Fewer page faults on CPU (vrt_jax.runtime).
  absl_cli.run(main, prog="vrt-eval")
