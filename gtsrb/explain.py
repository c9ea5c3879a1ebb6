"""What the SE blocks did, and where the network looked.

- ``class_excitations``: each SE block's mean excitation per class and over all
  classes on a labelled set (the validation split), and how class-specific the
  block is. ``save_excitations``/``load_excitations`` keep them beside the
  checkpoint as ``excitations.npz`` (plain arrays, read with allow_pickle=False).
- ``class_mean_distance``: how far an image's excitation lies from the average
  of the class it was predicted as. ``gtsrb.evaluate.compute_excitations_file`` stores the 99th
  percentile of that distance on the same split (``distance_q99``): an image
  beyond it looks unlike the images the averages came from.
- ``se_counterfactuals``, ``se_hidden_fired``, ``constant_gates``: what the SE
  blocks contribute on a labelled set: the accuracy with every block off or each
  gate held at its average, how many hidden units of each block ever fire (a
  dead ReLU never does), and which blocks' gates do not vary at all.
- ``gradcam``: Grad-CAM (Selvaraju et al., arXiv:1610.02391) on the deepest
  conv stage whose feature map is at least ``min_cells`` wide. At 28 px the
  seed's stage 5 is 1x1 and stage 4 is 3x3, so the default lands on stage 3
  (6x6): the last stage with a map worth drawing.

Class specificity is eta squared: the share of the block's excitation variance
(summed over channels) that the class explains, between-class over total, from
0 (every class gets the same excitation) to 1 (the excitation is a function of
the class). Hu et al. report low specificity early and high specificity late.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import torch
from torch import nn

from gtsrb.archive import DataError
from gtsrb.model import to_float_images
from gtsrb.util import atomic_path

EXCITATIONS_FILE = "excitations.npz"


def class_excitations(excitations: dict[str, np.ndarray], labels: np.ndarray, num_classes: int) -> dict[str, dict]:
    """Per SE block: class_mean (classes, C), overall_mean (C,), count (classes,), specificity (eta^2)."""
    labels = np.asarray(labels)
    count = np.bincount(labels, minlength=num_classes)
    out = {}
    for name, e in excitations.items():
        e = np.asarray(e, np.float64)
        sums = np.zeros((num_classes, e.shape[1]))
        np.add.at(sums, labels, e)
        class_mean = sums / np.maximum(count, 1)[:, None]
        overall = e.mean(0)
        total = ((e - overall) ** 2).sum()
        between = (count[:, None] * (class_mean - overall) ** 2).sum()
        out[name] = {
            "class_mean": class_mean.astype(np.float32),
            "overall_mean": overall.astype(np.float32),
            "count": count,
            "specificity": float(between / total) if total > 0 else 0.0,
        }
    return out


def class_mean_distance(excitation: np.ndarray, class_mean: np.ndarray, predicted: np.ndarray) -> np.ndarray:
    """(N, C) excitations of one block, its (classes, C) class averages, (N,) predicted classes -> (N,)
    Euclidean distances of each image to its predicted class's average."""
    return np.linalg.norm(np.asarray(excitation, np.float64) - class_mean[np.asarray(predicted)], axis=1)


def distance_q99(distances: np.ndarray) -> float:
    """The 99th percentile of a set's ``class_mean_distance``: beyond it, an image looks unlike that set."""
    return float(np.quantile(distances, 0.99))


# A block whose class averages differ by less than this in every channel gives every class the same gate.
MIN_CLASS_SPREAD = 1e-3


def distance_block(stats: dict[str, dict]) -> str | None:
    """The SE block that the "unlike the training data" rule reads (``class_excitations`` output, blocks
    in depth order): the deepest one whose class averages differ between classes. A block that gives
    every class the same gate (a dead block: its hidden ReLUs silent, its gate sigmoid(0) = 0.5 for every
    image) puts every image at the same distance from every class, so it cannot tell a strange image."""
    def spread(st):  # the widest channel's range of class averages, over the classes that were seen
        seen = np.asarray(st["class_mean"])[np.asarray(st["count"]) > 0]
        return np.ptp(seen, axis=0).max() if len(seen) else 0.0

    alive = [name for name, st in stats.items() if spread(st) > MIN_CLASS_SPREAD]
    return alive[-1] if alive else None


def save_excitations(stats: dict[str, dict], path: str | os.PathLike, checkpoint_sha256: str, source: str) -> None:
    """Atomic write of ``class_excitations`` output (plus provenance) as one .npz."""
    path = Path(path)
    arrays = {"stages": np.array(list(stats)), "checkpoint_sha256": np.array(checkpoint_sha256),
              "source": np.array(source)}
    for name, s in stats.items():
        for key in ("class_mean", "overall_mean", "count"):
            arrays[f"{name}/{key}"] = s[key]
        for key in ("specificity", "distance_q99"):
            if key in s:
                arrays[f"{name}/{key}"] = np.array(s[key])
    with atomic_path(path, suffix=".npz") as tmp:
        np.savez_compressed(tmp, **arrays)


def load_excitations(path: str | os.PathLike) -> tuple[dict[str, dict], dict]:
    """-> (stats as in ``class_excitations``, {"checkpoint_sha256", "source"})."""
    path = Path(path)
    try:
        with np.load(path, allow_pickle=False) as z:
            stats = {}
            for name in (str(s) for s in z["stages"]):
                stats[name] = {k: z[f"{name}/{k}"] for k in ("class_mean", "overall_mean", "count")}
                stats[name]["specificity"] = float(z[f"{name}/specificity"])
                if f"{name}/distance_q99" in z:  # files made before it have no threshold
                    stats[name]["distance_q99"] = float(z[f"{name}/distance_q99"])
            meta = {"checkpoint_sha256": str(z["checkpoint_sha256"]), "source": str(z["source"])}
    except (OSError, KeyError, ValueError) as e:
        raise DataError(f"{path}: not a readable excitations file ({e})") from e
    return stats, meta


# ------------------------------------------------------------------ what the SE blocks contribute
# ``clf`` below is a ``gtsrb.inference.Classifier``; it is not imported, because inference imports this module.

def se_counterfactuals(clf, images: np.ndarray, labels: np.ndarray, gates: dict[str, np.ndarray],
                       predicted: np.ndarray | None = None) -> dict[str, float]:
    """The two SE counterfactuals on labelled uint8 images (N, S, S, 3): every SE block replaced by the
    identity ("off", the demo's "SE off", which also removes the scale the later layers were trained
    on), and each block's gate held at ``gates`` per channel ("held", e.g. its average over the val
    split: the learned scale stays, the per-image recalibration goes).

    -> {"off_accuracy", "off_changed", "held_accuracy", "held_changed"}: the accuracy of each, and the
    share of images whose class differs from ``predicted`` (the SE-on classes; computed when None)."""
    labels = np.asarray(labels)
    if predicted is None:
        predicted = clf.predict_arrays(images).probs.argmax(1)
    with clf.se_disabled():
        off = clf.predict_arrays(images).probs.argmax(1)
    with clf.se_held(gates):
        held = clf.predict_arrays(images).probs.argmax(1)
    return {"off_accuracy": float((off == labels).mean()), "off_changed": float((off != predicted).mean()),
            "held_accuracy": float((held == labels).mean()), "held_changed": float((held != predicted).mean())}


def se_hidden_fired(clf, images: np.ndarray) -> tuple[dict[str, list[int]], object]:
    """Per SE block, how many of its hidden ReLUs (between its two 1x1 layers) are above zero for at least
    one of ``images``: {block: [fired, hidden width]}, blocks in depth order, and the ``Prediction`` of
    the same pass, so a caller that needs both runs the images once. A unit that fires on no image is
    dead: without a bias in the block it gets no gradient and cannot come back.

    The count is read by forward hooks on the shared model: do not run it beside other requests."""
    fired: dict[str, torch.Tensor] = {}

    def record(name):
        def hook(_module, _inputs, out):
            f = (out.flatten(1) > 0).any(0).cpu()
            fired[name] = f | fired[name] if name in fired else f
        return hook

    handles = [block.act.register_forward_hook(record(name)) for name, block in clf.model.se_blocks()]
    try:
        prediction = clf.predict_arrays(images)
    finally:
        for h in handles:
            h.remove()
    return {name: [int(f.sum()), len(f)] for name, f in fired.items()}, prediction


# Below this range across images a gate is a fixed scale: it recalibrates nothing.
CONSTANT_GATE = 1e-3


def constant_gates(excitations: dict[str, np.ndarray], tolerance: float = CONSTANT_GATE) -> dict[str, dict]:
    """The SE blocks whose gate does not vary across images ((N, C) excitations per block, e.g.
    ``Prediction.excitations`` on the val split): {block: {"range": the widest channel's range,
    "all_half": whether every gate is 0.5 = sigmoid(0) to within ``tolerance``, as in a block whose
    hidden units never fire}}; a block whose widest channel moves by ``tolerance`` or more is left out."""
    spread = {name: float(np.ptp(g, axis=0).max()) for name, g in excitations.items()}
    return {name: {"range": r, "all_half": bool(np.abs(excitations[name] - 0.5).max() < tolerance)}
            for name, r in spread.items() if r < tolerance}


def _stage_outputs(model: nn.Module) -> list[tuple[str, int]]:
    """(stage name, index of the last module before that stage's pool) for each stage."""
    out, stage = [], 1
    for i, m in enumerate(model.features):
        if isinstance(m, (nn.MaxPool2d, nn.AvgPool2d)):
            out.append((f"stage{stage}", i - 1))
            stage += 1
    return out


def gradcam_layer(model: nn.Module, min_cells: int = 4) -> tuple[str, int]:
    """The deepest stage whose pre-pool map is at least ``min_cells`` wide: (name, module index)."""
    size = model.config.image_size
    shapes: dict[int, int] = {}
    handles = [model.features[i].register_forward_hook(
        lambda _m, _i, o, i=i: shapes.__setitem__(i, o.shape[-1])) for _, i in _stage_outputs(model)]
    try:
        with torch.no_grad():
            was_training = model.training
            model.eval()(torch.zeros(1, 3, size, size, device=next(model.parameters()).device))
            model.train(was_training)
    finally:
        for h in handles:
            h.remove()
    wide = [(n, i) for n, i in _stage_outputs(model) if shapes[i] >= min_cells]
    return wide[-1] if wide else _stage_outputs(model)[0]


def gradcam(model: nn.Module, array: np.ndarray, class_id: int | None, layer: int) -> np.ndarray:
    """Grad-CAM of ``class_id`` (None: the top class) for one uint8 (S, S, 3) image -> (S, S) in [0, 1]."""
    return gradcam_and_logits(model, array, class_id, layer)[0]


def gradcam_and_logits(model: nn.Module, array: np.ndarray, class_id: int | None,
                       layer: int) -> tuple[np.ndarray, np.ndarray]:
    """(Grad-CAM map, the image's logits) from one forward and one backward pass.

    The forward pass runs in two halves around ``model.features[layer]`` instead of through a hook,
    so concurrent calls on one shared model cannot see each other's activations."""
    device = next(model.parameters()).device
    with torch.inference_mode(False), torch.enable_grad():
        x = to_float_images(torch.from_numpy(np.ascontiguousarray(array[None])).to(device))
        a = model.features[: layer + 1](model.normalise(x))
        logits = model.classifier(torch.flatten(model.features[layer + 1 :](a), 1))
        if class_id is None:
            class_id = int(logits[0].argmax())
        (grad,) = torch.autograd.grad(logits[0, class_id], a)
    a = a.detach()
    weights = grad.mean(dim=(2, 3), keepdim=True)  # global-average-pooled gradients, per channel
    cam = torch.relu((weights * a).sum(1, keepdim=True))
    cam = nn.functional.interpolate(cam, size=array.shape[:2], mode="bilinear", align_corners=False)[0, 0]
    cam = cam - cam.min()
    peak = cam.max()
    cam = (cam / peak if peak > 0 else cam).cpu().numpy().astype(np.float32)
    return cam, logits.detach().float().cpu().numpy()
