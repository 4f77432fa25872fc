"""Reading safetensors files that came from elsewhere: judged by their header before loading.

The safetensors library never executes anything, but on a file that is not safetensors (a
renamed pickle, a truncated copy) it raises its own ``SafetensorError`` with a message that does
not say which file or what to do. :func:`load_safetensors` checks the header first and turns any
refusal into the caller's one-line error.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

# A safetensors file starts with an 8-byte little-endian header length, then that many bytes of
# JSON whose tensors' data_offsets cover the rest of the file exactly.
_MAX_SAFETENSORS_HEADER = 100 << 20  # the safetensors library's own limit


def safetensors_problem(path: Path) -> str | None:
    """What is wrong with the safetensors file ``path``, judged from its header alone (nothing is
    loaded or executed), or None when its header and size agree."""
    size = path.stat().st_size
    with open(path, "rb") as fh:
        head = fh.read(8)
        if size == 0:
            return "it is empty (0 bytes)"
        if head.startswith(b"\x80"):  # pickle protocol 2+ opcode
            return "it holds pickle data (a renamed PyTorch .bin checkpoint?), not safetensors; not unpickled"
        if head.startswith(b"PK\x03\x04"):
            return "it is a zip archive (a renamed torch.save checkpoint?), not safetensors"
        if size < 8:
            return f"it is only {size} bytes, too short for a safetensors file"
        length = int.from_bytes(head, "little")
        if length > min(size - 8, _MAX_SAFETENSORS_HEADER):
            return (f"it is not safetensors: its first 8 bytes {head!r} do not give a header length that "
                    f"fits its {size} bytes")
        header = fh.read(length)
    try:
        tensors = {k: v for k, v in json.loads(header).items() if k != "__metadata__"}
        end = 8 + length + max((int(v["data_offsets"][1]) for v in tensors.values()), default=0)
    except (ValueError, TypeError, KeyError, IndexError, AttributeError):
        return "it is not safetensors: its header is not the JSON tensor table safetensors begins with"
    if end > size:
        return f"it is truncated: its header describes {end} bytes, the file has {size} (an interrupted copy?)"
    if end < size:
        return f"it has {size - end} bytes beyond the {end} its header describes (a damaged copy?)"
    return None


def load_safetensors(path: str | Path, device: str, error: type[Exception], fix: str) -> dict[str, Any]:
    """The tensors of the safetensors file ``path`` on ``device``; a file that is not intact
    safetensors raises ``error("{path}: cannot be loaded: {problem}; {fix}")`` (one line)."""
    # SafetensorError is not in the stubs of safetensors < 0.5
    from safetensors import SafetensorError  # type: ignore[attr-defined, unused-ignore]
    from safetensors.torch import load_file

    path = Path(path)
    try:
        problem = safetensors_problem(path)
        if problem is None:
            return load_file(str(path), device=device)
    except SafetensorError as exc:  # a header that looked right but a body the library refused
        problem = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
    except OSError as exc:
        problem = exc.strerror or str(exc)
    raise error(f"{path}: cannot be loaded: {problem}; {fix}")
