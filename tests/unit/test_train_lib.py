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
