"""The figures of one bench run (``run``), the targets they are held to, and the command
``python -m benchmarks.bench`` (what each figure means: the package's doc)."""

from __future__ import annotations

import contextlib
from pathlib import Path

import torch

import benchmarks.bench
from benchmarks.bench.runners import (
    bench_infer,
    bench_pack,
    bench_train,
    cpu_variants,
    cuda_step_is_sync_free,
    naive_runner,
    train_step_runner,
)
from benchmarks.bench.timing import (
    alternate,
    cuda_bf16_tflops,
    flop_per_image,
    matmul_gflops,
)
from gtsrb.util import machine
from study.cli import ArgumentParser, entry_point


def run(source: Path | None, quick: bool = False) -> dict:
    """All figures in one dict; ``source`` (the training zip) enables the naive and pack rows."""
    batch = 128
    result: dict = {"machine": machine(), "quick": quick, "batch_size": batch, "preset": "seed"}
    if source is not None and not quick:
        # First, in a fresh process, as `gtsrb pack` runs (its imports included).
        result["pack_s"], result["pack_naive_s"] = bench_pack(source)
        result["pack_ratio"] = result["pack_s"] / result["pack_naive_s"]
    train_flop, fwd_flop = flop_per_image()
    result["train_gflop_per_image"], result["forward_gflop_per_image"] = train_flop / 1e9, fwd_flop / 1e9
    result["matmul_gflops"] = matmul_gflops(seconds=1.0 if quick else 3.0)
    result["ceiling_img_s"] = result["matmul_gflops"] * 1e9 / train_flop
    steps, rounds = (3, 2) if quick else (12, 5)
    if torch.cuda.is_available():
        result.update(_gpu_rows(steps, train_flop))
    else:
        with contextlib.ExitStack() as stack:
            variants = cpu_variants()
            runners = {name: train_step_runner(batch, **opts) for name, opts in variants.items()}
            if source is not None:
                images = batch * (steps * rounds + 4)
                runners["naive"] = stack.enter_context(naive_runner(source, images, batch))
            timed = alternate(runners, steps, rounds, batch, round_seconds=None if quick else 12.0)
        default = timed.pop("default")
        naive = timed.pop("naive", None)
        resolved = variants["default_twin"]  # what the default resolved to on this machine
        result["train_precision"], result["train_routes"] = resolved["precision"], list(resolved["cpu_routes"])
        result["train_img_s"] = default["median"]
        result["train_img_s_spread"] = default
        result["train_variants_img_s"] = timed
        twin = timed["default_twin"]
        # The method's check: the default and its twin overlap (each median inside the other's range).
        result["default_agrees"] = bool(twin["min"] <= default["median"] <= twin["max"]
                                        or default["min"] <= twin["median"] <= default["max"])
        result["speedup_vs_stock"] = default["median"] / timed["stock"]["median"]
        # Time per image with the extra augmentation over the default's, minus one.
        result["augment_cost"] = {name: default["median"] / timed[name]["median"] - 1
                                  for name in ("robust_aug", "framing", "robust_framing")}
        if naive is not None:
            result["naive_img_s"] = naive["median"]
            result["naive_img_s_spread"] = naive
            result["speedup_vs_naive"] = default["median"] / naive["median"]
    result["ratio_to_ceiling"] = result["train_img_s"] / result["ceiling_img_s"]
    result.update(bench_infer(50 if quick else 300))
    result["targets"] = targets(result)
    return result


def _gpu_rows(steps: int, train_flop: float) -> dict:
    """The GPU rows: data on the GPU, bf16 autocast, channels_last; batch 128 and a batch large
    enough to fill the GPU; the share of the measured bf16 matmul peak."""
    peak = cuda_bf16_tflops()
    gpu = {"bf16_matmul_tflops": peak, "step_is_sync_free": cuda_step_is_sync_free()}
    variants = {
        "eager": {},
        "eager_noaug": {"augment": False},  # augmentation's share of the step
        "compile": {"compile": True},
        "compile_nchw": {"compile": True, "channels_last": False},
    }
    for batch in (128, 1024):
        for name, opts in variants.items():
            img_s = bench_train(steps * 4, batch=batch, **opts)
            gpu[f"train_img_s_b{batch}_{name}"] = img_s
            if img_s is not None:
                gpu[f"bf16_peak_fraction_b{batch}_{name}"] = img_s * train_flop / (peak * 1e12)
    return {"gpu": gpu, "train_img_s": gpu["train_img_s_b128_eager"]}


# Targets for the 2-core CPU: (figure, comparison, bound).
TARGETS = (
    ("speedup_vs_naive", ">=", 2.0),
)


def targets(result: dict) -> dict:
    """Each target this run measured: its value, the bound, and whether it was met."""
    out = {}
    for key, op, bound in TARGETS:
        if key in result:
            v = result[key]
            out[key] = {"value": v, "target": f"{op} {bound}", "met": v >= bound if op == ">=" else v <= bound}
    return out


@entry_point("benchmarks.bench")
def main(argv: list[str] | None = None) -> int:
    import json
    import sys
    import zipfile

    from gtsrb.archive import DataError, default_source
    from gtsrb.util import write_text_atomic

    p = ArgumentParser(prog="python -m benchmarks.bench",
                       description=benchmarks.bench.__doc__.split("\n\n")[0])
    p.add_argument("--json", action="store_true")
    p.add_argument("--quick", action="store_true", help="fewer steps, no pack row: under a minute")
    p.add_argument("--source", type=Path, help="training zip (default: data/, then ../shared/gtsrb/)")
    p.add_argument("--out", type=Path, help="also write the JSON here (e.g. results/bench/NAME.json)")
    a = p.parse_args(argv)
    source = a.source
    if source is None:
        try:
            source = default_source()
        except DataError:
            print("no training archive found: skipping the naive-loader and pack rows", file=sys.stderr)
    if source is not None and not (source.is_file() and zipfile.is_zipfile(source)):
        print(f"bench: error: {source}: the bench needs the training archive as a zip", file=sys.stderr)
        return 2
    result = run(source, quick=a.quick)
    text = json.dumps(result, indent=1)
    if a.out:
        write_text_atomic(a.out, text + "\n")
    if a.json:
        print(text)
    else:
        for k, v in result.items():
            print(f"{k:>24}: {v:.3f}" if isinstance(v, float) else f"{k:>24}: {v}")
    return 0

