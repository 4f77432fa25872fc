"""HDF5 backend of the feature store: one ``.h5``/``.hdf5`` file, one writing process.

Same tree and attributes as Zarr, with two HDF5 spellings: the root ``provenance`` is a JSON
string (``json.loads(f.attrs["provenance"])``), and a None attribute is an empty (null)
attribute. Datasets are one chunk each, gzip level 4 with shuffle and a Fletcher32 checksum
(so a flipped byte is a read error). HDF5 files take one writer and, while it writes, no
readers (file locking); parallel shard runs therefore write ``.zarr`` stores.
"""

from __future__ import annotations

import json
import os
import uuid
from pathlib import Path
from typing import Any

import h5py
import numpy as np

from clifvqa.features.store import FRAMES_FILL, FeatureStore, StoreError


def _to_h5(value: Any) -> Any:
    """A checked plain attribute value as h5py stores it."""
    if value is None:
        return h5py.Empty("f")
    if isinstance(value, list) and (not value or isinstance(value[0], str)):
        return np.array(value, dtype=h5py.string_dtype())
    return value


def _from_h5(value: Any) -> Any:
    """An h5py attribute value as the plain type it was written from."""
    if isinstance(value, h5py.Empty):
        return None
    if isinstance(value, np.ndarray):
        return [_from_h5(v) for v in value.tolist()]
    if isinstance(value, bytes):
        return value.decode("utf-8")
    if isinstance(value, np.generic):
        return value.item()
    return value


def read_attrs(obj: h5py.HLObject) -> dict[str, Any]:
    """All attributes of an HDF5 object as plain Python values (lists, not object arrays)."""
    return {name: _from_h5(value) for name, value in obj.attrs.items()}


def _open_file(path: Path, mode: str) -> h5py.File:
    try:
        return h5py.File(path, mode)
    except BlockingIOError as exc:
        raise StoreError(f"{path} is open for writing in another process: an HDF5 store takes "
                         "one writer and no readers meanwhile; wait for it, or use a .zarr store "
                         "for parallel runs") from exc
    except OSError as exc:
        raise StoreError(f"{path} is not a readable HDF5 feature store ({exc})") from exc


class HDF5FeatureStore(FeatureStore):
    """A feature store kept in one HDF5 file (see :mod:`clifvqa.features.store`)."""

    backend = "hdf5"
    zarr_format = None

    def __init__(self, path: Path, file: h5py.File, *, writable: bool) -> None:
        self._file = file
        root = read_attrs(file)
        if isinstance(root.get("provenance"), str):
            root["provenance"] = json.loads(root["provenance"])
        super().__init__(str(path), root, writable=writable)

    @classmethod
    def open(cls, path: Path, *, writable: bool) -> HDF5FeatureStore:
        file = _open_file(path, "r+" if writable else "r")
        try:
            return cls(path, file, writable=writable)
        except Exception:
            file.close()
            raise

    @classmethod
    def create_or_open(cls, path: Path, root_attrs: dict[str, Any], *,
                       zarr_format: int = 3) -> HDF5FeatureStore:
        """Open ``path`` for writing, creating it when missing (``zarr_format`` is ignored)."""
        if not path.exists():
            path.parent.mkdir(parents=True, exist_ok=True)
            tmp = path.parent / f".{path.name}.creating-{uuid.uuid4().hex}"
            with h5py.File(tmp, "w", libver="latest") as f:
                f.attrs["clifvqa_format"] = root_attrs["clifvqa_format"]
                f.attrs["fingerprint"] = root_attrs["fingerprint"]
                f.attrs["provenance"] = json.dumps(root_attrs["provenance"], sort_keys=True)
                f.create_group("videos")
                f.create_group("failures")
            try:
                os.link(tmp, path)  # atomic create-if-absent: the loser opens the winner's file
            except FileExistsError:
                pass
            except OSError:  # no hard links on this filesystem: HDF5 has one writer anyway
                if not path.exists():
                    os.replace(tmp, path)
            finally:
                tmp.unlink(missing_ok=True)
        return cls.open(path, writable=True)

    # ------------------------------------------------------------------ primitives
    def _node(self, path: str) -> tuple[str | None, dict[str, Any]]:
        node = self._file.get(path)
        if node is None:
            return None, {}
        if isinstance(node, h5py.Dataset):
            return "array", {}
        return "group", read_attrs(node)

    def _entries(self, top: str) -> dict[str, dict[str, Any]]:
        group = self._file.get(top)
        if not isinstance(group, h5py.Group):
            return {}
        out: dict[str, dict[str, Any]] = {}

        def visit(name: str, obj: Any) -> None:
            if isinstance(obj, h5py.Group) and len(obj.attrs):
                out[name] = read_attrs(obj)

        group.visititems(visit)
        return out

    def _has_children(self, path: str) -> bool:
        return len(self._file[path]) > 0

    def _array_names(self, path: str) -> list[str]:
        return [k for k, v in self._file[path].items() if isinstance(v, h5py.Dataset)]

    def _array_shape(self, path: str) -> tuple[int, ...]:
        return tuple(self._file[path].shape)

    def _read_array(self, path: str) -> np.ndarray:
        return self._file[path][()]

    def _write_group(self, path: str, attrs: dict[str, Any], arrays: dict[str, np.ndarray]) -> None:
        self._check_writable()
        if path in self._file:
            del self._file[path]
        group = self._file.create_group(path, track_order=True)  # attrs keep written order
        for name, value in attrs.items():
            group.attrs[name] = _to_h5(value)
        for name, data in arrays.items():
            fill = FRAMES_FILL if np.issubdtype(data.dtype, np.integer) else np.nan
            if data.size:
                group.create_dataset(name, data=data, chunks=data.shape, compression="gzip",
                                     compression_opts=4, shuffle=True, fletcher32=True,
                                     fillvalue=fill)
            else:  # HDF5 chunks cannot be empty
                group.create_dataset(name, data=data, fillvalue=fill)
        self._file.flush()

    def _set_attr(self, path: str, name: str, value: Any) -> None:
        self._file[path].attrs[name] = _to_h5(value)
        self._file.flush()

    def _delete(self, path: str) -> None:
        del self._file[path]
        self._file.flush()

    def finalize(self) -> None:
        """Flush to disk (HDF5 needs no index)."""
        self._check_writable()
        self._file.flush()

    def close(self) -> None:
        if self._file.id.valid:
            self._file.close()

    def size_bytes(self) -> int | None:
        return os.path.getsize(self.path)

    def __reduce__(self) -> tuple[Any, tuple[str, str]]:
        if self.writable:
            raise TypeError(f"{self.path}: an HDF5 store open for writing cannot be shared with "
                            "another process (one writer per file)")
        return super().__reduce__()
