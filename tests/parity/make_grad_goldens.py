"""Makes tests/data/grads_{sr_x4,deblur}.npz from the official PyTorch VRT (not run by the tests).

  /path/to/torch/python tests/parity/make_grad_goldens.py --ref /path/to/VRT \
      --parity ../shared/parity --out tests/data

For each parity config (its weights and input): loss = sum(output * R), R standard normal with
numpy seed 7 in the reference's (B, T, C, H, W) layout; the gradients of every parameter and of
the input in float64 (stored as float32, under grad/<PyTorch name> and grad/__input__), the
loss, and per tensor the largest difference of the reference's own float32 gradient to its
float64 one (f32err/<name>): the rounding floor a float32 port is held to.
"""

import argparse
import json
import sys

import numpy as np


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  parser.add_argument("--ref", required=True, help="checkout of github.com/JingyunLiang/VRT")
  parser.add_argument("--parity", required=True, help="folder with sr_x4.npz and deblur.npz")
  parser.add_argument("--out", required=True)
  args = parser.parse_args()
  import torch

  sys.path.insert(0, args.ref)
  from models.network_vrt import VRT

  for name in ("sr_x4", "deblur"):
    z = np.load(f"{args.parity}/{name}.npz")
    cfg = json.loads(str(z["config"]))
    sd = {k[len("param/"):]: torch.from_numpy(np.array(z[k])) for k in z.files
          if k.startswith("param/")}
    results = {}
    for dtype in (torch.float64, torch.float32):
      torch.manual_seed(0)
      model = VRT(**cfg)
      model.load_state_dict(sd, strict=True)
      model = model.to(dtype).eval()
      x = torch.from_numpy(np.array(z["input"])).to(dtype).requires_grad_(True)
      out = model(x)
      r = np.random.default_rng(7).standard_normal(out.shape).astype(np.float32)
      loss = (out * torch.from_numpy(r).to(dtype)).sum()
      loss.backward()
      grads = {k: p.grad.detach().double().numpy() for k, p in model.named_parameters()
               if p.grad is not None}
      grads["__input__"] = x.grad.detach().double().numpy()
      results[dtype] = (loss.item(), grads)
    loss64, g64 = results[torch.float64]
    loss32, g32 = results[torch.float32]
    save = {"config": json.dumps(cfg), "loss": np.float64(loss64),
            "loss_f32_err": np.float64(abs(loss32 - loss64))}
    for k, g in g64.items():
      save[f"grad/{k}"] = g.astype(np.float32)
      save[f"f32err/{k}"] = np.float32(np.max(np.abs(g32[k] - g)))
    np.savez_compressed(f"{args.out}/grads_{name}.npz", **save)
    print(f"{name}: loss {loss64:.6f}, {len(g64)} gradients")


if __name__ == "__main__":
  main()
