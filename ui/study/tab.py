"""The Study tab's layout: for each part a heading, its chart or table, then the caption; the commands that
made the files last, in one collapsed section. Nothing here trains or loads a model (no torch)."""

from __future__ import annotations

import os
from pathlib import Path
from typing import NamedTuple

os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")

import altair as alt
import gradio as gr
import pandas as pd

from study.records import ablation_folder, find_studies
from ui.study.charts import ablation_chart, curves_chart, factors_chart
from ui.study.data import (
    MEASURE_BEST, MEASURES, ablation_bands, arm_order, common_epoch, factor_table, load_ablation, load_curves,
    load_profile, load_trials, show_path, trials_table,
)
from ui.study.text import (
    ablation_text,
    commands_text,
    curves_text,
    factors_text,
    intro_text,
    study_text,
)

HEADINGS = {"trials": "### Trials", "curves": "### Val accuracy per epoch",
            "factors": "### Effect of each searched factor",
            "ablation": "### SE ablation: does SE help, and does it converge faster?"}


class StudyView(NamedTuple):
    """What the tab shows for one study folder, in the order of its components."""

    table: pd.DataFrame
    caption: str  # under the table
    curves_chart: alt.Chart | None
    curves_text: str
    factors_chart: alt.Chart | None
    factors_text: str
    commands: str  # the study's part of the Commands section


class AblationView(NamedTuple):
    chart: alt.Chart | None
    text: str  # the per-arm table and its caption
    commands: str  # the ablation's part of the Commands section


def _failed(caption: str, folder: Path | None = None) -> StudyView:
    return StudyView(trials_table(pd.DataFrame()), caption, None, "", None, "", commands_text(folder))


def study_view(folder: Path | None, measure: str = MEASURE_BEST) -> StudyView:
    """Everything the tab shows for one study folder. Never raises on bad files: their notes go into the
    captions."""
    if folder is None:
        return _failed("No study found: `results/study/<name>/summary.csv` is missing (`make tune` writes it).")
    folder = Path(folder)
    trials, t_notes = load_trials(folder)
    curves, c_notes = load_curves(folder)
    profile, p_notes = load_profile(folder)
    epoch = common_epoch(curves, trials) if not trials.empty else None
    long = factor_table(trials, curves, measure)
    y_title = "best val accuracy" if measure == MEASURE_BEST else f"val accuracy at epoch {epoch}"
    return StudyView(trials_table(trials), study_text(folder, trials, t_notes + p_notes, profile),
                     curves_chart(curves, trials), curves_text(folder, curves, trials, c_notes),
                     factors_chart(long, measure, y_title), factors_text(trials, long, measure, epoch),
                     commands_text(folder, profile))


def ablation_view(folder: Path) -> AblationView:
    """The SE ablation's chart (the arms on the main split kind), its table and caption, and its commands."""
    runs, notes = load_ablation(folder)
    commands = commands_text(ablation=Path(folder), ablation_commands=sorted({c for c in runs.get("command", []) if c}))
    if runs.empty:
        return AblationView(None, ablation_text(folder, runs, [], notes), commands)
    kinds = runs.drop_duplicates(["arm", "seed"])["split_kind"]
    main_kind = "track" if (kinds == "track").any() else kinds.mode().iloc[0]
    shown_runs = runs[runs["split_kind"] == main_kind]
    arms = arm_order(shown_runs["arm"])
    return AblationView(ablation_chart(shown_runs, ablation_bands(shown_runs)),
                        ablation_text(folder, runs, arms, notes), commands)


def _study_or_note(folder: Path | None, measure: str) -> StudyView:
    try:
        return study_view(folder, measure)
    except Exception as e:  # noqa: BLE001 - an unforeseen bad file must not take the demo down
        return _failed(f"⚠ Cannot show `{folder}`: {type(e).__name__}: {e}", folder)


def build_study_tab(results: Path = Path("results")) -> None:
    """Lay out the Study tab inside the current ``gr.Blocks`` (under ``with gr.Tab("Study"):``)."""
    results = Path(results)
    studies = find_studies(results)
    by_name = {d.name: d for d in studies}
    first = studies[0] if studies else None
    abl_folder = ablation_folder(results)
    try:
        abl = ablation_view(abl_folder)
    except Exception as e:  # noqa: BLE001
        abl = AblationView(None, f"⚠ Cannot show `{abl_folder}`: {type(e).__name__}: {e}", "")

    def with_ablation(view: StudyView) -> StudyView:
        return view._replace(commands="\n\n".join(c for c in (view.commands, abl.commands) if c))

    view = with_ablation(_study_or_note(first, MEASURE_BEST))
    gr.Markdown(intro_text(results), elem_id="study-intro")
    with gr.Row():
        pick = gr.Dropdown(choices=list(by_name), value=first.name if first else None,
                           label=f"Study folder (`{show_path(results / 'study')}/<name>`, newest first)",
                           interactive=len(studies) > 1, elem_id="study-pick", scale=1)
    gr.Markdown(HEADINGS["trials"])
    table = gr.Dataframe(value=view.table, interactive=False, elem_id="study-trials", max_height=640,
                         show_label=False, wrap=False)
    study_md = gr.Markdown(view.caption, elem_id="study-source")
    gr.Markdown(HEADINGS["curves"])
    curves_plot = gr.Plot(value=view.curves_chart, show_label=False, elem_id="study-curves")
    curves_md = gr.Markdown(view.curves_text, elem_id="study-curves-text")
    gr.Markdown(HEADINGS["factors"])
    measure = gr.Radio(choices=list(MEASURES), value=MEASURE_BEST, label="Accuracy on the y axis",
                       elem_id="study-measure")
    factors_plot = gr.Plot(value=view.factors_chart, show_label=False, elem_id="study-factors")
    factors_md = gr.Markdown(view.factors_text, elem_id="study-factors-text")
    gr.Markdown(HEADINGS["ablation"])
    gr.Plot(value=abl.chart, show_label=False, elem_id="study-ablation")
    gr.Markdown(abl.text, elem_id="study-ablation-text")
    with gr.Accordion("Commands", open=False, elem_id="study-commands"):
        commands_md = gr.Markdown(view.commands, elem_id="study-commands-text")

    def update(name: str | None, how: str) -> StudyView:
        if name not in by_name:
            return with_ablation(_failed(f"⚠ No study `{name}` under `{show_path(results / 'study')}`."))
        return with_ablation(_study_or_note(by_name[name], how if how in MEASURES else MEASURE_BEST))

    outputs = [table, study_md, curves_plot, curves_md, factors_plot, factors_md, commands_md]
    pick.change(update, [pick, measure], outputs, api_visibility="private")
    measure.change(update, [pick, measure], outputs, api_visibility="private")
