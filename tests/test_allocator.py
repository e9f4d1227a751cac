"""The allocator settings the CLI applies (allocator.py): glibc must accept them, or decoding loses half its speed."""

from __future__ import annotations

import platform

import pytest

from modelfs.allocator import tune_for_chunks


@pytest.mark.skipif(platform.libc_ver()[0] != "glibc", reason="mallopt thresholds are glibc's")
def test_glibc_accepts_the_chunk_settings() -> None:
    assert tune_for_chunks() is True
