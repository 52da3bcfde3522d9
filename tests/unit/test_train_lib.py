"""train_lib helpers that need no training run."""

from tqdm import tqdm

from vrt_jax import train_lib


def test_phase_shows_on_the_bar_and_is_silent_on_a_disabled_one(capsys):
  """Processes other than 0 have a disabled bar (no description): a phase must not fail there."""
  with train_lib.phase(tqdm(total=1, disable=True), "compiling"):
    pass
  bar = tqdm(total=1, desc="train")
  with train_lib.phase(bar, "compiling"):
    assert bar.desc.startswith("compiling")
  assert bar.desc.startswith("train")
  bar.close()
  assert "compiling: 0 s" in capsys.readouterr().out


def test_config_changes_lists_every_changed_setting():
  import json

  import ml_collections

  config = ml_collections.ConfigDict(dict(seed=0, model=dict(img_size=(2, 64, 64), depths=[2]),
                                          data=dict(sigma=(40, 60))))
  saved = json.loads(config.to_json_best_effort())
  assert train_lib.config_changes(saved, config) == []
  assert train_lib.config_changes(None, config) == []  # No saved config: nothing known.
  config.model.img_size = (4, 64, 64)
  config.data.sigma = (30, 50)
  config.lr = 1e-3
  assert train_lib.config_changes(saved, config) == [
      "data.sigma: [40, 60] -> [30, 50]", "lr: (unset) -> 0.001",
      "model.img_size: [2, 64, 64] -> [4, 64, 64]"]


def test_an_unknown_compute_dtype_is_named_before_anything_is_written(tmp_path):
  import pytest

  from configs import demo

  config = demo.get_config()
  config.model.dtype = "bf16"
  with pytest.raises(ValueError, match="config.model.dtype must be one of float32, bfloat16 .* "
                                       "got 'bf16'"):
    train_lib.train_and_evaluate(config, str(tmp_path / "run"))
  assert not (tmp_path / "run").exists()


def test_an_unknown_matmul_precision_is_named_before_anything_is_written(tmp_path):
  import pytest

  from configs import demo

  config = demo.get_config()
  config.model.matmul_precision = "float32"
  with pytest.raises(ValueError, match="config.model.matmul_precision must be one of default, "
                                       "high, highest, got 'float32'"):
    train_lib.train_and_evaluate(config, str(tmp_path / "run"))
  assert not (tmp_path / "run").exists()
