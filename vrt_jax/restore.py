"""`vrt-restore`: restores a user's video (frame folder or video file) of any length and size.

  vrt-restore --weights 006_VRT_videodeblurring_GoPro --input INPUT --output OUTPUT
      [--memory_budget_mb 8000]     (also: python -m vrt_jax.restore INPUT OUTPUT --weights ...)

--weights takes a released model name (downloaded, verified and converted once, see
vrt_jax.weights), an official .pth, a converted folder or a training workdir (its config names
the model and, for a denoiser, the default --sigma). Video output options: --codec, --crf,
--pix_fmt, --bit_depth, --no_audio (see vrt_jax.video). Writing to a frame folder resumes, and
the tiling follows the model's official one within --memory_budget_mb: see vrt_jax.restore_lib,
which does the work; this module only parses and reports.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from vrt_jax import presets, runtime, video
from vrt_jax.cli import UserError
from vrt_jax.restore_lib import check_input, load_restorer, restore_video


def _triple(text: str) -> tuple[int, int, int]:
  try:
    values = [int(v) for v in text.split(",")]
  except ValueError:
    values = []
  if len(values) != 3 or min(values) < 0:
    raise argparse.ArgumentTypeError(f"expected three non-negative integers T,H,W; got {text}")
  return tuple(values)


def build_parser(prog: str = "vrt-restore") -> argparse.ArgumentParser:
  from vrt_jax import cli

  parser = cli.ArgumentParser(
      prog=prog, description=__doc__.split("\n\n")[0],
      epilog="Example: vrt-restore --weights 006_VRT_videodeblurring_GoPro --input clip.mp4 "
             "--output restored.mp4")
  parser.add_argument("input_pos", nargs="?", metavar="INPUT", help=argparse.SUPPRESS)
  parser.add_argument("output_pos", nargs="?", metavar="OUTPUT", help=argparse.SUPPRESS)
  parser.add_argument("--input", help="frame folder or video file")
  parser.add_argument("--output", help="frame folder or video file (.mp4, ...) to write")
  parser.add_argument("--weights", required=True,
                      help="a released model name (e.g. 006_VRT_videodeblurring_GoPro: "
                           "downloaded once), an official .pth, a converted folder or a "
                           "training workdir")
  parser.add_argument("--preset", choices=sorted(presets.PRESETS), metavar="NAME",
                      help="the released model a .pth holds (if its file name does not say)")
  parser.add_argument("--config", help="config file whose `model` replaces the source's")
  parser.add_argument("--memory_budget_mb", type=float,
                      help="device memory for one tile; shrinks the tiles to fit")
  parser.add_argument("--tile", type=_triple, help="T,H,W (0 = whole dimension)")
  parser.add_argument("--tile_overlap", type=_triple, help="t,h,w")
  parser.add_argument("--space", type=int, default=1, metavar="N",
                      help="split each tile's rows over N devices (spatial parallelism; "
                      "--memory_budget_mb is then per device)")
  parser.add_argument("--dtype", choices=presets.COMPUTE_DTYPES,
                      help="compute precision (default: the weights' own, float32 for released "
                           "models); bfloat16 is for GPUs and TPUs: parameters stay float32, "
                           "and --memory_budget_mb still plans tiles for float32")
  parser.add_argument("--matmul_precision", choices=presets.MATMUL_PRECISIONS,
                      help="precision of float32 matmuls and convolutions on a TPU or GPU "
                           "(default: the weights' own, 'default': one bfloat16 pass on a TPU; "
                           "high and highest take 3 and 6); no effect on CPU")
  parser.add_argument("--sigma", type=float,
                      help="noise level 0-255 (denoising; a workdir's config gives a default)")
  parser.add_argument("--fps", type=float, help="output frame rate (default: the input's)")
  parser.add_argument("--summary", help="also write the run's settings and timing to this JSON "
                                        "file (never into the output folder)")
  parser.add_argument("--checkpoint_fallback", action="store_true",
                      help="if --weights is a training workdir whose latest checkpoint is "
                           "unreadable, use the latest earlier one that loads")
  # --- video output options ---
  parser.add_argument("--codec", help="video encoder (default libx264; libvpx-vp9 for .webm)")
  parser.add_argument("--crf", type=float,
                      help="constant quality (default 17 for libx264, 31 for libvpx-vp9)")
  parser.add_argument("--pix_fmt", help="encoded pixel format, e.g. yuv420p10le for 10 bits "
                                        "(default: yuv420p, 10-bit for a >8-bit input)")
  parser.add_argument("--bit_depth", type=int, choices=video.BIT_DEPTHS,
                      help="PNG output bits (default 16 for a >8-bit input, else 8)")
  parser.add_argument("--no_audio", action="store_true",
                      help="do not copy the input video's audio into the output video")
  # --- end video output options ---
  parser.add_argument("--quiet", action="store_true", help="no progress bar")
  return parser


def _parse_and_check(argv: Sequence[str] | None) -> argparse.Namespace:
  """The arguments, and the cheap checks: nothing is loaded or compiled for a run that cannot
  succeed (flags, input exists and is readable, frames of one size)."""
  parser = build_parser()
  args = parser.parse_args(argv)
  args.output_options = video.OutputOptions(codec=args.codec, crf=args.crf, pix_fmt=args.pix_fmt,
                                            bit_depth=args.bit_depth, audio=not args.no_audio)
  for name in ("input", "output"):
    flag, pos = getattr(args, name), getattr(args, f"{name}_pos")
    if flag and pos:
      parser.error(f"the {name} is given twice ({pos} and --{name} {flag})")
    setattr(args, name, flag or pos)
    if not getattr(args, name):
      parser.error(f"no {name}: give --{name} PATH")
  if not Path(args.input).exists():
    raise UserError(f"input {args.input} does not exist; give a frame folder or a video file")
  reader = video.open_video(args.input)
  try:
    check_input(reader)
  finally:
    reader.close()
  video.check_output(args.output, args.output_options, input_path=args.input)
  if args.space < 1:
    parser.error(f"--space must be at least 1, got {args.space}")
  if args.space > 1:
    from vrt_jax import sharding

    sharding.space_mesh(args.space)  # Enough devices? Said now, before anything loads.
  return args


def _main(argv: Sequence[str] | None = None) -> dict[str, Any]:
  args = _parse_and_check(argv)
  runtime.quiet_logs()
  runtime.enable_compilation_cache()  # Each tile shape compiles once, across runs too.
  restorer = load_restorer(preset=args.preset, weights=args.weights, config=args.config,
                           checkpoint_fallback=args.checkpoint_fallback, progress=not args.quiet,
                           log=lambda line: print(line, file=sys.stderr), dtype=args.dtype,
                           matmul_precision=args.matmul_precision)
  if restorer.model_kwargs.get("dtype", "float32") != "float32":
    print(f"computing in {restorer.model_kwargs['dtype']} (float32 parameters)", flush=True)
  if restorer.model_kwargs.get("matmul_precision", "default") != "default":
    print(f"float32 matmuls and convolutions at {restorer.model_kwargs['matmul_precision']} "
          "precision", flush=True)
  if args.sigma is None and restorer.defaults.get("sigma"):
    print(f"--sigma not given: using {restorer.defaults['sigma']:g}, the noise level "
          f"{args.weights} was validated at", flush=True)
  summary = restore_video(restorer, args.input, args.output, tile=args.tile,
                          tile_overlap=args.tile_overlap, memory_budget_mb=args.memory_budget_mb,
                          sigma=args.sigma, fps=args.fps, progress=not args.quiet,
                          output=args.output_options, space=args.space,
                          log=lambda line: print(f"tiling: {line}", flush=True))
  print(f"{summary['written']} frames written ({summary['skipped']} already present) to "
        f"{args.output} in {summary['seconds']:.1f} s ({summary['frames_per_second']:.2f} "
        f"frames/s incl. compiling); tile setting {tuple(summary['tile'])}, overlap "
        f"{tuple(summary['tile_overlap'])}; {summary['output']}")
  if args.summary:
    with open(args.summary, "w") as f:
      json.dump(dict(summary, input=args.input, output=args.output, weights=args.weights,
                     preset=restorer.preset), f, indent=2)
  return summary


def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
  """`vrt-restore` / `python -m vrt_jax.restore`: user errors are two lines and exit status 2."""
  from vrt_jax import cli

  return cli.run(_main, argv, prog="vrt-restore")


def console_main() -> None:
  """Entry point of the `vrt-restore` console script (and `python -m vrt_jax.restore`)."""
  from vrt_jax import cli

  # A mistake is reported before the restart below, which would cost a second start-up.
  cli.run(_parse_and_check, None, prog="vrt-restore")
  runtime.reexec_with_huge_pages()  # Fewer page faults on CPU (vrt_jax.runtime).
  main()


if __name__ == "__main__":
  console_main()
