"""The one rule for hashing JSON-able values: sha256 of their canonical (key-sorted) JSON text.

Spec digests, export configuration digests and the manifest's statistics digest all go through
`json_sha256`; each keeps its own separators and length, so every recorded digest stays byte-identical.
"""

from __future__ import annotations

import hashlib
import json
from typing import Any

COMPACT = (",", ":")  # the separators of the statistics digest (the others use json's defaults)


def json_sha256(value: Any, separators: tuple[str, str] | None = None) -> str:
    """Hex sha256 of `json.dumps(value, sort_keys=True)` (with `separators` when given)."""
    return hashlib.sha256(json.dumps(value, sort_keys=True, separators=separators).encode()).hexdigest()


def short_digest(value: Any) -> str:
    """The first 16 hex digits of `json_sha256(value)`: the identity of a spec or an export configuration."""
    return json_sha256(value)[:16]
