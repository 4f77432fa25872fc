"""Typed configs: nested frozen dataclasses <-> plain data, YAML, JSON, overrides and diffs.

One reader for every config file of the package: run configs (:mod:`clifvqa.train.config`) and
experiment files (:mod:`clifvqa.protocol.spec`). A config is a dataclass whose fields are typed,
like transformers' ``CLIPConfig`` holds a typed ``CLIPVisionConfig``. Every way in goes through
:func:`from_data`, which checks each value against its field's type and refuses unknown keys,
naming the key path and, for YAML read with :func:`load_yaml`, the file and line::

    run.yaml:12: model.fastvqa.window_size: expected 3 integers, got [8, 7]

Field types: ``int``, ``float``, ``bool``, ``str`` (a number written in the file is read as its
text), ``Path``, ``Literal[...]`` (a choice), ``tuple[X, ...]`` / ``tuple[X, X, X]`` (lists in
the file), ``Mapping[K, V]`` (``None`` is empty), other config dataclasses (sections), ``Any``
(taken as written), ``X | None``, and unions of several types, chosen by the value's shape (a
mapping, a list, or a scalar of the member's kind; sections by the ``Literal`` field they
differ in, e.g. ``kind``). ``Annotated[X, check, ...]`` runs each ``check`` on the value read: it
returns the value (maybe normalised) or raises :class:`ConfigError` (blamed on the value's key)
or :class:`FieldError` (blamed on a key below it); with :class:`ReadAs` ``(Y)`` among the checks
the file holds a ``Y`` that the checks turn into the field's ``X`` (e.g. one item or a list).

Field metadata: ``help`` (:func:`dump_yaml` writes it as the line's comment, a missing key's
message ends with it), ``key`` (the key in the file when it is not the field's name, e.g.
``from``), ``mapping_key`` (the field holds the key its section sits under in a mapping; it is
not written in the file).

Variables: with ``variables`` (:func:`from_data`), ``${name}`` in a string takes the variable's
value; a string that is exactly one ``${name}`` read where text is not expected (a number, a
list, a choice, an ``Any`` value) takes the value read as YAML (``${epochs}`` is the number 3).

Typical use::

    doc = load_yaml("run.yaml")                        # the data and the line of every key
    config = from_data(RunConfig, doc.data, doc=doc)   # typed, checked
    config = with_overrides(config, {"optim.epochs": 3, "model.branches": "semantic"})
    text = dump_yaml(config)                           # load -> dump of this text is identical
    diff(config, other)                                # {"optim.epochs": (3, 30)}

A section's class docstring summary is its comment in :func:`dump_yaml`.
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
from typing import Annotated, Any, Literal, NamedTuple, TypeVar, Union, get_args, get_origin, get_type_hints

import yaml

from clifvqa.errors import ClifvqaError

C = TypeVar("C")


class ConfigError(ClifvqaError):
    """A config value, key or file that cannot be read; the message names the key path (and the
    file and line when read from YAML).

    A check or a dataclass's ``__post_init__`` raises it with the bare message (``"splits must be
    at least 1, got 0"``); the reader then puts the key path (file and line) in front.
    """

    located = False
    """Whether the message already names where (the reader's own errors); else the reader adds it."""


class FieldError(ConfigError):
    """Raised by a check or a dataclass's ``__post_init__`` to blame ``key``, a key path below the
    value being read (``"stores"`` in a dataset section), instead of the value's own key."""

    def __init__(self, key: str, message: str) -> None:
        super().__init__(f"{key}: {message}")
        self.key, self.message = key, message


@dataclass(frozen=True)
class ReadAs:
    """``Annotated`` metadata: the file holds a value of type ``tp``, which the checks after it
    turn into the annotated type (``Annotated[tuple[str, ...], ReadAs(str | tuple[str, ...]),
    one_or_more]``: one string or a list of them)."""

    tp: Any


def one_or_more(value: Any) -> tuple[Any, ...]:
    """A check for ``ReadAs(X | tuple[X, ...])``: one value stands for a list of one."""
    return value if isinstance(value, tuple) else (value,)


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
        while key_path and key_path not in self.lines:
            key_path = key_path[:key_path.rindex("[")] if key_path.endswith("]") else key_path.rpartition(".")[0]
        return f"{self.name}:{self.lines.get(key_path, 1)}"


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


def from_data(cls: type[C], data: Any, *, doc: YamlDocument | None = None, key_path: str = "",
              variables: Mapping[str, str] | None = None) -> C:
    """Read ``data`` (plain data: parsed YAML or JSON) as type ``cls``, usually a config dataclass.

    Lists become tuples, numbers are checked (an integer is a valid float; ``1e-4``, which YAML
    1.1 reads as a string, is read as the number), choices (``Literal``) are checked, sections
    become their dataclass; keys absent from ``data`` keep their defaults. ``doc`` (from
    :func:`load_yaml`) adds the file and line to messages; ``key_path`` is where ``data`` sits;
    ``variables`` are the values of ``${name}`` in strings (none: strings are taken as written).

    Raises:
        ConfigError: an unknown key (the known ones listed), a missing required key, a value
            of the wrong type, one a check or its dataclass refuses (``__post_init__``), or an
            unknown variable.
    """
    config: C = _convert(cls, data, key_path, _Reading(doc, variables))
    return config


class _Reading(NamedTuple):
    doc: YamlDocument | None
    variables: Mapping[str, str] | None


def _fail(reading: _Reading, key_path: str, message: str, kind: type[ConfigError] = ConfigError) -> ConfigError:
    where = f"{reading.doc.where(key_path)}: " if reading.doc is not None else ""
    error = kind(f"{where}{key_path or '(top level)'}: {message}")
    error.located = True
    return error


def _located(exc: BaseException) -> bool:
    return isinstance(exc, ConfigError) and exc.located


class _MismatchError(ConfigError):
    """A value not of its type's shape or kind (which a list or an optional value may rephrase)."""


def _mismatch(reading: _Reading, key_path: str, tp: Any, value: Any) -> ConfigError:
    return _fail(reading, key_path, f"expected {describe(tp)}, got {value!r}", _MismatchError)


def _join(key_path: str, key: Any) -> str:
    return f"{key_path}.{key}" if key_path else str(key)


_VAR = re.compile(r"\$\{([^}]*)\}")


def _substitute(value: str, key_path: str, reading: _Reading, text: bool) -> Any:
    variables = reading.variables or {}

    def one(match: re.Match[str]) -> str:
        if match.group(1) not in variables:
            raise _fail(reading, key_path, f"unknown variable ${{{match.group(1)}}} (defined: "
                                           f"{', '.join(variables) or 'none'}; define it under `variables` or pass "
                                           "--var NAME=VALUE)")
        return variables[match.group(1)]

    substituted = _VAR.sub(one, value)
    if not text and _VAR.fullmatch(value.strip()):
        try:
            return yaml.safe_load(substituted)
        except yaml.YAMLError:  # not YAML (`[a`): its text, which the field's type then judges
            return substituted
    return substituted


def _convert(tp: Any, value: Any, key_path: str, reading: _Reading, name: Any = None) -> Any:
    """``value`` read as ``tp``; ``name`` is the mapping key a section sits under (``mapping_key``)."""
    origin, args = get_origin(tp), get_args(tp)
    if origin is Annotated:
        return _checked(tp, value, key_path, reading, name)
    if isinstance(value, str) and reading.variables is not None:
        value = _substitute(value, key_path, reading, text=_takes_text(tp))
        reading = reading._replace(variables=None)  # one substitution: a value is not substituted again
    if tp is Any:
        return _any(value, key_path, reading)
    if origin in (Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        options = [a for a in args if a is not type(None)]
        if len(options) > 1:
            return _convert_union(tp, options, value, key_path, reading, name)
        try:
            return _convert(options[0], value, key_path, reading, name)
        except _MismatchError:
            if type(None) not in args or not _plain_scalar(options[0]):
                raise
            raise _mismatch(reading, key_path, tp, value) from None
    if is_dataclass(tp):
        return _convert_dataclass(tp, value, key_path, reading, name)
    if origin in (dict, Mapping):
        if value is None:
            return {}
        if not isinstance(value, Mapping):
            raise _mismatch(reading, key_path, tp, value)
        key_tp, value_tp = args or (Any, Any)
        out = {}
        for k, v in value.items():
            key = _convert(key_tp, k, _join(key_path, k), reading)
            out[key] = _convert(value_tp, v, _join(key_path, k), reading, name=key)
        return out
    if origin is Literal:
        if any(value == a and type(value) is type(a) for a in args):
            return value
        raise _mismatch(reading, key_path, tp, value)
    if origin is tuple:
        if not isinstance(value, (list, tuple)):
            raise _mismatch(reading, key_path, tp, value)
        if len(args) == 2 and args[1] is Ellipsis:
            kinds = [args[0]] * len(value)
        elif len(args) != len(value):
            raise _mismatch(reading, key_path, tp, list(value))
        else:
            kinds = list(args)
        items = []
        for i, (kind, item) in enumerate(zip(kinds, value)):
            try:
                items.append(_convert(kind, item, f"{key_path}[{i}]", reading))
            except _MismatchError:
                if not _plain_scalar(kind):  # a section or checked item says what is wrong with it
                    raise
                raise _mismatch(reading, key_path, tp, list(value)) from None
        return tuple(items)
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
    elif tp is str or tp is Path:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            value = str(value)  # a name or label written as a number (`table: 1`, `short_side: 720`)
        if isinstance(value, str):
            return value if tp is str else Path(value)
    else:
        raise TypeError(f"{key_path}: fields of type {tp!r} are not supported in configs")
    raise _mismatch(reading, key_path, tp, value)


def _checked(tp: Any, value: Any, key_path: str, reading: _Reading, name: Any) -> Any:
    """An ``Annotated`` value: read as its :class:`ReadAs` type (else its own), then checked."""
    checks = tp.__metadata__
    out = _convert(_read_type(tp), value, key_path, reading, name)
    for check in checks:
        if isinstance(check, ReadAs) or not callable(check):
            continue
        try:
            out = check(out)
        except FieldError as exc:
            raise _fail(reading, _join(key_path, exc.key), exc.message) from None
        except ValueError as exc:
            if _located(exc):
                raise
            raise _fail(reading, key_path, str(exc)) from None
    return out


def _read_type(tp: Any) -> Any:
    """What the file holds for ``tp``: an ``Annotated`` type's :class:`ReadAs` type, else ``tp`` itself."""
    if get_origin(tp) is not Annotated:
        return tp
    return next((m.tp for m in tp.__metadata__ if isinstance(m, ReadAs)), get_args(tp)[0])


def _takes_text(tp: Any) -> bool:
    """Whether a string read as ``tp`` is text (a ``${var}`` in it is replaced, never read as YAML)."""
    tp = _read_type(tp)
    if get_origin(tp) in (Union, types.UnionType):
        return any(_takes_text(a) for a in get_args(tp))
    return tp is str or tp is Path


def _plain_scalar(tp: Any) -> bool:
    return tp in (bool, int, float, str, Path) or get_origin(tp) is Literal


def _any(value: Any, key_path: str, reading: _Reading) -> Any:
    """A value taken as written, with variables substituted in its strings (keys stay as written)."""
    if reading.variables is None:
        return value
    if isinstance(value, Mapping):
        return {k: _convert(Any, v, _join(key_path, k), reading) for k, v in value.items()}
    if isinstance(value, list):
        return [_convert(Any, v, f"{key_path}[{i}]", reading) for i, v in enumerate(value)]
    return value


def _shapes(tp: Any) -> set[str]:
    """The shapes of data a value of ``tp`` is read from: ``mapping``, ``list``, ``scalar``."""
    tp = _read_type(tp)
    if get_origin(tp) in (Union, types.UnionType):
        return set().union(*(_shapes(a) for a in get_args(tp)))
    if is_dataclass(tp) or get_origin(tp) in (dict, Mapping):
        return {"mapping"}
    return {"list"} if get_origin(tp) is tuple else {"scalar"}


def _native(tp: Any, value: Any) -> bool:
    """Whether scalar ``value`` is of ``tp``'s own kind (no reading a number as text, or text as a number)."""
    tp = _read_type(tp)
    if get_origin(tp) in (Union, types.UnionType):
        return any(_native(a, value) for a in get_args(tp))
    if get_origin(tp) is Literal:
        return any(value == a and type(value) is type(a) for a in get_args(tp))
    number = isinstance(value, (int, float)) and not isinstance(value, bool)
    return {bool: isinstance(value, bool), int: number and isinstance(value, int), float: number,
            str: isinstance(value, str), Path: isinstance(value, str), type(None): value is None}.get(tp, False)


def _convert_union(tp: Any, options: list[Any], value: Any, key_path: str, reading: _Reading, name: Any) -> Any:
    """A union of several types: the members of the value's shape (sections told apart by their
    ``Literal`` field, scalars of the value's own kind first); the one that reads it."""
    shape = "mapping" if isinstance(value, Mapping) else "list" if isinstance(value, (list, tuple)) else "scalar"
    fits = [o for o in options if shape in _shapes(o)]
    if shape == "scalar":
        fits = [o for o in fits if _native(o, value)] or fits
    elif shape == "mapping" and len(fits) > 1:
        fits = [_tagged(fits, value, key_path, reading)]
    if len(fits) == 1:  # the one candidate's own message says best what is wrong
        return _convert(fits[0], value, key_path, reading, name)
    for option in fits:
        try:
            return _convert(option, value, key_path, reading, name)
        except ConfigError:
            continue
    raise _mismatch(reading, key_path, tp, value)


def _tagged(classes: list[Any], value: Mapping[str, Any], key_path: str, reading: _Reading) -> Any:
    """The section of ``classes`` whose ``Literal`` tag field (e.g. ``kind``) holds ``value``'s tag."""
    hints = [get_type_hints(_read_type(c)) for c in classes]
    tag = next((f for f in fields(_read_type(classes[0])) if all(get_origin(h.get(f.name)) is Literal for h in hints)),
               None)
    if tag is None:
        raise TypeError(f"{key_path}: sections in a union need a Literal field that tells them apart")
    choices = [get_args(h[tag.name]) for h in hints]
    given = _convert(Literal[tuple(c for cs in choices for c in cs)], value.get(_key(tag)),
                     _join(key_path, _key(tag)), reading)
    return next(cls for cls, cs in zip(classes, choices) if given in cs)


def _convert_dataclass(cls: Any, value: Any, key_path: str, reading: _Reading, name: Any) -> Any:
    if isinstance(value, cls):
        return value
    keys = _written(cls)
    if not isinstance(value, Mapping):
        raise _fail(reading, key_path, f"expected a section ({cls.__name__}: keys {', '.join(keys)}), got {value!r}")
    unknown = [str(k) for k in value if k not in keys]
    if unknown:
        raise _fail(reading, _join(key_path, unknown[0]), _unknown_keys(cls, unknown, list(keys)))
    missing = [k for k, f in keys.items() if k not in value
               and f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING]
    if missing:
        hint = keys[missing[0]].metadata.get("help")
        raise _fail(reading, key_path, f"missing key {missing[0]!r}" + (f" ({hint})" if hint else "")
                    if len(missing) == 1 else f"missing keys {', '.join(map(repr, missing))}")
    hints = get_type_hints(cls, include_extras=True)
    kwargs = {keys[k].name: _convert(hints[keys[k].name], v, _join(key_path, k), reading) for k, v in value.items()}
    if name is not None:
        kwargs.update({f.name: name for f in fields(cls) if f.metadata.get("mapping_key")})
    try:
        return cls(**kwargs)
    except FieldError as exc:
        raise _fail(reading, _join(key_path, exc.key), exc.message) from None
    except (ValueError, TypeError) as exc:  # the dataclass's own checks (__post_init__)
        if _located(exc):
            raise
        raise _fail(reading, key_path, str(exc)) from exc


def _key(f: dataclasses.Field[Any]) -> str:
    """A field's key in the file: its ``key`` metadata (``from``, a Python keyword), else its name."""
    return str(f.metadata.get("key", f.name))


def _written(cls: Any) -> dict[str, dataclasses.Field[Any]]:
    """The fields of dataclass ``cls`` that a file writes, by their key in the file."""
    return {_key(f): f for f in fields(cls) if f.init and not f.metadata.get("mapping_key")}


def _unknown_keys(cls: Any, unknown: list[str], known: list[str]) -> str:
    if issubclass(cls, JsonConfig):  # named by class: the same message serves checkpoints of other versions
        return f"unknown {cls.__name__} fields {unknown} (known: {', '.join(known)})"
    return f"unknown key {unknown[0]!r} (known: {', '.join(sorted(known))})"


_PLURAL = {int: "integers", float: "numbers", bool: "booleans (true/false)", str: "strings", Path: "paths",
           type(None): "nulls"}
_SINGULAR = {int: "an integer", float: "a number", bool: "true or false", str: "a string", Path: "a path",
             Any: "any value"}


def describe(tp: Any) -> str:
    """What a value of type ``tp`` must be, in words (``"3 integers"``, ``"one of 'a', 'b'"``)."""
    tp = _read_type(tp)
    origin, args = get_origin(tp), get_args(tp)
    if origin in (Union, types.UnionType):
        sections = [a.__name__ for a in args if _section(a)]
        options = ([f"a section ({' or '.join(sections)})"] if sections else []) + [
            describe(a) for a in args if a is not type(None) and not _section(a)]
        return " or ".join(options) + (" or null" if type(None) in args else "")
    if origin is Literal:
        return "one of " + ", ".join(json.dumps(a) if isinstance(a, str) else str(a) for a in args)
    if origin is tuple:
        if len(args) == 2 and args[1] is Ellipsis:
            return f"a list of {_plural(args[0])}"
        if len(set(args)) == 1:
            return f"{len(args)} {_plural(args[0])}"
        return f"a list of {len(args)} values"
    if origin in (dict, Mapping):
        return "a mapping"
    if _section(tp):
        return f"a section ({tp.__name__})"
    return _SINGULAR.get(tp, str(tp))


def _plural(tp: Any) -> str:
    tp = _read_type(tp)
    if get_origin(tp) in (Union, types.UnionType):
        return " or ".join(_plural(a) for a in get_args(tp))
    if _section(tp):
        return f"sections ({tp.__name__})"
    return _PLURAL.get(tp) or describe(tp)


def _section(tp: Any) -> bool:
    """Whether ``tp`` is a config dataclass (a section of the file)."""
    return isinstance(tp, type) and is_dataclass(tp)


# ------------------------------------------------------------------------------ config -> data


def to_data(config: Any) -> dict[str, Any]:
    """The plain data of a config dataclass (sections as dicts, tuples as lists); inverse of
    :func:`from_data`, JSON- and YAML-ready."""
    data: dict[str, Any] = _plain(config)
    return data


def _plain(value: Any) -> Any:
    if is_dataclass(value) and not isinstance(value, type):
        return {k: _plain(getattr(value, f.name)) for k, f in _written(value).items()}
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
    for key, f in _written(config).items():
        value = getattr(config, f.name)
        comment = f.metadata.get("help", "")
        if is_dataclass(value):
            comment = comment or _summary(type(value))
            lines.append(f"{pad}{key}:" + (f"  # {comment}" if comment else ""))
            _emit(value, indent + 2, lines)
        else:
            lines.append(f"{pad}{key}: {_scalar(value)}" + (f"  # {comment}" if comment else ""))


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
    "ConfigError", "FieldError", "ReadAs", "one_or_more", "YamlDocument", "parse_yaml", "load_yaml", "from_data",
    "describe", "to_data", "flatten", "diff", "format_diff", "with_overrides", "dump_yaml", "JsonConfig",
]
