"""Gradio demo: classify a traffic sign and show what the SE blocks did.

    python -m ui.app [--checkpoint results/best] [--host 127.0.0.1] [--port 7860]

All model work goes through ``gtsrb.inference`` and ``gtsrb.explain``; this
module only arranges the page. One named API endpoint, ``/predict``, takes an
image file and returns JSON (top-5, SE excitations against the class averages,
the SE-off counterfactual and the Grad-CAM map); the page draws its figures
from that same JSON.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import threading
from pathlib import Path

os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")

import gradio as gr  # noqa: E402
import numpy as np  # noqa: E402
from matplotlib import colormaps  # noqa: E402
from matplotlib.figure import Figure  # noqa: E402
from PIL import Image  # noqa: E402

from gtsrb.checkpoint import CheckpointError  # noqa: E402
from gtsrb.classes import CLASS_NAMES  # noqa: E402
from gtsrb.archive import DataError  # noqa: E402
from gtsrb.explain import EXCITATIONS_FILE, gradcam, gradcam_layer, load_excitations  # noqa: E402
from gtsrb.inference import Classifier, load_image  # noqa: E402
from gtsrb.util import sha256_file  # noqa: E402

DEFAULT_CHECKPOINT = Path("results/best")
EXAMPLES = Path(__file__).parent / "examples"
MAX_FILE_SIZE = "20mb"  # larger uploads are refused by the server before they reach the model
MAX_PIXELS = 40_000_000  # larger images are refused from their header, before decoding
TOP_K = 5


def resolve_checkpoint(path: str | os.PathLike) -> Path:
    """A checkpoint file, or a run folder holding best.pt; CheckpointError says how to get one."""
    path = Path(path)
    if path.is_dir():
        path = path / "best.pt"
    if not path.is_file():
        raise CheckpointError(
            f"{path}: no such checkpoint. Train one with `make train-best` (or `make train`, then "
            f"CKPT=runs/seed), or pass CKPT=path/to/best.pt")
    return path


def _top(probs: np.ndarray, k: int = TOP_K) -> list[dict]:
    order = np.argsort(-probs)[:k]
    return [{"class_id": int(c), "name": CLASS_NAMES[c], "probability": round(float(probs[c]), 6)} for c in order]


def describe_input(img: Image.Image) -> str:
    """What the page says about an unusual but readable image (empty when there is nothing to say)."""
    notes = []
    frames = getattr(img, "n_frames", 1)
    if getattr(img, "is_animated", False):
        notes.append(f"animated {img.format or 'image'} with {frames} frames: the first frame was classified")
    mode_notes = {"L": "grayscale", "LA": "grayscale with alpha", "1": "1-bit", "P": "palette",
                  "PA": "palette with alpha", "RGBA": "RGBA", "CMYK": "CMYK", "F": "32-bit float",
                  "I": "32-bit integer"}
    if img.mode.startswith("I;16"):
        notes.append("16-bit grayscale: scaled to 8 bits")
    elif img.mode in mode_notes:
        extra = "; transparent pixels became gray" if "A" in img.mode or "transparency" in img.info else ""
        notes.append(f"{mode_notes[img.mode]} image: converted to RGB{extra}")
    if img.getexif().get(0x0112, 1) != 1:
        notes.append("EXIF orientation tag: the photo was turned upright first")
    if max(img.size) > 28 * 8:
        notes.append(f"{img.width}x{img.height} px: resized to 28x28 as in training, so fine detail is lost")
    return "; ".join(notes)


class Demo:
    """The served checkpoint, its class-average excitations and model card."""

    def __init__(self, checkpoint: str | os.PathLike):
        self.path = resolve_checkpoint(checkpoint)
        self.clf = Classifier.load(self.path)
        self.sha256 = sha256_file(self.path)
        self.cam_stage, self.cam_layer = gradcam_layer(self.clf.model)
        self.stats, self.stats_note = self._load_stats()
        metrics = self.path.parent / "metrics.json"
        self.metrics = json.loads(metrics.read_text()) if metrics.is_file() else None
        self.lock = threading.Lock()  # hooks live on the shared model: one analysis at a time

    def _load_stats(self) -> tuple[dict | None, str]:
        f = self.path.parent / EXCITATIONS_FILE
        if not self.clf.se_names:
            return None, "this model has no SE blocks"
        if not f.is_file():
            return None, f"no {f} (make it with `gtsrb excitations {self.path} --data data/gtsrb28.h5`)"
        stats, meta = load_excitations(f)
        if meta["checkpoint_sha256"] != self.sha256:
            return None, f"{f} belongs to another checkpoint (sha256 differs): re-make it with `gtsrb excitations`"
        return stats, f"class averages from the {meta['source']}"

    # ---------------------------------------------------------------- the /predict API
    def analyse(self, file: str | None) -> dict:
        """Image file -> JSON-friendly prediction and explanation. Bad input raises gr.Error."""
        if file is None:
            raise _error("No image received: upload a traffic-sign image (PNG, JPEG, PPM, GIF, ...).")
        name = Path(file).name
        try:
            img = load_image(Path(file), max_pixels=MAX_PIXELS)
            note = describe_input(img)
            array = self.clf.preprocess(img)
        except DataError as e:
            raise _error(f"Cannot use this file. {_strip_dir(str(e), file, name)}") from None
        with self.lock:
            pred = self.clf.predict_arrays(array)
            with self.clf.se_disabled():
                off = self.clf.predict_arrays(array)
            top = int(pred.probs[0].argmax())
            cam = gradcam(self.clf.model, array[0], top, self.cam_layer)
        excitations = {}
        for stage, e in pred.excitations.items():
            row = {"values": np.round(e[0], 5).tolist()}
            if self.stats is not None and stage in self.stats:
                st = self.stats[stage]
                cls_mean, overall = st["class_mean"][top], st["overall_mean"]
                row.update({
                    "predicted_class_mean": np.round(cls_mean, 5).tolist(),
                    "all_classes_mean": np.round(overall, 5).tolist(),
                    "class_specificity": round(st["specificity"], 4),
                    "distance_to_predicted_class_mean": round(float(np.linalg.norm(e[0] - cls_mean)), 4),
                    "distance_to_all_classes_mean": round(float(np.linalg.norm(e[0] - overall)), 4),
                })
            excitations[stage] = row
        return {
            "file": name,
            "input_note": note,
            "prediction": _top(pred.probs[0], 1)[0],
            "top5": _top(pred.probs[0]),
            "se_off": {"prediction": _top(off.probs[0], 1)[0], "top5": _top(off.probs[0]),
                       "probability_of_se_on_class": round(float(off.probs[0, top]), 6)},
            "excitations": excitations,
            "gradcam": {"stage": self.cam_stage, "class_id": top, "heatmap": np.round(cam, 3).tolist()},
            "preprocessed": array[0].tolist(),
            "checkpoint_sha256": self.sha256,
        }

    # ---------------------------------------------------------------- page rendering
    def model_card(self) -> str:
        cfg, meta = self.clf.config, self.clf.meta
        data = meta.get("data", {})
        stages = ", ".join(str(i + 1) for i, s in enumerate(cfg.se_stages) if s) or "none"
        lines = [
            "### Model card",
            f"- **Checkpoint:** `{_shown_path(self.path)}` (epoch {meta.get('epoch', '?')})",
            f"- **sha256:** `{self.sha256}`",
            f"- **Architecture:** VGG-11 (config A) with batch norm, {cfg.image_size}×{cfg.image_size} input, "
            f"{cfg.num_classes} classes, trained from scratch",
            f"- **SE blocks:** in stage(s) {stages} of 5, form `{cfg.se_form}`, position `{cfg.se_position}`, "
            f"reduction {cfg.se_reduction}",
            f"- **Pooling:** {cfg.pool}; **dropout:** conv {cfg.conv_dropout:.2f}, "
            f"classifier {cfg.classifier_dropout:.2f}",
        ]
        source = Path(str(data.get("source", "?"))).name
        crop = "each image cropped to its annotated sign (ROI)" if data.get("roi") else "full frames"
        if "test" in meta.get("train_config", {}).get("train_splits", ["train"]):
            lines.append(f"- **Training data:** all of the GTSRB training archive (`{source}`), {crop}: GTSRB's "
                         "protocol, nothing held out (the example images below were seen in training)")
        else:
            lines.append(f"- **Training data:** GTSRB training archive (`{source}`), {crop}, split 64/16/20 by "
                         f"**{data.get('split_kind', '?')}** (seed {data.get('seed', '?')}): no physical sign "
                         "appears in two splits")
        if data.get("roi"):
            lines.append("- **Input:** trained on tight crops, so it reads a photo best when the sign fills the frame")
        if cfg.input_norm == "image":
            lines.append("- **Input normalisation:** per image (zero mean, unit variance), so lighting matters less")
        if self.metrics:
            for key, label in (("official_test", "Official GTSRB test set"), ("test", "Test split"), ("val", "Val split")):
                if key in self.metrics:
                    t = self.metrics[key]
                    lines.append(f"- **{label}:** accuracy {t['accuracy']:.2%}, macro F1 {t['macro_f1']:.3f} "
                                 f"(n={t['n']})")
            twin = self.path.parent / "split" / "metrics.json"
            if "test" not in self.metrics and twin.is_file():
                t = json.loads(twin.read_text())["test"]
                lines.append(f"- **Held-out estimate:** the same recipe trained on the track split's train part "
                             f"scores {t['accuracy']:.2%} on its test split (n={t['n']}; `results/best/split/`)")
            m = self.metrics.get("machine", "?")
            if isinstance(m, dict):
                m = f"{m.get('cpu', '?')} ({m.get('cores', '?')} cores), torch {m.get('torch', '?')}"
            lines.append(f"- **Trained:** {self.metrics.get('epochs', '?')} epochs in "
                         f"{self.metrics.get('train_seconds', 0) / 60:.0f} min on {m}")
        lines.append("- **Served in:** fp32, the same network and precision as the metrics above")
        lines.append(f"- **SE class averages:** {self.stats_note}")
        lines.append(f"- **Grad-CAM layer:** end of {self.cam_stage} (the deepest stage whose map is at least "
                     "4×4 at this input size)")
        return "\n".join(lines)

    def render(self, result: dict | None):
        """The /predict JSON -> (label, summary markdown, excitation figure, Grad-CAM figure)."""
        if not result:
            return None, "", None, None
        label = {f"{t['name']} (class {t['class_id']})": t["probability"] for t in result["top5"]}
        return label, summary_markdown(result), excitation_figure(result), gradcam_figure(result)


def _shown_path(path: Path) -> str:
    """Relative to the working folder where possible: the page should not show a home folder."""
    try:
        return str(path.resolve().relative_to(Path.cwd().resolve()))
    except ValueError:
        return str(path)


def _error(message: str) -> gr.Error:
    """An error the page shows for 20 s (and gradio_client raises with this message)."""
    return gr.Error(message, duration=20, print_exception=False)


def _strip_dir(message: str, file: str, name: str) -> str:
    """Gradio keeps uploads under a temp folder: show the user their file's name, not that path."""
    return message.replace(str(Path(file)), name)


def summary_markdown(r: dict) -> str:
    p, off = r["prediction"], r["se_off"]
    lines = [f"## {p['name']}", f"class {p['class_id']}, probability **{p['probability']:.1%}**"]
    if r.get("input_note"):
        lines.append(f"\n*Input:* {r['input_note']}.")
    same = off["prediction"]["class_id"] == p["class_id"]
    lines.append(
        f"\n**SE off** (every SE block replaced by the identity, same weights otherwise): "
        f"{off['prediction']['name']} at {off['prediction']['probability']:.1%}"
        + (" (the same class)" if same else f" (a different class; {p['name']} drops to "
           f"{off['probability_of_se_on_class']:.1%})")
        + ". The network was trained with SE on, so this shows how much it relies on the blocks' rescaling.")
    ex = r["excitations"]
    if ex and "class_specificity" in next(iter(ex.values())):
        lines.append("\n| SE block | class specificity η² (val) | distance to class avg | "
                     "distance to all-class avg |\n|---|---|---|---|")
        for stage, e in ex.items():
            lines.append(f"| {stage} | {e['class_specificity']:.2f} | "
                         f"{e['distance_to_predicted_class_mean']:.2f} | {e['distance_to_all_classes_mean']:.2f} |")
        lines.append("\nη² is the share of the block's excitation variance explained by the class on the "
                     "validation split: near 0 the block does the same for every sign, near 1 it is class-specific. "
                     "Hu et al. (2018) found early blocks class-agnostic and late ones class-specific.")
    return "\n".join(lines)


def excitation_figure(r: dict) -> Figure | None:
    ex = r["excitations"]
    if not ex:
        return None
    name = r["prediction"]["name"]
    fig = Figure(figsize=(9, 2.1 * len(ex) + 0.6), layout="constrained")
    axes = fig.subplots(len(ex), 1, squeeze=False)[:, 0]
    for ax, (stage, e) in zip(axes, ex.items()):
        values = np.asarray(e["values"])
        has_avg = "all_classes_mean" in e
        order = np.argsort(e["all_classes_mean"]) if has_avg else np.arange(len(values))
        x = np.arange(len(values))
        if has_avg:
            ax.plot(x, np.asarray(e["all_classes_mean"])[order], color="0.35", lw=1.4, zorder=3,
                    label="all classes (val avg)")
            ax.plot(x, np.asarray(e["predicted_class_mean"])[order], color="tab:blue", lw=1.2, zorder=2,
                    label=f"'{name}' (val avg)")
        # this image as dots under the two average lines, so neither hides the other
        ax.plot(x, values[order], color="tab:orange", ls="none", marker=".", ms=3, zorder=1, label="this image")
        title = f"{stage}: {len(values)} channels"
        if has_avg:
            title += f", class specificity η² = {e['class_specificity']:.2f}"
        ax.set_title(title, fontsize=10, loc="left")
        ax.set_ylabel("excitation", fontsize=9)
        ax.set_ylim(-0.02, 1.02)
        ax.set_xlim(-1, len(values))
        ax.tick_params(labelsize=8)
    axes[-1].set_xlabel("channel (sorted by the all-class average)" if "all_classes_mean" in next(iter(ex.values()))
                        else "channel", fontsize=9)
    axes[0].legend(fontsize=8, loc="upper left", ncols=3, frameon=False)
    fig.suptitle(f"SE excitations (sigmoid gate per channel) for '{name}'", fontsize=11)
    return fig


def gradcam_figure(r: dict) -> Figure:
    image = np.asarray(r["preprocessed"], dtype=np.uint8)
    cam = np.asarray(r["gradcam"]["heatmap"], dtype=np.float32)
    fig = Figure(figsize=(6, 3.2), layout="constrained")
    a, b = fig.subplots(1, 2)
    a.imshow(image, interpolation="nearest")
    a.set_title("what the network sees (28×28)", fontsize=9)
    b.imshow(image, interpolation="nearest")
    b.imshow(cam, cmap=colormaps["jet"], alpha=0.45, interpolation="bilinear", vmin=0, vmax=1)
    b.set_title(f"Grad-CAM ({r['gradcam']['stage']}) for\n'{r['prediction']['name']}'", fontsize=9)
    for ax in (a, b):
        ax.set_xticks([])
        ax.set_yticks([])
    return fig


def build_app(demo: Demo) -> gr.Blocks:
    examples = sorted(EXAMPLES.glob("*.png"))
    with gr.Blocks(title="SE-VGG11 on GTSRB") as app:
        gr.Markdown(
            "# SE-VGG11 traffic-sign classifier\n"
            "Upload a photo of a German traffic sign, or pick an example. The page shows the top-5 classes, "
            "what each squeeze-and-excitation (SE) block did to its channels, where the network looked, and "
            "what it predicts with the SE blocks switched off.")
        with gr.Row():
            with gr.Column(scale=1):
                file_in = gr.File(label="Traffic-sign image", file_count="single", type="filepath",
                                  elem_id="image-input")
                gallery = gr.Gallery(value=[str(p) for p in examples], label="Examples (GTSRB test split): click one",
                                     columns=4, height="auto", allow_preview=False, elem_id="examples")
            with gr.Column(scale=1):
                label = gr.Label(num_top_classes=TOP_K, label="Top-5 classes", elem_id="top5")
                summary = gr.Markdown(elem_id="summary")
        with gr.Row():
            # The figures carry their own titles: a floating label would cover them.
            excite_plot = gr.Plot(label="SE excitations", show_label=False, elem_id="se-plot")
        with gr.Row():
            cam_plot = gr.Plot(label="Grad-CAM", show_label=False, elem_id="gradcam-plot")
            gr.Markdown(demo.model_card(), elem_id="model-card")
        with gr.Accordion("Raw /predict output (JSON)", open=False):
            raw = gr.JSON(elem_id="raw-json")

        outputs = [raw, label, summary, excite_plot, cam_plot]

        def clear():  # old results never stay beside a new, failed upload
            return None, None, "", None, None

        def pick(evt: gr.SelectData):
            return str(examples[evt.index])

        # Upload: clear, analyse (the named /predict API), then draw from its JSON.
        file_in.upload(clear, None, outputs, api_visibility="private").then(
            demo.analyse, file_in, raw, api_name="predict").success(
            demo.render, raw, outputs[1:], api_visibility="private")
        gallery.select(pick, None, file_in, api_visibility="private").then(
            clear, None, outputs, api_visibility="private").then(
            demo.analyse, file_in, raw, api_visibility="private").success(
            demo.render, raw, outputs[1:], api_visibility="private")
        file_in.clear(clear, None, outputs, api_visibility="private")
    return app


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m ui.app", description=__doc__.split("\n\n")[0])
    p.add_argument("--checkpoint", default=str(DEFAULT_CHECKPOINT), help="checkpoint file or run folder")
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, default=7860)
    a = p.parse_args(argv)
    try:
        demo = Demo(a.checkpoint)
    except (CheckpointError, DataError, ValueError) as e:
        print(f"demo: error: {e}", file=sys.stderr)
        return 2
    app = build_app(demo)
    app.queue(default_concurrency_limit=1, max_size=256)
    app.launch(server_name=a.host, server_port=a.port, share=False, max_file_size=MAX_FILE_SIZE,
               show_error=True, allowed_paths=[str(EXAMPLES)])
    return 0


if __name__ == "__main__":
    sys.exit(main())
