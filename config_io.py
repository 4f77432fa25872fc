"""Typed configs: nested frozen dataclasses <-> plain data, YAML, JSON, overrides and diffs.

A config is a frozen dataclass whose fields are typed: ``int``, ``float``, ``bool``, ``str``,
``X | None``, ``Literal[...]`` (a choice), ``tuple[X, ...]`` / ``tuple[X, X, X]`` (lists in the
file) and other config dataclasses (sections), like transformers' ``CLIPConfig`` holds a typed
``CLIPVisionConfig``. Every way in goes through :func:`from_data`, which checks each value
against its field's type and refuses unknown keys, naming the key path and, for YAML read with
:func:`load_yaml`, the file and line::

    run.yaml:12: model.fastvqa.window_size: expected 3 integers, got [8, 7]

Typical use::

    doc = load_yaml("run.yaml")                        # the data and the line of every key
    config = from_data(RunConfig, doc.data, doc=doc)   # typed, checked
    config = with_overrides(config, {"optim.epochs": 3, "model.branches": "semantic"})
    text = dump_yaml(config)                           # load -> dump of this text is identical
    diff(config, other)                                # {"optim.epochs": (3, 30)}

Fields may carry ``metadata={"help": "..."}``: :func:`dump_yaml` writes it as the line's comment
(and a section's class docstring summary as the section's comment).
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import re
import types
from collections.abc import Mapping
from dataclasses import dataclass, fields, is_dataclass
from pathlib import Path
from typing import Any, Literal, TypeVar, Union, get_args, get_origin, get_type_hints

import yaml

from clifvqa.errors import ClifvqaError

C = TypeVar("C")


class ConfigError(ClifvqaError):
    """A config value, key or file that cannot be read; the message names the key path (and the
    file and line when read from YAML)."""


@dataclass(frozen=True)
class YamlDocument:
    """A YAML file's data and where each key is (see :func:`load_yaml`).

    Attributes:
        name: the file name used in messages.
        data: the parsed document (``safe_load``: mappings, lists, scalars).
        lines: 1-based line of every dotted key path (``"model.fastvqa.window_size"``; list
            items as ``"stages[2].name"``); ``""`` is the document's first line.
    """

    name: str
    data: Any
    lines: Mapping[str, int]

    def where(self, key_path: str) -> str:
        """``FILE:LINE`` of ``key_path``, or of its nearest enclosing key written in the file."""
        parts = key_path.split(".") if key_path else []
        while parts and ".".join(parts) not in self.lines:
            parts.pop()
        return f"{self.name}:{self.lines.get('.'.join(parts), 1)}"


def parse_yaml(text: str, name: str = "<string>") -> YamlDocument:
    """Parse YAML ``text`` (``name`` is used in messages) into a :class:`YamlDocument`."""
    try:
        node = yaml.compose(text, Loader=yaml.SafeLoader)
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        line = f":{mark.line + 1}" if mark is not None else ""
        problem = getattr(exc, "problem", None) or str(exc).splitlines()[0]
        raise ConfigError(f"{name}{line}: not valid YAML ({problem})") from exc
    lines: dict[str, int] = {"": 1}
    if node is not None:
        _key_lines(node, "", lines, name)
    return YamlDocument(name, data, lines)


def load_yaml(path: str | os.PathLike[str]) -> YamlDocument:
    """Read a YAML file into a :class:`YamlDocument` (data + the line of every key path)."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise ConfigError(f"{path}: cannot be read ({exc.strerror or exc})") from exc
    return parse_yaml(text, str(path))


def _key_lines(node: yaml.Node, prefix: str, lines: dict[str, int], name: str) -> None:
    """Record the line of every key path under ``node``; a key written twice in one mapping is
    refused (PyYAML would silently keep the last value)."""
    if isinstance(node, yaml.MappingNode):
        for key, value in node.value:
            path = f"{prefix}.{key.value}" if prefix else str(key.value)
            line = key.start_mark.line + 1
            if path in lines:
                raise ConfigError(f"{name}:{line}: {path}: written twice (lines {lines[path]} and {line}); "
                                  "keep one of them")
            lines[path] = line
            _key_lines(value, path, lines, name)
    elif isinstance(node, yaml.SequenceNode):  # list items as PATH[i]
        for i, item in enumerate(node.value):
            lines[f"{prefix}[{i}]"] = item.start_mark.line + 1
            _key_lines(item, f"{prefix}[{i}]", lines, name)


# ------------------------------------------------------------------------------ data -> config


def from_data(cls: type[C], data: Any, *, doc: YamlDocument | None = None, key_path: str = "") -> C:
    """Build config dataclass ``cls`` from plain data (a mapping, e.g. parsed YAML or JSON).

    Lists become tuples, numbers are checked (an integer is a valid float; ``1e-4``, which YAML
    1.1 reads as a string, is read as the number), choices (``Literal``) are checked, sections
    become their dataclass; keys absent from ``data`` keep their defaults. ``doc`` (from
    :func:`load_yaml`) adds the file and line to messages; ``key_path`` is where ``data`` sits.

    Raises:
        ConfigError: an unknown key (the known ones listed), a missing required key, a value
            of the wrong type, or one its dataclass refuses (``__post_init__``).
    """
    return _convert(cls, data, key_path, doc)


def _fail(doc: YamlDocument | None, key_path: str, message: str) -> ConfigError:
    where = f"{doc.where(key_path)}: " if doc is not None else ""
    return ConfigError(f"{where}{key_path or '(top level)'}: {message}")


def _convert(tp: Any, value: Any, key_path: str, doc: YamlDocument | None) -> Any:
    origin, args = get_origin(tp), get_args(tp)
    if tp is Any:
        return value
    if origin in (Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        options = [a for a in args if a is not type(None)]
        if len(options) == 1:
            try:
                return _convert(options[0], value, key_path, doc)
            except ConfigError:
                if type(None) not in args or is_dataclass(options[0]):
                    raise
                raise _fail(doc, key_path, f"expected {describe(tp)}, got {value!r}") from None
        raise TypeError(f"{key_path}: unions of several types are not supported in configs")
    if is_dataclass(tp):
        return _convert_dataclass(tp, value, key_path, doc)
    if origin is Literal:
        if any(value == a and type(value) is type(a) for a in args):
            return value
        raise _fail(doc, key_path, f"expected {describe(tp)}, got {value!r}")
    if origin is tuple:
        if not isinstance(value, (list, tuple)):
            raise _fail(doc, key_path, f"expected {describe(tp)}, got {value!r}")
        if len(args) == 2 and args[1] is Ellipsis:
            kinds = [args[0]] * len(value)
        elif len(args) != len(value):
            raise _fail(doc, key_path, f"expected {describe(tp)}, got {list(value)!r}")
        else:
            kinds = list(args)
        try:
            return tuple(_convert(k, v, f"{key_path}[{i}]", None) for i, (k, v) in enumerate(zip(kinds, value)))
        except ConfigError:
            raise _fail(doc, key_path, f"expected {describe(tp)}, got {list(value)!r}") from None
    if tp is bool:
        if isinstance(value, bool):
            return value
    elif tp is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
    elif tp is float:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
        if isinstance(value, str) and re.fullmatch(r"[-+]?(\d+\.?\d*|\.\d+)([eE][-+]?\d+)?", value.strip()):
            return float(value)  # YAML 1.1 reads 1e-4 (no dot) as a string
    elif tp is str:
        if isinstance(value, str):
            return value
    else:
        raise TypeError(f"{key_path}: fields of type {tp!r} are not supported in configs")
    raise _fail(doc, key_path, f"expected {describe(tp)}, got {value!r}")


def _convert_dataclass(cls: Any, value: Any, key_path: str, doc: YamlDocument | None) -> Any:
    if isinstance(value, cls):
        return value
    if not isinstance(value, Mapping):
        raise _fail(doc, key_path, f"expected a section ({cls.__name__}: keys {', '.join(_names(cls))}), got {value!r}")
    hints = get_type_hints(cls)
    known = _names(cls)
    prefix = f"{key_path}." if key_path else ""
    unknown = [str(k) for k in value if k not in known]
    if unknown:
        raise _fail(doc, f"{prefix}{unknown[0]}",
                    f"unknown {cls.__name__} fields {unknown} (known: {', '.join(known)})")
    missing = [f.name for f in fields(cls) if f.init and f.name not in value
               and f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING]
    if missing:
        raise _fail(doc, key_path, f"missing key{'s' * (len(missing) > 1)} {', '.join(missing)}")
    kwargs = {k: _convert(hints[k], v, f"{prefix}{k}", doc) for k, v in value.items()}
    try:
        return cls(**kwargs)
    except ConfigError:
        raise
    except (ValueError, TypeError) as exc:  # the dataclass's own checks (__post_init__)
        raise _fail(doc, key_path, str(exc)) from exc


def _names(cls: Any) -> list[str]:
    return [f.name for f in fields(cls) if f.init]


_PLURAL = {int: "integers", float: "numbers", bool: "booleans (true/false)", str: "strings"}
_SINGULAR = {int: "an integer", float: "a number", bool: "true or false", str: "a string"}


def describe(tp: Any) -> str:
    """What a value of type ``tp`` must be, in words (``"3 integers"``, ``"one of 'a', 'b'"``)."""
    origin, args = get_origin(tp), get_args(tp)
    if origin in (Union, types.UnionType):
        options = [describe(a) for a in args if a is not type(None)]
        return " or ".join(options) + (" or null" if type(None) in args else "")
    if origin is Literal:
        return "one of " + ", ".join(json.dumps(a) if isinstance(a, str) else str(a) for a in args)
    if origin is tuple:
        if len(args) == 2 and args[1] is Ellipsis:
            return f"a list of {_PLURAL.get(args[0], str(args[0]))}"
        if len(set(args)) == 1:
            return f"{len(args)} {_PLURAL.get(args[0], str(args[0]))}"
        return f"a list of {len(args)} values"
    if is_dataclass(tp):
        return f"a section ({tp.__name__})"
    return _SINGULAR.get(tp, str(tp))


# ------------------------------------------------------------------------------ config -> data


def to_data(config: Any) -> dict[str, Any]:
    """The plain data of a config dataclass (sections as dicts, tuples as lists); inverse of
    :func:`from_data`, JSON- and YAML-ready."""
    return _plain(config)


def _plain(value: Any) -> Any:
    if is_dataclass(value) and not isinstance(value, type):
        return {f.name: _plain(getattr(value, f.name)) for f in fields(value)}
    if isinstance(value, (tuple, list)):
        return [_plain(v) for v in value]
    if isinstance(value, Mapping):
        return {k: _plain(v) for k, v in value.items()}
    if isinstance(value, os.PathLike):  # paths given in Python (overrides) are strings in the data
        return os.fspath(value)
    return value


def flatten(config: Any) -> dict[str, Any]:
    """Every leaf setting of a config by dotted key path (``{"optim.epochs": 30, ...}``)."""
    out: dict[str, Any] = {}

    def walk(value: Any, prefix: str) -> None:
        if isinstance(value, dict):
            for k, v in value.items():
                walk(v, f"{prefix}.{k}" if prefix else k)
        else:
            out[prefix] = value

    walk(config if isinstance(config, dict) else to_data(config), "")
    return out


def diff(a: Any, b: Any) -> dict[str, tuple[Any, Any]]:
    """The dotted key paths whose values differ between configs (or their data) ``a`` and ``b``,
    with both values (``None`` for a path only one of them has), in path order."""
    fa, fb = flatten(a), flatten(b)
    return {k: (fa.get(k), fb.get(k)) for k in sorted(set(fa) | set(fb)) if fa.get(k) != fb.get(k)}


def format_diff(differences: Mapping[str, tuple[Any, Any]]) -> str:
    """``optim.epochs 2 -> 3, model.branches 'both' -> 'semantic'`` for messages."""
    return ", ".join(f"{k} {a!r} -> {b!r}" for k, (a, b) in differences.items())


def with_overrides(config: C, overrides: Mapping[str, Any]) -> C:
    """A new config with dotted-path ``overrides`` applied (``{"optim.epochs": 3}``); every value is
    checked as if read from a file, and an unknown path is refused naming it."""
    data = to_data(config)
    for path, value in overrides.items():
        node = data
        parts = path.split(".")
        for i, part in enumerate(parts[:-1]):
            child = node.get(part) if isinstance(node, dict) else None
            if part not in node:
                raise ConfigError(f"{path}: unknown key {'.'.join(parts[:i + 1])}; known here: {', '.join(node)}")
            if not isinstance(child, dict):
                raise ConfigError(f"{path}: {'.'.join(parts[:i + 1])} is a setting, not a section")
            node = child
        if parts[-1] not in node:
            raise ConfigError(f"{path}: unknown key; known here: {', '.join(node)}")
        node[parts[-1]] = _plain(value)
    return from_data(type(config), data)


# ------------------------------------------------------------------------------ YAML out


def dump_yaml(config: Any) -> str:
    """YAML text of a config dataclass: block sections, flow lists, one key per line, each field's
    ``help`` metadata as its comment and the class docstring summaries as section comments. Reading
    the text back (:func:`load_yaml` + :func:`from_data`) and dumping it again gives the same text."""
    lines = [f"# {_summary(type(config))}"] if _summary(type(config)) else []
    _emit(config, 0, lines)
    return "\n".join(lines) + "\n"


def _summary(cls: type) -> str:
    doc = (cls.__doc__ or "").strip()
    return doc.split("\n\n")[0].replace("\n", " ").strip() if doc and not doc.startswith(cls.__name__ + "(") else ""


def _emit(config: Any, indent: int, lines: list[str]) -> None:
    pad = " " * indent
    for f in fields(config):
        value = getattr(config, f.name)
        comment = f.metadata.get("help", "")
        if is_dataclass(value):
            comment = comment or _summary(type(value))
            lines.append(f"{pad}{f.name}:" + (f"  # {comment}" if comment else ""))
            _emit(value, indent + 2, lines)
        else:
            lines.append(f"{pad}{f.name}: {_scalar(value)}" + (f"  # {comment}" if comment else ""))


_PLAIN_STR = re.compile(r"[A-Za-z_/.][A-Za-z0-9_./+\-]*")


def _scalar(value: Any) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        if math.isnan(value):
            return ".nan"
        if math.isinf(value):
            return ".inf" if value > 0 else "-.inf"
        text = repr(value)
        if "e" in text and "." not in text.split("e")[0]:
            text = text.replace("e", ".0e", 1)  # YAML 1.1 floats need the dot
        return text
    if isinstance(value, str):
        if _PLAIN_STR.fullmatch(value) and yaml.safe_load(value) == value:
            return value
        return json.dumps(value)  # a JSON string is a YAML double-quoted scalar
    if isinstance(value, (tuple, list)):
        return "[" + ", ".join(_scalar(v) for v in value) + "]"
    raise TypeError(f"cannot write {value!r} as a config value")


# ------------------------------------------------------------------------------ JSON mixin


class JsonConfig:
    """Mixin for config dataclasses: :meth:`to_dict` / :meth:`from_dict` (checkpoints, run.json).

    Both are :func:`to_data` / :func:`from_data`: lists read back from JSON become tuples and
    sections their dataclass again, and a key the dataclass does not know is an error naming it,
    so a checkpoint from another version never loads with a setting silently dropped.
    """

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready dict (tuples become lists); inverse of :meth:`from_dict`."""
        return to_data(self)

    @classmethod
    def from_dict(cls: type[C], data: Mapping[str, Any]) -> C:
        """Rebuild a config from :meth:`to_dict` output; unknown keys raise :class:`ConfigError`."""
        return from_data(cls, data)


__all__ = [
    "ConfigError", "YamlDocument", "parse_yaml", "load_yaml", "from_data", "describe", "to_data", "flatten", "diff",
    "format_diff", "with_overrides", "dump_yaml", "JsonConfig",
]
