"""The LM head's row reader off the CPU (the ring): rows kept between updates are the rows a fresh read gives."""

from __future__ import annotations

import numpy as np
import torch

from vreason_local.gguf_info import open_gguf, read_model_info
from vreason_local.tail_weights import LMHead, dequantize


def test_kept_rows_equal_fresh_reads_through_evictions(tiny_model_factory):
    tiny = tiny_model_factory("qwen25vl", "q8_0")
    info = read_model_info(tiny.model_path)
    g = open_gguf(info.path)
    name = "output.weight" if "output.weight" in g.tensors else "token_embd.weight"
    raw, t = g.tensor_bytes(name), g.tensors[name]
    head = LMHead(raw, t.ggml_type, t.shape[0], torch.device("cpu"), torch.bfloat16, keep=64, in_place=False)
    reference = dequantize(np.array(raw), t.ggml_type).to(torch.bfloat16)  # every row, read once, independently
    rng = np.random.default_rng(0)
    ids = rng.choice(raw.shape[0], 48, replace=False)
    for _ in range(30):  # overlapping requests, as successive updates make, past the ring's size many times
        keep = ids[rng.random(len(ids)) < 0.8]
        fresh = rng.choice(np.setdiff1d(np.arange(raw.shape[0]), keep), 48 - len(keep), replace=False)
        ids = rng.permutation(np.concatenate([keep, fresh]))
        order, rows = head.rows(ids)
        assert sorted(order) == sorted(ids) and torch.equal(rows, reference[torch.from_numpy(order)])
    order, rows = head.rows(np.arange(100))  # more rows than the ring holds
    assert sorted(order) == list(range(100)) and torch.equal(rows, reference[torch.from_numpy(order)])
    assert (head._slot >= 0).sum() == 64 and set(head._owner) == set(np.flatnonzero(head._slot >= 0))
    head.close()
