"""Gradio demo: classify a traffic sign, say how sure it is, and show what the SE blocks did.

    python -m ui.app [--checkpoint results/best] [--host 127.0.0.1] [--port 7860] [--results results]

All model work goes through ``gtsrb.inference``, ``gtsrb.explain`` and
``gtsrb.calibrate``; this module builds the /predict result and arranges the page.
Beside it: ``ui.limits`` (what a request may be), ``ui.panels`` (the result
panels), ``ui.card`` (the model card), ``ui/page.md`` read by ``ui.prose`` (the
page's fixed prose) and ``ui.study`` (the Study tab). One named API
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
import json
import os
import sys
from pathlib import Path

os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")

import gradio as gr  # noqa: E402
import numpy as np  # noqa: E402
import torch  # noqa: E402
from PIL import Image  # noqa: E402
from starlette.middleware import Middleware  # noqa: E402

from gtsrb.archive import DataError  # noqa: E402
from gtsrb.calibrate import CALIBRATION_FILE, load_calibration, unsure_decision  # noqa: E402
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
from ui.card import calibration_note, model_card  # noqa: E402
from ui.limits import (  # noqa: E402
    EXAMPLES,
    MAX_FILE_SIZE,
    MAX_PIXELS,
    UPLOAD_LIFETIME_S,
    UPLOAD_SWEEP_S,
    RequestLimits,
    strip_dir,
    uploaded_file,
    user_error,
)
from ui.panels import (  # noqa: E402
    VIEW,
    chart_spec,
    excitation_chart,
    se_off_markdown,
    summary_markdown,
    top5_label,
    views_image,
)
from ui.prose import TEXT  # noqa: E402
from ui.study import build_study_tab  # noqa: E402

__all__ = ["CONCURRENCY", "MAX_QUEUE", "Demo", "build_app", "main", "server_address"]

REPO = Path(__file__).resolve().parents[1]
DEFAULT_CHECKPOINT = Path("results/best")
TOP_K = 5
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
        return c, calibration_note(c, own=c["checkpoint_sha256"] == self.sha256)

    # ---------------------------------------------------------------- the /predict API
    def read(self, payload) -> tuple[str, str, Image.Image, np.ndarray]:
        """An uploaded image -> (its name, a note on unusual input, the image, the 28x28 array); gr.Error if bad."""
        file = uploaded_file(payload)
        if file is None:
            raise user_error("No image received: upload a traffic-sign image (PNG, JPEG, PPM, GIF, ...).")
        try:
            img = load_image(file, max_pixels=MAX_PIXELS)
            return file.name, describe_input(img), img, self.clf.preprocess(img)
        except DataError as e:
            raise user_error(f"Cannot use this file. {strip_dir(str(e), str(file), file.name)}") from None

    def se_off(self, array: np.ndarray, blocks: list[str] | None, top: int) -> tuple[dict, dict | None]:
        """Two counterfactuals for the given SE blocks (None: all): each replaced by the identity, and each
        gate held at its average over the class averages' split (the learned scale stays, the per-image
        recalibration goes; None without class averages)."""
        if blocks is not None and not (isinstance(blocks, list) and all(isinstance(b, str) for b in blocks)):
            raise user_error(f"se_off: expected a list of SE block names such as {json.dumps(self.clf.se_names[:1])}, "
                         f"or null for all; got {json.dumps(blocks)[:60]}")
        try:
            with self.clf.se_disabled(blocks):  # None: every block; an unknown name is a ValueError
                off = self.clf.predict_arrays(array)
        except ValueError as e:
            raise user_error(f"se_off: {e}") from None
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
        """Calibrated top-1 probability, and the two 'unsure' rules (gtsrb.calibrate.unsure_decision)."""
        rules = {}
        if self.calibration is not None:
            rules.update(temperature=self.calibration["temperature"], threshold=self.calibration["threshold"])
        block = self.distance_block
        st = self.stats.get(block) if block else None
        if st is not None and "distance_q99" in st:
            d = float(class_mean_distance(excitations[block], st["class_mean"], np.array([top]))[0])
            rules.update(block=block, distance=d, distance_q99=st["distance_q99"])
        out = unsure_decision(logits, top, **rules)
        for key, digits in (("probability", 6), ("distance", 4), ("distance_q99", 4)):  # the JSON's precision
            if key in out:
                out[key] = round(out[key], digits)
        return out

    # ---------------------------------------------------------------- page rendering
    def page(self, image, se_off: list[str] | None, raw_open: bool = False):
        """The upload's one event: analyse, then every panel (the result kept on the server, the raw JSON when
        its panel is open, top-5, summary, SE off, chart, views)."""
        name, note, img, array = self.read(image)
        r = self._analyse(name, note, array, se_off)
        return (r, r if raw_open else gr.skip(), top5_label(r), summary_markdown(r),
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
        """The model card's markdown (ui.card)."""
        return model_card(self.path, self.sha256, self.clf.config, self.clf.meta, self.metrics,
                          self.calibration_note, self.stats_note, self.cam_stage)


def _composite(editor_value):
    """The crop editor's cropped image: its value's "composite" file (anything else goes to
    ``ui.limits.uploaded_file``, which refuses it clearly)."""
    return editor_value.get("composite") if isinstance(editor_value, dict) else editor_value


def _counterfactual(blocks: list[str], probs: np.ndarray, top: int) -> dict:
    return {"blocks": blocks, "prediction": _top(probs, 1)[0], "top5": _top(probs),
            "probability_of_se_on_class": round(float(probs[top]), 6)}


def build_app(demo: Demo, results: Path = REPO / "results") -> gr.Blocks:
    examples = sorted(EXAMPLES.glob("*.png"))
    blocks = demo.clf.se_names
    chart_spec()  # built once, before the first request
    with gr.Blocks(title="SE-VGG11 on GTSRB", delete_cache=(UPLOAD_SWEEP_S, UPLOAD_LIFETIME_S)) as app:
        gr.Markdown(TEXT["intro"])
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
        # preprocess=False: the handlers get the raw upload (see ui.limits.uploaded_file) and the raw list
        # of blocks, where an API call's null means every block.
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
