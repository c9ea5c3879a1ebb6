"""Gradio demo: classify a traffic sign, say how sure it is, and show what the SE blocks did.

    python -m ui.app [--checkpoint results/best] [--host 127.0.0.1] [--port 7860] [--results results]

All model work goes through ``gtsrb.inference``, ``gtsrb.explain`` and
``gtsrb.calibrate``; this module only arranges the page. One named API
endpoint, ``/predict``, takes an image file and the SE blocks to switch off
(default: all) and returns JSON: the top-5, whether the model is unsure, the SE
excitations against the class averages, the SE-off counterfactual and the
Grad-CAM map. An upload runs ONE server event, which draws every panel: the
excitation chart is a Vega-Lite spec the browser draws, and the three views
(sent, seen, Grad-CAM) are one small image. The model is shared by concurrent
requests: its SE switches and excitation capture are per request
(``contextvars``) and Grad-CAM uses no hook, so nothing leaks between them.
``GRADIO_SERVER_NAME``/``GRADIO_SERVER_PORT`` apply unless --host/--port are given.
"""

from __future__ import annotations

import argparse
import functools
import json
import os
import sys
from pathlib import Path

os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")

import altair as alt  # noqa: E402
import gradio as gr  # noqa: E402
from gradio.components.plot import PlotData  # noqa: E402
from gradio.utils import get_upload_folder  # noqa: E402
from starlette.datastructures import Headers  # noqa: E402
from starlette.middleware import Middleware  # noqa: E402
from starlette.responses import JSONResponse  # noqa: E402
import numpy as np  # noqa: E402
import torch  # noqa: E402
from matplotlib import colormaps  # noqa: E402
from PIL import Image  # noqa: E402

from gtsrb.archive import DataError  # noqa: E402
from gtsrb.calibrate import CALIBRATION_FILE, load_calibration, softmax  # noqa: E402
from gtsrb.checkpoint import CheckpointError  # noqa: E402
from gtsrb.classes import CLASS_NAMES  # noqa: E402
from gtsrb.explain import (  # noqa: E402
    EXCITATIONS_FILE,
    class_mean_distance,
    distance_block,
    gradcam_layer,
    load_excitations,
)
from gtsrb.inference import Classifier, load_image  # noqa: E402
from gtsrb.util import sha256_file  # noqa: E402
from ui.study import build_study_tab  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
DEFAULT_CHECKPOINT = Path("results/best")
EXAMPLES = Path(__file__).parent / "examples"
MAX_FILE_SIZE = "20mb"  # larger uploads are refused by the server before they reach the model
MAX_PIXELS = 40_000_000  # larger images are refused from their header, before decoding (16-bit, alpha: 1/4)
# The JSON of an API call or a page event names uploaded files and SE blocks: a few kB. The bound keeps
# a payload that carries an image itself (a data URL) from being read into memory at all.
MAX_JSON_BYTES = 1 << 20
# One upload request: the crop editor sends its layers together, each at most MAX_FILE_SIZE.
MAX_UPLOAD_REQUEST_BYTES = 5 * 20 * 1024 * 1024
# Uploaded files are deleted this long after they arrive, checked this often (seconds): a page reads its
# upload again only while its SE toggles are used.
UPLOAD_LIFETIME_S, UPLOAD_SWEEP_S = 3600, 600
TOP_K = 5
VIEW = 224  # px: each of the three views (sent, seen, Grad-CAM)
CONCURRENCY = 2  # requests that run the model at once (one per core here)
MAX_QUEUE = 256  # requests that may wait in the queue; more are refused


def resolve_checkpoint(path: str | os.PathLike) -> Path:
    """A checkpoint file, or a run folder holding best.pt; CheckpointError says how to get one."""
    path = Path(path)
    if path.is_dir():
        path = path / "best.pt"
    if not path.is_file():
        raise CheckpointError(
            f"{path}: no such checkpoint. Train one with `make train-best` (or `make train`, then "
            f"CKPT=runs/train), or pass CKPT=path/to/best.pt")
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


def _file(payload) -> Path | None:
    """What an image input sends (events run with preprocess=False) -> the path of a file uploaded to this
    server, or of an example; None when nothing was sent; gr.Error for anything else.

    Skipping Gradio's preprocessing hands the uploaded file to the project's decoder untouched (PPM, 16-bit,
    EXIF, ...), which names a bad file clearly; gr.Image would open it with PIL first and fail with a
    generic error. It also skips Gradio's own checks of a payload without FileData's "meta" tag, so the
    path is checked here: only uploads (bounded by max_file_size) and the examples are read, never a
    data URL (an image inside the JSON, past the upload limit) or another file of the server's."""
    if payload is None:
        return None
    if isinstance(payload, dict) and not payload.get("path") and str(payload.get("url") or "").startswith("data:"):
        raise _error("A data URL is not accepted: send the image as an uploaded file "
                     "(the upload box, or gradio_client's handle_file on a local file).")
    path = payload.get("path") if isinstance(payload, dict) else payload
    if not isinstance(path, str) or not path:
        raise _error(f"Expected an uploaded image file (FileData with a path), got {type(payload).__name__} "
                     f"{json.dumps(payload)[:60]}.")
    resolved = Path(path).resolve()
    if not any(resolved.is_relative_to(Path(d).resolve()) for d in (get_upload_folder(), EXAMPLES)):
        raise _error(f"{Path(path).name}: not a file uploaded to this server; upload the image first "
                     "(the upload box, or gradio_client's handle_file on a local file).")
    return resolved


class Demo:
    """The served checkpoint, its class-average excitations, calibration and model card."""

    def __init__(self, checkpoint: str | os.PathLike):
        self.path = resolve_checkpoint(checkpoint)
        self.clf = Classifier.load(self.path)
        self.sha256 = sha256_file(self.path)
        self.cam_stage, self.cam_layer = gradcam_layer(self.clf.model)
        self.stats, self.stats_note = self._load_stats()
        # The block the "unlike the training data" rule reads: fixed by the class averages, so chosen once.
        self.distance_block = distance_block(self.stats) if self.stats else None
        self.calibration, self.calibration_note = self._load_calibration()
        metrics = self.path.parent / "metrics.json"
        self.metrics = json.loads(metrics.read_text()) if metrics.is_file() else None

    def _load_stats(self) -> tuple[dict | None, str]:
        f = self.path.parent / EXCITATIONS_FILE
        if not self.clf.se_names:
            return None, "this model has no SE blocks"
        if not f.is_file():
            return None, f"no {f} (make it with `gtsrb excitations {self.path} --data data/gtsrb28-roi.h5`)"
        stats, meta = load_excitations(f)
        if meta["checkpoint_sha256"] != self.sha256:
            return None, f"{f} belongs to another checkpoint (sha256 differs): re-make it with `gtsrb excitations`"
        return stats, f"class averages from the {meta['source']}"

    def _load_calibration(self) -> tuple[dict | None, str]:
        f = self.path.parent / CALIBRATION_FILE
        if not f.is_file():
            return None, f"none (no {f.name} beside the checkpoint; make one with `gtsrb calibrate`)"
        c = load_calibration(f)
        own = c["checkpoint_sha256"] == self.sha256
        source = "this checkpoint" if own else f"`{c['checkpoint']}` (same recipe, trained on the train split alone)"
        t = c["test"]
        rest = "none were left" if t["accuracy_sure"] is None else f"the rest were {t['accuracy_sure']:.2%} right"
        return c, (f"temperature {c['temperature']:.2f} and threshold {c['threshold']:.2f} fitted on the val split "
                   f"of {source}; there, on the test split (n={t['n']}), 'unsure' fired on {t['unsure_rate']:.1%} "
                   f"of images and {rest}")

    # ---------------------------------------------------------------- the /predict API
    def read(self, payload) -> tuple[str, str, Image.Image, np.ndarray]:
        """An uploaded image -> (its name, a note on unusual input, the image, the 28x28 array); gr.Error if bad."""
        file = _file(payload)
        if file is None:
            raise _error("No image received: upload a traffic-sign image (PNG, JPEG, PPM, GIF, ...).")
        try:
            img = load_image(file, max_pixels=MAX_PIXELS)
            return file.name, describe_input(img), img, self.clf.preprocess(img)
        except DataError as e:
            raise _error(f"Cannot use this file. {_strip_dir(str(e), str(file), file.name)}") from None

    def se_off(self, array: np.ndarray, blocks: list[str] | None, top: int) -> tuple[dict, dict | None]:
        """Two counterfactuals for the given SE blocks (None: all): each replaced by the identity, and each
        gate held at its average over the class averages' split (the learned scale stays, the per-image
        recalibration goes; None without class averages)."""
        if blocks is not None and not (isinstance(blocks, list) and all(isinstance(b, str) for b in blocks)):
            raise _error(f"se_off: expected a list of SE block names such as {json.dumps(self.clf.se_names[:1])}, "
                         f"or null for all; got {json.dumps(blocks)[:60]}")
        try:
            with self.clf.se_disabled(blocks):  # None: every block; an unknown name is a ValueError
                off = self.clf.predict_arrays(array)
        except ValueError as e:
            raise _error(f"se_off: {e}") from None
        blocks = [b for b in self.clf.se_names if blocks is None or b in blocks]  # in the model's order
        held = None
        if self.stats is not None:
            with self.clf.se_held({b: self.stats[b]["overall_mean"] for b in blocks}):
                held = self.clf.predict_arrays(array)
        return (_counterfactual(blocks, off.probs[0], top),
                None if held is None else _counterfactual(blocks, held.probs[0], top))

    def analyse(self, image, se_off: list[str] | None = None) -> dict:
        """Image file (+ SE blocks to switch off, default all) -> JSON-friendly prediction and explanation."""
        name, note, _img, array = self.read(image)
        return self._analyse(name, note, array, se_off)

    def _analyse(self, name: str, note: str, array: np.ndarray, se_off: list[str] | None) -> dict:
        pred, cam = self.clf.predict_with_gradcam(array, self.cam_layer)
        top = int(pred.probs[0].argmax())
        off, held = self.se_off(array, se_off, top)
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
            "confidence": self.confidence(pred.logits[0], pred.excitations, top),
            "se_off": off,
            "se_held": held,
            "excitations": excitations,
            "gradcam": {"stage": self.cam_stage, "class_id": top, "heatmap": np.round(cam, 3).tolist()},
            "preprocessed": array[0].tolist(),
            "checkpoint_sha256": self.sha256,
        }

    def confidence(self, logits: np.ndarray, excitations: dict[str, np.ndarray], top: int) -> dict:
        """Calibrated top-1 probability, and the two 'unsure' rules (gtsrb.calibrate)."""
        out: dict = {"calibrated": self.calibration is not None, "reasons": []}
        if self.calibration is not None:
            t, tau = float(self.calibration["temperature"]), float(self.calibration["threshold"])
            p = float(softmax(logits[None], t)[0, top])
            out.update({"temperature": t, "threshold": tau, "probability": round(p, 6), "low": p < tau})
            if p < tau:
                out["reasons"].append(f"calibrated probability {p:.1%} is below the threshold {tau:.1%}")
        block = self.distance_block
        st = self.stats.get(block) if block else None
        if st is not None and "distance_q99" in st:
            d = float(class_mean_distance(excitations[block], st["class_mean"], np.array([top]))[0])
            out.update({"distance_block": block, "distance": round(d, 4), "distance_q99": round(st["distance_q99"], 4),
                        "unlike_training": d > st["distance_q99"]})
            if d > st["distance_q99"]:
                out["reasons"].append(f"its {block} excitation is farther from the class average ({d:.2f}) than "
                                      f"99% of validation images ({st['distance_q99']:.2f}): unlike the training data")
        out["unsure"] = bool(out["reasons"])
        return out

    # ---------------------------------------------------------------- page rendering
    def page(self, image, se_off: list[str] | None, raw_open: bool = False):
        """The upload's one event: analyse, then every panel (the result kept on the server, the raw JSON when
        its panel is open, top-5, summary, SE off, chart, views)."""
        name, note, img, array = self.read(image)
        r = self._analyse(name, note, array, se_off)
        label = {f"{t['name']} (class {t['class_id']})": t["probability"] for t in r["top5"]}
        return (r, r if raw_open else gr.skip(), label, summary_markdown(r),
                se_off_markdown(r["prediction"], r["se_off"], r["se_held"]), excitation_chart(r), views_image(img, r))

    def page_se_off(self, image, se_off: list[str] | None) -> str:
        """A toggle changed: only the SE-off panel is recomputed."""
        if image is None:
            return ""
        _name, _note, _img, array = self.read(image)
        pred = self.clf.predict_arrays(array)
        top = int(pred.probs[0].argmax())
        return se_off_markdown(_top(pred.probs[0], 1)[0], *self.se_off(array, se_off, top))

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
        lines.append(f"- **Calibration ('unsure'):** {self.calibration_note}")
        lines.append(f"- **SE class averages:** {self.stats_note}")
        lines.append(f"- **Grad-CAM layer:** end of {self.cam_stage} (the deepest stage whose map is at least "
                     "4×4 at this input size)")
        return "\n".join(lines)


def _composite(editor_value):
    """The crop editor's cropped image: its value's "composite" file (anything else goes to ``_file``,
    which refuses it clearly)."""
    return editor_value.get("composite") if isinstance(editor_value, dict) else editor_value


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
    p, c = r["prediction"], r["confidence"]
    if c["unsure"]:
        top3 = ", ".join(f"{t['name']} ({t['probability']:.0%})" for t in r["top5"][:3])
        lines = [f"## Unsure: {p['name']}?", f"The model is not sure. Its top 3: {top3}."]
    else:
        lines = [f"## {p['name']}"]
    prob = f"class {p['class_id']}, model probability **{p['probability']:.1%}**"
    if c.get("calibrated"):
        prob += f", calibrated **{c['probability']:.1%}** (unsure below {c['threshold']:.0%})"
    lines.append(prob)
    if c["unsure"]:
        lines.append("\n*Why unsure:* " + "; ".join(c["reasons"]) + ".")
    lines.append(f"\n*File:* `{r['file']}`")
    if r.get("input_note"):
        lines.append(f"\n*Input:* {r['input_note']}.")
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


def _counterfactual(blocks: list[str], probs: np.ndarray, top: int) -> dict:
    return {"blocks": blocks, "prediction": _top(probs, 1)[0], "top5": _top(probs),
            "probability_of_se_on_class": round(float(probs[top]), 6)}


def se_off_markdown(on: dict, off: dict, held: dict | None) -> str:
    if not off["blocks"]:
        return "**SE off:** no block switched off; tick one or more above."

    def answer(r: dict) -> str:
        same = r["prediction"]["class_id"] == on["class_id"]
        return (f"{r['prediction']['name']} at {r['prediction']['probability']:.1%}"
                + (" (the same class)" if same else f" (a different class; {on['name']} drops to "
                   f"{r['probability_of_se_on_class']:.1%})"))

    text = f"**SE off** ({', '.join(off['blocks'])} replaced by the identity, same weights otherwise): {answer(off)}."
    if held is None:
        return text + " The network was trained with SE on, so this shows how much it relies on the blocks' rescaling."
    return text + ("\n\n**SE held at its average** (each gate fixed at its mean over the validation images, so "
                   f"the learned scale stays and only the per-image recalibration goes): {answer(held)}.\n\n"
                   "The network was trained with SE on: the identity shows how much it relies on the blocks' "
                   "rescaling, the held gates what the per-image part of it adds.")


SERIES = ("this image", "all classes (val avg)", "predicted class (val avg)")


@functools.cache
def _chart_spec() -> str:
    """The excitation chart's Vega-Lite spec, built and validated by Altair once; each request only fills
    in its rows and title (Altair's validation costs 100+ ms a call). Rows come in long form, one per
    (block, channel, series), so the browser runs no transform but a filter."""
    x = alt.X("x:Q", title="channel (sorted by the all-class average)", axis=alt.Axis(labels=False, ticks=False))
    y = alt.Y("v:Q", title="excitation", scale=alt.Scale(domain=[0, 1]))
    color = alt.Color("s:N", legend=alt.Legend(orient="top", title=None),
                      scale=alt.Scale(domain=list(SERIES), range=["#ff7f0e", "#555555", "#1f77b4"]))
    dots = alt.Chart().mark_point(filled=True, size=12).encode(x, y, color).transform_filter(
        f"datum.s == '{SERIES[0]}'")
    lines = alt.Chart().mark_line(strokeWidth=1.5).encode(x, y, color).transform_filter(
        f"datum.s != '{SERIES[0]}'")
    chart = (alt.layer(dots, lines, data=alt.Data(name="rows")).properties(width=720, height=110)
             .facet(row=alt.Row("b:N", title=None, sort=None)).resolve_scale(x="independent")
             .properties(title="TITLE"))
    return chart.to_json()


def excitation_chart(r: dict) -> PlotData | None:
    """Per SE block: this image's channel gates (dots) against the predicted class's and all classes'
    val averages (lines), channels sorted by the all-class average. A Vega-Lite spec the browser draws."""
    ex = r["excitations"]
    if not ex:
        return None
    rows = []
    for stage, e in ex.items():
        values = np.asarray(e["values"])
        has_avg = "all_classes_mean" in e
        order = np.argsort(e["all_classes_mean"], kind="stable") if has_avg else np.arange(len(values))
        block = f"{stage}: {len(values)} channels" + (f", η² = {e['class_specificity']:.2f}" if has_avg else "")
        series = [values] + ([e["all_classes_mean"], e["predicted_class_mean"]] if has_avg else [])
        for label, v in zip(SERIES, series):
            rows += [{"b": block, "s": label, "x": j, "v": y}
                     for j, y in enumerate(np.round(np.asarray(v)[order], 3).tolist())]
    spec = json.loads(_chart_spec())
    spec["title"] = f"SE excitations (sigmoid gate per channel) for '{r['prediction']['name']}'"
    spec["datasets"] = {"rows": rows}
    spec["data"] = {"name": "rows"}
    return PlotData(type="altair", plot=json.dumps(spec, separators=(",", ":")))


JET = (colormaps["jet"](np.linspace(0, 1, 256))[:, :3] * 255).astype(np.uint8)


def views_image(img: Image.Image, r: dict) -> np.ndarray:
    """Three VIEW x VIEW panels: the image as sent (aspect kept), the 28x28 the network saw, and Grad-CAM on it."""
    sent = Image.new("RGB", (VIEW, VIEW), (255, 255, 255))
    scale = VIEW / max(img.size)
    size = (max(1, round(img.width * scale)), max(1, round(img.height * scale)))
    # small images are enlarged pixel by pixel, so the tester sees what was sent, not a smoothed copy
    shown = img.convert("RGB").resize(size, Image.Resampling.NEAREST if scale > 1 else Image.Resampling.BILINEAR)
    sent.paste(shown, ((VIEW - shown.width) // 2, (VIEW - shown.height) // 2))
    seen = np.asarray(r["preprocessed"], dtype=np.uint8)
    cam = JET[(np.asarray(r["gradcam"]["heatmap"]) * 255).astype(np.uint8)]
    overlay = (0.55 * seen + 0.45 * cam).astype(np.uint8)
    k = VIEW // seen.shape[0]
    big = [np.kron(a, np.ones((k, k, 1), np.uint8)) for a in (seen, overlay)]
    big = [np.pad(a, ((0, VIEW - a.shape[0]), (0, VIEW - a.shape[1]), (0, 0)), constant_values=255) for a in big]
    gap = np.full((VIEW, 8, 3), 255, np.uint8)
    return np.concatenate([np.asarray(sent), gap, big[0], gap, big[1]], axis=1)


def build_app(demo: Demo, results: Path = REPO / "results") -> gr.Blocks:
    examples = sorted(EXAMPLES.glob("*.png"))
    blocks = demo.clf.se_names
    _chart_spec()  # built once, before the first request
    with gr.Blocks(title="SE-VGG11 on GTSRB", delete_cache=(UPLOAD_SWEEP_S, UPLOAD_LIFETIME_S)) as app:
        gr.Markdown(
            "# SE-VGG11 traffic-sign classifier\n"
            "Upload, paste or photograph a German traffic sign, or pick an example. The page shows the top-5, "
            "whether the model is sure, what each squeeze-and-excitation (SE) block did to its channels, where "
            "the network looked, and what it predicts with SE blocks switched off. **Crop to the sign:** the "
            "model was trained on tight crops, so use *Crop to the sign* below when the sign is small in a photo.")
        with gr.Tab("Classify"):
            with gr.Row():
                with gr.Column(scale=1):
                    image_in = gr.Image(label="Traffic-sign image (upload, paste or webcam)", type="filepath",
                                           sources=["upload", "clipboard", "webcam"], elem_id="image-input",
                                           height=280)
                    with gr.Accordion("Crop to the sign", open=False):
                        editor = gr.ImageEditor(label="Upload, crop (the crop tool), then Classify the crop",
                                                type="filepath", transforms=("crop",),
                                                sources=["upload", "clipboard"], elem_id="crop-editor")
                        # (brush=False or eraser=False makes Gradio 6.31's editor throw in the browser)
                        crop_btn = gr.Button("Classify the crop", elem_id="crop-button")
                    gallery = gr.Gallery(value=[str(p) for p in examples],
                                         label="Examples (GTSRB test split): click one", columns=4, height="auto",
                                         allow_preview=False, elem_id="examples")
                with gr.Column(scale=1):
                    label = gr.Label(num_top_classes=TOP_K, label="Top-5 classes", elem_id="top5")
                    summary = gr.Markdown(elem_id="summary")
            views = gr.Image(label="Sent | what the network saw (28×28) | Grad-CAM of the top class",
                             type="numpy", format="png", interactive=False, elem_id="views", height=VIEW + 40)
            with gr.Row():
                switches = gr.CheckboxGroup(choices=blocks, value=blocks, label="SE blocks switched off",
                                         info="Each ticked block is replaced by the identity, then held at its average gate.",
                                         elem_id="se-switches", visible=bool(blocks))
            se_off = gr.Markdown(elem_id="se-off")
            excite_plot = gr.Plot(label="SE excitations", show_label=False, elem_id="se-plot", visible=bool(blocks))
            gr.Markdown(demo.model_card(), elem_id="model-card")
            # The raw JSON is sent only while its panel is open: drawing ~4,000 values costs the browser
            # more than every other panel together.
            with gr.Accordion("Raw /predict output (JSON)", open=False, elem_id="raw-panel") as raw_panel:
                raw = gr.JSON(elem_id="raw-json")
            last, raw_open = gr.State(), gr.State(False)
        with gr.Tab("Study"):
            build_study_tab(results)

        outputs = [last, raw, label, summary, se_off, excite_plot, views]
        shown = outputs[1:]
        clear_js = "() => [null, {}, '', '', null, null]"  # in the browser, no server round trip; gr.Label's empty value is {}
        # preprocess=False: the handlers get the raw upload (see _file) and the raw list of blocks, where
        # an API call's null means every block.
        run = dict(concurrency_id="model", concurrency_limit=CONCURRENCY, api_visibility="private",
                   preprocess=False)

        def example(evt: gr.SelectData, off, is_open):
            path = str(examples[evt.index])
            return path, *demo.page(path, off, is_open)

        # One server event per upload: old results are cleared in the browser first, so they never
        # stay beside a failed upload.
        image_in.upload(None, None, shown, js=clear_js)
        image_in.upload(demo.page, [image_in, switches, raw_open], outputs, **run)
        image_in.clear(None, None, shown, js=clear_js)
        gallery.select(example, [switches, raw_open], [image_in, *outputs], **run)
        crop_btn.click(lambda value, off, is_open: demo.page(_composite(value), off, is_open),
                       [editor, switches, raw_open], outputs, **run)
        raw_panel.expand(lambda r: (True, r), last, [raw_open, raw], api_visibility="private")
        raw_panel.collapse(lambda: False, None, raw_open, api_visibility="private")
        switches.change(demo.page_se_off, [image_in, switches], se_off, **run)
        # The API: the same analysis as JSON (the page's own events are private).
        gr.Button(visible=False).click(demo.analyse, [image_in, switches], raw, api_name="predict", preprocess=False,
                                       concurrency_id="model", concurrency_limit=CONCURRENCY)
    return app


class RequestLimits:
    """ASGI middleware in front of Gradio's routes: every request body is bounded, and no file in a
    payload may be a URL.

    Files come in as multipart uploads (``/upload``, and the crop editor's layers through
    ``/component_server``): Gradio bounds each file by ``max_file_size``, this the whole request by
    MAX_UPLOAD_REQUEST_BYTES. Every other POST is JSON naming uploaded files: it is read here, at most
    MAX_JSON_BYTES of it, so an image sent inside the JSON (a data URL) is refused before it is in
    memory, and so is a file whose path is a URL, which Gradio would download before any handler ran."""

    def __init__(self, app):
        self.app = app

    async def __call__(self, scope, receive, send) -> None:
        if scope["type"] != "http" or scope["method"] != "POST":
            return await self.app(scope, receive, send)
        headers = Headers(scope=scope)
        multipart = headers.get("content-type", "").startswith("multipart/form-data")
        upload = multipart and scope["path"].rstrip("/").endswith(("/upload", "/component_server"))
        limit = MAX_UPLOAD_REQUEST_BYTES if upload else MAX_JSON_BYTES
        length = headers.get("content-length")
        if length is not None and (not length.isdigit() or int(length) > limit):
            return await _refusal(413, f"request body of {length} bytes; the limit is {limit} bytes"
                                  + ("" if upload else " (send images as uploaded files, not inside the JSON)")
                                  )(scope, receive, send)
        if upload:
            return await self.app(scope, receive, send)
        body = bytearray()
        while True:
            message = await receive()
            if message["type"] != "http.request":
                return  # the client went away
            body += message.get("body", b"")
            if len(body) > limit:
                return await _refusal(413, f"request body over {limit} bytes (send images as uploaded "
                                      "files, not inside the JSON)")(scope, receive, send)
            if not message.get("more_body", False):
                break
        problem = _url_as_file(bytes(body))
        if problem:
            return await _refusal(400, problem)(scope, receive, send)
        replayed = False

        async def replay():
            nonlocal replayed
            if replayed:
                return await receive()  # after the body: the disconnect Gradio waits for
            replayed = True
            return {"type": "http.request", "body": bytes(body), "more_body": False}

        return await self.app(scope, replay, send)


def _url_as_file(body: bytes) -> str | None:
    """What is wrong with a JSON body that has a URL where a file's path should be, or None."""
    try:
        data = json.loads(body)
    except ValueError:
        return None  # not JSON: Gradio refuses it itself
    except RecursionError:
        return "request body: JSON nested too deep"
    stack = [data]
    while stack:
        value = stack.pop()
        if isinstance(value, dict):
            path = value.get("path")
            if isinstance(path, str) and path.lower().startswith(("http://", "https://", "data:")):
                return (f"file path {path[:80]!r}: a URL is not accepted; upload the image file "
                        "(POST /gradio_api/upload, or gradio_client's handle_file on a local file)")
            stack.extend(value.values())
        elif isinstance(value, list):
            stack.extend(value)
    return None


def _refusal(status: int, detail: str) -> JSONResponse:
    return JSONResponse({"detail": detail}, status_code=status)


def server_address(host: str | None, port: int | None) -> tuple[str, int]:
    """--host/--port when given, else GRADIO_SERVER_NAME/GRADIO_SERVER_PORT, else 127.0.0.1:7860."""
    host = host or os.environ.get("GRADIO_SERVER_NAME") or "127.0.0.1"
    if port is None:
        raw = os.environ.get("GRADIO_SERVER_PORT", "7860")
        try:
            port = int(raw)
        except ValueError:
            raise ValueError(f"GRADIO_SERVER_PORT={raw!r}: expected a port number") from None
    if not 0 < port < 65536:
        raise ValueError(f"port {port}: expected 1 to 65535")
    return host, port


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m ui.app", description=__doc__.split("\n\n")[0])
    p.add_argument("--checkpoint", default=str(DEFAULT_CHECKPOINT), help="checkpoint file or run folder")
    p.add_argument("--host", help="default: $GRADIO_SERVER_NAME, else 127.0.0.1")
    p.add_argument("--port", type=int, help="default: $GRADIO_SERVER_PORT, else 7860")
    p.add_argument("--results", type=Path, default=REPO / "results", help="what the Study tab reads")
    a = p.parse_args(argv)
    try:
        host, port = server_address(a.host, a.port)
        demo = Demo(a.checkpoint)
    except (CheckpointError, DataError, ValueError) as e:
        print(f"demo: error: {e}", file=sys.stderr)
        return 2
    torch.set_num_threads(1)  # at batch 1 one thread is as fast as two, so concurrent requests each get a core
    app = build_app(demo, a.results)
    app.queue(default_concurrency_limit=CONCURRENCY, max_size=MAX_QUEUE)
    app.launch(server_name=host, server_port=port, share=False, max_file_size=MAX_FILE_SIZE,
               show_error=True, allowed_paths=[str(EXAMPLES)],
               app_kwargs={"middleware": [Middleware(RequestLimits)]})
    return 0


if __name__ == "__main__":
    sys.exit(main())
