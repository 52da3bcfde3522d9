"""`vrt-convert` (or `python -m vrt_jax.convert`): an official VRT .pth -> an exported params dir.

vrt-convert CHECKPOINT.pth [--preset NAME] --out DIR; the preset defaults to the file name when
it is a released model's. The output is what `checkpoint.export_params` writes and every loader
takes. Kept apart from vrt_jax.convert so that conversion does not depend on checkpoint I/O.
"""

from __future__ import annotations

import json
from pathlib import Path

import jax

from vrt_jax import checkpoint, cli, convert, presets, runtime
from vrt_jax.vrt import VRT


def _main(argv: list[str] | None = None) -> None:
  parser = cli.ArgumentParser(
      prog="vrt-convert", description=convert.__doc__.split("\n\n")[0])
  parser.add_argument("checkpoint", help="official VRT .pth file")
  parser.add_argument("--preset", choices=sorted(presets.PRESETS), metavar="NAME",
                      help="the released model the checkpoint belongs to (default: the file "
                           "name, if it is a released model's)")
  parser.add_argument("--out", required=True, help="output directory (Orbax)")
  args = parser.parse_args(argv)
  runtime.quiet_logs()
  preset = args.preset or Path(args.checkpoint).stem
  if preset not in presets.PRESETS:
    parser.error(f"{args.checkpoint} is not named after a released model: give --preset NAME")
  if not Path(args.checkpoint).is_file():
    raise cli.UserError(f"checkpoint {args.checkpoint} does not exist")
  kwargs = presets.get_preset(preset)
  model = VRT(**kwargs)
  variables = convert.from_torch(convert.load_torch_checkpoint(args.checkpoint), model)
  checkpoint.export_params(args.out, variables["params"], kwargs, preset)
  print(json.dumps({"out": args.out, "preset": preset,
                    "params": sum(int(v.size) for v in jax.tree.leaves(variables))}))


def main(argv: list[str] | None = None) -> None:
  """`vrt-convert` / `python -m vrt_jax.convert`: user errors are two lines, exit status 2."""
  cli.run(_main, argv, prog="vrt-convert")


if __name__ == "__main__":
  main()
