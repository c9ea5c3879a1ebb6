"""The Classify tab's result panels, drawn from one /predict result (``ui.app.Demo.analyse``): the top-5
label, the summary, the SE-off text, the excitation chart and the three views. Pure functions of that
result (and, for the views, the image as sent): no model runs here."""

from __future__ import annotations

import functools
import json

import altair as alt
import numpy as np
from gradio.components.plot import PlotData
from matplotlib import colormaps
from PIL import Image

from ui.prose import TEXT

VIEW = 224  # px: each of the three views (sent, seen, Grad-CAM)
SERIES = ("this image", "all classes (val avg)", "predicted class (val avg)")
JET = (colormaps["jet"](np.linspace(0, 1, 256))[:, :3] * 255).astype(np.uint8)


def top5_label(r: dict) -> dict[str, float]:
    """What gr.Label shows: "name (class id)" -> probability."""
    return {f"{t['name']} (class {t['class_id']})": t["probability"] for t in r["top5"]}


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
        lines.append("\n" + TEXT["specificity"])
    return "\n".join(lines)


def se_off_markdown(on: dict, off: dict, held: dict | None) -> str:
    """The SE-off panel: the prediction with the ticked blocks replaced by the identity (``off``) and, with
    class averages, held at their average gate (``held``), against the SE-on prediction ``on``."""
    if not off["blocks"]:
        return TEXT["se-off-none"]

    def answer(r: dict) -> str:
        same = r["prediction"]["class_id"] == on["class_id"]
        return (f"{r['prediction']['name']} at {r['prediction']['probability']:.1%}"
                + (" (the same class)" if same else f" (a different class; {on['name']} drops to "
                   f"{r['probability_of_se_on_class']:.1%})"))

    text = f"**SE off** ({', '.join(off['blocks'])} replaced by the identity, same weights otherwise): {answer(off)}."
    if held is None:
        return text + " " + TEXT["se-off-identity"]
    return (text + "\n\n**SE held at its average** (each gate fixed at its mean over the validation images, so "
            f"the learned scale stays and only the per-image recalibration goes): {answer(held)}.\n\n"
            + TEXT["se-off-both"])


@functools.cache
def chart_spec() -> str:
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
    spec = json.loads(chart_spec())
    spec["title"] = f"SE excitations (sigmoid gate per channel) for '{r['prediction']['name']}'"
    spec["datasets"] = {"rows": rows}
    spec["data"] = {"name": "rows"}
    return PlotData(type="altair", plot=json.dumps(spec, separators=(",", ":")))


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
