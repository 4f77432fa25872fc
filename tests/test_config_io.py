"""config_io's typed reading beyond run configs (what experiment files are read with): mappings of
sections named by their key, unions chosen by shape or by a Literal tag, Annotated checks and
ReadAs, file keys other than the field name, where errors point, and the one ``${var}`` rule."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Annotated, Any, Literal

import pytest

from clifvqa.config_io import ConfigError, FieldError, ReadAs, from_data, one_or_more, parse_yaml


def _positive(n: int) -> int:
    if n < 1:
        raise ConfigError(f"expected an integer >= 1, got {n}")  # the reader adds file, line and key
    return n


@dataclass(frozen=True, kw_only=True)
class Item:
    name: str = field(default="", metadata={"mapping_key": True})
    source: str = field(metadata={"key": "from", "help": "where it comes from"})
    size: Annotated[int, _positive] = 1

    def __post_init__(self) -> None:
        if self.source == self.name:
            raise ConfigError(f"{self.name!r} cannot come from itself")


@dataclass(frozen=True)
class Small:
    kind: Literal["small"]
    x: int = 0


@dataclass(frozen=True)
class Large:
    kind: Literal["large", "huge"]
    y: str = ""


@dataclass(frozen=True)
class Doc:
    items: Mapping[str, Item] = field(default_factory=dict)
    tags: Annotated[tuple[str, ...], ReadAs(str | tuple[str, ...]), one_or_more] = ()
    part: Small | Large | None = None
    val: float | str = 0.1
    extra: Mapping[str, Any] = field(default_factory=dict)
    counts: tuple[int, ...] = ()

    def __post_init__(self) -> None:
        if "bad" in self.items:
            raise FieldError("items.bad", "a reserved name")


def read(text: str, variables: Mapping[str, str] | None = None) -> Doc:
    doc = parse_yaml(text, "f.yaml")
    return from_data(Doc, doc.data, doc=doc, variables=variables)


def test_typed_reading_of_mappings_unions_and_checks():
    doc = read("items:\n  a: {from: x, size: 2}\n  7: {from: 8}\ntags: one\npart: {kind: huge, y: 3}\nval: 0\n")
    # the section's name is its key; numbers where text is expected are read as their text
    assert doc.items == {"a": Item(name="a", source="x", size=2), "7": Item(name="7", source="8")}
    assert doc.tags == ("one",) and doc.part == Large("huge", "3") and doc.val == 0.0
    doc = read("tags: [a, b]\npart: {kind: small, x: 4}\nval: lsvq.test\nitems:\n")
    assert (doc.tags, doc.part, doc.val, doc.items) == (("a", "b"), Small("small", 4), "lsvq.test", {})


@pytest.mark.parametrize(("text", "message"), [
    ("items:\n  a: {size: 2}\n", "f.yaml:2: items.a: missing key 'from' (where it comes from)"),
    ("items:\n  a: {from: x, sise: 2}\n", "f.yaml:2: items.a.sise: unknown key 'sise' (known: from, size)"),
    ("items:\n  a:\n    from: x\n    size: 0\n", "f.yaml:4: items.a.size: expected an integer >= 1, got 0"),
    ("items:\n  ok: {from: x}\n  bad: {from: y}\n", "f.yaml:3: items.bad: a reserved name"),
    ("items:\n  a: {from: x}\n  b: {from: b}\n", "f.yaml:3: items.b: 'b' cannot come from itself"),
    ("part: {x: 1}\n", "f.yaml:1: part.kind: expected one of \"small\", \"large\", \"huge\", got None"),
    ("part:\n  kind: small\n  y: 1\n", "f.yaml:3: part.y: unknown key 'y' (known: kind, x)"),
    ("part: [1]\n", "f.yaml:1: part: expected a section (Small or Large) or null, got [1]"),
    ("val: true\n", "f.yaml:1: val: expected a number or a string, got True"),
    ("tags: {a: 1}\n", "f.yaml:1: tags: expected a string or a list of strings, got {'a': 1}"),
    ("counts: [1, x]\n", "f.yaml:1: counts: expected a list of integers, got [1, 'x']"),
    ("extra: 3\n", "f.yaml:1: extra: expected a mapping, got 3"),
])
def test_errors_name_the_line_and_key_of_the_problem(text, message):
    with pytest.raises(ConfigError) as info:
        read(text)
    assert str(info.value) == message


def test_one_variable_rule():
    variables = {"n": "3", "dir": "/data", "list": "[1, 2]", "word": "yes"}
    doc = read("items:\n  a: {from: '${n}', size: '${n}'}\ntags: ['${dir}/x', '${word}']\ncounts: '${list}'\n"
               "extra: {epochs: '${n}', sizes: ['${n}', 4], path: '${dir}/y', flag: '${word}'}\n", variables)
    # text fields take the text; other fields a string that is exactly one ${var} read as YAML
    assert doc.items["a"] == Item(name="a", source="3", size=3)
    assert doc.tags == ("/data/x", "yes") and doc.counts == (1, 2)
    assert doc.extra == {"epochs": 3, "sizes": [3, 4], "path": "/data/y", "flag": True}
    with pytest.raises(ConfigError, match=r"^f.yaml:1: tags\[0\]: unknown variable \$\{nope\} \(defined: n, dir,"):
        read("tags: ['${nope}']\n", variables)
    assert read("tags: ['${nope}']\n").tags == ("${nope}",)  # without variables: taken as written
    with pytest.raises(ConfigError, match=r"^f.yaml:1: counts: expected a list of integers, got '\[1'"):
        read("counts: '${bad}'\n", {"bad": "[1"})  # a value that is not YAML stays text
