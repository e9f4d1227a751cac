"""The element types safetensors knows, with their sizes in bits.

A dtype decides how a tensor's bytes are grouped into planes (one plane per byte of the element, low byte
first, as the bytes lie in a little-endian file) and how many bytes one row of a 2-D tensor takes.
"""

from __future__ import annotations

from dataclasses import dataclass

from .errors import BadInputError


@dataclass(frozen=True)
class DType:
    """One safetensors dtype. ``bits`` is the element width; ``kind`` is ``float``, ``int`` or ``bool``."""

    name: str
    bits: int
    kind: str

    @property
    def itemsize(self) -> int:
        """Bytes per element for byte-aligned dtypes; sub-byte dtypes (F4, F6) report 1 (packed)."""
        return max(1, self.bits // 8)

    def nbytes(self, numel: int) -> int:
        """Bytes that ``numel`` elements take; packed sub-byte dtypes must fill whole bytes."""
        total_bits = numel * self.bits
        if total_bits % 8:
            raise BadInputError(f"{numel} elements of {self.name} do not fill whole bytes")
        return total_bits // 8


_ALL = [
    DType("BOOL", 8, "bool"),
    DType("U8", 8, "int"),
    DType("I8", 8, "int"),
    DType("F8_E5M2", 8, "float"),
    DType("F8_E4M3", 8, "float"),
    DType("F8_E8M0", 8, "float"),
    DType("F4", 4, "float"),
    DType("F6_E2M3", 6, "float"),
    DType("F6_E3M2", 6, "float"),
    DType("I16", 16, "int"),
    DType("U16", 16, "int"),
    DType("F16", 16, "float"),
    DType("BF16", 16, "float"),
    DType("I32", 32, "int"),
    DType("U32", 32, "int"),
    DType("F32", 32, "float"),
    DType("C64", 64, "complex"),
    DType("F64", 64, "float"),
    DType("I64", 64, "int"),
    DType("U64", 64, "int"),
]

DTYPES: dict[str, DType] = {d.name: d for d in _ALL}


def dtype_by_name(name: str) -> DType:
    """Look a dtype up by its safetensors name; an unknown name is bad input."""
    try:
        return DTYPES[name]
    except KeyError:
        raise BadInputError(f"unknown dtype {name!r} (known: {', '.join(sorted(DTYPES))})") from None
