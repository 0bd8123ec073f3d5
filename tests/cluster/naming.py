"""Names for throw-away test objects."""

from __future__ import annotations

import re
import secrets

MAX_STEM = 40  # leaves room for the prefix and random suffix within a 63-char DNS label


def namespace_name(test_name: str) -> str:
    """A fresh DNS-1123 label that still says which test made it, e.g. ``t-test-scale-a1b2c3``."""
    stem = re.sub(r"[^a-z0-9]+", "-", test_name.lower()).strip("-")[:MAX_STEM].strip("-")
    return f"t-{stem or 'test'}-{secrets.token_hex(3)}"
