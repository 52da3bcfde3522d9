"""MATLAB-compatible bicubic imresize against MATLAB's own outputs.

Expected values: MATLAB `imresize(x, [h, w], 'bicubic', 'antialiasing', true|false)` outputs
published as test_answer/*.mat in github.com/sanghyun-son/bicubic_pytorch (commit da432d1; the
script that made them with MATLAB is test_answer/gen_test.m there). Inputs, as in gen_test.m:
square = reshape(0:63, 8, 8)', small = reshape(0:15, 4, 4)', grid15 = reshape(0:224, 15, 15)',
topleft = zeros(4) with (1,1)=100, (2,1)=10, (1,2)=1, (1,4)=100. Values below are those .mat
files rounded to 10 decimals.
"""

import numpy as np
import pytest

from vrt_jax.data.imresize import imresize, resize_matrix


def _inputs():
  topleft = np.zeros((4, 4))
  topleft[0, 0], topleft[1, 0], topleft[0, 1], topleft[0, 3] = 100, 10, 1, 100
  return {"square": np.arange(64.0).reshape(8, 8), "small": np.arange(16.0).reshape(4, 4),
          "grid15": np.arange(225.0).reshape(15, 15), "topleft": topleft}


MATLAB_CASES = [
    ("down_down_small_aa", "small", (3, 3), True, [
        [0.7505518764, 2.1004415011, 3.4503311258],
        [6.1501103753, 7.5000000000, 8.8498896247],
        [11.5496688742, 12.8995584989, 14.2494481236],
    ]),
    ("down_down_aa", "square", (3, 4), True, [
        [6.4725287733, 8.5115912733, 10.5350287733, 12.5740912733],
        [28.4492187500, 30.4882812500, 32.5117187500, 34.5507812500],
        [50.4259087267, 52.4649712267, 54.4884087267, 56.5274712267],
    ]),
    ("down_down_irregular_aa", "square", (5, 7), True, [
        [2.1845251254, 3.3191373856, 4.4688413715, 5.6204597701, 6.7720781688, 7.9217821547,
         9.0563944149],
        [15.2197715700, 16.3543838301, 17.5040878161, 18.6557062147, 19.8073246133,
         20.9570285992, 22.0916408594],
        [28.0640653553, 29.1986776154, 30.3483816014, 31.5000000000, 32.6516183986,
         33.8013223846, 34.9359346447],
        [40.9083591406, 42.0429714008, 43.1926753867, 44.3442937853, 45.4959121839,
         46.6456161699, 47.7802284300],
        [53.9436055851, 55.0782178453, 56.2279218312, 57.3795402299, 58.5311586285,
         59.6808626144, 60.8154748746],
    ]),
    ("down_down_x2_aa", "square", (4, 4), True, [
        [4.0429687500, 6.0820312500, 8.1054687500, 10.1445312500],
        [20.3554687500, 22.3945312500, 24.4179687500, 26.4570312500],
        [36.5429687500, 38.5820312500, 40.6054687500, 42.6445312500],
        [52.8554687500, 54.8945312500, 56.9179687500, 58.9570312500],
    ]),
    ("down_down_x4_aa", "square", (2, 2), True, [
        [12.3837890625, 16.6318359375],
        [46.3681640625, 50.6162109375],
    ]),
    ("down_down_x3_aa", "grid15", (5, 5), True, [
        [14.4197530864, 17.5061728395, 20.5185185185, 23.5308641975, 26.6172839506],
        [60.7160493827, 63.8024691358, 66.8148148148, 69.8271604938, 72.9135802469],
        [105.9012345679, 108.9876543210, 112.0000000000, 115.0123456790, 118.0987654321],
        [151.0864197531, 154.1728395062, 157.1851851852, 160.1975308642, 163.2839506173],
        [197.3827160494, 200.4691358025, 203.4814814815, 206.4938271605, 209.5802469136],
    ]),
    ("down_down_x5_aa", "grid15", (3, 3), True, [
        [29.1072000000, 34.2880000000, 39.4688000000],
        [106.8192000000, 112.0000000000, 117.1808000000],
        [184.5312000000, 189.7120000000, 194.8928000000],
    ]),
    ("down_down_noaa", "square", (3, 4), False, [
        [7.0115740741, 9.0740740741, 11.0740740741, 13.1365740741],
        [28.4375000000, 30.5000000000, 32.5000000000, 34.5625000000],
        [49.8634259259, 51.9259259259, 53.9259259259, 55.9884259259],
    ]),
    ("up_up_topleft_noaa", "topleft", (5, 5), False, [
        [108.6852250000, 27.6970975000, -12.4465625000, 26.8841925000, 109.2025000000],
        [35.4713650000, 8.9707890000, -3.5895625000, 6.6374370000, 26.9610000000],
        [-0.6503125000, -0.2122187500, 0.3945312500, -1.6079062500, -6.5312500000],
        [-0.7680750000, -0.1896300000, 0.0459375000, 0.0000000000, 0.0000000000],
        [0.0000000000, 0.0000000000, 0.0000000000, 0.0000000000, 0.0000000000],
    ]),
]


@pytest.mark.parametrize("name,inp,shape,aa,expected", MATLAB_CASES,
                         ids=[c[0] for c in MATLAB_CASES])
def test_matches_matlab_imresize(name, inp, shape, aa, expected):
  out = imresize(_inputs()[inp], output_shape=shape, antialiasing=aa, axes=(0, 1))
  np.testing.assert_allclose(out, np.array(expected), rtol=0, atol=1e-9)


def test_scale_factor_matches_matlab_x4_and_x2():
  # imresize(x, 1/4) and imresize(x, 1/2) give the same sizes as the [2, 2] / [4, 4] cases.
  square = _inputs()["square"]
  expected_x4 = np.array(dict((c[0], c[4]) for c in MATLAB_CASES)["down_down_x4_aa"])
  expected_x2 = np.array(dict((c[0], c[4]) for c in MATLAB_CASES)["down_down_x2_aa"])
  np.testing.assert_allclose(imresize(square, 0.25, axes=(0, 1)), expected_x4, atol=1e-9)
  np.testing.assert_allclose(imresize(square, 0.5, axes=(0, 1)), expected_x2, atol=1e-9)


def test_resizes_every_frame_and_channel_alike():
  rng = np.random.default_rng(0)
  clip = rng.uniform(size=(3, 16, 20, 3)).astype(np.float32)
  out = imresize(clip, 0.25)
  assert out.shape == (3, 4, 5, 3) and out.dtype == np.float32
  single = imresize(clip[1, :, :, 2].astype(np.float64), 0.25, axes=(0, 1))
  np.testing.assert_allclose(out[1, :, :, 2], single, atol=1e-5)


def test_rows_of_resize_matrix_sum_to_one():
  m = resize_matrix(256, 64, 0.25, True)
  np.testing.assert_allclose(m.sum(axis=1), 1.0, atol=1e-12)


def test_constant_image_stays_constant():
  np.testing.assert_allclose(imresize(np.full((12, 12, 3), 0.3), 1 / 3), 0.3, atol=1e-12)


def test_rejects_scale_and_output_shape_together():
  with pytest.raises(ValueError, match="exactly one"):
    imresize(np.zeros((8, 8, 3)), 0.5, output_shape=(4, 4))
