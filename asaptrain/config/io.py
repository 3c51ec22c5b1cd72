"""Configs in and out: TOML files, plain dicts, typed edits, ``--set`` overrides, and presets.

Every way in validates: :func:`load_config` (a preset or a TOML file, then ``--set``
overrides), :func:`from_dict` (a parsed TOML, what a worker receives) and :func:`replace` (the
one way code changes a config: dotted keys and typed values, a validated new Config back).
Values are checked against the field types of ``schema.py`` (lossless conversions only, such
as int -> float); an unknown or ill-typed field is a :class:`ConfigError` that names it and
what it accepts::

    cfg = load_config(preset="deblurgan-smoke", overrides=["train.steps=20"])
    cfg = replace(cfg, {"train.steps": 40, "storage.store": "s3://bucket/asap"})
    print(to_toml(cfg))
"""

from __future__ import annotations

import dataclasses
import tomllib
import typing
from pathlib import Path
from collections.abc import Iterable, Mapping
from typing import Any, Literal

from asaptrain.config.schema import SECTIONS, Config, ConfigError
from asaptrain.config.validate import validate


def _section_type(name: str) -> type:
    return typing.get_type_hints(Config)[name]


def _coerce(where: str, hint: Any, value: Any) -> Any:
    """Check ``value`` against a field's type, converting the lossless cases (int -> float)."""
    origin = typing.get_origin(hint)
    if origin is Literal:
        allowed = typing.get_args(hint)
        if isinstance(value, bool) and all(isinstance(a, str) for a in allowed):
            value = str(value).lower()  # use_gpu = true in TOML
        if value not in allowed:
            raise ConfigError(f"{where} must be one of {', '.join(map(repr, allowed))}; got {value!r}")
        return value
    if origin is dict:
        if not isinstance(value, dict):
            raise ConfigError(f"{where} must be a table like {{CPU = 4, GPU = 1}}; got {value!r}")
        out = {}
        for k, v in value.items():
            if isinstance(v, bool) or not isinstance(v, (int, float)):
                raise ConfigError(f"{where}.{k} must be a number; got {v!r}")
            out[str(k)] = float(v)
        return out
    if hint is bool:
        if not isinstance(value, bool):
            raise ConfigError(f"{where} must be true or false; got {value!r}")
        return value
    if hint is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise ConfigError(f"{where} must be an integer; got {value!r}")
        return value
    if hint is float:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ConfigError(f"{where} must be a number; got {value!r}")
        return float(value)
    if hint is str:
        if not isinstance(value, str):
            raise ConfigError(f"{where} must be a string; got {value!r}")
        return value
    raise TypeError(f"unsupported config type {hint} at {where}")


def _merge(raw: dict[str, Any], base: Config | None, source: str) -> Config:
    """``base`` (defaults if None) with nested dicts of values applied, type-checked, not validated."""
    cfg = dataclasses.replace(base) if base is not None else Config()
    for section, values in raw.items():
        if section not in SECTIONS:
            raise ConfigError(f"{source}: unknown section [{section}]; sections are {', '.join(SECTIONS)}")
        if not isinstance(values, dict):
            raise ConfigError(f"{source}: [{section}] must be a table")
        hints = typing.get_type_hints(_section_type(section))
        current = dataclasses.replace(getattr(cfg, section))
        for key, value in values.items():
            if key not in hints:
                raise ConfigError(
                    f"{source}: unknown field {section}.{key}; {section} has {', '.join(hints)}"
                )
            setattr(current, key, _coerce(f"{section}.{key}", hints[key], value))
        setattr(cfg, section, current)
    return cfg


def from_dict(raw: dict[str, Any], base: Config | None = None, source: str = "config") -> Config:
    """A validated Config from nested dicts (a parsed TOML), on top of ``base`` (defaults if None)."""
    return validate(_merge(raw, base, source))


def _nest(changes: Mapping[str, Any], source: str) -> dict[str, dict[str, Any]]:
    """``{"train.steps": 20}`` -> ``{"train": {"steps": 20}}``."""
    raw: dict[str, dict[str, Any]] = {}
    for key, value in changes.items():
        section, dot, name = key.partition(".")
        if not dot or not section or not name:
            raise ConfigError(f"{source}: {key!r} is not section.field (e.g. train.steps)")
        raw.setdefault(section, {})[name] = value
    return raw


def replace(cfg: Config, changes: Mapping[str, Any], source: str = "config") -> Config:
    """``cfg`` with typed values set by dotted key, validated: ``replace(cfg, {"train.steps": 20})``.

    ``cfg`` is left as it was; an unknown key or a value the field does not take is a
    :class:`ConfigError` naming the field.
    """
    return from_dict(_nest(changes, source), cfg, source=source)


def to_dict(cfg: Config) -> dict[str, Any]:
    """Nested plain dicts, one per section (what TOML and JSON take)."""
    return dataclasses.asdict(cfg)


def to_toml(cfg: Config) -> str:
    """The whole config as TOML text, every field written out."""
    import tomli_w  # only where a config is written: the GPU image lacks it unless carried

    return tomli_w.dumps(to_dict(cfg))


def parse_override(text: str) -> tuple[str, Any]:
    """``"train.lr=1e-4"`` -> ("train.lr", 1e-4); values are TOML literals or bare strings.

    A string field keeps the text as written (``data.dataset=123`` stays "123").
    """
    if "=" not in text or "." not in text.split("=", 1)[0]:
        raise ConfigError(f"--set {text!r}: expected section.field=value, e.g. train.steps=100")
    key, raw = (part.strip() for part in text.split("=", 1))
    try:
        value = tomllib.loads(f"v = {raw}")["v"]
    except tomllib.TOMLDecodeError:
        value = raw  # a bare word: a string such as wgan-gp or s3://bucket/x
    section, name = key.split(".", 1)
    if section in SECTIONS and typing.get_type_hints(_section_type(section)).get(name) is str:
        value = raw if not isinstance(value, str) else value
    return key, value


def parse_overrides(overrides: Iterable[str]) -> dict[str, Any]:
    """``--set`` texts as the changes :func:`replace` takes (a later one wins)."""
    return dict(parse_override(text) for text in overrides)


def apply_overrides(cfg: Config, overrides: Iterable[str]) -> Config:
    """``cfg`` with ``--set section.field=value`` texts (what a user typed) applied, then validated."""
    return replace(cfg, parse_overrides(overrides), source="--set")


def load_toml(path: str | Path) -> Config:
    """A validated config from a TOML file; errors name the file and the field."""
    path = Path(path)
    try:
        raw = tomllib.loads(path.read_bytes().decode("utf-8"))  # TOML is UTF-8, whatever the locale
    except FileNotFoundError:
        raise ConfigError(f"config file {path} does not exist") from None
    except OSError as exc:
        raise ConfigError(f"config file {path} cannot be read: {exc.strerror}") from None
    except UnicodeDecodeError as exc:
        raise ConfigError(f"config file {path} is not UTF-8 text (byte {exc.start} is {exc.object[exc.start]:#04x}); "
                          "save it as UTF-8") from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"config file {path} is not valid TOML: {exc}") from None
    return from_dict(raw, source=str(path))


def load_config(
    preset: str | None = None, config_file: str | Path | None = None, overrides: tuple[str, ...] | list[str] = ()
) -> Config:
    """The one way commands build a config: a preset or a TOML file, then ``--set`` overrides."""
    from asaptrain.config.presets import get_preset

    if preset and config_file:
        raise ConfigError("give either --preset or --config, not both")
    if config_file:
        cfg = load_toml(config_file)
    elif preset:
        cfg = get_preset(preset)
    else:
        raise ConfigError("give --preset NAME or --config FILE (see `asaptrain config presets`)")
    return apply_overrides(cfg, list(overrides)) if overrides else validate(cfg)
