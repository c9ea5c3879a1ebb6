"""Figures shared by training, evaluation and reports (matplotlib, no display)."""

from __future__ import annotations

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402


def confusion_figure(cm: np.ndarray, class_names, title: str):
    """Row-normalised confusion matrix, classes labelled by id (names in the legend text)."""
    n = len(class_names)
    norm = cm / np.maximum(cm.sum(1, keepdims=True), 1)
    fig, ax = plt.subplots(figsize=(9, 8), dpi=100)
    im = ax.imshow(norm, cmap="Blues", vmin=0, vmax=1)
    ax.set_xticks(range(n), [str(i) for i in range(n)], fontsize=6)
    ax.set_yticks(range(n), [f"{i} {class_names[i][:28]}" for i in range(n)], fontsize=5)
    ax.set_xlabel("predicted class id")
    ax.set_ylabel("true class")
    acc = np.trace(cm) / max(cm.sum(), 1)
    ax.set_title(f"Confusion matrix, {title} (accuracy {acc:.4f}, n={int(cm.sum())})")
    fig.colorbar(im, ax=ax, fraction=0.046, pad=0.04, label="share of the true class")
    fig.tight_layout()
    return fig


def save_figure(fig, path) -> None:
    fig.savefig(path)
    plt.close(fig)
