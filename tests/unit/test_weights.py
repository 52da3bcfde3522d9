"""Weights by name: download from a (local) release server, verify, convert once, cache.

A tiny reference-format checkpoint (tests/data/deblur_params.pth, written by torch.save from the
parity weights) is served over HTTP on 127.0.0.1 under a registry name, as the release serves
`<name>.pth`.
"""

import functools
import hashlib
import http.server
import shutil
import threading

import jax
import numpy as np
import pytest

from tests import parity_utils as pu
from vrt_jax import checkpoint, convert, weights
from vrt_jax.vrt import VRT

NAME = "900_VRT_test_tiny_deblur"
PTH = pu.DATA / "deblur_params.pth"
SHA = hashlib.sha256(PTH.read_bytes()).hexdigest()


class _Server:
  """http.server in a thread, serving a folder; counts the requests."""

  def __init__(self, folder):
    self.requests = []
    outer = self

    class Handler(http.server.SimpleHTTPRequestHandler):
      def log_message(self, *args):
        outer.requests.append(self.path)

    self.httpd = http.server.ThreadingHTTPServer(
        ("127.0.0.1", 0), functools.partial(Handler, directory=str(folder)))
    self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}/release"
    self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)
    self.thread.start()

  def stop(self):
    self.httpd.shutdown()
    self.httpd.server_close()


@pytest.fixture
def release(tmp_path, monkeypatch):
  """A release folder served on 127.0.0.1, the registry entry for it, an empty cache."""
  (tmp_path / "www" / "release").mkdir(parents=True)
  shutil.copy(PTH, tmp_path / "www" / "release" / f"{NAME}.pth")
  server = _Server(tmp_path / "www")
  monkeypatch.setenv(weights.URL_ENV, server.url)
  monkeypatch.setenv(weights.CACHE_ENV, str(tmp_path / "cache"))
  monkeypatch.setitem(weights.MODELS, NAME, weights.Entry(pu.config("parity_deblur"), SHA))
  yield server
  server.stop()


@functools.cache
def _want_params():
  model = VRT(**pu.config("parity_deblur"))
  return convert.from_torch(convert.load_torch_checkpoint(str(PTH)), model)["params"]


def test_download_verify_convert_then_cache_hit_without_network(release, tmp_path, capsys):
  lines = []
  path = weights.fetch(NAME, log=lines.append)
  assert path == tmp_path / "cache" / "converted" / NAME
  assert release.requests == [f"/release/{NAME}.pth"]
  assert any("downloading" in line and "CC BY-NC 4.0" in line for line in lines)
  assert "%" in capsys.readouterr().err  # the progress bar
  params = checkpoint.load_params(str(path), VRT(**pu.config("parity_deblur")))
  jax.tree.map(np.testing.assert_array_equal, params, _want_params())
  # Only the converted weights are kept: no .pth, no partial download.
  assert not list((tmp_path / "cache" / "downloads").iterdir())

  release.stop()  # No network from here on.
  assert weights.fetch(NAME, log=lines.append) == path
  import vrt_jax

  restorer = vrt_jax.load(NAME)  # a registry name is enough for the one-call API, offline
  jax.tree.map(np.testing.assert_array_equal, restorer.variables["params"], _want_params())


def test_checksum_mismatch_is_refused_and_nothing_is_kept(release, tmp_path, monkeypatch):
  monkeypatch.setitem(weights.MODELS, NAME, weights.Entry(pu.config("parity_deblur"), "0" * 64))
  with pytest.raises(weights.WeightsError, match=f"checksum mismatch.*SHA-256 {SHA}, expected "
                     f"{'0' * 64}"):
    weights.fetch(NAME, log=lambda line: None)
  assert not weights.is_cached(NAME)
  assert not list((tmp_path / "cache" / "downloads").iterdir())


def test_unpublished_checksum_is_trusted_on_first_use_then_enforced(release, tmp_path,
                                                                    monkeypatch):
  monkeypatch.setitem(weights.MODELS, NAME, weights.Entry(pu.config("parity_deblur"), None))
  lines = []
  weights.fetch(NAME, log=lines.append)
  assert any("trust on first use" in line and SHA in line for line in lines)
  assert weights._recorded_checksums()[NAME] == SHA
  # The cache is cleared and the server now hands out another file: refused.
  shutil.rmtree(weights.converted_dir(NAME))
  served = tmp_path / "www" / "release" / f"{NAME}.pth"
  served.write_bytes(served.read_bytes() + b"tampered")
  with pytest.raises(weights.WeightsError, match="checksum mismatch.*checksums.json"):
    weights.fetch(NAME, log=lines.append)
  assert not weights.is_cached(NAME)


def test_unknown_name_and_unreachable_server_say_what_to_do(release, monkeypatch):
  with pytest.raises(weights.WeightsError, match="unknown model.*006_VRT_videodeblurring_GoPro"):
    weights.fetch("006_VRT_videodeblurring_GoPr")
  release.stop()
  with pytest.raises(weights.WeightsError, match=f"(?s)cannot download .*{weights.URL_ENV}"):
    weights.fetch(NAME, log=lambda line: None)
  monkeypatch.setenv(weights.URL_ENV, "http://127.0.0.1:9/none")
  assert weights.url_for(NAME) == f"http://127.0.0.1:9/none/{NAME}.pth"


def test_registry_names_the_nine_releases_and_the_cache_home(monkeypatch, tmp_path):
  assert sorted(weights.MODELS) == sorted(weights.presets.PRESETS)
  monkeypatch.delenv(weights.URL_ENV, raising=False)
  assert weights.url_for("006_VRT_videodeblurring_GoPro") == (
      "https://github.com/JingyunLiang/VRT/releases/download/v0.0/"
      "006_VRT_videodeblurring_GoPro.pth")
  monkeypatch.delenv(weights.CACHE_ENV, raising=False)
  monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
  assert weights.cache_dir() == tmp_path / "xdg" / "vrt-jax"
  monkeypatch.delenv("XDG_CACHE_HOME")
  monkeypatch.setenv("HOME", str(tmp_path / "home"))
  assert weights.cache_dir() == tmp_path / "home" / ".cache" / "vrt-jax"
