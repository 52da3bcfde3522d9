"""Faithful video IO: colour tags and matrices, audio passthrough, 10-bit video, 16-bit PNGs, and
outputs the writer cannot make refused before any model work.

Source videos are made here with PyAV directly (not with vrt_jax.video), so the reader and writer
are checked against an independent encoding, not against themselves.
"""

import fractions
import re

import av
import cv2
import numpy as np
import pytest
from av.video.reformatter import ColorRange, Colorspace
from standins import SWS, identity_restorer, make_video

from vrt_jax import restore, restore_lib, video

PATCH_COLOURS = np.array([[255, 0, 0], [0, 255, 0], [0, 0, 255], [255, 255, 0], [0, 255, 255],
                          [255, 0, 255], [40, 80, 200], [230, 120, 30]], np.float32) / 255


def patches(h, w):
  """A 2x4 grid of flat colour patches (saturated primaries, where a wrong matrix shows most)
  and the map of their interiors (patch index, -1 within 8 pixels of an edge, which chroma
  subsampling blurs)."""
  img = np.zeros((h, w, 3), np.float32)
  labels = np.full((h, w), -1)
  ph, pw = h // 2, w // 4
  for i, colour in enumerate(PATCH_COLOURS):
    r, q = divmod(i, 4)
    img[r * ph:(r + 1) * ph, q * pw:(q + 1) * pw] = colour
    labels[r * ph + 8:(r + 1) * ph - 8, q * pw + 8:(q + 1) * pw - 8] = i
  return img, labels


def decode(path, matrix=None):
  """A video's frames as float RGB, converted with `matrix` (default: its tagged one) through
  16-bit 4:4:4, and its stream's (primaries, transfer, matrix, range) tags and pixel format."""
  with av.open(str(path)) as container:
    stream = container.streams.video[0]
    ctx = stream.codec_context
    tags = (ctx.color_primaries, ctx.color_trc, ctx.colorspace, ctx.color_range)
    pix_fmt = ctx.format.name
    rng = ColorRange.JPEG if ctx.color_range == 2 else ColorRange.MPEG
    frames = [f.reformat(format="yuv444p16le").to_ndarray(
        format="rgb48le", src_colorspace=matrix or SWS[ctx.colorspace], src_color_range=rng)
        for f in container.decode(stream)]
  return np.stack(frames).astype(np.float32) / 65535, tags, pix_fmt


def audio_packets(path):
  with av.open(str(path)) as container:
    if not container.streams.audio:
      return "none", []
    stream = container.streams.audio[0]
    return stream.codec_context.name, [(bytes(p), p.pts) for p in container.demux(stream)
                                       if p.size]


def levels(a, b, labels):
  """Largest difference in 8-bit levels (code values) between two (H, W, 3) [0, 1] frames
  inside the patches of `labels`."""
  a, b = (np.round(np.asarray(x, np.float64) * 255) for x in (a, b))
  return float(np.abs(a - b)[labels >= 0].max())


def colour_levels(a, b, labels):
  """Largest difference in 8-bit levels between the mean colours of the patches of two frames,
  and the fraction of patch pixels more than 2 levels apart (compression artefacts)."""
  a, b = (np.round(np.asarray(x, np.float64) * 255) for x in (a, b))
  means = [np.abs(a[labels == i].mean(0) - b[labels == i].mean(0)).max()
           for i in range(labels.max() + 1)]
  return float(max(means)), float((np.abs(a - b)[labels >= 0].max(-1) > 2).mean())


def test_hd_bt709_with_audio_restores_tagged_with_audio_and_true_colours(tmp_path):
  img, labels = patches(720, 1280)
  clip = np.stack([img, img[:, ::-1], img[::-1]])
  make_video(tmp_path / "in.mp4", clip, tags=(1, 1, 1), rate=fractions.Fraction(30000, 1001))
  r = identity_restorer()
  kw = dict(tile=(0, 0, 0), tile_overlap=(0, 0, 0), progress=False)
  summary = restore_lib.restore_video(r, str(tmp_path / "in.mp4"), str(tmp_path / "out.mp4"), **kw)
  assert "BT.709" in summary["output"] and "audio copied (aac)" in summary["output"]
  restore_lib.restore_video(r, str(tmp_path / "in.mp4"), str(tmp_path / "png"), **kw)

  out, tags, pix_fmt = decode(tmp_path / "out.mp4")
  assert tags == (1, 1, 1, 1) and pix_fmt == "yuv420p"  # BT.709, limited range.
  png = video.read_images(video.list_frames(tmp_path / "png"))
  out601, _, _ = decode(tmp_path / "out.mp4", matrix=Colorspace.ITU601)
  for t, patch in enumerate([labels, labels[:, ::-1], labels[::-1]]):
    # The frames restored to PNGs are the source's colours (the reader used BT.709) ...
    assert levels(png[t], clip[t], patch) <= 2
    # ... and so are those of the restored mp4, decoded as its tags say (x264 at CRF 17 leaves
    # a few stray pixels off by more, at motion edges).
    mean_error, stray = colour_levels(out[t], png[t], patch)
    assert mean_error <= 2 and stray < 0.001
    # The check has teeth: the output decoded as BT.601 (as players treat untagged HD) is not.
    assert colour_levels(out601[t], png[t], patch)[0] > 10
  # The audio is copied packet for packet, at the same times.
  src_codec, src_packets = audio_packets(tmp_path / "in.mp4")
  out_codec, out_packets = audio_packets(tmp_path / "out.mp4")
  assert out_codec == src_codec == "aac" and out_packets == src_packets and len(src_packets) >= 10
  with av.open(str(tmp_path / "out.mp4")) as container:
    assert container.streams.video[0].average_rate == fractions.Fraction(30000, 1001)
    assert container.streams.video[0].frames == 3


@pytest.mark.parametrize("size, tags, full_range, want", [
    ((480, 640), None, False, (6, 6, 6, 1)),  # Untagged SD: BT.601 (525 lines).
    ((576, 720), None, False, (5, 6, 5, 1)),  # Untagged PAL SD: BT.601 (625 lines).
    ((720, 1280), None, False, (1, 1, 1, 1)),  # Untagged HD: BT.709.
    ((480, 640), (1, 1, 1), False, (1, 1, 1, 1)),  # Tagged BT.709 at SD size stays BT.709.
    ((720, 1280), (6, 6, 6), True, (6, 6, 6, 2)),  # Tagged BT.601 full range at HD size.
])
def test_output_is_tagged_like_the_input_and_keeps_its_colours(tmp_path, size, tags, full_range,
                                                               want):
  img, labels = patches(*size)
  make_video(tmp_path / "in.mp4", img[None], tags=tags, full_range=full_range, audio=False)
  reader = video.open_video(tmp_path / "in.mp4")
  assert reader.color.tagged == (tags is not None) and not reader.has_audio
  writer = video.open_writer(tmp_path / "out.mp4", reader, fps=reader.fps)
  writer.write(0, reader.read(0, 1)[0])
  writer.close()
  reader.close()
  out, out_tags, _ = decode(tmp_path / "out.mp4")
  assert out_tags == want
  mean_error, stray = colour_levels(out[0], img, labels)
  # swscale's full-range conversions are off by up to ~1.5 levels each (measured: saturated blue
  # 255 -> 253.2 through the lossless source alone); full range is rare outside JPEG-like video.
  if full_range:
    assert mean_error <= 4
  else:
    assert mean_error <= 2 and stray < 0.001
  wrong = {1: Colorspace.ITU601}.get(want[2], Colorspace.ITU709)
  assert colour_levels(decode(tmp_path / "out.mp4", matrix=wrong)[0][0], img, labels)[0] > 10


def test_10_bit_source_is_written_as_10_bit_video_and_16_bit_pngs(tmp_path):
  # A gentle ramp: 8 bits hold 65 of its levels, 10 bits about 256.
  ramp = np.linspace(0.3, 0.55, 256, dtype=np.float32)
  img = np.broadcast_to(ramp[None, :, None], (64, 256, 3)).copy()
  img[..., 1] *= 0.9
  make_video(tmp_path / "in.mp4", np.stack([img, img]), pix_fmt="yuv420p10le", audio=False)
  reader = video.open_video(tmp_path / "in.mp4")
  assert reader.bit_depth == 10
  reader.close()
  r = identity_restorer()
  kw = dict(tile=(0, 0, 0), tile_overlap=(0, 0, 0), progress=False)
  summary = restore_lib.restore_video(r, str(tmp_path / "in.mp4"), str(tmp_path / "out.mp4"), **kw)
  assert "yuv420p10le" in summary["output"]
  out, _, pix_fmt = decode(tmp_path / "out.mp4")
  assert pix_fmt == "yuv420p10le"
  # Twice as many distinct levels as 8 bits can hold (65 over this ramp), and near the source
  # (x264 at CRF 17).
  assert len(np.unique(np.round(out[0, 32, :, 0] * 1023))) > 130
  assert np.abs(out - img).max() < 1.5 / 255

  restore_lib.restore_video(r, str(tmp_path / "in.mp4"), str(tmp_path / "png"), **kw)
  first = video.list_frames(tmp_path / "png")[0]
  raw = cv2.imread(str(first), cv2.IMREAD_UNCHANGED)  # An independent PNG reader.
  assert raw.dtype == np.uint16 and raw.shape == (64, 256, 3)
  assert np.abs(raw[..., ::-1] / 65535 - img).max() < 0.5 / 255
  np.testing.assert_allclose(video.read_image(first), raw[..., ::-1] / 65535, atol=1e-6)
  # Forced 8-bit output of the same clip: 8-bit PNGs and 8-bit video.
  eight = video.OutputOptions(bit_depth=8)
  restore_lib.restore_video(r, str(tmp_path / "in.mp4"), str(tmp_path / "png8"), output=eight, **kw)
  assert cv2.imread(str(tmp_path / "png8" / "00000000.png"), cv2.IMREAD_UNCHANGED).dtype == np.uint8
  restore_lib.restore_video(r, str(tmp_path / "in.mp4"), str(tmp_path / "out8.mp4"),
                        output=video.OutputOptions(pix_fmt="yuv420p"), **kw)
  assert decode(tmp_path / "out8.mp4")[2] == "yuv420p"


def test_16_bit_png_round_trip_is_exact(tmp_path):
  rng = np.random.default_rng(0)
  frame = rng.random((17, 23, 3), dtype=np.float32)
  video.write_image(tmp_path / "a.png", frame, bit_depth=16)
  assert video.png_bit_depth(tmp_path / "a.png") == 16
  np.testing.assert_array_equal(video.to_uint16(video.read_image(tmp_path / "a.png")),
                                video.to_uint16(frame))
  raw = cv2.imread(str(tmp_path / "a.png"), cv2.IMREAD_UNCHANGED)
  np.testing.assert_array_equal(raw[..., ::-1], video.to_uint16(frame))
  # A folder of 16-bit PNGs is a 16-bit input: restored to 16-bit PNGs by default.
  video.write_video(tmp_path / "in", np.stack([frame[:16, :16]] * 4), bit_depth=16)
  reader = video.open_video(tmp_path / "in")
  assert reader.bit_depth == 16
  reader.close()
  restore_lib.restore_video(identity_restorer(), str(tmp_path / "in"), str(tmp_path / "out"),
                        tile=(0, 0, 0), tile_overlap=(0, 0, 0), progress=False)
  np.testing.assert_array_equal(video.read_images(video.list_frames(tmp_path / "out")),
                                video.read_images(video.list_frames(tmp_path / "in")))


@pytest.mark.parametrize("output, options, match", [
    ("out.webm", dict(codec="libx264"), "cannot hold libx264"),
    ("out.mp4", dict(codec="no_such_codec"), "no video encoder 'no_such_codec'"),
    ("out.mp4", dict(pix_fmt="no_such_format"), "cannot encode pixel format"),
    ("out.webm", dict(pix_fmt="yuv420p10le"), "libvpx-vp9 cannot encode pixel format"),
    ("out.mp4", dict(codec="ffv1", crf=20), "no constant-quality"),
    ("out.mkv", dict(crf=-1), "CRF must be >= 0"),
    ("out.mp4", dict(bit_depth=16), "--bit_depth is for PNG"),
    ("frames", dict(pix_fmt="yuv420p10le"), "are for video outputs"),
    ("out.webm", {}, "cannot hold the input's aac audio"),  # WebM takes Opus/Vorbis only.
])
def test_unwritable_output_fails_before_the_model_is_loaded(tmp_path, monkeypatch, capsys,
                                                            output, options, match):
  img, _ = patches(64, 128)
  make_video(tmp_path / "in.mp4", img[None])

  def must_not_run(*args, **kwargs):
    raise AssertionError("the model was loaded or run before the output was checked")

  monkeypatch.setattr(restore, "load_restorer", must_not_run)
  argv = [str(tmp_path / "in.mp4"), str(tmp_path / output), "--weights", "unused"]
  for key, value in options.items():
    argv += [f"--{key}", str(value)]
  # The CLI reports a user error in two lines on stderr and exits with status 2.
  with pytest.raises(SystemExit) as exit_info:
    restore.main(argv)
  assert exit_info.value.code == 2
  assert re.search(match, capsys.readouterr().err)
  # Same through the library: the writer is set up before any tile is restored.
  monkeypatch.setattr(restore_lib.inference, "restore_stream", must_not_run)
  with pytest.raises(ValueError, match=match):
    restore_lib.restore_video(identity_restorer(), str(tmp_path / "in.mp4"), str(tmp_path / output),
                          tile=(0, 0, 0), progress=False, output=video.OutputOptions(**options))
  assert sorted(p.name for p in tmp_path.iterdir()) == ["in.mp4"]  # Nothing left behind.


def test_audio_is_dropped_on_request_or_when_the_rate_changes(tmp_path):
  img, _ = patches(64, 128)
  make_video(tmp_path / "in.mp4", np.stack([img] * 3))
  r = identity_restorer()
  kw = dict(tile=(0, 0, 0), tile_overlap=(0, 0, 0), progress=False)
  restore_lib.restore_video(r, str(tmp_path / "in.mp4"), str(tmp_path / "a.webm"),
                        output=video.OutputOptions(audio=False), **kw)
  assert audio_packets(tmp_path / "a.webm") == ("none", [])
  assert decode(tmp_path / "a.webm")[0].shape == (3, 64, 128, 3)
  summary = restore_lib.restore_video(r, str(tmp_path / "in.mp4"), str(tmp_path / "b.mp4"), fps=50,
                                  **kw)
  assert "audio dropped" in summary["output"]
  assert audio_packets(tmp_path / "b.mp4") == ("none", [])


def test_frame_folders_and_odd_sizes(tmp_path):
  rng = np.random.default_rng(1)
  # PNG frames (sRGB) to video: tagged by output size, 4:4:4 when the size is odd.
  video.write_video(tmp_path / "odd", rng.random((2, 17, 33, 3), dtype=np.float32))
  reader = video.open_video(tmp_path / "odd")
  assert reader.color is None and reader.bit_depth == 8 and not reader.has_audio
  writer = video.open_writer(tmp_path / "odd.mp4", reader, fps=reader.fps)
  for t in range(2):
    writer.write(t, reader.read(t, t + 1)[0])
  writer.close()
  frames, tags, pix_fmt = decode(tmp_path / "odd.mp4")
  assert pix_fmt == "yuv444p" and tags == (6, 6, 6, 1) and frames.shape == (2, 17, 33, 3)
  with pytest.raises(ValueError, match="subsamples chroma, so the frame size must be even"):
    video.open_writer(tmp_path / "odd420.mp4", reader, fps=reader.fps,
                      options=video.OutputOptions(pix_fmt="yuv420p"))
  reader.close()
  assert not list(tmp_path.glob("*odd420*"))
