"""The CLI's shared vocabulary: click types for grid, shard and crops per batch, one decorator per
option that several commands take, so that a concept has one spelling and one help text, and
the options made from the run config's fields (:class:`SettingsCommand`).

| concept | option | decorator |
|---|---|---|
| output location (a new file or folder a command writes) | ``-o/--out`` | :func:`out_option` |
| video folder | ``--videos DIR`` | :func:`videos_option` |
| store(s) read | ``-s/--store`` (repeatable where several are accepted) | :func:`store_option` |
| device | ``--device`` | :func:`device_option` |
| quiet (no progress bars) | ``-q/--quiet`` | :func:`quiet_option` |
| force (replace an existing output) | ``--force`` | :func:`force_option` |

A value a type refuses is a click usage error naming the option (``Invalid value for '--grid':
...``); ``cli._ClifvqaGroup`` prints every usage error as one ``error:`` line, exit status 2.
Renamed options keep their old spelling working, hidden from ``--help``, with one ``warning:``
line naming the new one (:func:`renamed_option`).

``clifvqa train``'s setting options are not written here or in ``cli.py``: each is made from its
run-config field (:func:`clifvqa.train.config.settings`: option name, type, choices, help), so a
new setting is one field.
"""

from __future__ import annotations

import importlib
import types
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any, Literal, TypeVar, Union, get_args, get_origin

import click
from click.core import ParameterSource

from clifvqa._device import DEVICE_HELP
from clifvqa.errors import ClifvqaError

if TYPE_CHECKING:  # the run config imports torch: the CLI loads it only when a command needs it
    from clifvqa.train.config import Setting

F = TypeVar("F", bound=Callable[..., Any])

# ---------------------------------------------------------------- types


class _ParsedType(click.ParamType):
    """A type whose text the library parses (``parser``: ``"module:function"``, imported when a
    value is parsed so that ``clifvqa --help`` stays light); its refusal becomes click's error."""

    parser: str

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> Any:
        if isinstance(value, tuple):  # a default or a value already converted
            return value
        module, function = self.parser.split(":")
        try:
            return getattr(importlib.import_module(module), function)(value)
        except ClifvqaError as exc:
            self.fail(str(exc), param, ctx)


class GridType(_ParsedType):
    """``ROWSxCOLS`` (``3x3``) -> ``(3, 3)``, by :func:`clifvqa.extract.grid.parse_grid`."""

    name = "grid"
    parser = "clifvqa.extract.grid:parse_grid"


class ShardType(_ParsedType):
    """``K/N`` (shard K of N, from 0) -> ``(K, N)``, by :func:`clifvqa.extract.runner.parse_shard`."""

    name = "shard"
    parser = "clifvqa.extract.runner:parse_shard"


class BatchCropsType(click.ParamType):
    """``auto`` or a positive integer: crops per CLIP forward pass (``ExtractConfig.batch_crops``)."""

    name = "batch_crops"

    def convert(self, value: Any, param: click.Parameter | None,
                ctx: click.Context | None) -> int | Literal["auto"]:
        if value == "auto" or (isinstance(value, int) and not isinstance(value, bool) and value >= 1):
            return value
        if isinstance(value, str) and value.isdigit() and int(value) >= 1:
            return int(value)
        self.fail(f"{value!r} is not a positive integer or auto", param, ctx)


GRID = GridType()
SHARD = ShardType()
BATCH_CROPS = BatchCropsType()

# ---------------------------------------------------------------- renamed options


class RenamedOption(click.Option):
    """An option whose old spellings still work: each is a hidden parameter (an option, or a
    positional argument) named in ``old``; a value given there is taken as this option's, after
    one ``warning: OLD is deprecated, use NEW`` line on stderr. Giving both is a usage error."""

    def __init__(self, *args: Any, old: Sequence[tuple[str, str]] = (), **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.old = tuple(old)  # (parameter name, spelling shown in the warning)

    def consume_value(self, ctx: click.Context, opts: Any) -> tuple[Any, ParameterSource]:
        value, source = super().consume_value(ctx, opts)
        new = "/".join(self.opts)
        for name, spelling in self.old:
            given = opts.get(name)
            if not isinstance(given, str):  # not on the command line (None or click's UNSET)
                continue
            if source == ParameterSource.COMMANDLINE:
                raise click.UsageError(f"{spelling} is the old spelling of {new}; give only {new}", ctx)
            click.echo(f"warning: {spelling} is deprecated, use {new}", err=True)
            value, source = given, ParameterSource.COMMANDLINE
        return value, source


class _HiddenArgument(click.Argument):
    """A positional argument left out of the usage line (an old spelling)."""

    def get_usage_pieces(self, ctx: click.Context) -> list[str]:
        return []


# ---------------------------------------------------------------- shared options

QUIET_HELP = "No progress bars."
FORCE_HELP = "Replace existing output files (-o/--out)."
VIDEOS_HELP = "Dataset folder the video paths (manifest rows, store keys) are relative to."
STORE_HELP = "Feature store to read."
STORES_HELP = "Feature stores to read (repeatable; all must share one fingerprint)."


def _old_names(old: Sequence[str], old_positional: str | None) -> list[tuple[str, str]]:
    """(hidden parameter name, spelling shown in the warning) of each former spelling."""
    hidden = [(spelling.lstrip("-").replace("-", "_") + "_old", spelling) for spelling in old]
    if old_positional:
        hidden.append((old_positional.lower() + "_old", f"the positional {old_positional}"))
    return hidden


def renamed_option(*decls: str, old: Sequence[str] = (), old_positional: str | None = None,
                   **kwargs: Any) -> Callable[[F], F]:
    """``click.option(*decls, **kwargs)`` that also takes its former spellings ``old``
    (``--output``) and a former positional argument ``old_positional`` (``DST``), hidden from
    ``--help``, each with one warning line (:class:`RenamedOption`)."""
    hidden = _old_names(old, old_positional)

    def decorate(f: F) -> F:
        f = click.option(*decls, cls=RenamedOption, old=hidden, **kwargs)(f)
        for (name, _), spelling in zip(hidden, old):
            f = click.option(spelling, name, hidden=True, expose_value=False)(f)  # a str: the new one converts it
        if old_positional:
            f = click.argument(hidden[-1][0], cls=_HiddenArgument, required=False, expose_value=False)(f)
        return f

    return decorate


def out_option(help: str, *, required: bool = True, default: str | None = None, type: Any = None,
               show_default: bool = False, old: Sequence[str] = (),
               old_positional: str | None = None) -> Callable[[F], F]:
    """``-o/--out``: the new file or folder a command writes; ``help`` says what it is.

    ``old`` are former spellings (``--output``), ``old_positional`` the name of a former
    positional argument (``DST``); both keep working with a warning.
    """
    given = {} if default is None else {"default": default}  # click >= 8.2: default=None is a value
    return renamed_option("-o", "--out", "out", old=old, old_positional=old_positional, required=required,
                          type=type, metavar=None if type else "PATH", show_default=show_default, help=help, **given)


def videos_option(required: bool = True) -> Callable[[F], F]:
    """``--videos DIR``: the dataset folder (an existing directory)."""
    return click.option("--videos", required=required, help=VIDEOS_HELP, type=click.Path(exists=True, file_okay=False))


def store_option(multiple: bool = False, required: bool = False) -> Callable[[F], F]:
    """``-s/--store``: a feature store to read; with ``multiple``, repeatable into ``stores``."""
    if multiple:
        return click.option("-s", "--store", "stores", multiple=True, required=required, help=STORES_HELP)
    return click.option("-s", "--store", "store", required=required, help=STORE_HELP)


def device_option() -> Callable[[F], F]:
    """``--device`` (default ``auto``), checked by ``clifvqa._device.resolve_device`` when used."""
    return click.option("--device", default="auto", show_default=True, help=DEVICE_HELP)


def quiet_option() -> Callable[[F], F]:
    """``-q/--quiet``: no progress bars."""
    return click.option("-q", "--quiet", is_flag=True, help=QUIET_HELP)


def force_option() -> Callable[[F], F]:
    """``--force``: replace what the output location already holds."""
    return click.option("--force", is_flag=True, help=FORCE_HELP)


# ---------------------------------------------------------------- run-config settings

_PATHS: dict[str, dict[str, Any]] = {"file": {"dir_okay": False}, "dir": {"file_okay": False}}


def setting_help(setting: Setting, keyed: bool = True) -> str:
    """The help of a setting's option: the field's help, then (``keyed``: a command that sets a
    run config) the key it sets and whether ``--resume`` lets it change (``... [optim.epochs]``)."""
    if not keyed:
        return setting.help
    return f"{setting.help} [{setting.key}{'; may change on resume' if setting.resumable else ''}]"


def setting_params(setting: Setting, keyed: bool = True) -> list[click.Parameter]:
    """The option of one run-config setting (a :class:`clifvqa.train.config.Setting`), made from
    its field: ``bool`` a ``--x/--no-x`` pair, ``Literal`` a choice, ``tuple`` repeatable, a
    ``path`` checked to exist, a ``min`` a range; not given, it is None. Then the hidden options
    of its old spellings."""
    tp = setting.type
    if get_origin(tp) in (Union, types.UnionType):  # X | None: None is "not given"
        tp = next(a for a in get_args(tp) if a is not type(None))
    kwargs: dict[str, Any] = {}
    if get_origin(tp) is tuple:
        kwargs["multiple"] = True
        tp = get_args(tp)[0]
    decls = list(setting.option)
    if tp is bool:
        decls = [f"{d}/--no-{d[2:]}" if d.startswith("--") else d for d in decls]
    elif get_origin(tp) is Literal:
        kwargs["type"] = click.Choice([str(a) for a in get_args(tp)])
    elif setting.path:
        kwargs["type"] = click.Path(exists=True, **_PATHS[setting.path])
    elif setting.min is not None:
        kwargs["type"] = click.IntRange(min=int(setting.min)) if tp is int else click.FloatRange(min=setting.min)
    else:
        kwargs["type"] = tp
    hidden = _old_names(setting.old, None)
    params: list[click.Parameter] = [RenamedOption([*decls, setting.name], old=hidden, default=None,
                                                   help=setting_help(setting, keyed), **kwargs)]
    params += [click.Option([spelling, name], hidden=True, expose_value=False)
               for (name, _), spelling in zip(hidden, setting.old)]
    return params


class SettingsCommand(click.Command):
    """A command that also takes one option per run-config setting, after its own options.

    ``settings`` returns the settings (``"module:function"``, imported the first time the
    options are needed, so that ``clifvqa --help`` does not import torch); ``keys`` keeps only
    those keys, in that order; ``keyed``: the helps name the run-config key (a command that
    sets a run config; ``evaluate`` takes the same options without one). The callback gets each
    as its :attr:`Setting.name` (None, or an empty tuple for a repeatable one, when not given).
    """

    def __init__(self, *args: Any, settings: str | Callable[[], Sequence[Setting]],
                 keys: Sequence[str] | None = None, keyed: bool = True, **kwargs: Any) -> None:
        self._settings_source = settings
        self._keys = keys
        self._keyed = keyed
        self._made = False
        super().__init__(*args, **kwargs)

    @property
    def params(self) -> list[click.Parameter]:
        if not self._made:
            made = [param for setting in self.settings() for param in setting_params(setting, self._keyed)]
            self._params.extend(made)
            self._made = True
        return self._params

    @params.setter
    def params(self, value: list[click.Parameter]) -> None:
        self._params = value

    def settings(self) -> list[Setting]:
        """The settings this command takes, in option order."""
        source = self._settings_source
        if isinstance(source, str):
            module, function = source.split(":")
            source = getattr(importlib.import_module(module), function)
        found = list(source())
        if self._keys is None:
            return found
        by_key = {s.key: s for s in found}
        return [by_key[key] for key in self._keys]
