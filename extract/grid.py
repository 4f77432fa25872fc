"""Crop grid of the semantic feature extractor (paper Eq. 1) and the small-frame resize rule.

Frames are used at native resolution; the paper avoids resizing. A frame is scaled up only
when a side is shorter than the crop size ``c``, and then just enough for the crops to fit.
"""

from __future__ import annotations


def upscaled_size(height: int, width: int, crop: int) -> tuple[int, int]:
    """Frame size ``(h, w)`` after the small-frame rule: unchanged when both sides are >= ``crop``.

    Otherwise the short side ``S`` becomes exactly ``crop`` and the long side ``L`` becomes
    ``round(L * crop / S)`` with Python's ``round`` (ties go to the even integer, e.g. 112.5 ->
    112). For a square frame both sides become ``crop``.

    >>> upscaled_size(180, 320, 224)
    (224, 398)
    >>> upscaled_size(300, 200, 224)
    (336, 224)
    """
    if height <= 0 or width <= 0 or crop <= 0:
        raise ValueError(f"frame size and crop must be positive, got {height}x{width}, crop {crop}")
    if height >= crop and width >= crop:
        return height, width
    if height <= width:
        return crop, round(width * crop / height)
    return round(height * crop / width), crop


def crop_origins(height: int, width: int, crop: int, rows: int, cols: int) -> tuple[list[int], list[int]]:
    """Top-left corners of the ``rows x cols`` crops of size ``crop`` in an ``height x width`` frame.

    Crop ``(i, j)`` starts at row ``ys[i] = i * (H - c) // (m - 1)`` and column
    ``xs[j] = j * (W - c) // (n - 1)``: the first crop touches the top/left edge, the last the
    bottom/right edge, the rest spread evenly (overlapping when the frame is small). With a
    single row (column) the crop is centred at ``(H - c) // 2``. The frame must already be at
    least ``crop`` on both sides (see :func:`upscaled_size`).

    Returns:
        ``(ys, xs)``: ``rows`` row offsets and ``cols`` column offsets.
    """
    if rows < 1 or cols < 1:
        raise ValueError(f"grid must have at least one row and one column, got {rows}x{cols}")
    if height < crop or width < crop:
        raise ValueError(f"frame {height}x{width} is smaller than the {crop}px crop; upscale it first (upscaled_size)")
    return _offsets(height, crop, rows), _offsets(width, crop, cols)


def _offsets(size: int, crop: int, count: int) -> list[int]:
    if count == 1:
        return [(size - crop) // 2]
    return [k * (size - crop) // (count - 1) for k in range(count)]


def parse_grid(text: str) -> tuple[int, int]:
    """Parse a grid given as ``"MxN"`` (rows x columns, e.g. ``"3x3"``) into ``(M, N)``."""
    parts = text.lower().replace("×", "x").split("x")
    if len(parts) != 2 or not all(p.strip().isdigit() for p in parts):
        raise ValueError(f"grid {text!r} is not of the form ROWSxCOLS, e.g. 3x3")
    rows, cols = (int(p) for p in parts)
    if rows < 1 or cols < 1:
        raise ValueError(f"grid {text!r} needs at least one row and one column")
    return rows, cols
