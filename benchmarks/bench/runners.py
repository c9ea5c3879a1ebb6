"""What the bench times, each as a runner (one call = one finished step): the training step fit()
runs and its variants, the usual torchvision pipeline, inference and packing."""

from __future__ import annotations

import contextlib
import tempfile
import time
import zipfile
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from benchmarks.bench.timing import time_steps
from gtsrb.config import RECIPE
from gtsrb.cpu_routes import ROUTES
from gtsrb.model import PRESETS, build_model
from study.recipe import ROBUST


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
    img_s = steps * batch / time_steps(step, warmup=3, steps=steps)
    if train_options.get("compile") and step.train_step.forward is step.train_step.model:
        return None
    return img_s


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
    # The framing crop at the recipe's rate (every image), and with the robustness augmentations it was measured against.
    framing = {"framing": RECIPE["framing"]}
    variants |= {"robust_aug": ROBUST, "framing": framing, "robust_framing": {**ROBUST, **framing}}
    return variants
