"""The output folder of `asaptrain predict`: output names, and what a folder may hold.

Outputs keep their input's relative name with ``.png`` for its suffix (``sub/a.jpg`` ->
``sub/a.png``); inputs whose stems meet in one folder keep their suffix (``a.jpg.png``,
``a.png.png``), as `infer` names them. A folder is refused when it overlaps the input, holds
files that `predict` did not write, or holds the predictions of another run, checkpoint or input
(``_predict.json`` says which it holds); otherwise every output in it is finished (each write is
atomic) and a rerun skips it.

    names, keep = output_names(["a.jpg", "a.png", "sub/b.jpg"])
    resuming = check_out_folder(out, source, job)
"""

from __future__ import annotations

import os
import posixpath
from collections import Counter
from typing import Any

from asaptrain.data.claim import is_claim_object
from asaptrain.data.store import Store
from asaptrain.errors import UserError

JOB_FILE = "_predict.json"
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg")


class OutputError(UserError):
    """An output folder, or output names, that would mix, overwrite or escape outputs."""


def output_name(rel: str, keep_suffix: bool = False) -> str:
    """An input's output name (relative to --out): the same name with .png for its suffix, or
    after it with ``keep_suffix`` (for inputs whose stems meet in one folder: a.jpg, a.png)."""
    stem = posixpath.splitext(rel)[0] if rel.lower().endswith(IMAGE_SUFFIXES) and not keep_suffix else rel
    return stem + ".png"


def output_names(rels: list[str]) -> tuple[dict[str, str], frozenset[str]]:
    """Output name of every input, and the inputs that keep their suffix; refuses names that
    would meet or leave --out."""
    shared = Counter(output_name(r) for r in rels)
    keep = frozenset(r for r in rels if shared[output_name(r)] > 1)
    names = {r: output_name(r, r in keep) for r in rels}
    clash = [n for n, k in Counter(names.values()).items() if k > 1] + [r for r, k in Counter(rels).items() if k > 1]
    if clash:
        raise OutputError(f"two inputs would write the same output {clash[0]!r}: rename one of them")
    for r, n in names.items():
        if n.startswith("/") or "\\" in n or any(p in ("", ".", "..") for p in n.split("/")):
            raise OutputError(f"input {r!r} cannot name an output file inside --out (empty, '.' or '..' parts)")
    return names, keep


def is_inside(a: Store, b: Store) -> bool:
    """Whether ``a`` is ``b`` or below it (same kind of store and endpoint)."""
    if a.is_s3 != b.is_s3 or a.endpoint != b.endpoint:
        return False
    ra, rb = (s.root if s.is_s3 else os.path.realpath(s.root) for s in (a, b))
    return ra == rb or ra.startswith(rb.rstrip("/") + "/")


def finished_outputs(out: Store) -> set[str]:
    """Outputs already in --out (every write is atomic, so each one that exists is whole)."""
    return {n for n in out.list(recursive=True, suffix=".png") if not posixpath.basename(n).startswith("_tmp-")}


def check_out_folder(out: Store, source: Store, job: dict[str, Any]) -> bool:
    """Refuse an --out that is or holds the input, or holds foreign files; True when resuming."""
    if is_inside(out, source) or is_inside(source, out):
        raise OutputError(f"--out {out.uri_for()} and the input {source.uri_for()} overlap: outputs never go "
                          "into the input's folder; choose another --out")
    if out.exists(JOB_FILE):
        prior = out.read_json(JOB_FILE)
        if {k: prior.get(k) for k in job} != job:
            raise OutputError(f"{out.uri_for()} holds predictions of run {prior.get('run')} ({prior.get('checkpoint')}) "
                              f"on {prior.get('input')}; this is run {job['run']} ({job['checkpoint']}) on "
                              f"{job['input']}: choose another --out")
        return True
    foreign = [f for f in out.list(recursive=True) if not is_claim_object(f)]
    if foreign:
        raise OutputError(f"{out.uri_for()} is not empty ({len(foreign)} files, e.g. {foreign[0]}) and was not "
                          f"written by `asaptrain predict` (no {JOB_FILE}): choose an empty or new --out")
    return False
