"""Checkpoints: export/load of params, training-state save/restore, clear errors."""

import json
import os
import shutil

import grain
import jax
import jax.numpy as jnp
import numpy as np
import pytest

import vrt_jax
from vrt_jax import checkpoint, presets


def _model(**overrides):
  kwargs = presets.tiny(depths=[1] * 9, **overrides)
  return vrt_jax.VRT(**kwargs), kwargs


def _random_params(model, seed=0):
  abstract = checkpoint.abstract_params(model)
  leaves, treedef = jax.tree.flatten(abstract)
  rng = np.random.default_rng(seed)
  return jax.tree.unflatten(
      treedef, [rng.standard_normal(a.shape).astype(a.dtype) for a in leaves])


def test_export_then_load_params_roundtrip(tmp_path):
  model, kwargs = _model()
  params = _random_params(model)
  checkpoint.export_params(str(tmp_path / "exp"), params, kwargs, preset=None)
  record = json.loads((tmp_path / "exp" / checkpoint.MODEL_CONFIG).read_text())
  assert record == {"preset": None, "model": json.loads(json.dumps(kwargs))}
  loaded = checkpoint.load_params(str(tmp_path / "exp"), model)
  jax.tree.map(np.testing.assert_array_equal, loaded, params)


def test_load_params_names_first_mismatching_leaf(tmp_path):
  model, kwargs = _model()
  checkpoint.export_params(str(tmp_path / "exp"), _random_params(model), kwargs)
  other, _ = _model(embed_dims=[8] * 7 + [24, 24])
  with pytest.raises(ValueError, match=r"does not match.*leaf '.*' has shape"):
    checkpoint.load_params(str(tmp_path / "exp"), other)


def test_load_params_errors_for_missing_empty_and_corrupt(tmp_path):
  model, kwargs = _model()
  with pytest.raises(ValueError, match="No checkpoint at"):
    checkpoint.load_params(str(tmp_path / "nothing"), model)
  (tmp_path / "empty").mkdir()
  with pytest.raises(ValueError, match="holds no checkpoint"):
    checkpoint.load_params(str(tmp_path / "empty"), model)
  (tmp_path / "weights.npz").write_bytes(b"x")
  with pytest.raises(ValueError, match="not a PyTorch .pth"):
    checkpoint.load_params(str(tmp_path / "weights.npz"), model)
  checkpoint.export_params(str(tmp_path / "exp"), _random_params(model), kwargs)
  params_dir = tmp_path / "exp" / checkpoint.PARAMS_DIR
  for entry in os.listdir(params_dir):  # Keep the metadata, lose the array data.
    if entry not in ("_METADATA", "_CHECKPOINT_METADATA"):
      p = params_dir / entry
      shutil.rmtree(p) if p.is_dir() else p.unlink()
  with pytest.raises(ValueError, match="corrupt or incomplete|Cannot read"):
    checkpoint.load_params(str(tmp_path / "exp"), model)


def _state(params):
  return {"step": jnp.array(3, jnp.int32), "params": params,
          "opt_state": {"mu": jax.tree.map(jnp.zeros_like, params)}}


def test_training_checkpoint_restores_state_and_data_iterator(tmp_path):
  model, _ = _model()
  params = jax.tree.map(jnp.asarray, _random_params(model))
  it = iter(grain.MapDataset.range(100).to_iter_dataset())
  for _ in range(3):
    next(it)
  manager = checkpoint.make_manager(str(tmp_path), max_to_keep=2)
  checkpoint.save_state(manager, 3, _state(params), it)
  manager.wait_until_finished()
  after_save = [next(it) for _ in range(2)]

  # The params of a workdir load like any other checkpoint.
  loaded = checkpoint.load_params(str(tmp_path), model)
  jax.tree.map(np.testing.assert_array_equal, loaded, jax.device_get(params))

  fresh = iter(grain.MapDataset.range(100).to_iter_dataset())
  sharding = jax.sharding.SingleDeviceSharding(jax.devices()[0])
  abstract = jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=sharding),
                          _state(params))
  restored = checkpoint.restore_state(manager, 3, abstract, fresh)
  assert int(restored["step"]) == 3
  jax.tree.map(np.testing.assert_array_equal, restored["params"], params)
  assert [next(fresh) for _ in range(2)] == after_save

  other, _ = _model(embed_dims=[8] * 7 + [24, 24])
  wrong = jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=sharding),
                       _state(_random_params(other)))
  with pytest.raises(ValueError, match=r"leaf 'params/.*' has shape"):
    checkpoint.restore_state(manager, 3, wrong, iter(grain.MapDataset.range(100).to_iter_dataset()))
  manager.close()


def test_checkpoint_of_another_process_count_restores_the_state_only(tmp_path):
  """A checkpoint saved by a 2-process run, resumed by one process: grain's iterator states are
  per process, so only the state restores (train_lib then restarts the data order)."""
  model, _ = _model()
  params = jax.tree.map(jnp.asarray, _random_params(model))
  manager = checkpoint.make_manager(str(tmp_path), max_to_keep=2)
  checkpoint.save_state(manager, 5, _state(params),
                        iter(grain.MapDataset.range(9).to_iter_dataset()))
  manager.wait_until_finished()
  assert checkpoint.data_saved_by(manager, 5) == ["process_0-of-1.json"]
  assert checkpoint.data_layout_matches(manager, 5)
  data_dir = tmp_path / checkpoint.CHECKPOINT_DIR / "5" / "data"
  state_json = (data_dir / "process_0-of-1.json").read_text()
  (data_dir / "process_0-of-1.json").unlink()
  for i in range(2):  # As two processes would have written them.
    (data_dir / f"process_{i}-of-2.json").write_text(state_json)
  assert not checkpoint.data_layout_matches(manager, 5)

  sharding = jax.sharding.SingleDeviceSharding(jax.devices()[0])
  abstract = jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=sharding),
                          _state(params))
  with pytest.raises(checkpoint.CorruptCheckpointError, match="process_0-of-1.json"):
    checkpoint.restore_state(manager, 5, abstract,
                             iter(grain.MapDataset.range(9).to_iter_dataset()))
  restored = checkpoint.restore_state(manager, 5, abstract, None)
  assert int(restored["step"]) == int(_state(params)["step"])
  jax.tree.map(np.testing.assert_array_equal, restored["params"], params)
  manager.close()


def test_transfer_params_copies_matching_leaves_and_reports_the_rest():
  """Fine-tuning 003/004 from 002: only the parallel-warping weights differ in shape."""
  from vrt_jax import convert, presets

  def ones_like_model(value, **kw):
    abstract = convert.abstract_params(vrt_jax.VRT(**presets.tiny(embed_dims=[24] * 9, **kw)))
    return jax.tree.map(lambda s: np.full(s.shape, value, np.float32), abstract)

  source = ones_like_model(1.0, pa_frames=6, deformable_groups=12)
  target = ones_like_model(0.0, pa_frames=4, deformable_groups=8)
  params, fresh = checkpoint.transfer_params(source, target)
  assert fresh and all("pa_deform" in p for p in fresh)
  assert any(p.endswith("conv_offset_0/kernel") for p in fresh)
  flat = dict(jax.tree_util.tree_flatten_with_path(params)[0])
  for path, value in flat.items():
    name = "/".join(k.key for k in path)
    assert np.all(value == (0.0 if name in fresh else 1.0)), name

