"""The demo's "Study" tab: the Ray Tune study and the SE ablation, drawn from the committed results/.

    with gr.Blocks() as app:
        with gr.Tab("Study"):
            build_study_tab(Path("results"))

Nothing here trains or loads a model (no torch). It reads, through ``study.records`` (the only part of
``study`` it imports), ``results/study/<name>/summary.csv``, ``curves.csv`` and ``profile.json`` (`make tune`)
and the SE ablation's ``<arm>-seed<k>.json`` records (``study.records.ablation_folder``: `make ablation`'s
``results/ablation-framed`` under the shipped recipe, else ``results/ablation``, else ``results/ablation-quick``).

- ``data.py``: the loaders (never raising on a bad file: a note instead) and the tables derived from them;
- ``charts.py``: the Altair (Vega-Lite) figures, drawn by the browser;
- ``text.py``: the captions' facts, put into words by the templates ``ui/text/study_*.md``;
- ``tab.py``: the views of one study folder and of the ablation, and the tab's layout.
"""

from study.records import ablation_folder, find_studies
from ui.study.data import (
    FACTORS, MEASURE_AT, MEASURE_BEST, MEASURES, Loaded, ablation_bands, common_epoch, factor_table,
    load_ablation, load_curves, load_profile, load_trials, trials_table,
)
from ui.study.tab import (
    AblationView,
    StudyView,
    ablation_view,
    build_study_tab,
    study_view,
)

__all__ = ["FACTORS", "MEASURES", "MEASURE_AT", "MEASURE_BEST", "AblationView", "Loaded", "StudyView",
           "ablation_bands", "ablation_folder", "ablation_view", "build_study_tab", "common_epoch", "factor_table",
           "find_studies", "load_ablation", "load_curves", "load_profile", "load_trials", "study_view",
           "trials_table"]
