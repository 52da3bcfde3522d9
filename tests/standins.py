"""Shared test fixtures: a fast stand-in for VRT and a tiny VRT with exported random weights."""

import dataclasses
import textwrap

import av
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
from av.video.reformatter import ColorRange, Colorspace

import vrt_jax
from vrt_jax import checkpoint, presets, restore_lib

TINY_CONFIG = textwrap.dedent("""\
    import ml_collections
    from vrt_jax import presets

    def get_config():
      config = ml_collections.ConfigDict()
      config.preset = None
      config.model = ml_collections.ConfigDict(presets.tiny())
      config.task = "deblur"
      config.scale = 1
      return config
    """)


@dataclasses.dataclass(frozen=True)
class FakeModel:
  """VRT's fields only, for numpy stand-ins passed to inference as `apply_fn`."""

  upscale: int = 1
  window_size: tuple = (2, 8, 8)
  in_chans: int = 3
  out_chans: int = 3
  img_size: tuple = (4, 16, 16)
  pa_frames: int = 2
  nonblind_denoising: bool = False


class Residual(nn.Module):
  """A stand-in with VRT's fields and call signature: y = x + 0.1 conv(x) (RGB channels).

  Restoring, tiling and evaluation take any such model; this one compiles in a second.
  """

  upscale: int = 1
  in_chans: int = 3
  out_chans: int = 3
  window_size: tuple = (2, 8, 8)
  img_size: tuple = (4, 16, 16)
  pa_frames: int = 2
  nonblind_denoising: bool = False

  @nn.compact
  def __call__(self, x, train=False):
    return x[..., :3] + 0.1 * nn.Conv(self.out_chans, (1, 3, 3))(x)


def standin_variables(model: Residual, seed: int = 0):
  c = model.in_chans + (1 if model.nonblind_denoising else 0)
  return model.init(jax.random.key(seed), jnp.zeros((1, 4, 16, 16, c)))


def standin_restorer(seed: int = 0, **fields) -> restore_lib.Restorer:
  model = Residual(**fields)
  kwargs = dict(window_size=model.window_size, num_heads=[2], embed_dims=[16], upscale=1)
  return restore_lib.Restorer(model, standin_variables(model, seed), kwargs, None)


def steady_flows(params, flow: float = 0.25):
  """`params` with SpyNet's flows `flow` pixels right and down everywhere, at every level.

  A random SpyNet's flows are within rounding of 0, where the parallel warping's floor and ceil
  jump by a pixel: two programs that round differently (split over devices, another kernel
  path, another CPU's vector width) then differ by a pixel in a few places, which random weights
  amplify to 20 levels of 255. Each level's flow is its last convolution's output plus twice the
  coarser level's flow: kernels 0 and biases +flow at the coarsest level, -flow at the others.
  """
  spynet = {k: dict(v) for k, v in params["spynet"].items()}
  for i, level in enumerate(sorted(spynet)):
    last = spynet[level]["basic_module_8"]
    spynet[level]["basic_module_8"] = {
        "kernel": np.zeros_like(last["kernel"]),
        "bias": np.full_like(last["bias"], flow if i == 0 else -flow)}
  return {**params, "spynet": spynet}


def write_tiny_setup(directory, steady: bool = False):
  """directory/tiny_config.py (the tiny VRT, deblurring) and directory/weights (random params
  exported like `python -m vrt_jax.convert` does); returns both paths.

  steady: SpyNet's flows are a constant fraction of a pixel (`steady_flows`).
  """
  (directory / "tiny_config.py").write_text(TINY_CONFIG)
  model = vrt_jax.VRT(**presets.tiny())
  params = checkpoint.random_params(model)
  checkpoint.export_params(str(directory / "weights"), steady_flows(params) if steady else params,
                           presets.tiny())
  return directory / "tiny_config.py", directory / "weights"


def identity_restorer() -> restore_lib.Restorer:
  """`standin_restorer` with zero weights: restores every clip to itself (y = x exactly)."""
  r = standin_restorer()
  return dataclasses.replace(r, variables=jax.tree_util.tree_map(jnp.zeros_like, r.variables))


def tiny_workdir_kwargs(nonblind: bool = True):
  """The demo's model: the tiny VRT on 2-frame clips, a non-blind denoiser by default."""
  return presets.tiny(in_chans=3, nonblind_denoising=nonblind, img_size=[2, 64, 64],
                      window_size=[2, 8, 8])


def write_tiny_workdir(directory, *, nonblind: bool = True, val_sigma: float = 30.0, step=5):
  """A training workdir as train.py leaves it: config.json and checkpoints/<step>/ (random
  params, the state layout train_lib saves); returns the directory."""
  import json

  import grain

  directory.mkdir(parents=True, exist_ok=True)
  kwargs = tiny_workdir_kwargs(nonblind)
  (directory / "config.json").write_text(json.dumps(dict(
      model=kwargs, preset=None, task="denoise" if nonblind else "deblur", scale=1,
      data=dict(val_sigma=val_sigma), eval=dict(tile=[0, 0, 0], tile_overlap=[0, 0, 0]))))
  params = checkpoint.random_params(vrt_jax.VRT(**kwargs))
  state = {"step": np.int32(step), "params": params,
           "opt_state": {"mu": jax.tree.map(np.zeros_like, params)}}
  manager = checkpoint.make_manager(str(directory))
  checkpoint.save_state(manager, step, state, iter(grain.MapDataset.range(4).to_iter_dataset()))
  manager.wait_until_finished()
  manager.close()
  return directory


SWS = {1: Colorspace.ITU709, 5: Colorspace.ITU601, 6: Colorspace.ITU601}  # tag -> matrix


def make_video(path, frames, *, tags=(1, 1, 1), full_range=False, pix_fmt="yuv420p",
               audio=True, rate=25):
  """Encodes (T, H, W, 3) [0, 1] frames losslessly with libx264, YUV from the matrix `tags[2]`
  (untagged: the one players assume for the size, BT.709 for HD, else BT.601), tagged with
  `tags` (primaries, transfer, matrix; None: untagged), plus 10 AAC frames of a 440 Hz tone
  when `audio`."""
  h, w = frames.shape[1:3]
  container = av.open(str(path), "w")
  stream = container.add_stream("libx264", rate=rate)
  stream.width, stream.height, stream.pix_fmt = w, h, pix_fmt
  stream.options = {"qp": "0"}
  hd = w >= 1280 or h > 576  # Independent of vrt_jax.video.is_hd on purpose.
  matrix = SWS[tags[2]] if tags else (Colorspace.ITU709 if hd else Colorspace.ITU601)
  ctx = stream.codec_context
  if tags:
    ctx.color_primaries, ctx.color_trc, ctx.colorspace = tags
  if full_range:
    ctx.color_range = 2
  if audio:
    sound = container.add_stream("aac", rate=48000)
    sound.layout = "stereo"
  for t, frame in enumerate(frames):
    rgb = np.round(np.clip(frame, 0, 1) * 65535).astype(np.uint16)
    yuv = av.VideoFrame.from_ndarray(rgb, format="rgb48le").reformat(
        format=pix_fmt, dst_colorspace=matrix,
        dst_color_range=ColorRange.JPEG if full_range else ColorRange.MPEG)
    yuv.pts = t
    for packet in stream.encode(yuv):
      container.mux(packet)
  for packet in stream.encode():
    container.mux(packet)
  if audio:
    for i in range(10):
      tone = 0.3 * np.sin(2 * np.pi * 440 * (np.arange(1024) + 1024 * i) / 48000)
      samples = av.AudioFrame.from_ndarray(np.stack([tone, tone]).astype(np.float32),
                                           format="fltp", layout="stereo")
      samples.sample_rate, samples.pts = 48000, 1024 * i
      for packet in sound.encode(samples):
        container.mux(packet)
    for packet in sound.encode():
      container.mux(packet)
  container.close()
