"""The ``[model]`` section, built from the models' own option dataclasses.

Each generator option is declared once, in its model's dataclass (``models/options.py``,
``models/hybrid.py``): its name, type, default, docstring and check. :data:`ModelConfig` is the
flat table users write (``--set model.tile_size=8``, ``[model]`` in TOML, the sweep's keys): the
model's name, the discriminator's options (``DiscriminatorConfig``, each model's defaults in
``DISCRIMINATORS``) and every generator field, generated from those dataclasses. A field shared by several generators (``ngf``,
``residual``) is one key; its default is that of the first model in :data:`GENERATORS` that
declares it (DeblurGAN's: the default model). :func:`generator_options` turns the table back
into the named model's dataclass, whose ``__post_init__`` is the check; ``validate`` (``config/validate.py``)
reports what it refuses as ``model.FIELD``.

    m = model_defaults("hybrid", ndf=32)        # HybridConfig's and ASAP-Net's discriminator's defaults
    generator_options(m, in_channels=3)         # -> HybridConfig(...), checked
"""

from __future__ import annotations

import dataclasses
import inspect
import re
import typing
from dataclasses import dataclass, field
from typing import Any, Literal

from asaptrain.models.hybrid import HybridConfig
from asaptrain.models.options import (DISCRIMINATORS, ASAPNetConfig, DeblurGANConfig, DiscriminatorConfig, OptionError,
                                      Pix2PixHDConfig)

ModelName = Literal["asapnet", "pix2pixhd", "deblurgan", "hybrid"]

GENERATORS: dict[str, type] = {
    "deblurgan": DeblurGANConfig, "asapnet": ASAPNetConfig, "hybrid": HybridConfig, "pix2pixhd": Pix2PixHDConfig,
}
"""Each model's generator options; the first to declare a field gives that key's default."""
KEYS = {"norm": "g_norm", "init": "asap_init"}
"""Model field -> its ``[model]`` key, where the table names it otherwise (the keys configs have)."""
FROM_DATA = ("in_channels", "out_channels", "channels")
"""Fields the task decides (``[data]``: label channels or RGB), not keys."""
NOT_KEYS = ("last_layer_scale", "local_residual_blocks")
"""Fields that keep the model's default: no run has changed them, so no config names them."""
AUTO = ("init",)
"""Fields whose key also takes "auto": the named model's own default (asapnet xavier, hybrid hyper)."""


def field_docs(section_cls: type) -> dict[str, str]:
    """The one-line docstrings of a dataclass's fields: the string literal under each field, or
    for a generated class (:data:`ModelConfig`) the ``doc`` its fields carry."""
    docs = {f.name: f.metadata["doc"] for f in dataclasses.fields(section_cls) if "doc" in f.metadata}
    if docs:
        return docs
    src = inspect.getsource(section_cls)
    return dict(re.findall(r"^\s+(\w+): [^\n]+\n\s+\"\"\"(.+?)\"\"\"", src, flags=re.M))


@dataclass
class _ModelSection:
    """What ``[model]`` declares itself: which model (its discriminator's keys are generated)."""

    name: ModelName = "deblurgan"
    """Which generator / discriminator pair to train."""


def _discriminator_keys() -> dict[str, tuple[Any, Any, str]]:
    """key -> (type, default, docstring) of the discriminator options: the default model's defaults."""
    default = DISCRIMINATORS[_ModelSection.name]()
    hints, docs = typing.get_type_hints(DiscriminatorConfig), field_docs(DiscriminatorConfig)
    return {f.name: (hints[f.name], getattr(default, f.name), docs[f.name]) for f in dataclasses.fields(default)}


def _generator_keys() -> dict[str, tuple[Any, Any, str]]:
    """key -> (type, default, docstring) of every generator option, in declaration order."""
    keys: dict[str, tuple[Any, Any, str]] = {}
    users: dict[str, list[str]] = {}
    for model, cls in GENERATORS.items():
        hints, docs = typing.get_type_hints(cls), field_docs(cls)
        for f in dataclasses.fields(cls):
            if f.name in FROM_DATA or f.name in NOT_KEYS:
                continue
            key = KEYS.get(f.name, f.name)
            hint = Literal[("auto", *typing.get_args(hints[f.name]))] if f.name in AUTO else hints[f.name]
            users.setdefault(key, []).append(model)
            if key in keys:
                if keys[key][0] != hint:  # one key, one type: a second meaning would need its own key
                    raise TypeError(f"[model] {key}: {model} declares {hint}, another model {keys[key][0]}")
                continue
            default = "auto" if f.name in AUTO else f.default
            keys[key] = (hint, default, docs[f.name])
    for key in [KEYS.get(name, name) for name in AUTO]:
        hint, default, doc = keys[key]
        keys[key] = (hint, default, f"{doc} auto: the model's own default")
    return {key: (hint, default, f"{doc} [{', '.join(users[key])}]") for key, (hint, default, doc) in keys.items()}


def _build_model_config() -> type:
    section = [(f.name, typing.get_type_hints(_ModelSection)[f.name],
                field(default=f.default, metadata={"doc": doc}))
               for f, doc in zip(dataclasses.fields(_ModelSection), field_docs(_ModelSection).values())]
    generated = [(key, hint, field(default=default, metadata={"doc": doc}))
                 for key, (hint, default, doc) in {**_discriminator_keys(), **_generator_keys()}.items()]
    cls = dataclasses.make_dataclass("ModelConfig", section + generated)
    cls.__module__ = __name__  # pickled by reference (Ray sends configs to workers)
    cls.__doc__ = ("The [model] table: the model's name, its discriminator, and every generator option of "
                   "models/options.py as one flat key each (see this module's docstring).")
    return cls


ModelConfig = _build_model_config()


def model_defaults(name: str, **changes: Any) -> Any:
    """A ModelConfig for ``name`` holding its generator's and its discriminator's defaults, then ``changes``."""
    own = GENERATORS[name]()
    values = {KEYS.get(f.name, f.name): getattr(own, f.name) for f in dataclasses.fields(own)
              if f.name not in FROM_DATA + NOT_KEYS + AUTO}
    disc = dataclasses.asdict(DISCRIMINATORS[name]())
    return ModelConfig(**{"name": name, **disc, **values, **changes})


def discriminator_options(m: Any) -> DiscriminatorConfig:
    """The named model's discriminator options from the flat table ``m``, checked (OptionError)."""
    cls = DISCRIMINATORS[m.name]
    return cls(**{f.name: getattr(m, f.name) for f in dataclasses.fields(cls)})


def generator_options(m: Any, in_channels: int, out_channels: int) -> Any:
    """The named model's own dataclass from the flat table ``m`` (a :data:`ModelConfig`).

    Raises :class:`~asaptrain.models.options.OptionError` (its ``field`` a model field; see
    :func:`key_of`) for what the model refuses.
    """
    cls = GENERATORS[m.name]
    channels = {"in_channels": in_channels, "out_channels": out_channels, "channels": in_channels}
    kwargs = {}
    for f in dataclasses.fields(cls):
        if f.name in FROM_DATA:
            kwargs[f.name] = channels[f.name]
        elif f.name not in NOT_KEYS:
            value = getattr(m, KEYS.get(f.name, f.name))
            if not (f.name in AUTO and value == "auto"):
                kwargs[f.name] = value
    return cls(**kwargs)


def key_of(model_field: str) -> str:
    """The ``[model]`` key of a generator field."""
    return KEYS.get(model_field, model_field)


def option_message(exc: OptionError) -> str:
    """``exc``'s message in config keys: "tile_size=24 must be ..." -> "model.tile_size=24 must be ..."."""
    names = {f.name for cls in [*GENERATORS.values(), DiscriminatorConfig] for f in dataclasses.fields(cls)}
    names -= set(FROM_DATA)
    text = re.sub(r"\b(\w+)(?==)", lambda mt: f"model.{key_of(mt[1])}" if mt[1] in names else mt[1], str(exc))
    lead = exc.field
    if text.startswith(lead):
        text = f"model.{key_of(lead)}{text[len(lead):]}"
    return text


__all__ = ["ModelConfig", "ModelName", "GENERATORS", "model_defaults", "generator_options", "discriminator_options",
           "key_of",
           "option_message", "field_docs"]
