"""``vreason models ...``: list the known models, download one, or write a tiny random one for tests.

`UserError` is left to propagate: the main CLI prints it as one line and exits 2.
"""

from __future__ import annotations

import json
from pathlib import Path

import click

from .families import FAMILY_NAMES
from .fit import format_bytes
from .registry import DEFAULT_MODEL, get_spec
from .wording import table


def _context(n: int) -> str:
    """32768 -> '32k', 262144 -> '256k', 128000 -> '128k'."""
    if n % 1000 == 0:
        return f"{n // 1000}k"
    if n % 1024 == 0:
        return f"{n // 1024}k"
    return str(n)


# `models list --json`: "downloaded" is a boolean for scripts; "state" also tells a download that was
# started but not finished (one file, or an interrupted transfer) from none at all.
_STATES = {"yes": "downloaded", "partial": "partial", "no": "not downloaded"}


@click.group("models")
def models() -> None:
    """List, download and fake the GGUF models vreason can use."""


@models.command("list")
@click.option("--json", "as_json", is_flag=True, help="Print machine-readable JSON instead of a table.")
def list_cmd(as_json: bool) -> None:
    """Show the known models and whether each is downloaded."""
    from .hub import hf_cache_dir, list_models

    statuses = list_models()
    if as_json:
        out = []
        for st in statuses:
            s = st.spec
            out.append(
                {
                    "name": s.name,
                    "display_name": s.display_name,
                    "default": s.name == DEFAULT_MODEL,
                    "family": s.family,
                    "thinking": s.thinking,
                    "repo_id": s.repo_id,
                    "revision": s.revision,
                    "model_file": s.model_file,
                    "mmproj_file": s.mmproj_file,
                    "quant": s.quant,
                    "mmproj_quant": s.mmproj_quant,
                    "model_bytes": s.model_bytes,
                    "mmproj_bytes": s.mmproj_bytes,
                    "context_length": s.context_length,
                    "verified": s.verified,
                    "downloaded": st.downloaded,  # both files are in the cache
                    "state": _STATES[st.state],
                    "model_path": str(st.model.path) if st.model.path else None,
                    "mmproj_path": str(st.mmproj.path) if st.mmproj.path else None,
                    "local_bytes": st.local_bytes,
                }
            )
        click.echo(json.dumps(out, indent=2))
        return

    rows = [["", "NAME", "FAMILY", "QUANT", "SIZE", "CONTEXT", "DOWNLOADED", "PATH"]]
    for st in statuses:
        s = st.spec
        path = st.model.path or st.mmproj.path
        rows.append(
            [
                "*" if s.name == DEFAULT_MODEL else "",
                s.name,
                s.family,
                s.quant,
                format_bytes(s.total_bytes),
                _context(s.context_length),
                st.state,
                str(path.parent) if path else "-",
            ]
        )
    click.echo(table(rows))
    click.echo(f"\n* default model.  Sizes are approximate (model + projector).  Cache: {hf_cache_dir()}")
    click.echo("Download one with: vreason models pull NAME")


@models.command("pull")
@click.argument("name")
@click.option("--endpoint", hidden=True, default=None, help="Hub endpoint (default: $HF_ENDPOINT or huggingface.co).")
@click.option("--progress/--no-progress", default=True, show_default=True, help="Show download progress bars.")
def pull_cmd(name: str, endpoint: str | None, progress: bool) -> None:
    """Download model NAME (its GGUF and vision projector) into the Hugging Face cache."""
    from .download import pull
    from .hub import hf_cache_dir, hf_endpoint

    spec = get_spec(name)
    click.echo(
        f"Pulling {spec.name} ({spec.display_name} {spec.quant}, about {format_bytes(spec.total_bytes)})"
        f" from {spec.repo_id} at {hf_endpoint(endpoint)} into {hf_cache_dir()}",
        err=True,
    )
    resolved = pull(spec.name, endpoint=endpoint, progress=progress)
    click.echo(f"model:  {resolved.model_path}")
    click.echo(f"mmproj: {resolved.mmproj_path}")
    click.echo(f"Ready: use --model {spec.name}", err=True)


@models.command("make-tiny")
@click.argument("out_dir", metavar="DIR", type=click.Path(file_okay=False, path_type=Path))
@click.option(
    "--arch",
    type=click.Choice(FAMILY_NAMES),
    default="qwen25vl",
    show_default=True,
    help="Model family: Qwen2-VL, Qwen2.5-VL or Qwen3-VL.",
)
@click.option(
    "--shape",
    type=click.Choice(["tiny", "k256", "fast", "mid", "3b", "7b"]),
    default="tiny",
    show_default=True,
    help="tiny: 2-3 small layers, a 1,024-token vocabulary, ~1 MB at most per file (for tests). "
    "k256: 2-3 layers of width 256 whose rows are multiples of 256 values, the block of llama.cpp's K-quants "
    "(Q4_K_M files), the 1,024-token vocabulary, 5-6.5 MB (f16) (for K-quant tests). "
    "fast: 3 layers of width 128 with Qwen's full 151,936-token vocabulary, ~83 MB (f16) or ~46 MB (q8_0), "
    "decoding in milliseconds (for measuring per-token overhead). "
    "mid: 2 layers (3 for qwen3vl) of the 3b shape's real layer dimensions with the 1,024-token vocabulary, "
    "0.3-0.6 GB (f16) or 0.17-0.33 GB (q8_0): the smallest model with a 3B-size V-Reason tail, which is "
    "stored as int8 on the CPU (for tests of that path). "
    "3b: the real Qwen2.5-VL-3B (Qwen3-VL-4B for qwen3vl) dimensions, a 3.3-4.3 GB (q8_0) or 6.2-8.0 GB (f16) "
    "model plus a 0.5-1.3 GB projector (for speed and memory benchmarks). "
    "7b: the real Qwen2.5-VL-7B (Qwen2-VL-7B for qwen2vl, Qwen3-VL-8B for qwen3vl) dimensions, an 8.1-8.7 GB "
    "(q8_0) or 15.2-16.4 GB (f16) model plus a 0.7-0.9 GB (q8_0) projector (for benchmarks at 7B size). "
    "Files are named after the shape.",
)
@click.option(
    "--type",
    "wtype",
    type=click.Choice(["f32", "f16", "q8_0"]),
    default=None,
    help="Weight type (default: q8_0 for 3b and 7b, f16 for the others).",
)
@click.option("--seed", type=int, default=0, show_default=True, help="Random seed for the weights.")
def make_tiny_cmd(out_dir: Path, arch: str, shape: str, wtype: str | None, seed: int) -> None:
    """Write a random-weight GGUF model and projector of a chosen shape into DIR, for testing without a download."""
    from .tiny import make_tiny

    def progress(message: str) -> None:
        click.echo(message, err=True)

    # The tiny and k256 shapes take a fraction of a second; the larger ones are worth progress lines.
    tiny = make_tiny(
        out_dir,
        arch=arch,
        shape=shape,
        wtype=wtype,
        seed=seed,
        progress=None if shape in ("tiny", "k256") else progress,
    )
    click.echo(f"model:  {tiny.model_path}")
    click.echo(f"mmproj: {tiny.mmproj_path}")
    click.echo(
        f"Note: the weights are random ({arch}, {shape}); answers are gibberish. Use it to test the pipeline:"
        f" --model {tiny.model_path}",
        err=True,
    )


__all__ = ["models"]
