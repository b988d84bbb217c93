"""Text for the terminal: counts in words ("1 token", "2 tokens", "1,024 vision tokens", so no message says
"1 tokens") and plain column tables."""

from __future__ import annotations


def count(n: int, noun: str, plural: str | None = None) -> str:
    """`n` and the noun, singular for exactly one; `plural` where adding "s" is wrong ("1 query", "2 queries").
    A multi-word noun takes the plural on its last word ("vision token")."""
    return f"{n:,} {noun if n == 1 else plural or noun + 's'}"


def table(rows: list[list[str]]) -> str:
    """`rows` (the first the header) as left-aligned columns two spaces apart, no trailing blanks."""
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    return "\n".join("  ".join(c.ljust(w) for c, w in zip(r, widths)).rstrip() for r in rows)


__all__ = ["count", "table"]
