"""Byte sizes as people write them: ``"4G"``, ``"64M"``, ``"512K"``, ``"1.5GiB"`` or plain ``"1048576"``.

Units are binary (K = 1024) because every size modelfs takes is a memory or request budget. Used by the CLI,
mount options and the TOML config, so all three accept exactly the same spellings.
"""

from __future__ import annotations

import re

from .errors import BadInputError

_UNITS = {"": 1, "K": 1 << 10, "M": 1 << 20, "G": 1 << 30, "T": 1 << 40}
_SIZE = re.compile(r"(?P<num>[0-9]+(?:\.[0-9]+)?)\s*(?P<unit>[KMGT]?)(?:I?B)?", re.IGNORECASE)


class BadSizeError(BadInputError, ValueError):
    """A size that does not parse; also a ValueError so argparse ``type=`` reports it as a usage error."""


def parse_size(value: str | int) -> int:
    """Return the number of bytes ``value`` names; ints pass through. Negative or malformed sizes are refused."""
    if isinstance(value, bool):
        raise BadSizeError(f"not a size: {value!r}")
    if isinstance(value, int):
        if value < 0:
            raise BadSizeError(f"size must not be negative: {value}")
        return value
    match = _SIZE.fullmatch(value.strip())
    if match is None:
        raise BadSizeError(f"not a size: {value!r} (write e.g. 4G, 64M, 512K or a number of bytes)")
    number = float(match["num"]) if "." in match["num"] else int(match["num"])
    return int(number * _UNITS[match["unit"].upper()])


def format_size(n: float) -> str:
    """``1536`` -> ``"1.5 KiB"``: for people, never parsed back."""
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if abs(n) < 1024 or unit == "TiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    raise AssertionError("unreachable")
