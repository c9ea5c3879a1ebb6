"""The one place that knows the stored results: where each kind lives, what it holds (its schema, as
dataclasses and column tables), and how it is read and written. `make report` (``study.report``), the
study commands and the demo's Study tab (``ui/study/``) all read and write through it.

- a study's folder, ``results/study/<name>`` (`make tune`): its profile.json, Ray's trial files, the
  summaries summary.csv, curves.csv and best_config.json, and the search space as plain data (``trials.py``);
- the SE ablation's records ``results/ablation*/<arm>-seed<k>.json`` and the recipe ablation's
  ``results/recipe/<name>/<arm>-seed<k>.json`` and ``<arm>-fold<k>.json``, the arms' names and colours
  (``runs.py``);
- reading and writing any of them, the fields every run record carries (``command``, ``machine``) and how a
  mean ± std is written (``files.py``).

A malformed record raises ``RecordError`` (a ``gtsrb.archive.DataError``) naming the file and the field.
The demo imports this package and nothing else of ``study``, so nothing here imports torch, Ray or Optuna
(``gtsrb.util.machine`` imports torch when it is called, in the commands that record a run), and pandas
only inside the functions that make a table.
"""

from study.records.files import (
    MAX_JSON_BYTES, Fields, RecordError, RecordMissing, command_line, machine, pm, read_csv, read_json,
    read_text, run_record, write_json,
)
from study.records.runs import (
    ARM_COLORS, ARM_LABELS, PICKED_ON_SEED, PRECISION_HELP, PROTOCOLS, TOP, AblationRecord, RecipeRecord,
    ablation_files, ablation_folder, read_ablation, read_ablation_record, read_recipe, read_recipe_record,
    recipe_files, record_path,
)
from study.records.trials import (
    BEST_CONFIG_FILE, CURVES_COLUMNS, CURVES_FILE, NUM_SE_STAGES, OPTUNA_DB, PROFILE_FILE, PROFILES,
    SE_STAGE_KEYS, SEARCH_KEYS, SEARCH_PARAMS, SEARCH_SPACE, SUMMARY_COLUMNS, SUMMARY_FILE, Profile,
    SearchParam, StudyProfile, Table, find_studies, named_profile, optuna_storage_url, profile_record,
    read_best_config, read_curves, read_profile, read_summary, read_trial_params, read_trial_results,
    study_budget, trial_dirs, write_best_config, write_curves, write_summary,
)

__all__ = [
    "ARM_COLORS", "ARM_LABELS", "BEST_CONFIG_FILE", "CURVES_COLUMNS", "CURVES_FILE", "MAX_JSON_BYTES",
    "NUM_SE_STAGES", "OPTUNA_DB", "PICKED_ON_SEED", "PRECISION_HELP", "PROFILES", "PROFILE_FILE", "PROTOCOLS",
    "SEARCH_KEYS", "SEARCH_PARAMS", "SEARCH_SPACE", "SE_STAGE_KEYS", "SUMMARY_COLUMNS", "SUMMARY_FILE", "TOP",
    "AblationRecord", "Fields", "Profile", "RecipeRecord", "RecordError", "RecordMissing", "SearchParam",
    "StudyProfile", "Table", "ablation_files", "ablation_folder", "command_line", "find_studies", "machine",
    "named_profile", "optuna_storage_url", "pm", "profile_record", "read_ablation", "read_ablation_record",
    "read_best_config", "read_csv", "read_curves", "read_json", "read_profile", "read_recipe", "read_recipe_record",
    "read_summary", "read_text", "read_trial_params", "read_trial_results", "recipe_files", "record_path", "run_record",
    "study_budget", "trial_dirs", "write_best_config", "write_curves", "write_json", "write_summary",
]
