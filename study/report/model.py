"""The served model: its release run, and on held-out data its calibration, errors, TTA, SE switched
off and the "unsure" rule."""

from __future__ import annotations

import json
import textwrap
import time
from pathlib import Path

import numpy as np
import pandas as pd

from gtsrb.classes import CLASS_NAMES
from gtsrb.plots import plt, save_figure
from study.report.common import machine_text, md_table


def best_model_section(checkpoint: Path, data: Path, out: Path) -> tuple[dict, str]:
    """The held-out model on the pack's test split (and val, for the SE blocks' units and gates) -> the
    numbers the report quotes (also written to ``out``/best_test.json) and the confused-pairs table; its
    figures and CSVs go to ``out``."""
    from gtsrb.data import load_pack
    from gtsrb.explain import constant_gates, se_counterfactuals, se_hidden_fired
    from gtsrb.inference import Classifier
    from gtsrb.metrics import calibration, classification_metrics, confused_pairs, confusion

    t0 = time.perf_counter()
    clf = Classifier.load(checkpoint)
    test = load_pack(data, "test")
    exact = clf.predict_arrays(test.images)
    probs = exact.probs
    pred = probs.argmax(1)
    m = classification_metrics(test.labels, pred)
    cal = calibration(probs, test.labels, bins=15)
    reliability_figure(cal, out / "reliability.png", len(test.labels))
    cm = confusion(test.labels, pred)
    pairs = confused_pairs(cm, 10)
    support = cm.sum(1)
    # A track-split test holds a rare class as a few physical signs (tracks): say how many, and how many
    # of them the errors come from, so that a large share is read as one hard sign, not a weak class.
    def tracks(mask):
        return len(np.unique(test.groups[mask]))

    rows = [[f"{t} {CLASS_NAMES[t]}", f"{p} {CLASS_NAMES[p]}", n, f"{n / support[t]:.1%}",
             f"{tracks((test.labels == t) & (pred == p))} of {tracks(test.labels == t)}"] for t, p, n in pairs]
    pairs_md = md_table(["true class", "predicted as", "test images", "share of the true class",
                         "tracks the errors come from"], rows)
    pd.DataFrame([{"true": t, "true_name": CLASS_NAMES[t], "pred": p, "pred_name": CLASS_NAMES[p], "count": n}
                  for t, p, n in pairs]).to_csv(out / "confused_pairs.csv", index=False)
    pd.DataFrame(cal["bins"]).to_csv(out / "reliability.csv", index=False)
    misclassified_figure(test.images, test.labels, test.groups, probs, out / "misclassified.png")
    val = load_pack(data, "val")
    fired, val_out = se_hidden_fired(clf, val.images)
    val_gates = val_out.excitations
    # The page's two counterfactuals over the whole test split: SE off, and each gate held at its val average.
    se = se_counterfactuals(clf, test.images, test.labels, {name: g.mean(0) for name, g in val_gates.items()}, pred)
    top = cal["bins"][-1]
    gaps = [(b["confidence"] - b["accuracy"], b) for b in cal["bins"] if b["count"]]
    worst_gap, worst = max(gaps, key=lambda g: g[0])
    calibration_text = (
        f"{top['count'] / len(test.labels):.0%} of the test images ({top['count']:,}) fall in the top bin "
        f"(confidence above {top['lower']:.3f}), where accuracy is {top['accuracy']:.1%} against a mean confidence "
        f"of {top['confidence']:.1%}. The largest overconfidence is {worst_gap * 100:.0f} points, in the "
        f"{worst['lower']:.2f}–{worst['upper']:.2f} bin ({worst['count']} images).")
    worst_tracks_figure(val.images, val.labels, val.groups, val_out.probs.argmax(1), out / "worst_val_tracks.png")
    summary = {"accuracy": m["accuracy"], "macro_f1": m["macro_f1"], "n": int(len(test.labels)),
               "calibration_text": calibration_text,
               "errors": int((pred != test.labels).sum()), "ece": cal["ece"],
               "mean_confidence": float(probs.max(1).mean()),
               "se_off_accuracy": se["off_accuracy"], "se_off_changed": se["off_changed"],
               "se_held_accuracy": se["held_accuracy"], "se_held_changed": se["held_changed"],
               "error_tracks": {"val": error_tracks(val.labels, val_out.probs.argmax(1), val.groups),
                                "test": error_tracks(test.labels, pred, test.groups)},
               "se_hidden_fired": fired,
               "se_position": clf.config.se_position, "se_bias": clf.config.se_bias,
               "se_constant": constant_gates(val_gates),
               "seconds": round(time.perf_counter() - t0, 1)}
    (out / "best_test.json").write_text(json.dumps(summary, indent=1) + "\n")
    return summary, pairs_md


WORST_TRACKS = 5  # error_tracks: how many of the worst tracks it sums


def error_tracks(labels: np.ndarray, pred: np.ndarray, groups: np.ndarray) -> dict:
    """How a split's errors spread over its tracks (physical signs, about 30 frames each). The frames of a
    track tend to be right or wrong together, so where a few tracks hold most errors, the split's accuracy
    moves in steps of a track, and it tells models apart more coarsely than its image count suggests."""
    wrong = pred != labels
    per_track = np.sort(np.unique(groups[wrong], return_counts=True)[1])[::-1]
    return {"n": int(len(labels)), "tracks": int(len(np.unique(groups))), "errors": int(wrong.sum()),
            "tracks_with_errors": int(len(per_track)), "in_worst_tracks": int(per_track[:WORST_TRACKS].sum()),
            "worst_track": int(per_track[0]) if len(per_track) else 0}


def dead_units_text(fired: dict[str, list[int]], position: str, bias: bool = False) -> str:
    """How many of each SE block's hidden ReLUs fire on at least one val image, and why the others stay off
    (``position``, ``bias``: the blocks' ``ModelConfig.se_position`` and ``se_bias``)."""
    if all(n == total for n, total in fired.values()):
        return " Every hidden unit of every SE block fires on some val image."
    counts = ", ".join(f"{name} {n} of {total}" for name, (n, total) in fired.items())
    text = f" **Hidden units of the SE blocks that fire on at least one val image: {counts}.** The others are dead ReLUs: "
    if bias:
        return text + ("weights and bias together keep them below zero for every squeezed input they are shown, "
                       "and a unit at zero gets no gradient to come back.")
    why = (" Here each block reads the average of a ReLU's output, which is never negative, so a unit whose "
           "weights are negative on the channels that carry signal is one of them." if position == "post_act" else "")
    return text + ("the blocks' 1×1 layers have no bias, so a hidden unit whose weights point away from every "
                   "squeezed input it is shown stays at zero, and a unit at zero gets no gradient to come back."
                   + why + " A block with no unit left has the gate sigmoid(0) = 0.5 on every channel.")


def reliability_figure(cal: dict, path: Path, n: int) -> None:
    b = pd.DataFrame(cal["bins"])
    fig, (ax, ax2) = plt.subplots(2, 1, figsize=(6, 7), dpi=110, height_ratios=[3, 1], sharex=True)
    width = b["upper"] - b["lower"]
    ok = b["count"] > 0
    ax.bar(b["lower"][ok], b["accuracy"][ok], width=width[ok], align="edge", color="tab:blue",
           edgecolor="white", label="accuracy in bin")
    ax.bar(b["lower"][ok], (b["confidence"] - b["accuracy"])[ok], bottom=b["accuracy"][ok], width=width[ok],
           align="edge", color="tab:red", alpha=0.35, label="gap to mean confidence")
    ax.plot([0, 1], [0, 1], "k--", lw=1, label="perfect calibration")
    ax.set_ylabel("accuracy")
    ax.set_title(f"Reliability diagram, best model, test split (n={n})\nECE = {cal['ece'] * 100:.2f}% (15 bins)")
    ax.legend(loc="upper left", fontsize=8)
    ax2.bar(b["lower"], b["count"], width=width, align="edge", color="0.5", edgecolor="white")
    ax2.set_yscale("log")
    ax2.set_ylabel("images (log)")
    ax2.set_xlabel("confidence (top-1 probability)")
    fig.tight_layout()
    save_figure(fig, path)


def worst_tracks_figure(images, labels, groups, pred, path: Path, frames: int = 10) -> None:
    """One row per track among the WORST_TRACKS with the most errors: evenly spaced frames of the physical
    sign, each titled with the class id the model read, and the row with the sign's class, its error count
    and its most common wrong reading."""
    wrong = pred != labels
    tracks, counts = np.unique(groups[wrong], return_counts=True)
    order = np.argsort(-counts, kind="stable")[:WORST_TRACKS]
    fig = plt.figure(figsize=(frames * 1.3, max(1, len(order)) * 1.9), dpi=110, layout="constrained")
    for sub, k in zip(np.atleast_1d(fig.subfigures(max(1, len(order)), 1)), order):
        idx = np.flatnonzero(groups == tracks[k])
        shown = idx[np.unique(np.linspace(0, len(idx) - 1, frames).astype(int))]
        axes = np.atleast_1d(sub.subplots(1, frames))
        for ax in axes:
            ax.axis("off")
        for ax, i in zip(axes, shown):
            ax.imshow(images[i], interpolation="nearest")
            ax.set_title(f"→ {pred[i]}", fontsize=7, color="tab:red" if wrong[i] else "black")
        true = labels[idx[0]]
        misread = np.bincount(pred[idx][wrong[idx]]).argmax()
        sub.suptitle(f"track {tracks[k]}: {true} {CLASS_NAMES[true]}, wrong on {counts[k]} of {len(idx)} frames, "
                     f"most often read as {misread} {CLASS_NAMES[misread]}", fontsize=8, x=0.01, ha="left")
    fig.suptitle(f"The {len(order)} val tracks with the most errors (the class id read on each frame; red: "
                 "wrong)", fontsize=10)
    save_figure(fig, path)


def misclassified_figure(images, labels, groups, probs, path: Path, count: int = 24) -> None:
    """The most confident mistakes, one per physical sign (track), so no sign fills the grid."""
    pred = probs.argmax(1)
    wrong = np.flatnonzero(pred != labels)
    wrong = wrong[np.argsort(-probs[wrong, pred[wrong]], kind="stable")]
    _, first = np.unique(groups[wrong], return_index=True)
    wrong = wrong[np.sort(first)][:count]
    cols = 6
    rows = max(1, int(np.ceil(len(wrong) / cols)))
    fig, axes = plt.subplots(rows, cols, figsize=(cols * 2.4, rows * 3.0), dpi=110, squeeze=False,
                             layout="constrained")
    for ax in axes.flat:
        ax.axis("off")
    for ax, i in zip(axes.flat, wrong):
        ax.imshow(images[i], interpolation="nearest")
        t = textwrap.shorten(CLASS_NAMES[labels[i]], 40, placeholder="…")
        p = textwrap.shorten(CLASS_NAMES[pred[i]], 40, placeholder="…")
        ax.set_title(f"true: {textwrap.fill(t, 24)}\npred: {textwrap.fill(p, 24)} ({probs[i, pred[i]]:.2f})",
                     fontsize=6.5)
    fig.suptitle(f"Most confident mistakes of the best model on the test split, one per physical sign "
                 f"({len(wrong)} of {int((pred != labels).sum())} errors)", fontsize=10)
    save_figure(fig, path)


def _train_splits(checkpoint: Path) -> list[str]:
    from gtsrb.checkpoint import load_checkpoint

    if not checkpoint.is_file():
        return []
    return list(load_checkpoint(checkpoint).get("train_config", {}).get("train_splits", ["train"]))


def tta_text(checkpoint: Path, data: Path) -> str:
    """Accuracy with and without test-time augmentation (Classifier.predict_tta), val and test splits."""
    from gtsrb.data import load_pack
    from gtsrb.evaluate import tta_comparison
    from gtsrb.inference import Classifier

    clf = Classifier.load(checkpoint)
    rows = []
    for split in ("val", "test"):
        p = load_pack(data, split)
        t = tta_comparison(clf, p.images, p.labels)
        rows.append([split, t["n"], f"{t['accuracy'] * 100:.2f}", f"{t['accuracy_tta'] * 100:.2f}", t["fixed"],
                     t["added"]])
    return (md_table(["split", "n", "accuracy %", "with TTA %", "errors TTA fixes", "errors TTA adds"], rows)
            + f"\n\nModel: `{checkpoint}`; TTA averages the probabilities of the image and its four one-pixel "
              f"shifts (`gtsrb evaluate --tta`, five forward passes). Same weights, so the counts are exact pairs.")


def release_text(m: dict, hist: list[dict], split: dict | None) -> str:
    """The release run (official protocol) from its metrics.json, and its split twin's scores."""
    from gtsrb.model import ModelConfig

    rel = m["release"]
    lines = [
        f"Command: `{m['command']}`: protocol `{m['protocol']}` (trains on the pack's "
        f"{', '.join(m['train_splits'])} splits: all {rel['n']:,} training images, nothing held out, last epoch "
        f"kept), {m['epochs']} epochs, seed {m['train_config']['seed']}; training {m['train_seconds'] / 60:.1f} min "
        f"({m['seconds_per_epoch']:.0f} s per epoch) on {machine_text(m['machine'])}, one run.",
        "",
        f"Config: {ModelConfig.from_dict(m['model_config']).describe()}; lr "
        f"{m['train_config']['lr']:.2e}, weight decay {m['train_config']['weight_decay']:.2e}, label smoothing "
        f"{m['train_config']['label_smoothing']}, class-aware mirror {m['train_config']['mirror']}.",
        "",
        f"Weights: {rel['weights']}, {rel['bytes'] / 1e6:.1f} MB. Loaded back into the fp32 model, the fp16 weights "
        f"change {rel['predictions_changed']} of {rel['n']:,} predictions on the pack (accuracy "
        f"{rel['accuracy_fp32'] * 100:.3f}% in fp32, {rel['accuracy_fp16'] * 100:.3f}% from fp16; every image "
        f"there was seen in training, so this measures rounding only).",
    ]
    if "official_test" in m:
        o = m["official_test"]
        lines += ["", f"Official GTSRB test set: accuracy {o['accuracy'] * 100:.2f}% (n={o['n']}), macro F1 "
                      f"{o['macro_f1']:.4f}."]
    else:
        lines += ["", "Official GTSRB test set: not on the development machine; scored independently "
                      "(`make evaluate-official` where there is internet)."]
    if split:
        lines += ["", f"Its twin on the train split alone (`results/best/split/`, same recipe, seed and epochs, "
                      f"{split['train_seconds'] / 60:.1f} min): "
                      + "; ".join(f"{k} accuracy {split[k]['accuracy'] * 100:.2f}% (n={split[k]['n']}), macro F1 "
                                  f"{split[k]['macro_f1']:.4f}" for k in ("val", "test") if k in split) + "."]
    if hist:
        lines += ["", md_table(["epoch", *[h["epoch"] for h in hist]],
                               [["train acc % (augmented batches)", *[f"{h['train_accuracy'] * 100:.1f}" for h in hist]],
                                ["s", *[f"{h['seconds']:.0f}" for h in hist]]])]
    return "\n".join(lines)


def best_run_text(m: dict, hist: list[dict]) -> str:
    """The train-best run from its metrics.json: command, budget, time, per-epoch val and the split scores."""
    from gtsrb.model import ModelConfig

    lines = [
        f"Command: `{m['command']}` ({m['epochs']} epochs, seed {m['train_config']['seed']}, full train split; "
        f"training {m['train_seconds'] / 60:.1f} min on {m['machine'].get('cpu', '?')}, "
        f"{m['machine'].get('cores', '?')} cores, one run).",
        "",
        f"Config: {ModelConfig.from_dict(m['model_config']).describe()}, lr {m['train_config']['lr']:.2e}, weight decay "
        f"{m['train_config']['weight_decay']:.2e}.",
        "",
        md_table(["split", "n", "accuracy %", "macro F1", "macro precision", "macro recall"],
                 [[k, m[k]["n"], f"{m[k]['accuracy'] * 100:.2f}", f"{m[k]['macro_f1']:.4f}",
                   f"{m[k]['macro_precision']:.4f}", f"{m[k]['macro_recall']:.4f}"]
                  for k in ("val", "test", "official_test") if k in m]),
        "",
        f"Best epoch {m['best_epoch']} (by val accuracy); its checkpoint is `results/best/best.pt`.",
    ]
    if hist:
        lines += ["", md_table(["epoch", *[h["epoch"] for h in hist]],
                               [["val acc %", *[f"{h['val_accuracy'] * 100:.1f}" for h in hist]]])]
    return "\n".join(lines)


def unsure_text(c: dict) -> str:
    """What results/best/calibration.json says the 'unsure' rule does on held-out data."""
    t = c["test"]
    return (f"Temperature {c['temperature']:.2f} (val NLL {c['nll_before']:.3f} → {c['nll_after']:.3f}) and "
            f"threshold {c['threshold']:.2f} on the calibrated top-1 probability (val predictions at or above it are "
            f"≥ {c['target_accuracy']:.0%} right), fitted on the val split of `{c['checkpoint']}`. On its track-split "
            f"test (n={t['n']}), \"unsure\" fires on **{t['unsure_rate']:.2%}** of images (low confidence "
            f"{t['low_confidence_rate']:.2%}, unlike the training data {t.get('unlike_training_rate', 0):.2%}); the "
            f"rest are **{t['accuracy_sure']:.2%}** right (all: {t['accuracy_all']:.2%}), and {t['errors_flagged']} "
            f"of its {t['errors']} errors are flagged. Command: `{c.get('command', 'make calibrate')}`.")
