"""Faults survived, bad input refused, nothing lost: one test per row of docs/reliability.md.

Faults are injected deterministically, never by timing: a SIGKILL is sent by the process to
itself at a chosen point (a chosen frame write, the atomic rename that commits a chosen
checkpoint, the batch of a chosen step) through small wrappers in the child processes below; a
full disk is RLIMIT_FSIZE (writes fail with EFBIG) or an injected ENOSPC.
"""

import errno
import json
import logging
import os
import pickle
import shutil
import signal
import subprocess
import sys
import textwrap
import tracemalloc
import zipfile
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from standins import FakeModel, standin_restorer

from vrt_jax import checkpoint, eval_lib, inference, metrics, presets, restore, video
from vrt_jax.data import layouts, pipeline, testsets

REPO = Path(__file__).resolve().parents[2]
DATA = REPO / "tests" / "data"


# ----------------------------------------------------------------------------------------------
# Stand-ins: a numpy model that counts its calls (the flax ones are in standins.py).
# ----------------------------------------------------------------------------------------------
class CountingFn:
  """apply_fn(variables, x) -> x + 0.1 * temporal mean, counting calls."""

  def __init__(self):
    self.calls = 0

  def __call__(self, variables, x):
    self.calls += 1
    x = np.asarray(x, np.float32)[..., :3]
    return x + 0.1 * x.mean(axis=1, keepdims=True)


def moving_clip(num_frames, h, w, seed=0):
  rng = np.random.default_rng(seed)
  base = rng.random((h + 2 * num_frames, w + num_frames, 3), dtype=np.float32)
  return np.stack([base[2 * t:2 * t + h, t:t + w] for t in range(num_frames)])


KW = dict(tile=(4, 16, 16), tile_overlap=(1, 4, 4), progress=False)


def uninterrupted(r, folder):
  """The 8-bit frames an uninterrupted restore of a frame folder writes."""
  frames = video.read_images(video.list_frames(folder))
  out = inference.restore(r.model, r.variables, frames[None], **KW)[0]
  return metrics.to_uint8(out) / np.float32(255)


# ----------------------------------------------------------------------------------------------
# Bad clips: refused before any model call, or converted as documented.
# ----------------------------------------------------------------------------------------------
@pytest.mark.parametrize("bad,match", [
    (np.zeros((4, 16, 16, 3), np.float32), r"\(B, T, H, W, C\) array; got shape \(4, 16, 16, 3\)"),
    (np.zeros((1, 4, 16, 16, 1), np.float32), "must have 3 channels.*got 1"),
    (np.zeros((1, 4, 16, 16, 3), np.uint8), "floating point.*uint8.*/ 255"),
    (np.full((1, 4, 16, 16, 3), 255.0, np.float32), "range.*Did you pass 0-255 values"),
    (np.full((1, 4, 16, 16, 3), np.nan, np.float32), "NaN or Inf"),
    (np.full((1, 4, 16, 16, 3), np.inf, np.float32), "NaN or Inf"),
    (np.zeros((1, 0, 16, 16, 3), np.float32), "empty"),
])
def test_bad_clip_is_refused_before_the_model_runs(bad, match):
  fn = CountingFn()
  with pytest.raises(ValueError, match=match):
    inference.restore(FakeModel(), None, bad, apply_fn=fn, progress=False)
  assert fn.calls == 0


def test_bfloat16_and_float64_clips_are_converted_to_float32():
  clip = moving_clip(5, 16, 24)[None]
  want = inference.restore(FakeModel(), None, clip, apply_fn=CountingFn(), progress=False)
  got64 = inference.restore(FakeModel(), None, clip.astype(np.float64), apply_fn=CountingFn(),
                            progress=False)
  np.testing.assert_array_equal(got64, want)
  bf16 = jnp.asarray(clip, jnp.bfloat16)
  got16 = inference.restore(FakeModel(), None, bf16, apply_fn=CountingFn(), progress=False)
  assert got16.dtype == np.float32
  np.testing.assert_allclose(got16, want, atol=1e-2)


def test_single_frame_clip_is_restored_from_itself_or_refused():
  frame = moving_clip(1, 16, 16)[None]
  fn = CountingFn()
  got = inference.restore(FakeModel(), None, frame, apply_fn=fn, progress=False)
  # Mirror padding (the reference's flip) makes [f, f]; the output keeps frame 0.
  np.testing.assert_array_equal(got, fn(None, np.concatenate([frame, frame], 1))[:, :1])
  fn = CountingFn()
  with pytest.raises(ValueError, match="1 frame.*pa_frames = 4.*at least 2 input frames"):
    inference.restore(FakeModel(pa_frames=4), None, frame, apply_fn=fn, progress=False)
  assert fn.calls == 0


def test_frames_below_the_minimum_size_are_mirror_padded_and_cropped_back():
  clip = moving_clip(4, 5, 7)[None]  # The stand-in needs at least 8 x 8.
  fn = CountingFn()
  got = inference.restore(FakeModel(), None, clip, tile=(4, 16, 16), tile_overlap=(1, 4, 4),
                          apply_fn=fn, progress=False)
  padded = np.pad(clip, ((0, 0), (0, 0), (0, 3), (0, 1), (0, 0)), mode="symmetric")
  assert got.shape == (1, 4, 5, 7, 3)
  np.testing.assert_array_equal(got, fn(None, padded)[:, :, :5, :7])


def test_mismatched_lq_and_gt_are_named_before_restoring(tmp_path):
  model, fn = FakeModel(), CountingFn()
  lq = moving_clip(4, 16, 16)
  sizes = testsets.TestClip("clip_a", lq, np.zeros((4, 32, 32, 3), np.float32), [0, 1, 2, 3],
                            list("0123"))
  with pytest.raises(ValueError, match="clip_a: GT frames are"):
    eval_lib.evaluate(model, None, [sizes], tile=(0, 0, 0), tile_overlap=(0, 0, 0), apply_fn=fn,
                      log=lambda s: None)
  counts = testsets.TestClip("clip_b", lq, lq[:3], [0, 1, 2, 3], list("0123"))
  with pytest.raises(ValueError, match="clip_b: 3 GT frames do not match the 4 output"):
    eval_lib.evaluate(model, None, [counts], tile=(0, 0, 0), tile_overlap=(0, 0, 0), apply_fn=fn,
                      log=lambda s: None)
  assert fn.calls == 0
  # On disk: a GT folder with fewer frames than its LQ folder.
  video.write_video(tmp_path / "lq" / "c", lq)
  video.write_video(tmp_path / "gt" / "c", lq[:3])
  with pytest.raises(ValueError, match="clip c: 4 LQ frames but 3 GT frames"):
    testsets.paired(tmp_path / "lq", tmp_path / "gt")[0]
  # A clip the model cannot take is named too (an 0-255 clip in an in-memory test set).
  bad = testsets.TestClip("clip_c", lq * 255, None, [0, 1, 2, 3], list("0123"))
  with pytest.raises(ValueError, match="clip_c: lq values must lie in"):
    eval_lib.evaluate(model, None, [bad], tile=(0, 0, 0), tile_overlap=(0, 0, 0), apply_fn=fn,
                      log=lambda s: None)


def test_unreadable_and_mixed_size_frames_name_the_file(tmp_path):
  r = standin_restorer()
  clip = moving_clip(6, 16, 16)
  video.write_video(tmp_path / "in", clip)
  (tmp_path / "in" / "00000003.png").write_bytes(b"\x89PNG\r\n\x1a\n truncated")
  with pytest.raises(ValueError, match=r"cannot read image .*00000003\.png"):
    restore.restore_video(r, str(tmp_path / "in"), str(tmp_path / "out"), **KW)
  video.write_image(tmp_path / "in" / "00000003.png", np.zeros((16, 24, 3), np.float32))
  with pytest.raises(ValueError, match=r"00000003\.png has size \(16, 24\).*same size"):
    restore.restore_video(r, str(tmp_path / "in"), str(tmp_path / "out2"), **KW)
  # The same for a test set.
  (tmp_path / "lq" / "c").mkdir(parents=True)
  video.write_video(tmp_path / "lq" / "c", clip)
  (tmp_path / "lq" / "c" / "00000002.png").write_bytes(b"not an image")
  with pytest.raises(ValueError, match=r"cannot read image .*c/00000002\.png"):
    testsets.paired(tmp_path / "lq", None)[0]


def test_file_that_is_not_a_video_is_refused(tmp_path):
  r = standin_restorer()
  (tmp_path / "text.mp4").write_bytes(b"this is not a video")
  with pytest.raises(ValueError, match="not a readable video file"):
    restore.restore_video(r, str(tmp_path / "text.mp4"), str(tmp_path / "o"), **KW)
  video.write_video(tmp_path / "real.mp4", moving_clip(6, 16, 16))
  data = (tmp_path / "real.mp4").read_bytes()
  (tmp_path / "cut.mp4").write_bytes(data[:len(data) // 2])  # Download cut short.
  with pytest.raises(ValueError, match="cut.mp4"):
    restore.restore_video(r, str(tmp_path / "cut.mp4"), str(tmp_path / "o2"), **KW)
  assert not (tmp_path / "o").exists() or not list((tmp_path / "o").glob("*.png"))


# ----------------------------------------------------------------------------------------------
# Output faults: unwritable folder, disk full, interruption.
# ----------------------------------------------------------------------------------------------
def test_unwritable_output_fails_before_any_work(tmp_path):
  (tmp_path / "a_file").write_text("in the way")
  blocked = tmp_path / "a_file" / "out"
  r = standin_restorer()
  video.write_video(tmp_path / "in", moving_clip(4, 16, 16))
  with pytest.raises(OSError, match="output folder .*a_file/out is not writable"):
    restore.restore_video(r, str(tmp_path / "in"), str(blocked), **KW)
  with pytest.raises(OSError, match="is not writable"):
    restore.restore_video(r, str(tmp_path / "in"), str(blocked) + ".mp4", **KW)
  fn = CountingFn()
  clip = testsets.TestClip("c", moving_clip(4, 16, 16), None, [0, 1, 2, 3], list("0123"))
  with pytest.raises(OSError, match="is not writable"):
    eval_lib.evaluate(FakeModel(), None, [clip], tile=(0, 0, 0), tile_overlap=(0, 0, 0),
                      output_dir=str(blocked), apply_fn=fn, log=lambda s: None)
  assert fn.calls == 0


def test_disk_full_while_writing_frames_keeps_earlier_frames_and_resumes(tmp_path, monkeypatch):
  r = standin_restorer()
  clip = moving_clip(11, 16, 24)
  video.write_video(tmp_path / "in", clip)
  real_write = video.write_image

  def full_disk_at_frame_6(path, frame):
    if Path(path).name.startswith(".00000006"):
      Path(path).write_bytes(b"\x89PNG partial")  # What a full disk leaves behind.
      raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
    real_write(path, frame)

  monkeypatch.setattr(video, "write_image", full_disk_at_frame_6)
  with pytest.raises(OSError, match=r"cannot write output frame .*00000006\.png.*No space left"):
    restore.restore_video(r, str(tmp_path / "in"), str(tmp_path / "out"), **KW)
  names = sorted(p.name for p in (tmp_path / "out").iterdir() if p.suffix == ".png")
  assert names == [f"{t:08d}.png" for t in range(6)]  # No partial or temporary file left.
  monkeypatch.setattr(video, "write_image", real_write)
  summary = restore.restore_video(r, str(tmp_path / "in"), str(tmp_path / "out"), **KW)
  assert summary["skipped"] == 6 and summary["written"] == 5
  np.testing.assert_array_equal(video.read_images(video.list_frames(tmp_path / "out")),
                                uninterrupted(r, tmp_path / "in"))


def test_interrupted_video_output_leaves_no_truncated_file(tmp_path, monkeypatch):
  r = standin_restorer()
  video.write_video(tmp_path / "in", moving_clip(8, 16, 16))
  real = video.VideoFileWriter.write

  def interrupt_at_3(self, t, frame):
    if t == 3:
      raise KeyboardInterrupt
    real(self, t, frame)

  monkeypatch.setattr(video.VideoFileWriter, "write", interrupt_at_3)
  with pytest.raises(KeyboardInterrupt):
    restore.restore_video(r, str(tmp_path / "in"), str(tmp_path / "out.mp4"), **KW)
  assert sorted(os.listdir(tmp_path)) == ["in"]  # Neither out.mp4 nor its partial file.


def test_resume_refuses_frames_of_another_run(tmp_path):
  r = standin_restorer()
  video.write_video(tmp_path / "in", moving_clip(6, 16, 16, seed=1))
  video.write_video(tmp_path / "other", moving_clip(6, 16, 16, seed=2))
  restore.restore_video(r, str(tmp_path / "in"), str(tmp_path / "out"), **KW)
  (tmp_path / "out" / "00000005.png").unlink()
  with pytest.raises(ValueError, match="different restore.*input"):
    restore.restore_video(r, str(tmp_path / "other"), str(tmp_path / "out"), **KW)
  with pytest.raises(ValueError, match="different restore.*weights"):
    restore.restore_video(standin_restorer(seed=1), str(tmp_path / "in"), str(tmp_path / "out"),
                          **KW)
  # Image files that no restore wrote are not taken as output frames.
  video.write_video(tmp_path / "foreign", moving_clip(2, 16, 16))
  with pytest.raises(ValueError, match="not written by vrt_jax.restore"):
    restore.restore_video(r, str(tmp_path / "in"), str(tmp_path / "foreign"), **KW)
  # The same run resumes.
  assert restore.restore_video(r, str(tmp_path / "in"), str(tmp_path / "out"), **KW)[
      "written"] == 1


# ----------------------------------------------------------------------------------------------
# Long work: flat host memory in T, and SIGKILL + resume at the clip level.
# ----------------------------------------------------------------------------------------------
def _stream_peak(num_frames, h=32, w=32):
  """tracemalloc peak of restoring a generated clip frame by frame (nothing kept)."""
  def read(a, b):
    return np.stack([np.full((h, w, 3), (t % 17) / 17, np.float32) for t in range(a, b)])[None]

  fn = CountingFn()
  tracemalloc.start()
  total = 0.0
  for _, frame in inference.restore_stream(FakeModel(), None, read, num_frames, tile=(6, 0, 0),
                                           tile_overlap=(2, 0, 0), apply_fn=fn, progress=False):
    total += float(frame[0, 0, 0, 0])
  peak = tracemalloc.get_traced_memory()[1]
  tracemalloc.stop()
  return peak, fn.calls


def test_streaming_restore_host_memory_does_not_grow_with_clip_length():
  peak_100, calls_100 = _stream_peak(100)
  peak_1000, calls_1000 = _stream_peak(1000)
  assert calls_1000 > 9 * calls_100  # The work did scale with T ...
  frame_bytes = 32 * 32 * 3 * 4
  tile_bytes = 6 * frame_bytes
  assert peak_1000 < 1.1 * peak_100 + 2 * frame_bytes  # ... the memory did not,
  # and it is a few copies of one temporal tile (input, output, accumulators), not 166 tiles'.
  assert peak_1000 < 10 * tile_bytes


RESTORE_CHILD = textwrap.dedent("""\
    import os, signal, sys
    sys.path.insert(0, {repo!r})
    sys.path.insert(0, {repo!r} + "/tests")
    sys.path.insert(0, {repo!r} + "/tests/integration")
    import test_reliability as tr
    from vrt_jax import restore, video

    kill_at = int(os.environ["KILL_AT_FRAME"])
    real = video.FrameFolderWriter.write

    def write(self, t, frame):
      if t == kill_at:
        os.kill(os.getpid(), signal.SIGKILL)
      real(self, t, frame)

    video.FrameFolderWriter.write = write
    restore.restore_video(tr.standin_restorer(), sys.argv[1], sys.argv[2], **tr.KW)
    """)


def test_sigkilled_restore_resumes_without_recomputing_written_frames(tmp_path, monkeypatch):
  num_frames, kill_at = 40, 25
  clip = moving_clip(num_frames, 16, 16)
  video.write_video(tmp_path / "in", clip)
  out = tmp_path / "out"
  proc = subprocess.run(
      [sys.executable, "-c", RESTORE_CHILD.format(repo=str(REPO)), str(tmp_path / "in"),
       str(out)], cwd=REPO, env={**os.environ, "JAX_PLATFORMS": "cpu",
                                 "KILL_AT_FRAME": str(kill_at)},
      capture_output=True, text=True, timeout=300)
  assert proc.returncode == -signal.SIGKILL, proc.stderr[-3000:]
  done = sorted(p.name for p in out.glob("*.png"))
  assert done == [f"{t:08d}.png" for t in range(kill_at)]
  mtimes = {p.name: p.stat().st_mtime_ns for p in out.glob("*.png")}

  reads = []
  real_read = video.FrameFolderReader.read

  def counting_read(self, start, stop):
    reads.append((start, stop))
    return real_read(self, start, stop)

  monkeypatch.setattr(video.FrameFolderReader, "read", counting_read)
  r = standin_restorer()
  summary = restore.restore_video(r, str(tmp_path / "in"), str(out), **KW)
  assert summary["skipped"] == kill_at and summary["written"] == num_frames - kill_at
  # Temporal tiles start every 3 frames; the first one read is the first holding frame 25.
  assert reads[0] == (24, 28) and sum(b - a for a, b in reads) <= num_frames - 24 + 2 * len(reads)
  assert {p.name: p.stat().st_mtime_ns for p in out.glob("*.png") if p.name in mtimes} == mtimes
  np.testing.assert_array_equal(video.read_images(video.list_frames(out)),
                                uninterrupted(r, tmp_path / "in"))


# ----------------------------------------------------------------------------------------------
# Checkpoints given to eval / restore / init_from.
# ----------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def tiny_model():
  import vrt_jax

  return vrt_jax.VRT(**presets.tiny(depths=[1] * 9))


def test_hostile_pickle_is_refused_without_running_it(tmp_path, tiny_model):
  marker = tmp_path / "pwned"
  payload = f"cos\nsystem\n(S'touch {marker}'\ntR.".encode()
  with zipfile.ZipFile(tmp_path / "evil.pth", "w") as zf:
    zf.writestr("archive/data.pkl", payload)
  with pytest.raises(ValueError, match=r"evil.pth.*refusing to unpickle 'os.system'"):
    checkpoint.load_params(str(tmp_path / "evil.pth"), tiny_model)
  assert not marker.exists()
  # A plain pickle (not a torch zip) is refused before unpickling anything.
  (tmp_path / "plain.pth").write_bytes(pickle.dumps({"w": 1}))
  with pytest.raises(ValueError, match="not a PyTorch zip checkpoint"):
    checkpoint.load_params(str(tmp_path / "plain.pth"), tiny_model)


def test_truncated_pth_is_refused(tmp_path, tiny_model):
  data = (DATA / "deblur_params.pth").read_bytes()
  for name, cut in (("head.pth", data[:4096]), ("half.pth", data[:len(data) // 2])):
    (tmp_path / name).write_bytes(cut)
    with pytest.raises(ValueError, match=f"Cannot read the PyTorch checkpoint .*{name}"):
      checkpoint.load_params(str(tmp_path / name), tiny_model)


def test_pth_of_another_configuration_lists_the_mismatch(tiny_model):
  # The parity deblur weights (embed dims, depths, windows differ from the tiny model).
  with pytest.raises(ValueError) as e:
    checkpoint.load_params(str(DATA / "deblur_params.pth"), tiny_model)
  msg = str(e.value)
  assert "does not match the VRT configuration" in msg
  assert "missing keys" in msg or "checkpoint shape" in msg or "unexpected keys" in msg


# ----------------------------------------------------------------------------------------------
# Training data faults.
# ----------------------------------------------------------------------------------------------
def test_training_data_faults_name_the_file_and_skip_when_configured(tmp_path, caplog):
  from tests import fake_datasets

  with pytest.raises(FileNotFoundError, match="nowhere"):
    pipeline.make_train_loader(dict(source="folders", layout="reds",
                                    gt_root=str(tmp_path / "nowhere")), batch_size=1, seed=0)
  cfg = fake_datasets.write_fake_dataset("reds", str(tmp_path / "d"), task="sr",
                                         clips=("001", "002"), frames=6)
  cfg.update(degradation="bi", num_frames=6, gt_patch=32)
  os.makedirs(os.path.join(cfg["gt_root"], "003"))
  with pytest.raises(ValueError, match="003 has no .png frames"):
    pipeline.make_train_loader(cfg, batch_size=1, seed=0)
  os.rmdir(os.path.join(cfg["gt_root"], "003"))
  bad = os.path.join(cfg["gt_root"], "001", "00000003.png")
  Path(bad).write_bytes(b"\x89PNG\r\n\x1a\n cut off")
  it = iter(pipeline.make_train_loader(cfg, batch_size=2, seed=0))
  with pytest.raises(layouts.BadSampleError, match=r"001/00000003\.png"):
    for _ in range(4):
      next(it)
  # data.skip_bad_samples in the config (what train.py passes on) logs and substitutes.
  it = iter(pipeline.make_train_loader(dict(cfg, skip_bad_samples=True), batch_size=2, seed=0))
  with caplog.at_level(logging.WARNING):
    batches = [next(it) for _ in range(4)]
  assert all(b["gt"].shape == (2, 6, 32, 32, 3) and np.isfinite(b["gt"]).all() for b in batches)
  assert any("00000003.png" in rec.getMessage() for rec in caplog.records)


# ----------------------------------------------------------------------------------------------
# Training: SIGKILL in a step and in an async save, disk full, corrupt checkpoints.
# ----------------------------------------------------------------------------------------------
TRAIN_FLAGS = ("--config=configs/demo.py", "--config.total_steps=4", "--config.batch_size=2",
               "--config.data.num_frames=2",
               "--config.log_every=1", "--config.checkpoint_every=2", "--config.eval_every=-1",
               "--config.data.synthetic_clips=8", "--config.data.val_clips=1",
               "--config.max_to_keep=5")

# Runs train.py with fault hooks (test only; the library has none):
#   KILL_AT_COMMIT=k  SIGKILL at the atomic rename that commits checkpoint k (all of it written);
#   KILL_AT_STEP=k    SIGKILL in step k (after its batch is loaded, before the update);
#   FULL_AFTER_COMMIT=k  after checkpoint k is committed every file write fails (RLIMIT_FSIZE 0);
#   NAN_AT_STEP=k     the input batch of step k is all NaN (the k-th step of this process).
TRAIN_CHILD = textwrap.dedent("""\
    import os, resource, runpy, signal, sys
    from pathlib import Path
    sys.path.insert(0, os.getcwd())
    from orbax.checkpoint._src.path import async_path

    signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # Over-limit writes fail with EFBIG instead.
    real_rename = async_path.rename

    async def rename(src, dst):
      if Path(str(dst)).name == os.environ.get("KILL_AT_COMMIT"):
        os.kill(os.getpid(), signal.SIGKILL)
      result = await real_rename(src, dst)
      if Path(str(dst)).name == os.environ.get("FULL_AFTER_COMMIT"):
        resource.setrlimit(resource.RLIMIT_FSIZE, (0, resource.RLIM_INFINITY))
      return result

    async_path.rename = rename
    if os.environ.get("KILL_AT_STEP") or os.environ.get("NAN_AT_STEP"):
      import numpy as np
      from vrt_jax import sharding
      real_batch, seen = sharding.make_global_batch, []

      def make_global_batch(batch, *args, **kwargs):
        seen.append(1)
        if len(seen) == int(os.environ.get("KILL_AT_STEP", 0)):
          os.kill(os.getpid(), signal.SIGKILL)
        if len(seen) == int(os.environ.get("NAN_AT_STEP", 0)):
          batch = dict(batch, lq=np.full_like(batch["lq"], np.nan))
        return real_batch(batch, *args, **kwargs)

      sharding.make_global_batch = make_global_batch
    sys.argv = ["train.py", *sys.argv[1:]]
    runpy.run_path("train.py", run_name="__main__")
    """)


def run_train(workdir, *flags, **env):
  from tests.integration.test_train import train_env

  return subprocess.run(
      [sys.executable, "-c", TRAIN_CHILD, *TRAIN_FLAGS, f"--workdir={workdir}", *flags],
      cwd=REPO, env=train_env(**env), capture_output=True, text=True, timeout=900)


def _losses(workdir):
  with open(os.path.join(workdir, "metrics.jsonl")) as f:
    records = [json.loads(line) for line in f]
  return [(r["step"], r["loss"]) for r in records if "loss" in r]


def _steps(workdir):
  return sorted(int(d) for d in os.listdir(os.path.join(workdir, "checkpoints")) if d.isdigit())


@pytest.fixture(scope="module")
def reference_run(tmp_path_factory):
  """An uninterrupted 4-step run (checkpoints 2 and 4)."""
  wd = str(tmp_path_factory.mktemp("reference") / "run")
  proc = run_train(wd)
  assert proc.returncode == 0, proc.stderr[-5000:]
  return wd


def _demo_model():
  import vrt_jax

  sys.path.insert(0, str(REPO))
  from configs import demo

  return vrt_jax.VRT(**demo.get_config().model.to_dict())


@pytest.mark.slow
def test_sigkill_in_async_save_and_in_step_resume_to_the_uninterrupted_result(
    tmp_path, reference_run):
  model = _demo_model()
  wd = str(tmp_path / "run")
  # 1. Killed while committing checkpoint 4 (the last one; its files are all written).
  proc = run_train(wd, KILL_AT_COMMIT="4")
  assert proc.returncode == -signal.SIGKILL, proc.stderr[-5000:]
  assert _steps(wd) == [2]
  assert [d for d in os.listdir(os.path.join(wd, "checkpoints")) if d.startswith("4.")]
  # The half-written checkpoint is never picked up: the workdir loads as step 2.
  jax.tree.map(np.testing.assert_array_equal, checkpoint.load_params(wd, model),
               checkpoint.load_params(reference_run, model, step=2))
  # 2. Resumed from 2, killed in step 4 (the 2nd step of this run).
  proc = run_train(wd, KILL_AT_STEP="2")
  assert proc.returncode == -signal.SIGKILL, proc.stderr[-5000:]
  assert "Resuming from" in proc.stderr and _steps(wd)[-1] <= 4
  # 3. Resumed again, runs to the end: the same losses and parameters as without faults.
  proc = run_train(wd)
  assert proc.returncode == 0, proc.stderr[-5000:]
  ref, got = _losses(reference_run), _losses(wd)
  assert [s for s, _ in got] == [1, 2, 3, 4]
  np.testing.assert_allclose([v for _, v in got], [v for _, v in ref], rtol=1e-6)
  jax.tree.map(np.testing.assert_array_equal, checkpoint.load_params(wd, model),
               checkpoint.load_params(reference_run, model))


@pytest.mark.slow
def test_disk_full_at_save_fails_clearly_and_keeps_the_previous_checkpoint(
    tmp_path, reference_run):
  model = _demo_model()
  wd = str(tmp_path / "run")
  proc = run_train(wd, FULL_AFTER_COMMIT="2")
  assert proc.returncode not in (0, -signal.SIGKILL)
  assert "File too large" in proc.stderr or "Errno 27" in proc.stderr, proc.stderr[-5000:]
  assert _steps(wd) == [2]
  jax.tree.map(np.testing.assert_array_equal, checkpoint.load_params(wd, model),
               checkpoint.load_params(reference_run, model, step=2))


def test_unwritable_workdir_fails_at_start(tmp_path):
  (tmp_path / "a_file").write_text("in the way")
  proc = run_train(str(tmp_path / "a_file" / "wd"))
  assert proc.returncode != 0
  assert "a_file/wd" in proc.stderr and "Not a directory" in proc.stderr, proc.stderr[-3000:]
  assert "%|" not in proc.stderr  # No step ran (no progress bar).
  assert proc.returncode == 2 and "Traceback" not in proc.stderr  # A user error: two lines.
  assert len(proc.stderr.strip().splitlines()) <= 2, proc.stderr


@pytest.mark.slow
def test_corrupt_latest_checkpoint_is_reported_and_never_silently_skipped(tmp_path, reference_run,
                                                                         caplog):
  model = _demo_model()
  wd = str(tmp_path / "run")
  shutil.copytree(reference_run, wd)
  _corrupt(Path(wd, "checkpoints", "4", "state"))
  with pytest.raises(checkpoint.CorruptCheckpointError,
                     match=r"checkpoints/4/state is corrupt or incomplete.*steps \[2\].*"
                           r"fallback=True"):
    checkpoint.load_params(wd, model)
  # The previous checkpoint is used only when asked for: by step, or with fallback (warned).
  ref_2 = checkpoint.load_params(reference_run, model, step=2)
  jax.tree.map(np.testing.assert_array_equal, checkpoint.load_params(wd, model, step=2), ref_2)
  with caplog.at_level(logging.WARNING):
    fell_back = checkpoint.load_params(wd, model, fallback=True)
  jax.tree.map(np.testing.assert_array_equal, fell_back, ref_2)
  assert any("unreadable step 4" in r.getMessage() for r in caplog.records)
  # A checkpoint of another model configuration names the mismatching leaf.
  import vrt_jax

  other = vrt_jax.VRT(**_other_kwargs())
  with pytest.raises(ValueError, match=r"does not match the model/config: .*leaf '.*' has shape"):
    checkpoint.load_params(reference_run, other)


def _corrupt(state_dir):
  """Truncates the array data files of a checkpoint item (as a disk error or a bad copy would)."""
  for f in state_dir.rglob("*"):
    if f.is_file() and f.parent.name == "d":
      f.write_bytes(f.read_bytes()[:32])


def _other_kwargs():
  sys.path.insert(0, str(REPO))
  from configs import demo

  kwargs = demo.get_config().model.to_dict()
  kwargs["embed_dims"] = [d * 2 for d in kwargs["embed_dims"]]
  return kwargs


@pytest.mark.slow
def test_nan_policy_skip_skips_the_bad_update_and_finishes(tmp_path, reference_run):
  model = _demo_model()
  wd = str(tmp_path / "run")
  proc = run_train(wd, "--config.nan_policy=skip", NAN_AT_STEP="3")
  assert proc.returncode == 0, proc.stderr[-5000:]
  assert "at step 3: update skipped" in proc.stderr
  assert _steps(wd) == [2, 4]
  records = {r[0]: r[1] for r in _losses(wd)}
  assert not np.isfinite(records[3]) and np.isfinite(records[4])
  params = checkpoint.load_params(wd, model)
  assert all(np.isfinite(x).all() for x in jax.tree.leaves(params))
  # Up to the fault the run is the reference run.
  ref = dict(_losses(reference_run))
  np.testing.assert_allclose([records[1], records[2]], [ref[1], ref[2]], rtol=1e-6)


@pytest.mark.slow
def test_corrupt_latest_checkpoint_resumes_from_the_previous_only_with_the_flag(
    tmp_path, reference_run):
  model = _demo_model()
  wd = str(tmp_path / "run")
  shutil.copytree(reference_run, wd)
  _corrupt(Path(wd, "checkpoints", "4", "state"))
  proc = run_train(wd)
  assert proc.returncode != 0
  assert "checkpoints/4" in proc.stderr and "resume_fallback" in proc.stderr, proc.stderr[-3000:]
  proc = run_train(wd, "--config.resume_fallback=True")
  assert proc.returncode == 0, proc.stderr[-5000:]
  assert os.path.isdir(os.path.join(wd, "checkpoints", "4.corrupt"))
  assert _steps(wd) == [2, 4]
  ref, got = dict(_losses(reference_run)), dict(_losses(wd))
  np.testing.assert_allclose([got[3], got[4]], [ref[3], ref[4]], rtol=1e-6)
  jax.tree.map(np.testing.assert_array_equal, checkpoint.load_params(wd, model),
               checkpoint.load_params(reference_run, model))
