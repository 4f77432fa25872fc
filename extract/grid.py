"""Crop grid of the semantic feature extractor (paper Eq. 1) and the small-frame resize rule.

Frames are used at native resolution; the paper avoids resizing. A frame is scaled up only
when a side is shorter than the crop size ``c``, and then just enough for the crops to fit.
"""

from __future__ import annotations

from clifvqa.errors import ClifvqaError


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
        raise GridError(f"frame size and crop must be positive, got {height}x{width}, crop {crop}")
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
        raise GridError(f"grid {text!r} is not of the form ROWSxCOLS, e.g. 3x3")
    rows, cols = (int(p) for p in parts)
    if rows < 1 or cols < 1:
        raise GridError(f"grid {text!r} needs at least one row and one column")
    return rows, cols


# A side of up to this many crops is allowed on any frame: the paper's 3x3 grid, whose crops
# coincide along the short side of a frame scaled up to the crop size (see upscaled_size).
ALWAYS_ALLOWED_SIDE = 3
# Above this many crops per frame (11x the paper's 9) extraction warns what a frame costs.
WARN_CROPS_PER_FRAME = 100


class GridError(ClifvqaError):
    """A grid that cannot sensibly be cut from a frame; the message says why and what fits."""


def distinct_positions(size: int, crop: int) -> int:
    """How many different crop origins a side of ``size`` pixels has for ``crop``-px crops."""
    return size - crop + 1


def check_grid_fits(height: int, width: int, crop: int, rows: int, cols: int) -> None:
    """Refuse a grid with more rows (columns) than the frame has distinct crop positions.

    ``height``/``width`` are the frame's size as decoded; the rule applies after the
    small-frame upscale (:func:`upscaled_size`). A side of more than ``max(3, H - c + 1)``
    crops only repeats crops it already has (origins ``i * (H - c) // (m - 1)`` coincide), so
    it would cost compute and memory for no information. Up to 3 per side (the paper's grid)
    is always allowed.

    Raises:
        GridError: naming the frame size, the grid and the largest grid that fits.
    """
    h, w = upscaled_size(height, width, crop)
    max_rows = max(ALWAYS_ALLOWED_SIDE, distinct_positions(h, crop))
    max_cols = max(ALWAYS_ALLOWED_SIDE, distinct_positions(w, crop))
    if rows > max_rows or cols > max_cols:
        scaled = f" (scaled up to {w}x{h})" if (h, w) != (height, width) else ""
        raise GridError(
            f"grid {rows}x{cols} does not fit a {width}x{height} frame{scaled}: {crop}-px crops have only "
            f"{distinct_positions(h, crop)}x{distinct_positions(w, crop)} distinct positions, so crops would "
            f"repeat; use a grid of at most {min(rows, max_rows)}x{min(cols, max_cols)}"
        )
