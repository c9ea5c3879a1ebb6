"""The bench's clock: matrix-product peaks, FLOP per image, and runners (one call = one step)
timed in turn over rounds, each figure with its spread.

Timed by hand with ``time.perf_counter``: ``torch.utils.benchmark.Timer`` measures one statement at a
time (its own warm-up and block sizes, one thread unless told), and the bench's method is to take
turns between the variants, round after round, so that each sees the same machine."""

from __future__ import annotations

import math
import time
from collections.abc import Callable

import numpy as np
import torch
import torch.nn.functional as F

from gtsrb.model import PRESETS, ModelConfig, build_model


def matmul_gflops(n: int = 2048, seconds: float = 2.0, dtype: torch.dtype = torch.float32) -> float:
    """Matrix-product GFLOP/s (fp32 by default), the best of several timed rounds."""
    a, b = torch.randn(n, n, dtype=dtype), torch.randn(n, n, dtype=dtype)
    for _ in range(3):
        a @ b
    best, t_end = 0.0, time.perf_counter() + seconds
    while time.perf_counter() < t_end:
        t = time.perf_counter()
        for _ in range(4):
            a @ b
        best = max(best, 4 * 2 * n**3 / (time.perf_counter() - t) / 1e9)
    return best


def cuda_bf16_tflops(n: int = 8192, reps: int = 10) -> float:
    """bf16 matrix-product TFLOP/s on the current GPU: the practical bf16 peak."""
    a = torch.randn(n, n, device="cuda", dtype=torch.bfloat16)
    b = torch.randn(n, n, device="cuda", dtype=torch.bfloat16)
    for _ in range(3):
        a @ b
    torch.cuda.synchronize()
    t = time.perf_counter()
    for _ in range(reps):
        a @ b
    torch.cuda.synchronize()
    return reps * 2 * n**3 / (time.perf_counter() - t) / 1e12


def flop_per_image(config: ModelConfig = PRESETS["seed"], batch: int = 128) -> tuple[float, float]:
    """(training, forward) FLOP per image, counted by torch.utils.flop_counter on the meta
    device: every conv as a dense 3x3 conv."""
    from torch.utils.flop_counter import FlopCounterMode

    model = build_model(config).to("meta")
    x = torch.rand(batch, 3, config.image_size, config.image_size, device="meta")
    y = torch.randint(0, config.num_classes, (batch,), device="meta")
    with FlopCounterMode(display=False) as fwd, torch.no_grad():
        model(x)
    with FlopCounterMode(display=False) as train:
        F.cross_entropy(model(x), y).backward()
    return train.get_total_flops() / batch, fwd.get_total_flops() / batch


def time_steps(step: Callable[[], None], warmup: int, steps: int) -> float:
    for _ in range(warmup):
        step()
    t = time.perf_counter()
    for _ in range(steps):
        step()
    return time.perf_counter() - t


def alternate(runners: dict[str, Callable[[], None]], steps: int, rounds: int, batch: int, warmup: int = 3,
              round_seconds: float | None = None) -> dict:
    """Warm every runner up, then time ``steps`` steps of each, in turn, for ``rounds`` rounds
    (the order reversed every other round) -> {name: {"median", "min", "max", "rounds", "steps"}}
    in images/s. With ``round_seconds``, a runner whose warm-up step was slow takes fewer steps
    (at least 2), so one slow variant (bf16 where it is emulated) does not hold the bench up."""
    counts = {}
    for name, step in runners.items():
        for _ in range(warmup - 1):
            step()
        t = time.perf_counter()
        step()
        once = time.perf_counter() - t
        counts[name] = steps if round_seconds is None else max(2, min(steps, math.ceil(round_seconds / once)))
    rates: dict[str, list[float]] = {name: [] for name in runners}
    names = list(runners)
    for r in range(rounds):
        for name in names if r % 2 == 0 else names[::-1]:
            rates[name].append(counts[name] * batch / time_steps(runners[name], 0, counts[name]))
    return {name: {**spread(v), "steps": counts[name]} for name, v in rates.items()}


def spread(values: list[float]) -> dict:
    return {"median": float(np.median(values)), "min": float(min(values)), "max": float(max(values)),
            "rounds": len(values)}
