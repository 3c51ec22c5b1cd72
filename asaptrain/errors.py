"""Errors whose message is written for the user: the CLI prints them as one line, exit code 2.

Every message names the file, field, shard, endpoint or bucket at fault and what to do.
"""

from __future__ import annotations

import re


class UserError(Exception):
    """Base of every error meant for the user as it is (no traceback)."""


_TORCH_HINTS = ("weights only load failed", "weights_only", "add_safe_globals", "check the documentation")


def load_error_text(exc: BaseException) -> str:
    """Why ``torch.load`` with ``weights_only=True`` refused a file, without torch's advice to load it
    with ``weights_only=False`` (which would run the code it names): ``UnpicklingError: Trying
    to load unsupported GLOBAL posix.system whose module posix is blocked.``"""
    text = str(exc).strip()
    older = re.search(r"WeightsUnpickler error: (.*?)(?:\s+Please use|\s+Check the documentation|$)", text, re.S)
    if older:  # torch < 2.6 puts the hint and the reason in one paragraph
        text = older.group(1)
    kept = [p.strip() for p in text.split("\n\n") if p.strip() and not any(h in p.lower() for h in _TORCH_HINTS)]
    if not kept and text.lower().startswith("weights only load failed"):
        kept = ["it holds objects other than tensors and containers"]
    reason = " ".join(" ".join(kept).split()) if kept else " ".join(text.split())
    return f"{type(exc).__name__}: {reason[:500]}" if reason else type(exc).__name__
