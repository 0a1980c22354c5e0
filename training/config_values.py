"""Values of :class:`~maskkit.training.config.TrainConfig` fields coerced by their declared type.

Every source of a config goes through :meth:`TrainConfig.from_dict <maskkit.training.config.TrainConfig.from_dict>`:
``--config FILE``, ``--set KEY=VALUE`` (a value that is not JSON arrives as its text) and saved
run folders. User input (``strict``) is coerced by each field's type or refused in one line
naming the key, the value and what the field accepts:

======================  =========================================================================
field type              accepted
======================  =========================================================================
bool                    true/false, and the text true/false/yes/no/on/off/1/0 in any case (or 0/1)
int                     a whole number (``5``, ``5.0``, ``"5"``)
float                   a finite number (``inf``, ``nan`` and ``1e400`` are refused)
tuple[int, ...] etc.    a JSON list, one value (a one-element list), or comma-separated text
``... | None``          also ``null`` (``--set grad_clip=null``; the text ``none``/``null``)
======================  =========================================================================

A saved ``config.json`` (``strict=False``) is read as the run was trained: before this coercion a
text in a bool field (``"two_stream": "no"``) counted as True, so it stays True there (and is said
in a warning), and a value that does not coerce is kept as it was stored.
"""
from __future__ import annotations

import dataclasses
import logging
import math
from typing import Any

TRUE_WORDS = ("true", "yes", "on", "1")
FALSE_WORDS = ("false", "no", "off", "0")


class ConfigValueError(ValueError):
    """A config value its field does not take; ``key`` names the field."""

    def __init__(self, key: str, message: str) -> None:
        super().__init__(message)
        self.key = key


def _split_type(kind: str) -> tuple[str, bool]:
    """``"float | None"`` -> ``("float", True)``."""
    parts = [p.strip() for p in kind.replace(" ", "").split("|")]
    optional = "None" in parts
    rest = [p for p in parts if p != "None"]
    return ("|".join(rest), optional)


def _bool(v: Any) -> bool:
    if isinstance(v, bool):
        return v
    if isinstance(v, (int, float)) and v in (0, 1):
        return bool(v)
    if isinstance(v, str) and v.strip().lower() in TRUE_WORDS + FALSE_WORDS:
        return v.strip().lower() in TRUE_WORDS
    raise ValueError("true or false (also yes/no, on/off, 1/0, any case)")


def _int(v: Any) -> int:
    if isinstance(v, bool):
        raise ValueError("a whole number")
    if isinstance(v, str):
        try:
            v = float(v.strip()) if any(c in v for c in ".eE") else int(v.strip())
        except ValueError:
            raise ValueError("a whole number") from None
    if isinstance(v, int):
        return v
    if isinstance(v, float) and math.isfinite(v) and v.is_integer():
        return int(v)
    raise ValueError("a whole number")


def _float(v: Any) -> float:
    if isinstance(v, bool):
        raise ValueError("a finite number")
    if isinstance(v, str):
        try:
            v = float(v.strip())
        except ValueError:
            raise ValueError("a finite number") from None
    if isinstance(v, (int, float)):
        try:
            f = float(v)
        except OverflowError:  # an int too large for a float
            raise ValueError("a finite number") from None
        if math.isfinite(f):
            return f
    raise ValueError("a finite number")


def _scalar(kind: str, v: Any) -> Any:
    if kind == "bool":
        return _bool(v)
    if kind == "int":
        return _int(v)
    if kind == "float":
        return _float(v)
    if kind == "str":
        if isinstance(v, str):
            return v
        if isinstance(v, (int, float)) and not isinstance(v, bool):
            return str(v)  # --set split=7 (JSON 7): the text it was typed as
        raise ValueError("a text")
    return v


def _items(v: Any) -> list:
    """A list value: a JSON list, one scalar (a one-element list) or comma-separated text."""
    if isinstance(v, (list, tuple)):
        return list(v)
    if isinstance(v, str):
        return [p.strip() for p in v.split(",") if p.strip()]
    return [v]


def coerce(key: str, kind: str, v: Any) -> Any:
    """``v`` as field ``key`` of declared type ``kind`` (its annotation text) takes it.

    Raises:
        ConfigValueError: one line naming the key, the value and what the field accepts.
    """
    base, optional = _split_type(kind)
    if v is None or (optional and base != "str" and isinstance(v, str) and v.strip().lower() in ("none", "null")):
        if optional:
            return None
        raise ConfigValueError(key, f"{key} must be set (it has no 'off' value), got {v!r}")
    if base.startswith("tuple["):
        inner = [p.strip() for p in base[len("tuple["):-1].split(",")]
        item_kind = inner[0]
        n = None if inner[-1] == "..." else len(inner)
        try:
            out = tuple(_scalar(item_kind, x) for x in _items(v))
        except ValueError as exc:
            raise ConfigValueError(key, f"{key} must be a list of {_plural(str(exc))}"
                                   + (f" ({n} values)" if n else "") + f", e.g. [{_example(key)}], got {v!r}") from None
        if n is not None and len(out) == 1 and key in ("input_mean", "input_std"):
            out = out * n  # one value: every channel
        if n is not None and len(out) != n:
            raise ConfigValueError(key, f"{key} must be a list of {n} values, got {v!r}")
        return out
    if base.startswith("dict"):
        if isinstance(v, dict):
            return v
        raise ConfigValueError(key, f"{key} must be a JSON object, got {v!r}")
    try:
        return _scalar(base, v)
    except ValueError as exc:
        raise ConfigValueError(key, f"{key} must be {exc}" + (" or null" if optional else "")
                               + f", got {v!r}") from None


def _plural(what: str) -> str:
    return {"a whole number": "whole numbers", "a finite number": "finite numbers", "a text": "texts"}.get(what, what)


def _example(key: str) -> str:
    return {"milestones": "10, 18, 25", "image_size": "112, 112"}.get(key, "...")


def coerce_fields(values: dict[str, Any], types: dict[str, str], strict: bool) -> dict[str, Any]:
    """Every value of ``values`` coerced by ``types`` (field name -> annotation text).

    ``strict`` (user input): the first value that does not coerce raises
    :class:`ConfigValueError`. Not ``strict`` (a saved ``config.json``): a bool field keeps the
    truth value the stored value had when the run was trained (``bool("no")`` is True), said in a
    warning, and any other value that does not coerce is kept as stored.
    """
    out = {}
    log = logging.getLogger(__name__)
    for key, v in values.items():
        kind = types.get(key)
        if kind is None:
            out[key] = v
            continue
        try:
            out[key] = coerce(key, kind, v)
        except ConfigValueError:
            if strict:
                raise
            out[key] = v
            if _split_type(kind)[0] == "bool" and v is not None:
                out[key] = bool(v)
                log.warning("config %s=%r read as %s, as the run was trained with it (a text value counted as true)",
                            key, v, bool(v))
            continue
        if not strict and _split_type(kind)[0] == "bool" and isinstance(v, str) and out[key] != bool(v):
            out[key] = bool(v)  # the run was built with the text's truth value, not its meaning
            log.warning("config %s=%r read as %s, as the run was trained with it (a text value counted as true)",
                        key, v, bool(v))
    return out


def check_numbers(cfg: Any) -> None:
    """Every numeric field holds a number (``--set max_data_loss=abc`` names the key, not only
    ``could not convert``); an int field a whole number. Raises ``ValueError``."""
    for f in dataclasses.fields(cfg):  # a TrainConfig
        kind = str(f.type).replace(" ", "")
        if kind not in ("int", "float", "int|None", "float|None"):
            continue
        v = getattr(cfg, f.name)
        if v is None and kind.endswith("|None"):
            continue
        whole = kind.startswith("int")
        if isinstance(v, bool) or not isinstance(v, (int, float)) or (whole and not float(v).is_integer()):
            raise ValueError(f"{f.name} must be {'a whole number' if whole else 'a number'}"
                             + (" or None" if kind.endswith("|None") else "") + f", got {v!r}")


def three(v: Any, name: str) -> tuple[float, float, float]:
    """A per-channel value: one number (all channels) or three."""
    vals = [float(v)] * 3 if isinstance(v, (int, float)) else [float(x) for x in v]
    if len(vals) != 3:
        raise ValueError(f"{name} needs 1 or 3 values, got {len(vals)}")
    return tuple(vals)  # type: ignore[return-value]
