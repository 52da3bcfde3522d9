"""Official checkpoints load without PyTorch, convert strictly, and hostile files are refused.

The .pth fixtures in tests/data were written by torch.save (PyTorch 2.14.1): `deblur_params.pth`
is the deblur parity state_dict in the released checkpoints' {'params': ...} form, `mixed_bare.pth`
a bare state_dict with several dtypes, strided views and shared storages, `legacy_format.pth` the
pre-1.6 format.
"""

import io
import pickle
import subprocess
import sys
import zipfile

import jax
import numpy as np
import pytest

from tests import parity_utils as pu
from vrt_jax import convert, presets
from vrt_jax.vrt import VRT

DATA = pu.DATA


def test_torch_is_not_needed():
  code = ("import sys; sys.modules['torch'] = None; from vrt_jax import convert; "
          f"sd = convert.load_torch_checkpoint({str(DATA / 'mixed_bare.pth')!r}); print(len(sd))")
  out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
  assert out.stdout.strip() == "9"


def test_bare_state_dict_with_views_and_dtypes():
  sd = convert.load_torch_checkpoint(str(DATA / "mixed_bare.pth"))
  base = np.arange(24, dtype=np.float32).reshape(4, 6)
  np.testing.assert_allclose(sd["f32"], np.linspace(-1, 1, 10, dtype=np.float32), atol=1e-7)
  assert sd["f16"].dtype == np.float16 and sd["f16"].tolist() == [0.5, -2.0, 3.25]
  assert sd["bf16"].dtype == np.float32 and sd["bf16"].tolist() == [1.5, -0.125]
  assert sd["i64"].dtype == np.int64 and sd["i64"].tolist() == [[1, -2], [3, 4]]
  assert sd["bool"].tolist() == [True, False, True]
  np.testing.assert_array_equal(sd["transposed"], base.T)
  np.testing.assert_array_equal(sd["row_slice"], base[2])
  assert sd["scalar"].shape == () and float(sd["scalar"]) == 7.0
  np.testing.assert_array_equal(sd["param"], np.ones((2, 3), np.float32))


def test_params_form_checkpoint_converts_to_the_parity_weights():
  sd = convert.load_torch_checkpoint(str(DATA / "deblur_params.pth"))
  ref = pu.state_dict("parity_deblur")
  assert sorted(sd) == sorted(ref)
  for k in ref:
    np.testing.assert_array_equal(sd[k], ref[k])
  model = VRT(**pu.config("parity_deblur"))
  got = convert.from_torch(sd, model)  # the stored buffers are checked too
  want = convert.from_torch(pu.params_only(ref), model)
  jax.tree.map(np.testing.assert_array_equal, got, want)


def test_converted_pth_gives_reference_output():
  """The .pth path end to end: same output as the reference on the deblur extra clip."""
  z = pu.load("parity_deblur")
  model = VRT(**pu.config("parity_deblur"))
  variables = convert.from_torch(convert.load_torch_checkpoint(str(DATA / "deblur_params.pth")),
                                 model)
  out = jax.jit(model.apply)(variables, pu.clip(z["extra/t8_64x64/input"]))
  np.testing.assert_allclose(out, pu.clip(z["extra/t8_64x64/output"]), atol=2e-5, rtol=0)


def _evil_pth(tmp_path, global_ref: bytes):
  payload = b"\x80\x02c" + global_ref + b"\n(S'echo pwned'\ntR."
  path = tmp_path / "evil.pth"
  with zipfile.ZipFile(path, "w") as zf:
    zf.writestr("evil/data.pkl", payload)
  return path


@pytest.mark.parametrize("ref", [b"os\nsystem", b"builtins\neval", b"subprocess\ncall"])
def test_hostile_pickle_is_refused(tmp_path, ref):
  with pytest.raises(pickle.UnpicklingError, match="refusing to unpickle"):
    convert.load_torch_checkpoint(str(_evil_pth(tmp_path, ref)))


def test_legacy_truncated_and_foreign_files_are_refused_clearly(tmp_path):
  with pytest.raises(ValueError, match="not a PyTorch zip checkpoint"):
    convert.load_torch_checkpoint(str(DATA / "legacy_format.pth"))
  data = (DATA / "mixed_bare.pth").read_bytes()
  (tmp_path / "cut.pth").write_bytes(data[: len(data) // 2])
  with pytest.raises(ValueError):
    convert.load_torch_checkpoint(str(tmp_path / "cut.pth"))
  with zipfile.ZipFile(tmp_path / "other.zip", "w") as zf:
    zf.writestr("readme.txt", "hello")
  with pytest.raises(ValueError, match="no data.pkl"):
    convert.load_torch_checkpoint(str(tmp_path / "other.zip"))
  with pytest.raises(ValueError, match="does not exist"):
    convert.load_torch_checkpoint(str(tmp_path / "missing.pth"))


def test_missing_storage_is_reported(tmp_path):
  src = zipfile.ZipFile(DATA / "mixed_bare.pth")
  with zipfile.ZipFile(tmp_path / "partial.pth", "w") as dst:
    for n in src.namelist():
      if not n.endswith("/data/3"):
        dst.writestr(n, src.read(n))
  with pytest.raises(ValueError, match="storage 3 is missing"):
    convert.load_torch_checkpoint(str(tmp_path / "partial.pth"))


def test_strict_conversion_lists_missing_unexpected_and_misshaped_keys():
  model = VRT(**pu.config("parity_deblur"))
  sd = pu.params_only(pu.state_dict("parity_deblur"))
  bad = dict(sd)
  del bad["stage2.linear1.weight"]
  bad["stage2.extra_layer.weight"] = np.zeros(3, np.float32)
  bad["conv_first.bias"] = np.zeros(5, np.float32)
  with pytest.raises(ValueError) as e:
    convert.from_torch(bad, model)
  msg = str(e.value)
  assert "missing keys (1): stage2.linear1.weight" in msg
  assert "unexpected keys (1): stage2.extra_layer.weight" in msg
  assert "conv_first.bias: checkpoint shape (5,)" in msg


def test_buffers_are_checked_against_the_configuration():
  model = VRT(**pu.config("parity_deblur"))
  sd = pu.params_only(pu.state_dict("parity_deblur"))
  name = "stage1.residual_group1.blocks.0.attn.position_bias"
  bad = dict(sd, **{name: convert.expected_buffers(model)[name] + 0.5})
  with pytest.raises(ValueError, match=f"buffer {name} does not match"):
    convert.from_torch(bad, model)


def test_flax_names_map_to_torch_names():
  assert convert.torch_name(("stage8_0_2", "kernel")) == "stage8.0.2.weight"
  assert convert.torch_name(("stage8_3", "residual_group", "blocks_1", "norm1", "scale")) == (
      "stage8.3.residual_group.blocks.1.norm1.weight")
  assert convert.torch_name(("spynet", "basic_module_5", "basic_module_8", "bias")) == (
      "spynet.basic_module.5.basic_module.8.bias")
  assert convert.torch_name(("stage1", "residual_group1", "blocks_0", "attn",
                             "relative_position_bias_table")) == (
      "stage1.residual_group1.blocks.0.attn.relative_position_bias_table")


@pytest.mark.slow
def test_preset_parameter_counts_equal_the_reference():
  expected = {"001": 30_676_435, "002": 35_134_783, "003": 32_577_991, "004": 32_577_991,
              "005": 18_320_007, "006": 18_320_007, "007": 18_320_007, "008": 18_320_871,
              "009": 9_943_387}
  counted = {}  # Presets with the same architecture (003/004, 005-007) are traced once.
  for name in presets.PRESETS:
    kwargs = presets.get_preset(name)
    key = repr(sorted(kwargs.items()))
    if key not in counted:
      counted[key] = convert.param_count(VRT(**kwargs))
    assert counted[key] == expected[name[:3]], name
  assert len(counted) == 6


def test_pth_bytes_roundtrip_is_independent_of_file_position():
  # load_torch_checkpoint accepts any path-like readable by zipfile, e.g. an in-memory copy.
  data = io.BytesIO((DATA / "mixed_bare.pth").read_bytes())
  sd = convert.load_torch_checkpoint(data)
  assert len(sd) == 9
