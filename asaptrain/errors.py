"""Errors whose message is written for the user: the CLI prints them as one line, exit code 2.

Every message names the file, field, shard, endpoint or bucket at fault and what to do.
"""


class UserError(Exception):
    """Base of every error meant for the user as it is (no traceback)."""
