"""Counts in words: "1 token", "2 tokens", "1,024 vision tokens", so no message says "1 tokens"."""

from __future__ import annotations


def count(n: int, noun: str, plural: str | None = None) -> str:
    """`n` and the noun, singular for exactly one; `plural` where adding "s" is wrong ("1 query", "2 queries").
    A multi-word noun takes the plural on its last word ("vision token")."""
    return f"{n:,} {noun if n == 1 else plural or noun + 's'}"


__all__ = ["count"]
