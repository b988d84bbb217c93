"""vreason-local: offline video reasoning with local Qwen-VL models and V-Reason decoding."""

import os

# llama.cpp (OpenMP build) and PyTorch each keep worker threads that busy-wait after a parallel region.
# V-Reason alternates the two every token, and on a laptop's few cores the spinning threads of one
# starve the other (measured on 2 cores: 0.3-0.6 s stalls per token). Passive waiting removes that;
# it must be set before either runtime starts. A user's own setting wins.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

__version__ = "0.1.0"
