"""``vreason cache ...``: list, prune and clear the encoding cache (encoding_store.py).

The cache holds the KV state of encoded videos and images (content derived from the user's media), so a user
must be able to see what is there, how large it is, and remove it.
"""

from __future__ import annotations

import datetime
import json

import click

from .encoding_store import EncodingStore, Entry
from .fit import format_bytes
from .wording import count, table


def _when(t: float) -> str:
    return datetime.datetime.fromtimestamp(t).strftime("%Y-%m-%d %H:%M")


def _row(e: Entry) -> list[str]:
    media = e.meta.get("media", {})
    source = media.get("source") or media.get("kind") or "?"
    model = e.meta.get("model_file") or e.meta.get("model") or "?"
    frames = str(media.get("frames", "?")) if e.meta else "?"
    return [source, model, frames, format_bytes(e.size), _when(e.last_used)]


def _removed(entries: list[Entry], store: EncodingStore) -> str:
    freed = format_bytes(sum(e.size for e in entries))
    return f"removed {count(len(entries), 'encoding')} ({freed}) from {store.folder}"


@click.group("cache")
def cache() -> None:
    """The encoding cache: encoded videos kept on disk so that later runs load them instead of encoding."""


@cache.command("list")
@click.option("--json", "as_json", is_flag=True, help="Print machine-readable JSON instead of a table.")
def list_cmd(as_json: bool) -> None:
    """Show the cached encodings: video, model, frames, size and when each was last used (newest first)."""
    store = EncodingStore()
    entries = store.entries()
    if as_json:
        out = [
            {
                "key": e.key,
                "video": e.meta.get("media", {}).get("source"),
                "kind": e.meta.get("media", {}).get("kind"),
                "model": e.meta.get("model"),
                "model_file": e.meta.get("model_file"),
                "frames": e.meta.get("media", {}).get("frames"),
                "n_tokens": len(e.meta.get("tokens", [])),
                "size_bytes": e.size,
                "last_used": e.last_used,
            }
            for e in entries
        ]
        click.echo(json.dumps(out, indent=2))
        return
    if not entries:
        click.echo(f"the encoding cache is empty ({store.folder})")
        return
    click.echo(table([["video", "model", "frames", "size", "last used"], *map(_row, entries)]))
    total, cap = format_bytes(sum(e.size for e in entries)), format_bytes(store.cap())
    click.echo(f"{count(len(entries), 'encoding')}, {total} of {cap} in {store.folder}")


@cache.command("prune")
@click.option("--max-gb", type=click.FloatRange(min=0), default=None, help="Keep at most this many GB (newest first).")
@click.option(
    "--older-than-days", type=click.FloatRange(min=0), default=None, help="Remove encodings unused this long."
)
def prune_cmd(max_gb: float | None, older_than_days: float | None) -> None:
    """Remove least recently used encodings down to a size (default: the cap), and those unused for long."""
    store = EncodingStore()
    keep = store.cap() if max_gb is None else int(max_gb * 1e9)
    removed = store.prune(keep, None if older_than_days is None else older_than_days * 86400)
    click.echo(_removed(removed, store))


@cache.command("clear")
def clear_cmd() -> None:
    """Remove every cached encoding."""
    store = EncodingStore()
    click.echo(_removed(store.clear(), store))
