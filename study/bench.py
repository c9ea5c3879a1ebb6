"""`make bench` (`python -m study.bench`): how fast training, inference and packing run on this machine.

Everything is measured in ONE process on the machine it runs on. Every
training variant is built and warmed up first, then the variants take turns
over several rounds (the order reversed every other round), so each sees the
same machine; a figure is the median over the rounds, with the slowest and
fastest round beside it as its spread.

- train_img_s: the training step fit() runs (``gtsrb.train.TrainStep``) with
  its defaults: seed preset, batch 128, in-memory uint8 images -> augmentation
  -> forward, backward, optimizer step (random pixels: a step's cost does not
  depend on their values).
- train_variants_img_s: the same step with one option changed. ``stock`` runs
  plain ``torch.nn`` modules (no ``gtsrb.cpu_routes``); ``route_<name>`` one
  route alone; ``nchw`` the NCHW layout; ``fp32`` and ``bf16`` a precision
  forced; ``robust_aug`` the robustness augmentations on (darkening, blur, occlusion),
  ``framing`` the framing crop from 32 px frames, ``robust_framing`` both (their cost as
  ``augment_cost``: the share of a default step's time they add, issue 33's limit 10%).
  The variant whose
  options are the default's, spelled out (``default_twin``), is a check of the
  method: it must agree with train_img_s within the spread (default_agrees).
- naive_img_s: what most tutorials run, measured in the same rounds:
  torchvision.datasets.GTSRB over the extracted images, per-image PIL
  transforms in a DataLoader, the model in fp32; speedup_vs_naive.
- ceiling_img_s: the fp32 matrix-product rate measured now over the seed
  model's training FLOP per image; ratio_to_ceiling.
- infer_ms_p50/p99: one image through ``Classifier.predict`` with its SE
  excitations; eval_img_s: ``Classifier.predict_arrays`` over a batch of
  images, as ``gtsrb evaluate`` runs it.
- pack_s / pack_naive_s: packing the whole archive, against a plain
  sequential decode loop.
- machine: the CPU, the flags that decide the precision, cores and torch.
"""

from __future__ import annotations

import contextlib
import math
import tempfile
import time
import zipfile
from pathlib import Path
from typing import Callable

import numpy as np
import torch
import torch.nn.functional as F

from gtsrb.cpu_routes import ROUTES
from gtsrb.model import PRESETS, ModelConfig, build_model
from gtsrb.util import machine
from study.cli import ArgumentParser, entry_point


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
    with FlopCounterMode(display=False) as fwd:
        with torch.no_grad():
            model(x)
    with FlopCounterMode(display=False) as train:
        F.cross_entropy(model(x), y).backward()
    return train.get_total_flops() / batch, fwd.get_total_flops() / batch


def _random_data(n: int, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    """n uint8 seed-preset images and labels, resident on the training device as in fit()."""
    config = PRESETS["seed"]
    images = torch.randint(0, 256, (n, config.image_size, config.image_size, 3), dtype=torch.uint8, device=device)
    return images, torch.randint(0, config.num_classes, (n,), device=device)


def train_step_runner(batch: int = 128, **train_options) -> Callable[[], None]:
    """One call = one step of the real training step (``TrainStep``) with these TrainConfig
    options, finished (one sync per step, so the clock measures finished work)."""
    from gtsrb.config import TrainConfig
    from gtsrb.train import make_train_step

    config = TrainConfig(batch_size=batch, epochs=1, **train_options)
    step_fn = make_train_step(PRESETS["seed"], config, steps_per_epoch=100_000)
    n = batch * 8
    images, labels = _random_data(n, step_fn.device)
    boxes = None
    if config.framing > 0:  # whole 32 px frames with a ROI box each, cropped to 28 px by the step
        size = PRESETS["seed"].image_size * 8 // 7
        images = torch.randint(0, 256, (n, size, size, 3), dtype=torch.uint8, device=step_fn.device)
        boxes = torch.tensor([0.15, 0.15, 0.85, 0.85], device=step_fn.device).repeat(n, 1)
    i = 0

    def step() -> None:
        nonlocal i
        idx = torch.arange(i, i + batch, device=step_fn.device) % n
        i += batch
        loss, _ = step_fn(images[idx], labels[idx], None if boxes is None else boxes[idx])
        loss.item()

    step.train_step = step_fn
    return step


def bench_train(steps: int, batch: int = 128, **train_options) -> float | None:
    """Images/s of the training step, once, after 3 warm-up steps (the GPU rows); None where
    a compiled step fell back to eager."""
    step = train_step_runner(batch, **train_options)
    img_s = steps * batch / _time(step, warmup=3, steps=steps)
    if train_options.get("compile") and step.train_step.forward is step.train_step.model:
        return None
    return img_s


def _time(step: Callable[[], None], warmup: int, steps: int) -> float:
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
            rates[name].append(counts[name] * batch / _time(runners[name], 0, counts[name]))
    return {name: {**spread(v), "steps": counts[name]} for name, v in rates.items()}


def spread(values: list[float]) -> dict:
    return {"median": float(np.median(values)), "min": float(min(values)), "max": float(max(values)),
            "rounds": len(values)}


def cuda_step_is_sync_free(batch: int = 128) -> bool:
    """Whether the default training step runs on CUDA without the host ever waiting for the
    GPU (``torch.cuda.set_sync_debug_mode("error")`` raises on any sync)."""
    from gtsrb.config import TrainConfig
    from gtsrb.train import make_train_step

    step_fn = make_train_step(PRESETS["seed"], TrainConfig(batch_size=batch, device="cuda"), steps_per_epoch=10)
    images, labels = _random_data(batch, step_fn.device)
    step_fn(images, labels)  # warm-up: builds cached constants, cuDNN plans
    torch.cuda.synchronize()
    torch.cuda.set_sync_debug_mode("error")
    try:
        for _ in range(3):
            step_fn(images, labels)
        return True
    except RuntimeError:
        return False
    finally:
        torch.cuda.set_sync_debug_mode("default")


def _extract_for_torchvision(source: Path, root: Path, limit: int | None) -> None:
    """The training images laid out as torchvision.datasets.GTSRB expects them."""
    target = root / "gtsrb" / "GTSRB" / "Training"
    with zipfile.ZipFile(source) as z:
        names = [n for n in z.namelist() if n.endswith(".ppm") and "/Final_Training/Images/" in n]
        if limit:
            names = names[:: max(1, len(names) // limit)][:limit]
        for n in names:
            cls, fname = n.split("/")[-2:]
            (target / cls).mkdir(parents=True, exist_ok=True)
            (target / cls / fname).write_bytes(z.read(n))


@contextlib.contextmanager
def naive_runner(source: Path, images: int, batch: int = 128, workers: int = 2):
    """The usual recipe as a step: torchvision GTSRB + per-image PIL transforms + eager fp32 model."""
    import torchvision.transforms as T
    from torch.utils.data import DataLoader
    from torchvision.datasets import GTSRB

    with tempfile.TemporaryDirectory() as tmp:
        _extract_for_torchvision(source, Path(tmp), limit=images)
        transform = T.Compose([
            T.Resize((28, 28)),
            T.RandomAffine(10, translate=(0.1, 0.1), scale=(0.9, 1.1), shear=5),
            T.ColorJitter(brightness=0.3, contrast=0.3),
            T.ToTensor(),
        ])
        ds = GTSRB(tmp, split="train", transform=transform)
        loader = DataLoader(ds, batch_size=batch, shuffle=True, num_workers=workers, drop_last=True,
                            persistent_workers=workers > 0)
        model = build_model("seed")
        opt = torch.optim.AdamW(model.parameters(), lr=2e-3, weight_decay=0.05)
        it = iter(loader)

        def step() -> None:
            nonlocal it
            try:
                x, y = next(it)
            except StopIteration:  # an epoch ended: start the next (persistent workers)
                it = iter(loader)
                x, y = next(it)
            loss = F.cross_entropy(model(x), y)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            loss.item()

        try:
            yield step
        finally:
            it = loader = None  # stops the loader's worker processes


def bench_infer(requests: int, eval_images: int = 2048) -> dict:
    """p50 and p99 ms of a single-image ``Classifier.predict`` with its excitations, and the
    images/s of ``predict_arrays`` over ``eval_images`` images (evaluation's path)."""
    from gtsrb.checkpoint import save_checkpoint
    from gtsrb.inference import Classifier

    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "bench.pt"
        save_checkpoint({"model_config": PRESETS["seed"].to_dict(), "model": build_model("seed").state_dict()}, path)
        clf = Classifier.load(path)
    image = np.random.default_rng(0).integers(0, 256, (48, 52, 3), dtype=np.uint8)
    times = []
    for i in range(10 + requests):
        t = time.perf_counter()
        pred = clf.predict(image)
        if i >= 10:  # the first ten are the warm-up
            times.append((time.perf_counter() - t) * 1000)
        assert len(pred.excitations) == 5
    arrays = np.random.default_rng(1).integers(0, 256, (eval_images, 28, 28, 3), dtype=np.uint8)
    clf.predict_arrays(arrays[:512])
    t = time.perf_counter()
    clf.predict_arrays(arrays)
    return {"infer_ms_p50": float(np.percentile(times, 50)), "infer_ms_p99": float(np.percentile(times, 99)),
            "eval_img_s": eval_images / (time.perf_counter() - t)}


def bench_pack(source: Path) -> tuple[float, float]:
    """Seconds to pack the whole archive, and a plain sequential decode loop over it."""
    from PIL import Image

    from gtsrb.data import pack

    with tempfile.TemporaryDirectory() as tmp:
        t = time.perf_counter()
        pack([source], Path(tmp) / "bench.h5")
        pack_s = time.perf_counter() - t
    t = time.perf_counter()
    with zipfile.ZipFile(source) as z:
        out = [
            np.asarray(Image.open(z.open(n)).convert("RGB").resize((28, 28), Image.Resampling.BILINEAR))
            for n in z.namelist()
            if n.endswith(".ppm")
        ]
    naive_s = time.perf_counter() - t
    assert len(out) > 0
    return pack_s, naive_s


def cpu_variants() -> dict[str, dict]:
    """The CPU training variants: TrainConfig options of each, the default first."""
    from gtsrb.config import TrainConfig
    from gtsrb.train import use_bf16

    bf16 = use_bf16(TrainConfig(), torch.device("cpu"))
    variants: dict[str, dict] = {
        "default": {},
        # The default's resolved options spelled out: must measure as the default does.
        "default_twin": {"precision": "bf16" if bf16 else "fp32", "channels_last": True, "cpu_routes": ROUTES},
        "stock": {"cpu_routes": ()},
    }
    variants |= {f"route_{name}": {"cpu_routes": (name,)} for name in ROUTES}
    variants |= {"nchw": {"channels_last": False}, "fp32": {"precision": "fp32"}, "bf16": {"precision": "bf16"}}
    from study.recipe import FRAMING, ROBUST

    variants |= {"robust_aug": ROBUST, "framing": FRAMING, "robust_framing": {**ROBUST, **FRAMING}}
    return variants


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


@entry_point("study.bench")
def main(argv: list[str] | None = None) -> int:
    import json
    import sys
    import zipfile

    from gtsrb.archive import DataError, default_source
    from gtsrb.util import write_text_atomic

    p = ArgumentParser(prog="python -m study.bench", description=__doc__.split("\n\n")[0])
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


if __name__ == "__main__":
    raise SystemExit(main())
