"""``round_to`` presets: keep counts rounded up to a multiple that the target hardware runs well.

A conv's inner loops process channels in blocks of the vector width (16 fp32 lanes with AVX-512, 8
with AVX2) on CPU, or of the tensor-core tile on GPU; a width just past a multiple pays for a
whole extra block. ``benchmarks/README.md`` ("latency") has the CPU measurements behind ``cpu``.
"""

from __future__ import annotations

from prunetune._registry import unknown_name_message
from prunetune.exceptions import ConfigError, UnknownNameError

# NOTE: cpu = 16 fp32 lanes of AVX-512, measured with benchmarks/latency.py on ResNet-56 (batch 64:
# 1.85x at 50% MACs against 1.26x unrounded); gpu follows NVIDIA's advice
# for fp16/bf16 tensor cores (channel counts multiple of 8), not measured here.
ROUND_TO_PRESETS: dict[str, int] = {"cpu": 16, "gpu": 8}


def resolve_round_to(value: object, *, what: str = "round_to") -> int | None:
    """``None``, a positive integer, or a preset name (``cpu``, ``gpu``) → the multiple (or None)."""
    if value is None:
        return None
    if isinstance(value, str):
        if value.isdigit():
            return resolve_round_to(int(value), what=what)
        if value not in ROUND_TO_PRESETS:
            raise UnknownNameError(unknown_name_message(f"{what} preset", value, ROUND_TO_PRESETS)
                                   + " (or give a positive integer)")
        return ROUND_TO_PRESETS[value]
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ConfigError(f"{what} must be a positive integer, a preset ({', '.join(ROUND_TO_PRESETS)}) or null, "
                          f"got {value!r}")
    return value
