"""vreason-local: offline video reasoning with local Qwen-VL models and V-Reason decoding."""

__version__ = "0.1.0"
