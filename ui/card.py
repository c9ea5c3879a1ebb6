"""The model card and the notes beside it: what the served checkpoint is, what it was trained on, how
well it scores and where its calibration and class averages come from, read off the files beside it."""

from __future__ import annotations

import json
from pathlib import Path

from ui.prose import TEXT


def calibration_note(c: dict, own: bool) -> str:
    """Where a calibration.json was fitted (``own``: on the served checkpoint itself) and what its
    'unsure' rule did on the held-out test split."""
    source = "this checkpoint" if own else f"`{c['checkpoint']}` (same recipe, trained on the train split alone)"
    t = c["test"]
    rest = "none were left" if t["accuracy_sure"] is None else f"the rest were {t['accuracy_sure']:.2%} right"
    return (f"temperature {c['temperature']:.2f} and threshold {c['threshold']:.2f} fitted on the val split "
            f"of {source}; there, on the test split (n={t['n']}), 'unsure' fired on {t['unsure_rate']:.1%} "
            f"of images and {rest}")


def model_card(path: Path, sha256: str, config, meta: dict, metrics: dict | None, calibration: str,
               class_averages: str, cam_stage: str) -> str:
    """The card's markdown: ``path`` and ``sha256`` of the checkpoint, its ``ModelConfig`` and metadata,
    the ``metrics.json`` beside it (None: absent), the calibration and class-average notes, and the
    Grad-CAM stage."""
    data = meta.get("data", {})
    lines = [
        TEXT["card-heading"],
        f"- **Checkpoint:** `{shown_path(path)}` (epoch {meta.get('epoch', '?')})",
        f"- **sha256:** `{sha256}`",
        (f"- **Architecture:** VGG-11 (config A) with batch norm, {config.image_size}×{config.image_size} "
         f"input, {config.num_classes} classes, trained from scratch"),
        f"- **Configuration:** {config.describe()}",
    ]
    source = Path(str(data.get("source", "?"))).name
    framing = meta.get("train_config", {}).get("framing", 0) > 0
    crop = ("each image cropped at random between its annotated sign (ROI) and its whole frame" if framing
            else "each image cropped to its annotated sign (ROI)" if data.get("roi") else "full frames")
    if "test" in meta.get("train_config", {}).get("train_splits", ["train"]):
        lines.append(f"- **Training data:** all of the GTSRB training archive (`{source}`), {crop}: GTSRB's "
                     "protocol, nothing held out (the example images below were seen in training)")
    else:
        lines.append(f"- **Training data:** GTSRB training archive (`{source}`), {crop}, split 64/16/20 by "
                     f"**{data.get('split_kind', '?')}** (seed {data.get('seed', '?')}): no physical sign "
                     "appears in two splits")
    if data.get("roi"):
        lines.append(TEXT["card-framing" if framing else "card-roi"])
    if config.input_norm == "image":
        lines.append(TEXT["card-image-norm"])
    if metrics:
        lines += _scores(path, metrics)
    lines.append(TEXT["card-served"])
    lines.append(f"- **Calibration ('unsure'):** {calibration}")
    lines.append(f"- **SE class averages:** {class_averages}")
    lines.append(f"- **Grad-CAM layer:** end of {cam_stage} (the deepest stage whose map is at least "
                 "4×4 at this input size)")
    return "\n".join(lines)


def _scores(path: Path, metrics: dict) -> list[str]:
    """The card's lines from metrics.json: each split's scores, the split twin's held-out estimate, and
    how and where it was trained."""
    lines = []
    for key, label in (("official_test", "Official GTSRB test set"), ("test", "Test split"), ("val", "Val split")):
        if key in metrics:
            t = metrics[key]
            lines.append(f"- **{label}:** accuracy {t['accuracy']:.2%}, macro F1 {t['macro_f1']:.3f} (n={t['n']})")
    twin = path.parent / "split" / "metrics.json"
    if "test" not in metrics and twin.is_file():
        t = json.loads(twin.read_text())["test"]
        lines.append(f"- **Held-out estimate:** the same recipe trained on the track split's train part "
                     f"scores {t['accuracy']:.2%} on its test split (n={t['n']}; `results/best/split/`)")
    m = metrics.get("machine", "?")
    if isinstance(m, dict):
        m = f"{m.get('cpu', '?')} ({m.get('cores', '?')} cores), torch {m.get('torch', '?')}"
    lines.append(f"- **Trained:** {metrics.get('epochs', '?')} epochs in "
                 f"{metrics.get('train_seconds', 0) / 60:.0f} min on {m}")
    return lines


def shown_path(path: Path) -> str:
    """Relative to the working folder where possible: the page should not show a home folder."""
    try:
        return str(path.resolve().relative_to(Path.cwd().resolve()))
    except ValueError:
        return str(path)
