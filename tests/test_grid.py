"""Crop grid (paper Eq. 1) and the small-frame resize rule, against hand-computed numbers."""

from __future__ import annotations

import pytest

from clifvqa.extract.grid import crop_origins, parse_grid, upscaled_size


@pytest.mark.parametrize(
    "height, width, expected",
    [
        (180, 320, (224, 398)),  # 320 * 224 / 180 = 398.2
        (100, 100, (224, 224)),
        (300, 200, (336, 224)),  # portrait: 300 * 224 / 200 = 336
        (240, 320, (240, 320)),  # both sides >= 224: unchanged
        (224, 224, (224, 224)),
        (200, 225, (224, 252)),  # 225 * 224 / 200 = 252.0
        (128, 130, (224, 228)),  # 130 * 224 / 128 = 227.5 -> round-half-even gives 228
        (160, 250, (224, 350)),  # 250 * 224 / 160 = 350.0
        (96, 160, (224, 373)),  # 160 * 224 / 96 = 373.3
        (1080, 100, (2419, 224)),  # only the short side matters: 1080 * 224 / 100 = 2419.2
    ],
)
def test_upscaled_size(height, width, expected):
    assert upscaled_size(height, width, 224) == expected


def test_upscaled_size_uses_python_round_half_even():
    # 10 * 10 / 8 = 12.5 -> 12 (even), 14 * 10 / 8 = 17.5 -> 18 (even)
    assert upscaled_size(8, 10, 10) == (10, 12)
    assert upscaled_size(14, 8, 10) == (18, 10)


def test_upscaled_size_rejects_nonpositive():
    with pytest.raises(ValueError, match="positive"):
        upscaled_size(0, 10, 224)


def test_crop_origins_full_hd_3x3():
    # (1080 - 224) // 2 = 428, (1920 - 224) // 2 = 848
    assert crop_origins(1080, 1920, 224, 3, 3) == ([0, 428, 856], [0, 848, 1696])


def test_crop_origins_non_divisible():
    # H - c = 316: 1*316//2 = 158; W - c = 736, n = 4: 245.33 -> 245, 490.67 -> 490, 736
    assert crop_origins(540, 960, 224, 3, 4) == ([0, 158, 316], [0, 245, 490, 736])
    # 240x320, grid 3x3: 16 // 2 = 8, 96 // 2 = 48
    assert crop_origins(240, 320, 224, 3, 3) == ([0, 8, 16], [0, 48, 96])


def test_crop_origins_single_row_or_column_is_centred():
    assert crop_origins(540, 960, 224, 1, 1) == ([158], [368])
    assert crop_origins(241, 960, 224, 1, 2) == ([8], [0, 736])  # (241 - 224) // 2 = 8


def test_crop_origins_exact_size_and_upscaled_frames_overlap():
    assert crop_origins(224, 224, 224, 3, 3) == ([0, 0, 0], [0, 0, 0])
    h, w = upscaled_size(180, 320, 224)  # 224 x 398
    assert crop_origins(h, w, 224, 2, 3) == ([0, 0], [0, 87, 174])  # 174 // 2 = 87


def test_crop_origins_refuses_small_frames_and_empty_grids():
    with pytest.raises(ValueError, match="upscale it first"):
        crop_origins(180, 320, 224, 3, 3)
    with pytest.raises(ValueError, match="at least one row"):
        crop_origins(240, 320, 224, 0, 3)


def test_parse_grid():
    assert parse_grid("3x3") == (3, 3)
    assert parse_grid("2X4") == (2, 4)
    for bad in ("3", "3x", "axb", "0x3", "3x3x3", "-1x2"):
        with pytest.raises(ValueError, match="grid"):
            parse_grid(bad)
