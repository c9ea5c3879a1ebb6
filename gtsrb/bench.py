"""`gtsrb bench`: how close training and inference run to this machine's limit.

Everything is measured in ONE process, on the machine it runs on, after a
warm-up, so the ratios compare like with like:

- pack_s / pack_naive_s: packing the whole archive, against a plain
  sequential decode loop; measured first, in a fresh process, as `gtsrb pack`
  runs;
- ceiling_img_s: fp32 matrix-product FLOP/s measured now, divided by the
  seed model's nominal training FLOP per image (torch.utils.flop_counter);
  ceiling_bf16_img_s the same with the bf16 matrix-product rate;
- train_img_s: the project's own training step (``gtsrb.train.TrainStep``,
  the one fit() runs) with its defaults: in-memory uint8 batch ->
  augmentation -> forward, backward, optimizer step; seed preset, batch 128;
  train_variants_img_s the same step with one option changed;
- naive_img_s: what most users run: torchvision.datasets.GTSRB over the
  extracted images, per-image PIL transforms in a DataLoader, the eager model;
- infer_ms_p50/p99: single-image Classifier.predict with SE excitations, at
  the precision it serves by default (infer_precision: bf16 on CPUs that
  multiply bf16 natively, see gtsrb.engine), infer_fp32_ms_p50/p99 the same
  in fp32, request by request in turn with the first; infer_ops_per_forward
  and infer_fp32_ops_per_forward the ATen operations one forward dispatches;
  infer_ceiling_ms the forward FLOP at the fp32 matmul rate, and
  infer_memory_floor_ms its weights' bytes at the rate this machine reads a
  buffer of that size (weight_read_gb_s); infer_op_warm_us and
  infer_op_after_read_us one small op (an SE product) warm and right after
  reading that many bytes, as each op of a forward runs after the weights
  read before it;
- targets: the speed issue's four targets, each with its value and whether
  this run met it.
"""

from __future__ import annotations

import os
import platform
import tempfile
import time
import zipfile
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from gtsrb.model import PRESETS, ModelConfig, build_model, to_float_images


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


def flop_per_image(config: ModelConfig = PRESETS["seed"], batch: int = 128, executed: bool = False) -> tuple[float, float]:
    """(training, forward) FLOP per image, counted by torch.utils.flop_counter.

    By default the model's nominal count, every conv as a dense 3x3 conv (on the
    meta device, which takes ``nn.Conv2d``'s own route): the issue's definition
    of the ceiling. ``executed``: what the CPU route really multiplies, which
    skips the eight taps that only see zero padding on stage 5's 1x1 maps.
    """
    from torch.utils.flop_counter import FlopCounterMode

    device = "cpu" if executed else "meta"
    model = build_model(config).to(device)
    x = torch.rand(batch, 3, config.image_size, config.image_size, device=device)
    y = torch.randint(0, config.num_classes, (batch,), device=device)
    with FlopCounterMode(display=False) as fwd:
        with torch.no_grad():
            model(x)
    with FlopCounterMode(display=False) as train:
        F.cross_entropy(model(x), y).backward()
    return train.get_total_flops() / batch, fwd.get_total_flops() / batch


def _time_steps(step, warmup: int, steps: int) -> float:
    for _ in range(warmup):
        step()
    t = time.perf_counter()
    for _ in range(steps):
        step()
    return time.perf_counter() - t


def _random_data(n: int, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    """n uint8 seed-preset images and labels, resident on the training device as in fit()
    (random pixels: the cost of a step does not depend on their values)."""
    config = PRESETS["seed"]
    size = config.image_size
    images = torch.randint(0, 256, (n, size, size, 3), dtype=torch.uint8, device=device)
    return images, torch.randint(0, config.num_classes, (n,), device=device)


def bench_train(steps: int, batch: int = 128, **train_options) -> float | None:
    """Images/s of the real training step on an in-memory uint8 tensor (random pixels:
    the cost of a step does not depend on their values)."""
    from gtsrb.train import TrainConfig, make_train_step

    config = TrainConfig(batch_size=batch, epochs=1, **train_options)
    step_fn = make_train_step(PRESETS["seed"], config, steps_per_epoch=steps + 20)
    n = batch * 8
    images, labels = _random_data(n, step_fn.device)
    i = 0

    def step():
        nonlocal i
        idx = torch.arange(i, i + batch, device=step_fn.device) % n
        i += batch
        loss, _ = step_fn(images[idx], labels[idx])
        loss.item()  # one sync per step so the clock measures finished work

    img_s = steps * batch / _time_steps(step, 3, steps)
    if config.compile and step_fn.forward is step_fn.model:
        return None  # compile fell back to eager: no compiled figure to report
    return img_s


def cuda_step_is_sync_free(batch: int = 128) -> bool:
    """Whether the default training step runs on CUDA without the host ever waiting for the
    GPU (``torch.cuda.set_sync_debug_mode("error")`` raises on any sync)."""
    from gtsrb.train import TrainConfig, make_train_step

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


def bench_naive(source: Path, steps: int, batch: int = 128, workers: int = 2) -> float:
    """Images/s of the usual recipe: torchvision GTSRB + per-image PIL transforms + eager model."""
    import torchvision.transforms as T
    from torch.utils.data import DataLoader
    from torchvision.datasets import GTSRB

    with tempfile.TemporaryDirectory() as tmp:
        _extract_for_torchvision(source, Path(tmp), limit=batch * (steps + 4))
        transform = T.Compose([
            T.Resize((28, 28)),
            T.RandomAffine(10, translate=(0.1, 0.1), scale=(0.9, 1.1), shear=5),
            T.ColorJitter(brightness=0.3, contrast=0.3),
            T.ToTensor(),
        ])
        ds = GTSRB(tmp, split="train", transform=transform)
        loader = DataLoader(ds, batch_size=batch, shuffle=True, num_workers=workers, drop_last=True)
        model = build_model("seed")
        opt = torch.optim.AdamW(model.parameters(), lr=2e-3, weight_decay=0.05)
        it = iter(loader)

        def step():
            x, y = next(it)
            loss = F.cross_entropy(model(x), y)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            loss.item()

        img_s = steps * batch / _time_steps(step, 2, steps)
        it = None  # stops the loader's worker processes before anything else is timed
        return img_s


def read_gb_s(nbytes: int, seconds: float = 1.0) -> float:
    """Read bandwidth (GB/s) over one buffer of ``nbytes``, read again and again, as a
    served model reads its weights (from whichever cache level holds them): the best
    of repeated all-thread sums."""
    a = torch.rand(max(nbytes // 4, 1))
    a.sum()
    best, t_end = 0.0, time.perf_counter() + seconds
    while time.perf_counter() < t_end:
        t = time.perf_counter()
        a.sum()
        best = max(best, a.nbytes / (time.perf_counter() - t) / 1e9)
    return best


def op_after_read_us(nbytes: int, reps: int = 200) -> tuple[float, float]:
    """Median microseconds of one small op, an SE block's (1, 512) x (512, 32) product, warm
    and right after reading ``nbytes`` of other memory, as a single-image forward reads its
    weights between its small ops: the read evicts the op's code and data from the core's
    caches, so each op after a large conv pays for fetching them again."""
    buf = torch.rand(max(nbytes // 4, 1))
    x, w = torch.rand(1, 512), torch.rand(512, 32)
    times: dict[bool, list[float]] = {False: [], True: []}
    for i in range(20 + reps):
        for after_read in (False, True):
            if after_read:
                buf.sum()
            t = time.perf_counter()
            torch.mm(x, w)
            if i >= 20:
                times[after_read].append((time.perf_counter() - t) * 1e6)
    return float(np.median(times[False])), float(np.median(times[True]))


def weight_bytes_per_image(config: ModelConfig = PRESETS["seed"]) -> int:
    """Bytes of weights one single-image prediction reads (the folded engine's tensors;
    the centre tap only where a map is 1x1). At batch 1 each weight is used for a few
    pixels only, so reading them, not multiplying, bounds the latency."""
    from gtsrb.engine import InferenceEngine

    engine = InferenceEngine(build_model(config).eval())
    engine(torch.rand(1, 3, config.image_size, config.image_size))  # builds the product matrices
    total = sum(t.nbytes for t in engine.head)
    for kind, u in engine.steps:
        if kind == "unit":
            used = u.centre_matrix if u.centre_matrix is not None else u.weight
            total += used.nbytes + u.bias.nbytes
            if u.se is not None:
                total += sum(t.nbytes for t in (u.se.fc1, u.se.gate_w, u.se.shift_w) if t is not None)
    return total


def dispatched_ops(fn) -> int:
    """The number of ATen operations ``fn()`` dispatches (views and no-op casts included)."""
    from torch.utils._python_dispatch import TorchDispatchMode

    class Count(TorchDispatchMode):
        n = 0

        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            Count.n += 1
            return func(*args, **(kwargs or {}))

    with Count():
        fn()
    return Count.n


def bench_infer(requests: int) -> dict:
    """p50 and p99 ms of a single-image Classifier.predict with excitations captured, at the
    precision it serves by default ("auto") and in fp32, request by request in turn, so that
    both see the same machine."""
    from gtsrb.checkpoint import save_checkpoint
    from gtsrb.inference import Classifier

    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "bench.pt"
        save_checkpoint({"model_config": PRESETS["seed"].to_dict(), "model": build_model("seed").state_dict()}, path)
        served = Classifier.load(path)
        clfs = {"infer": served, "infer_fp32": Classifier.load(path, precision="fp32")}
    image = np.random.default_rng(0).integers(0, 256, (48, 52, 3), dtype=np.uint8)
    times: dict[str, list[float]] = {key: [] for key in clfs}
    for i in range(10 + requests):
        for key, clf in sorted(clfs.items(), reverse=i % 2 == 1):  # each goes first every other time
            t = time.perf_counter()
            pred = clf.predict(image)
            if i >= 10:  # the first ten are the warm-up
                times[key].append((time.perf_counter() - t) * 1000)
            assert len(pred.excitations) == 5
    out: dict = {"infer_precision": served.precision}
    # How many operations one forward dispatches: at batch 1 each costs microseconds whatever its size.
    x = to_float_images(torch.from_numpy(served.preprocess(image)))
    for key, clf in clfs.items():
        out[f"{key}_ops_per_forward"] = dispatched_ops(lambda: clf.engine(x))
    for key, ms in times.items():
        out[f"{key}_ms_p50"], out[f"{key}_ms_p99"] = float(np.percentile(ms, 50)), float(np.percentile(ms, 99))
    return out


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


def machine() -> dict:
    cpu = platform.processor()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    info = {
        "cpu": cpu,
        "cores": os.cpu_count(),
        "torch": torch.__version__,
        "torch_threads": torch.get_num_threads(),
        "cpu_capability": torch.backends.cpu.get_cpu_capability(),
        "python": platform.python_version(),
    }
    if torch.cuda.is_available():
        info["gpu"] = torch.cuda.get_device_name()
    return info


# What each training option does to the step, every one through the same TrainStep.
TRAIN_VARIANTS = {
    "fp32": {"precision": "fp32"},
    "fp32_channels_last": {"precision": "fp32", "channels_last": True},
    "bf16_nchw": {"precision": "bf16", "channels_last": False},
    "bf16_channels_last": {"precision": "bf16"},
    "bf16_channels_last_compile": {"precision": "bf16", "compile": True},
}


def run(source: Path | None, quick: bool = False) -> dict:
    """All figures in one dict; ``source`` (the training zip) enables the naive and pack rows."""
    result: dict = {"machine": machine(), "quick": quick, "batch_size": 128, "preset": "seed"}
    if source is not None and not quick:
        # First, in a fresh process, as `gtsrb pack` runs (its imports included).
        result["pack_s"], result["pack_naive_s"] = bench_pack(source)
    train_flop, fwd_flop = flop_per_image()
    gflops = matmul_gflops(seconds=1.0 if quick else 3.0)
    steps = 8 if quick else 40
    result["matmul_gflops"] = gflops
    result["train_gflop_per_image"] = train_flop / 1e9
    result["forward_gflop_per_image"] = fwd_flop / 1e9
    result["train_gflop_per_image_executed"], result["forward_gflop_per_image_executed"] = (
        f / 1e9 for f in flop_per_image(executed=True)
    )
    result["ceiling_img_s"] = gflops * 1e9 / train_flop
    if not torch.cuda.is_available():
        # The ceiling for the bf16 path: what AMX / AVX-512-BF16 multiply, where the CPU has them.
        result["matmul_bf16_gflops"] = matmul_gflops(seconds=1.0 if quick else 3.0, dtype=torch.bfloat16)
        result["ceiling_bf16_img_s"] = result["matmul_bf16_gflops"] * 1e9 / train_flop
    # The default TrainConfig: exactly what `gtsrb train`, the study and train-best run.
    result["train_img_s"] = bench_train(steps)
    if not quick and not torch.cuda.is_available():
        result["train_variants_img_s"] = {
            name: bench_train(steps, **opts) for name, opts in TRAIN_VARIANTS.items()
        }
    if torch.cuda.is_available():
        # The GPU row: data on the GPU, bf16 autocast, channels_last; batch 128 and a
        # batch large enough to fill the GPU; the share of the measured bf16 matmul peak.
        peak = cuda_bf16_tflops()
        gpu = {"bf16_matmul_tflops": peak, "step_is_sync_free": cuda_step_is_sync_free()}
        for batch in (128, 1024):
            variants_gpu = {
                "eager": {},
                # The same step without augmentation: augmentation's share of the step.
                "eager_noaug": {"augment": False},
                "compile": {"compile": True},
                "compile_nchw": {"compile": True, "channels_last": False},
            }
            for name, opts in variants_gpu.items():
                img_s = bench_train(steps, batch=batch, **opts)
                gpu[f"train_img_s_b{batch}_{name}"] = img_s
                if img_s is not None:
                    gpu[f"bf16_peak_fraction_b{batch}_{name}"] = img_s * train_flop / (peak * 1e12)
        result["gpu"] = gpu
    result.update(bench_infer(50 if quick else 300))
    result["infer_ceiling_ms"] = fwd_flop / (gflops * 1e9) * 1000
    # The other bound at batch 1: reading every weight once, at the rate this machine reads
    # a buffer of their size.
    weight_bytes = weight_bytes_per_image()
    result["infer_weight_mb"] = weight_bytes / 1e6
    result["weight_read_gb_s"] = read_gb_s(weight_bytes)
    result["infer_memory_floor_ms"] = weight_bytes / (result["weight_read_gb_s"] * 1e9) * 1000
    result["infer_op_warm_us"], result["infer_op_after_read_us"] = op_after_read_us(weight_bytes, 50 if quick else 200)
    if source is not None:
        result["naive_img_s"] = bench_naive(source, steps=4 if quick else 20)
    result["ratio_to_ceiling"] = result["train_img_s"] / result["ceiling_img_s"]
    # The same ratio counting only the multiplications the CPU route executes.
    result["ratio_to_ceiling_executed"] = (
        result["train_img_s"] * result["train_gflop_per_image_executed"] / result["matmul_gflops"]
    )
    if "ceiling_bf16_img_s" in result:
        result["ratio_to_bf16_ceiling"] = result["train_img_s"] / result["ceiling_bf16_img_s"]
    if "naive_img_s" in result:
        result["speedup_vs_naive"] = result["train_img_s"] / result["naive_img_s"]
    if "pack_s" in result:
        result["pack_ratio"] = result["pack_s"] / result["pack_naive_s"]
    result["infer_ratio_to_ceiling"] = result["infer_ms_p50"] / result["infer_ceiling_ms"]
    # The same for the fp32 engine: the target's ceiling is an fp32 rate, and bf16 serving beats it partly by
    # not being fp32.
    result["infer_fp32_ratio_to_ceiling"] = result["infer_fp32_ms_p50"] / result["infer_ceiling_ms"]
    result["targets"] = targets(result)
    return result


# The speed issue's targets for the 2-core CPU: (figure, comparison, bound).
TARGETS = (
    ("ratio_to_ceiling", ">=", 0.85),
    ("speedup_vs_naive", ">=", 1.4),
    ("infer_ratio_to_ceiling", "<=", 2.0),
    ("pack_ratio", "<=", 0.5),
)


def targets(result: dict) -> dict:
    """Each target this run measured: its value, the bound, and whether it was met."""
    out = {}
    for key, op, bound in TARGETS:
        if key in result:
            v = result[key]
            out[key] = {"value": v, "target": f"{op} {bound}", "met": v >= bound if op == ">=" else v <= bound}
    return out
