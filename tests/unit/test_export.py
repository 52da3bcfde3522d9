"""vrt-export: the StableHLO forward round-trips (serialize, deserialize, call: same frames)."""

import json

import jax
import numpy as np
import pytest
from standins import write_tiny_setup

import vrt_jax
from vrt_jax import checkpoint, export, presets

SHAPE = (1, 2, 64, 64)


@pytest.fixture(scope="module")
def tiny_weights(tmp_path_factory):
  """A directory with the tiny VRT's weights, exported with its model record."""
  tmp = tmp_path_factory.mktemp("export")
  return tmp, write_tiny_setup(tmp)[1]


@pytest.fixture(scope="module")
def tiny(tiny_weights):
  """The tiny VRT's weights directory, an input tile and the frames model.apply makes of it."""
  tmp, weights = tiny_weights
  model = vrt_jax.VRT(**presets.tiny())
  params = checkpoint.load_params(str(weights), model)
  x = np.random.default_rng(0).random((*SHAPE, 3), dtype=np.float32)
  want = np.asarray(jax.jit(model.apply)({"params": params}, x))
  return tmp, weights, x, want


@pytest.mark.slow
@pytest.mark.parametrize("mode", ["baked", "argument"])
def test_export_round_trip_gives_the_same_frames(tiny, mode, capsys):
  tmp, weights, x, want = tiny
  out = tmp / mode
  export.main([str(out), "--weights", str(weights), "--params", mode,
               "--shape", ",".join(map(str, SHAPE))])
  assert "exported model forward (1, 2, 64, 64, 3) -> (1, 2, 64, 64, 3)" in capsys.readouterr().out
  sidecar = json.loads((out / export.SIDECAR).read_text())
  assert sidecar["input_shape"] == [*SHAPE, 3] and sidecar["input_dtype"] == "float32"
  assert sidecar["model"] == presets.tiny() and sidecar["params"] == mode
  assert sidecar["platforms"] == [jax.default_backend()]
  assert (out / export.BYTECODE).read_bytes()[:4] == b"ML\xefR"  # MLIR bytecode magic.

  exported = export.load(out)  # Deserialized: no model code involved from here on.
  if mode == "baked":
    got = exported.call(x)
    assert not (out / export.PARAMS).exists()
  else:
    params = export.load_params(out)
    assert [leaf["name"] for leaf in sidecar["param_leaves"]] == list(np.load(out / export.PARAMS))
    got = exported.call(params, x)
    # The module is the architecture alone: other weights give other frames.
    other = jax.tree_util.tree_map(lambda p: p * 0.5, params)
    assert np.abs(np.asarray(exported.call(other, x)) - want).max() > 1e-3
  np.testing.assert_allclose(np.asarray(got), want, atol=1e-5, rtol=0)


def test_export_refuses_shapes_and_models_it_cannot_export(tiny_weights, tmp_path):
  _, weights = tiny_weights
  for shape, match in [("1,2,60,64", "H=60 is not supported"), ("1,2,64", "B,T,H,W"),
                       ("1,2,64,64,4", "expects 3 channels")]:
    with pytest.raises(SystemExit, match=match):
      export.main([str(tmp_path / "o"), "--weights", str(weights), "--shape", shape])
  with pytest.raises(SystemExit, match="--shape"):  # No preset, so no official tile.
    export.main([str(tmp_path / "o"), "--weights", str(weights)])
  (tmp_path / "bare").mkdir()
  with pytest.raises(SystemExit, match="does not say which model"):
    export.main([str(tmp_path / "o"), "--weights", str(tmp_path / "bare"), "--shape", "1,2,64,64"])
  assert not (tmp_path / "o").exists()
