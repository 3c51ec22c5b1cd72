"""An exported file and its sidecar (``FILE`` + ``FILE.json``) as a pair that never disagrees.

    held = claim_output(out)            # refuses a second export into FILE; removes dead ones' parts
    write_pair(tmp, meta, out)          # meta gains the file's sha256 and size
    verify_pair(out, meta)              # on load: ExportError unless FILE is the file meta describes

The file and the sidecar cannot be replaced in one step, so the order makes every moment safe:
both are written whole under temporary names (``FILE.part-PID``, ``FILE.json.part-PID``), the
old sidecar is removed, the file replaced, then the sidecar moved in. A kill at any point leaves
the old pair, the new file without a sidecar (refused as an export that did not finish), or the
new pair; and a sidecar's sha256 catches a file replaced by anything else. Parts left by a killed
export are removed by the next export of the same file, which holds its claim.
"""

from __future__ import annotations

import glob
import hashlib
import json
import os

from asaptrain.errors import UserError

SIDECAR_SUFFIX = ".json"
CLAIM_SUFFIX = ".claim.json"
"""Beside FILE while an export writes it: names the command that holds it."""
PART_GLOB = ".part*"
"""What an export writes before its files are whole: FILE.part-PID, FILE.json.part-PID."""


class PairError(UserError):
    """An exported file that is not the one its sidecar describes."""


def claim_output(out: str):
    """Claim ``out`` for this export (ClaimRefused names the export that holds it) and remove
    the parts that killed exports of it left; release the returned claim when done."""
    from asaptrain.data.claim import claim, owner_here
    from asaptrain.data.store import Store

    parent = os.path.dirname(os.path.abspath(out))
    held = claim(Store.open(parent), "", owner_here("export"), name=os.path.basename(out) + CLAIM_SUFFIX,
                 what=f"--out {out}")
    try:
        for stale in glob.glob(glob.escape(out) + PART_GLOB) + glob.glob(glob.escape(out + SIDECAR_SUFFIX) + PART_GLOB):
            os.remove(stale)
    except BaseException:
        held.release()
        raise
    return held


def file_sha256(path: str) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def write_pair(tmp: str, meta: dict, out: str) -> None:
    """Move the finished ``tmp`` to ``out`` and ``meta`` (plus the file's sha256 and size) to
    ``out.json``, in the order that never leaves the new file beside the old sidecar."""
    meta_path = out + SIDECAR_SUFFIX
    meta_tmp = f"{meta_path}.part-{os.getpid()}"
    meta = dict(meta, sha256=file_sha256(tmp), bytes=os.path.getsize(tmp))
    try:
        with open(meta_tmp, "w") as fh:
            json.dump(meta, fh, indent=1)
            fh.write("\n")
        if os.path.exists(meta_path):
            os.remove(meta_path)
        os.replace(tmp, out)
        os.replace(meta_tmp, meta_path)
    finally:
        if os.path.exists(meta_tmp):
            os.remove(meta_tmp)


def verify_pair(path: str, meta: dict) -> None:
    """PairError unless ``path`` is the file its sidecar describes (size and sha256); a sidecar
    written before they were recorded is taken as it is."""
    if "sha256" not in meta:
        return
    if os.path.getsize(path) != meta.get("bytes") or file_sha256(path) != meta["sha256"]:
        raise PairError(f"{path} is not the file {path + SIDECAR_SUFFIX} describes (its sha256 differs): an export "
                        "into it did not finish, or something else replaced it; export again with --overwrite")


__all__ = ["SIDECAR_SUFFIX", "CLAIM_SUFFIX", "PART_GLOB", "PairError", "claim_output", "file_sha256", "write_pair",
           "verify_pair"]
