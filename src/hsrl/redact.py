"""Configs as the JSON a file stores, without secrets: the one place where a config becomes a dict to write.

Secrets (bearer tokens) never reach a file. `public_config` is `dataclasses.asdict` with each secret field
(`SECRET_FIELDS`) replaced by whether it was given (`"<set>"` or None), so a run folder shows that a token was
used, never which. `without_secrets` drops them altogether: what a run's identity (the settings a resume
compares) is made of, so rotating a token never makes a finished run look like another run's.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping

SECRET_FIELDS = frozenset({"token"})  # config fields that hold secrets, at any depth
SET = "<set>"  # what a file stores for a secret that was given


def redact(value):
    """A JSON-like value (dicts, lists) with every secret field's value replaced by `SET` (None stays None)."""
    if isinstance(value, Mapping):
        return {k: (None if v is None else SET) if k in SECRET_FIELDS else redact(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return type(value)(redact(v) for v in value)
    return value


def without_secrets(value):
    """A JSON-like value with every secret field left out (for identities and comparisons)."""
    if isinstance(value, Mapping):
        return {k: without_secrets(v) for k, v in value.items() if k not in SECRET_FIELDS}
    if isinstance(value, (list, tuple)):
        return type(value)(without_secrets(v) for v in value)
    return value


def public_config(config) -> dict:
    """`dataclasses.asdict(config)` as a file may store it: secrets replaced by whether they were given."""
    return redact(dataclasses.asdict(config))
