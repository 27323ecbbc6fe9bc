"""Seeds derived from what a draw is for, never from the order it happens in.

`derive_seed(42, "arc_easy/Mercury_7", "lime", "decision")` is the same number whatever other
records exist, whichever batch or resumed run computes it: the mask set of one target depends on the
params seed and on its own identity only, so sampling errors are not shared across the bank.
"""

from __future__ import annotations

import hashlib


def derive_seed(seed: int, *parts: str) -> int:
    """A 63-bit seed from the params seed and the parts that name the draw (record, method, role)."""
    text = "/".join([str(seed), *parts])
    return int.from_bytes(hashlib.sha256(text.encode()).digest()[:8], "big") >> 1
