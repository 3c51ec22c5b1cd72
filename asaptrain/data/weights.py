"""Pretrained helper weights (VGG19 for the perceptual loss, Inception for FID): the one loader.

    state, where = load_state_dict("vgg19", cfg.loss.vgg_weights, store)
    data, where, looked = find_weights("inception", cfg.eval.inception_weights, store)   # None when absent

A source is a local path, a ``file://`` or ``s3://`` URI, a path relative to the store, or
empty: the store's default, ``STORE/weights/FILE`` (the file ``asaptrain weights download``
writes, see ``data/weights_download.py``). Where a ``FILE.sha256`` lies beside the file (the
download records one), the bytes must match it. Files load as tensors only
(``torch.load(weights_only=True)``: a pickle that names code is refused, never run) and their
keys and shapes are checked against the table of the network that uses them, built on the meta
device (no memory, no download). Every failure is one :class:`WeightsError` naming the file and
what to do.
"""

from __future__ import annotations

import hashlib
import io
import os
from dataclasses import dataclass
from typing import Callable

import torch

from asaptrain.errors import UserError, load_error_text

WEIGHTS_DIR = "weights"
"""The folder of a store that holds the helper weights."""


class WeightsError(UserError):
    """Helper weights that are missing, damaged or not the expected state dict; the message says what to do."""


def _vgg19_table() -> dict[str, tuple[int, ...]]:
    import torchvision

    with torch.device("meta"):
        net = torchvision.models.vgg19(weights=None)
    return {k: tuple(v.shape) for k, v in net.state_dict().items()}


def _inception_table() -> dict[str, tuple[int, ...]]:
    # The FID Inception (pytorch-fid's and torch-fidelity's port of the 2015 TF graph) has the
    # parameters of torchvision's Inception3 with 1008 classes and no auxiliary head
    # (tests/test_weights.py compares this table with torch-fidelity's own module).
    import torchvision

    with torch.device("meta"):
        net = torchvision.models.inception_v3(weights=None, aux_logits=False, num_classes=1008, init_weights=False)
    return {k: tuple(v.shape) for k, v in net.state_dict().items()}


@dataclass(frozen=True)
class Pinned:
    """One helper weights file: where it comes from, how it is checked, where it goes."""

    name: str
    """``vgg19`` or ``inception`` (``asaptrain weights download --only NAME``)."""
    file: str
    """Its file name in ``STORE/weights/``."""
    urls: tuple[str, ...]
    """Official download URLs, tried in order; a mirror (``--from``) holds their file names."""
    sha256_prefix: str
    """The 8 hex digits in the official file name: the start of its sha256 (as ``torch.hub`` checks)."""
    field: str
    """The config field that points elsewhere."""
    use: str
    """What needs it, for messages."""
    table: Callable[[], dict[str, tuple[int, ...]]]
    """Every key of the state dict and its shape."""
    needed_prefix: str = ""
    """Loading for use needs only the keys that start with this (VGG19: its ``features``)."""


PINNED: dict[str, Pinned] = {
    "vgg19": Pinned(
        "vgg19", "vgg19.pth", ("https://download.pytorch.org/models/vgg19-dcbb9e9d.pth",), "dcbb9e9d",
        "loss.vgg_weights", "the perceptual loss", _vgg19_table, needed_prefix="features."),
    "inception": Pinned(
        "inception", "pt_inception-2015-12-05-6726825d.pth",
        ("https://github.com/mseitzer/pytorch-fid/releases/download/fid_weights/pt_inception-2015-12-05-6726825d.pth",
         "https://github.com/toshas/torch-fidelity/releases/download/v0.2.0/weights-inception-2015-12-05-6726825d.pth"),
        "6726825d", "eval.inception_weights", "FID", _inception_table),
}
"""The helper weights asaptrain knows, by name."""


def store_rel(pinned: Pinned) -> str:
    """The file's path inside a store: where training looks and the download writes."""
    return f"{WEIGHTS_DIR}/{pinned.file}"


def how_to_get(pinned: Pinned, store=None) -> str:
    """The sentence every 'not found' message ends with: the command that fetches the file."""
    where = getattr(store, "uri", None)
    flag = f" --store {where}" if where else ""
    return (f"run `asaptrain weights download --only {pinned.name}{flag}` (it fetches {pinned.urls[0]}, checks it "
            f"and writes STORE/{store_rel(pinned)}; --from DIR_OR_URL takes a mirror), or set {pinned.field}=PATH_OR_URI")


def _open_location(source: str, store):
    """(a Store, the file's name in it, the URI for messages) of ``source``; None for the store
    default when no store was given."""
    from asaptrain.data.store import Store

    if source.startswith("s3://"):
        parent, _, name = source.rpartition("/")
        s3 = store is not None and getattr(store, "is_s3", False)
        return Store.open(parent, store.endpoint if s3 else None, store.region if s3 else None), name, source
    path = os.path.expanduser(source[len("file://"):] if source.startswith("file://") else source)
    if "://" in path:
        raise WeightsError(f"weights source {source!r}: unsupported scheme; use a path, file:///path or s3://bucket/key")
    if store is not None and not os.path.isabs(path) and not os.path.exists(path):
        try:
            if store.exists(path):
                return store, path, store.uri_for(path)  # a path inside the store
        except UserError:
            pass  # an unreachable store: the local path is what gets named
    path = os.path.abspath(path)
    return Store.open(os.path.dirname(path)), os.path.basename(path), path


def find_weights(name: str, source: str = "", store=None) -> tuple[bytes | None, str, str]:
    """``(bytes, where, "")`` of the weights ``name`` from ``source`` (empty: the store's default),
    or ``(None, "", where it looked)`` when there is no such file or it cannot be read (the
    reason is in the text). Bytes that do not match a
    ``.sha256`` recorded beside them raise :class:`WeightsError`."""
    pinned = PINNED[name]
    source = (source or "").strip()
    if not source:
        if store is None:
            return None, "", f"nowhere ({pinned.field} is empty and no store was given)"
        loc, rel, where = store, store_rel(pinned), store.uri_for(store_rel(pinned))
    else:
        loc, rel, where = _open_location(source, store)
    try:
        if not loc.exists(rel):
            return None, "", where
        data = loc.read_bytes(rel)
        recorded = loc.read_text(rel + ".sha256").split()[0] if loc.exists(rel + ".sha256") else None
    except UserError as exc:  # an unreachable store: where it looked, and why it could not read there
        return None, "", f"{where} (cannot be read: {exc})"
    if recorded is not None and hashlib.sha256(data).hexdigest() != recorded.lower():
        raise WeightsError(f"{where} does not match the sha256 recorded beside it ({rel}.sha256: {recorded}): the file "
                           f"was changed or cut short. Replace it: {how_to_get(pinned, store)} (add --overwrite)")
    return data, where, ""


def tensors_only(data: bytes, where: str, pinned: Pinned, advice: str | None = None) -> dict[str, torch.Tensor]:
    """The state dict in ``data``, loaded as tensors only; anything else is refused unpickled
    (the message ends with ``advice``, by default how to get the right file)."""
    advice = how_to_get(pinned) if advice is None else advice
    try:
        state = torch.load(io.BytesIO(data), map_location="cpu", weights_only=True)
    except Exception as exc:  # noqa: BLE001 - damage, or a pickle that names code: refused either way
        raise WeightsError(f"{where} is not a plain state dict of tensors, so it was not loaded ({load_error_text(exc)}); it is not "
                           f"the {pinned.file} file {pinned.use} needs" + (f": {advice}" if advice else "")) from None
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise WeightsError(f"{where} holds a {type(state).__name__}, not a state dict of tensors; it is not the "
                           f"{pinned.file} file {pinned.use} needs" + (f": {advice}" if advice else ""))
    return state


def _few(items: list[str], n: int = 3) -> str:
    return ", ".join(items[:n]) + (f", ... {len(items) - n} more" if len(items) > n else "")


def check_state(state: dict, where: str, pinned: Pinned, exact: bool = False, advice: str | None = None) -> None:
    """WeightsError naming the missing, extra and mis-shaped keys when ``state`` is not the table's
    (``exact``: every key; else the keys that start with ``needed_prefix``). BatchNorm's
    ``num_batches_tracked`` counters may be absent: files saved by older torch lack them."""
    table = {k: v for k, v in pinned.table().items() if exact or k.startswith(pinned.needed_prefix)}
    have = {k: tuple(v.shape) for k, v in state.items() if exact or k.startswith(pinned.needed_prefix)}
    missing = sorted(k for k in table.keys() - have.keys() if not k.endswith("num_batches_tracked"))
    extra = sorted(have.keys() - table.keys())
    shapes = [f"{k} {have[k]} (expected {table[k]})" for k in sorted(table.keys() & have.keys()) if have[k] != table[k]]
    problems = [f"{len(missing)} keys missing ({_few(missing)})"] * bool(missing) + \
        [f"{len(extra)} unexpected keys ({_few(extra)})"] * bool(extra) + \
        [f"{len(shapes)} shapes differ ({_few(shapes)})"] * bool(shapes)
    if problems:
        advice = how_to_get(pinned) if advice is None else advice
        raise WeightsError(f"{where} is not the {pinned.name} state dict {pinned.use} needs: {'; '.join(problems)}"
                           + (f"; {advice}" if advice else ""))


def load_state_dict(name: str, source: str = "", store=None) -> tuple[dict[str, torch.Tensor], str]:
    """The checked state dict of the weights ``name`` (see :func:`find_weights` for ``source``)
    and where it came from; WeightsError, saying how to get the file, when it is missing."""
    pinned = PINNED[name]
    data, where, looked = find_weights(name, source, store)
    if data is None:
        raise WeightsError(missing_message(pinned, looked, store))
    state = tensors_only(data, where, pinned)
    check_state(state, where, pinned)
    return state, where


def missing_message(pinned: Pinned, looked: str, store=None) -> str:
    """'not found' for ``pinned``, naming where it looked and how to get the file."""
    return f"{pinned.name} weights for {pinned.use} ({pinned.file}) not found at {looked}; {how_to_get(pinned, store)}"


__all__ = ["WeightsError", "Pinned", "PINNED", "WEIGHTS_DIR", "store_rel", "find_weights", "load_state_dict",
           "tensors_only", "check_state", "missing_message", "how_to_get"]
