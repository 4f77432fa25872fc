"""The CLI's shared vocabulary: click types for grid, shard and batch size, and one decorator per
option that several commands take, so that a concept has one spelling and one help text.

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
"""

from __future__ import annotations

import importlib
from collections.abc import Callable, Sequence
from typing import Any, Literal, TypeVar

import click
from click.core import ParameterSource

from clifvqa.errors import ClifvqaError

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


class BatchSizeType(click.ParamType):
    """``auto`` or a positive integer (``ExtractConfig.batch_size``)."""

    name = "batch_size"

    def convert(self, value: Any, param: click.Parameter | None,
                ctx: click.Context | None) -> int | Literal["auto"]:
        if value == "auto" or (isinstance(value, int) and not isinstance(value, bool) and value >= 1):
            return value
        if isinstance(value, str) and value.isdigit() and int(value) >= 1:
            return int(value)
        self.fail(f"{value!r} is not a positive integer or auto", param, ctx)


GRID = GridType()
SHARD = ShardType()
BATCH_SIZE = BatchSizeType()

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

DEVICE_HELP = "auto (cuda when torch sees a GPU, else cpu), cpu, cuda, cuda:N or mps."
QUIET_HELP = "No progress bars."
FORCE_HELP = "Replace existing output files (-o/--out)."
VIDEOS_HELP = "Dataset folder the video paths (manifest rows, store keys) are relative to."
STORE_HELP = "Feature store to read."
STORES_HELP = "Feature store to read (repeatable; all must share one fingerprint)."


def renamed_option(*decls: str, old: Sequence[str] = (), old_positional: str | None = None,
                   **kwargs: Any) -> Callable[[F], F]:
    """``click.option(*decls, **kwargs)`` that also takes its former spellings ``old``
    (``--output``) and a former positional argument ``old_positional`` (``DST``), hidden from
    ``--help``, each with one warning line (:class:`RenamedOption`)."""
    hidden = [(spelling.lstrip("-").replace("-", "_") + "_old", spelling) for spelling in old]
    if old_positional:
        hidden.append((old_positional.lower() + "_old", f"the positional {old_positional}"))

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


def _keyed(help: str, config_key: str | None) -> str:
    """``help`` with the run-config key an option overrides (``train``), e.g. ``[data.videos]``."""
    return f"{help} [{config_key}]" if config_key else help


def videos_option(required: bool = True, config_key: str | None = None) -> Callable[[F], F]:
    """``--videos DIR``: the dataset folder (an existing directory)."""
    return click.option("--videos", required=required, help=_keyed(VIDEOS_HELP, config_key),
                        type=click.Path(exists=True, file_okay=False))


def store_option(multiple: bool = False, required: bool = False, config_key: str | None = None) -> Callable[[F], F]:
    """``-s/--store``: a feature store to read; with ``multiple``, repeatable into ``stores``."""
    if multiple:
        return click.option("-s", "--store", "stores", multiple=True, required=required,
                            help=_keyed(STORES_HELP, config_key))
    return click.option("-s", "--store", "store", required=required, help=_keyed(STORE_HELP, config_key))


def device_option(config_key: str | None = None) -> Callable[[F], F]:
    """``--device``, checked by ``clifvqa._device.resolve_device`` when used; default ``auto``,
    or none with ``config_key`` (the run config then holds it)."""
    if config_key:
        return click.option("--device", default=None, help=_keyed(DEVICE_HELP, config_key))
    return click.option("--device", default="auto", show_default=True, help=DEVICE_HELP)


def quiet_option() -> Callable[[F], F]:
    """``-q/--quiet``: no progress bars."""
    return click.option("-q", "--quiet", is_flag=True, help=QUIET_HELP)


def force_option() -> Callable[[F], F]:
    """``--force``: replace what the output location already holds."""
    return click.option("--force", is_flag=True, help=FORCE_HELP)
