"""Removing single cells from a saved KV sequence state (V-Reason Lite's pruning).

`llama_memory_seq_rm` removes cells by *position*, and every token of one image shares its temporal
M-RoPE position, so it cannot drop single video tokens. The sequence state that
`llama_state_seq_get_data` writes holds every layer's K and V rows cell by cell; dropping cells from
it and loading it back removes those tokens from all layers exactly, with the kept rows untouched.
Format (llama.cpp 0.3.36, src/llama-context.cpp state_seq_get_data and src/llama-kv-cache.cpp
state_write*): u32 magic 0xaf143cd8, i32 seq_id, u32 n_stream, then per stream u32
cell_count, per cell {i32 pos, u32 n_seq, [12-byte M-RoPE ext], i32 seq_ids[n_seq]}, u32 v_trans,
u32 n_layer, per layer K {i32 type, u64 row_bytes, rows}, per layer V {i32 type, u64 row_bytes, rows}
or, transposed, {i32 type, u32 elem_bytes, u32 n_embd_v, n_embd_v x cells elements}.
"""

from __future__ import annotations

import struct

import numpy as np

STATE_MAGIC = 0xAF143CD8


def prune_cells(blob: bytes, keep: np.ndarray, has_ext: bool) -> bytes:
    """The same state with only the cells where `keep` (one bool per saved cell, in order) is True."""
    off = 0

    def take(fmt: str) -> tuple:
        nonlocal off
        vals = struct.unpack_from("<" + fmt, blob, off)
        off += struct.calcsize("<" + fmt)
        return vals

    out = bytearray()
    magic, seq_id = take("Ii")
    if magic != STATE_MAGIC:
        raise ValueError(f"not a llama.cpp sequence state (magic {magic:#x})")
    out += struct.pack("<Ii", magic, seq_id)
    (n_stream,) = take("I")
    if n_stream != 1:
        raise ValueError(f"expected one KV stream, got {n_stream}")
    out += struct.pack("<I", n_stream)
    (n_cells,) = take("I")
    if len(keep) != n_cells:
        raise ValueError(f"keep mask has {len(keep)} entries for {n_cells} cells")
    out += struct.pack("<I", int(keep.sum()))
    for i in range(n_cells):
        start = off
        _, n_seq = take("iI")
        off += (12 if has_ext else 0) + 4 * n_seq
        if keep[i]:
            out += blob[start:off]
    v_trans, n_layer = take("II")
    out += struct.pack("<II", v_trans, n_layer)
    for section in ("k", "v"):
        for _ in range(n_layer):
            if section == "v" and v_trans:
                t, el, n_embd = take("iII")
                out += struct.pack("<iII", t, el, n_embd)
                data = np.frombuffer(blob, np.uint8, n_embd * n_cells * el, off).reshape(n_embd, n_cells, el)
                off += data.nbytes
                out += data[:, keep].tobytes()
            else:
                t, row = take("iQ")
                out += struct.pack("<iQ", t, row)
                data = np.frombuffer(blob, np.uint8, n_cells * row, off).reshape(n_cells, row)
                off += data.nbytes
                out += data[keep].tobytes()
    if off != len(blob):
        raise ValueError(f"unparsed state bytes: {len(blob) - off}")
    return bytes(out)
