"""The option vocabulary every ``maskkit`` command shares, and aliases for retired spellings.

One concept, one spelling, in every command that can honour it:

==================  ===========================================================================
``-q/--quiet``      no progress bar or summary table (accepted, as a no-op, where nothing is shown)
``-j/--jobs``       worker processes, ``0`` = all CPU cores
``-o/--out``        the output (a folder or a file)
``--overwrite``     replace the outputs of a different, earlier run
``--aligned``       the inputs are already ArcFace crops: no detection
``--device``        ``auto`` (CUDA when available, else CPU), ``cpu``, ``cuda``, ``cuda:N``
``--detector``      ``hog``, ``cnn``, ``blazeface``, ``fan``
``--size``          an aligned crop size: ``N`` or ``HxW`` (112, 112x96, 128, 256...), 16..4096, checked
                    when the command line is read (``_crop_size``)
``--no-verify``     skip the check of what was read or written (``export``: onnxruntime against
                    PyTorch; ``export-rec``: each shard's sha256 against the manifest); checked by
                    default
==================  ===========================================================================

A retired spelling keeps working for one release through :func:`_deprecated`: it is hidden from
``--help`` and, when used, prints one note to stderr naming the new spelling.

Everything here is private to ``maskkit.cli`` (command modules hold no public library code).
"""
from __future__ import annotations

import functools
from pathlib import Path
from typing import Any, Callable

import click
from click.core import ParameterSource

from maskkit.face.detect import DETECTORS

_GIVEN = (ParameterSource.COMMANDLINE, ParameterSource.ENVIRONMENT)


def _quiet(help: str = "No progress bar or summary table.") -> Callable:
    return click.option("-q", "--quiet", is_flag=True, help=help)


def _jobs(default: int = 0) -> Callable:
    """``-j/--jobs``, alike in every command: 0 (or joblib's -1) = as many workers as pay off."""
    return click.option("-j", "--jobs", default=default, show_default=True, type=click.IntRange(-1, None),
                        help="Worker processes (0 or -1 = as many as pay off: one per 500 inputs, up to all "
                             "CPU cores; a small job runs in one process).")


def _out(help: str, required: bool = True, file: bool = False, suffixes: tuple[str, ...] = (), **kwargs: Any) -> Callable:
    """``-o/--out``; ``suffixes``: the file endings the output's format is written under (a file
    named otherwise is a usage error, never bytes of one format under another's name)."""
    kind = click.Path(dir_okay=False, path_type=Path) if file else click.Path(file_okay=False, path_type=Path)
    if suffixes:
        kwargs["callback"] = lambda ctx, param, value: _suffix(value, suffixes, "-o/--out")
    return click.option("-o", "--out", required=required, type=kwargs.pop("type", kind), help=help, **kwargs)


def _suffix(path: Path | None, suffixes: tuple[str, ...], hint: str) -> Path | None:
    """``path`` when it ends in one of ``suffixes`` (case-insensitive) or is None, else a usage
    error naming the endings the format is written under."""
    if path is not None and Path(path).suffix.lower() not in suffixes:
        raise click.BadParameter(f"{path} does not end in {' or '.join(suffixes)}, the format written there",
                                 param_hint=hint)
    return path


def _overwrite(help: str = "Replace the outputs of a different, earlier run found in --out (otherwise refused).") \
        -> Callable:
    return click.option("--overwrite", is_flag=True, help=help)


def _aligned(help: str = "Inputs are already ArcFace crops: skip detection.") -> Callable:
    return click.option("--aligned", is_flag=True, help=help)


def _verify(help: str) -> Callable:
    return click.option("--verify/--no-verify", default=True, show_default=True, help=help)


def _device(help: str = "auto (CUDA when available, else CPU), cpu, cuda, cuda:N.") -> Callable:
    return click.option("--device", default="auto", show_default=True, help=help)


def _detector(help: str = "Face detector backend.", default: str = "hog") -> Callable:
    return click.option("--detector", default=default, show_default=True, type=click.Choice(DETECTORS), help=help)


#: A number > 0 (``--width``, ``--lr``): click's one-line "not in the range x>0" otherwise; with
#: ``callback=_finite`` also finite (``inf`` and ``1e400`` pass ``x>0``; ``nan`` fails every range).
_POSITIVE = click.FloatRange(0, None, min_open=True)


def _finite(ctx: click.Context, param: click.Parameter, value: Any) -> Any:
    """Click callback: refuse ``inf`` (``1e400``) in one usage line naming the option."""
    import math

    if value is not None and not math.isfinite(value):
        raise click.BadParameter(f"{value!r} is not a finite number.", ctx=ctx, param=param)
    return value


def _epoch_list(ctx: click.Context, param: click.Parameter, value: Any) -> tuple[int, ...]:
    """Click callback: comma-separated whole epochs >= 1 (``10,18,25``; empty: none) ->
    ``tuple[int, ...]``, else one usage error naming the option."""
    parts = [p.strip() for p in str(value or "").split(",") if p.strip()]
    try:
        out = tuple(int(p) for p in parts)
    except ValueError:
        out = ()
    if len(out) != len(parts) or any(e < 1 for e in out):
        raise click.BadParameter(f"{value!r} is not a comma-separated list of epochs (whole numbers >= 1, "
                                 "e.g. 10,18,25)", ctx, param)
    return out


def _crop_size(ctx: click.Context, param: click.Parameter, value: Any) -> tuple[int, int]:
    """Click callback of ``--size``: an aligned crop size, ``N`` or ``HxW`` (``112``, ``112x96``,
    ``128``...) -> ``(H, W)``, refused when the command line is read (one usage error naming the
    option and the range 16..4096) by the rule of :func:`maskkit.face.align.parse_size`, so a bad
    size never reaches the inputs."""
    from maskkit.face.align import parse_size

    try:
        return parse_size(value)
    except ValueError as exc:
        raise click.BadParameter(str(exc), ctx, param) from None


def _size(help: str) -> Callable:
    """``--size``, alike in every command that writes aligned crops (align, synth)."""
    return click.option("--size", default="112", show_default=True, callback=_crop_size, metavar="N|HxW", help=help)


def _detector_default(name: str, detectors: tuple[str, ...] = ("hog", "cnn")) -> str:
    """The default of a detector option as ``--help`` shows it, read from the detectors themselves
    (``"hog 1024, cnn 800"``; one value when they agree), so the help never drifts from the code."""
    import inspect

    from maskkit.face.dlib_detectors import CnnDetector, HogDetector

    classes = {"hog": HogDetector, "cnn": CnnDetector}
    vals = {d: inspect.signature(classes[d].__init__).parameters[name].default for d in detectors}
    if len(set(vals.values())) == 1:
        return str(next(iter(vals.values())))
    return ", ".join(f"{d} {v}" for d, v in vals.items())


def _upsample() -> Callable:
    return click.option("--upsample", type=click.IntRange(0, 4), default=None,
                        show_default=_detector_default("upsample"), help="Detector upsampling (hog/cnn).")


def _max_side(default: int | None = None) -> Callable:
    """``--max-side``; ``default`` None: the detector's own (shown per detector)."""
    return click.option("--max-side", type=click.IntRange(0, None), default=None,
                        show_default=f"{default} for hog/cnn" if default is not None else _detector_default("max_side"),
                        help="Detect on a copy downscaled to this longest side (hog/cnn; 0 = full size); "
                             "landmarks, masks and alignment stay at full resolution.")


def _max_pixels() -> Callable:
    from maskkit.io.image_io import DEFAULT_MAX_PIXELS

    return click.option("--max-pixels", default=DEFAULT_MAX_PIXELS, show_default=True, type=click.IntRange(1, None),
                        help="Refuse images with more pixels than this (checked before decoding; too_large).")


def _detector_opts(detector: str, upsample: int | None, max_side: int | None, default_max_side: int | None = None) -> dict:
    """The detector options ``--upsample`` / ``--max-side`` give (``default_max_side``: the
    command's own default for hog/cnn, e.g. synth's 640); either given to a detector that has
    no such option is a usage error, not ignored."""
    opts = {}
    for name, value in (("upsample", upsample), ("max_side", max_side)):
        if value is None:
            continue
        if detector not in ("hog", "cnn"):
            flag = "--" + name.replace("_", "-")
            raise click.BadParameter(f"{flag} applies to hog and cnn only", param_hint=flag)
        opts[name] = value
    if default_max_side is not None and detector in ("hog", "cnn"):
        opts.setdefault("max_side", default_max_side)
    return opts


def _deprecated(*decls: str, dest: str, new: str, old: str | None = None, convert: Callable | None = None,
                argument: bool = False, **kwargs: Any) -> Callable:
    """Accept a retired spelling for one release (a decorator; place it below ``@click.command``).

    Adds a hidden option (or an optional argument, ``argument=True``) declared by ``decls``. When
    it is given, one note goes to stderr (``OLD is deprecated; use NEW``) and its value, passed
    through ``convert``, becomes the command's ``dest`` parameter. Giving both spellings at once
    is a usage error.

    Args:
        decls: click declarations of the old spelling (e.g. ``"--no-progress"``).
        dest: the command parameter the old spelling sets (e.g. ``"quiet"``).
        new: the new spelling, as shown in the note (e.g. ``"-q/--quiet"``).
        old: how the old spelling is named in the note (default: its first declaration).
        convert: old value -> new value (default: unchanged).
        argument: declare a positional argument instead of an option.
        kwargs: more click keyword arguments for the old spelling.
    """
    name = ("deprecated_" + dest + "_" + "".join(c for c in decls[0] if c.isalnum())).lower()
    shown = old or decls[0]

    def deco(f: Callable) -> Callable:
        @functools.wraps(f)
        def wrapper(*args: Any, **kw: Any) -> Any:
            got = kw.pop(name)
            ctx = click.get_current_context()
            if ctx.get_parameter_source(name) in _GIVEN:
                if ctx.get_parameter_source(dest) in _GIVEN:
                    raise click.UsageError(f"{shown} (deprecated) and {new} both given; use {new} only")
                click.echo(f"maskkit {ctx.info_name}: {shown} is deprecated and will be removed in the next "
                           f"release; use {new}", err=True)
                kw[dest] = convert(got) if convert else got
            return f(*args, **kw)

        if argument:
            click.argument(name, *decls[1:], required=False, **kwargs)(wrapper)
        else:
            click.option(*decls, name, hidden=True, **kwargs)(wrapper)
        return wrapper

    return deco
