"""The search space, define-by-run (Optuna), and the two trials every study starts with.

Questions the study asks of SE on a VGG-11 (cf. Hu et al., arXiv:1709.01507):
in which of the 5 stages it helps, where in the block it sits, which form
(the paper's gate or the seed's scale-and-shift), which reduction ratio, and
how it interacts with dropout and pooling. Learning rate and weight decay are
searched too, so that no variant loses only because of a recipe tuned for
another.
"""

from __future__ import annotations

from typing import Any

from gtsrb.model import NUM_STAGES, ModelConfig
from study.records import SE_STAGE_KEYS, SEARCH_KEYS, SEARCH_SPACE, SearchParam

if len(SE_STAGE_KEYS) != NUM_STAGES:  # study.records declares the stages without importing the model (torch)
    raise ImportError(f"study.records searches {len(SE_STAGE_KEYS)} SE stages, the model has {NUM_STAGES}")
TRAIN_KEYS = ("lr", "weight_decay")
MODEL_KEYS = tuple(k for k in SEARCH_KEYS if k not in SE_STAGE_KEYS and k not in TRAIN_KEYS)


def _suggest(trial, p: SearchParam):
    if p.kind == "cat":
        return trial.suggest_categorical(p.key, list(p.choices))
    return trial.suggest_float(p.key, p.low, p.high, log=p.kind == "log")


def define_space(trial) -> dict[str, Any] | None:
    """Optuna define-by-run space (``study.records.SEARCH_SPACE``, in its order). SE settings are asked only
    when some stage has SE."""
    stages = [_suggest(trial, p) for p in SEARCH_SPACE if p.key in SE_STAGE_KEYS]
    for p in SEARCH_SPACE:
        if p.key not in SE_STAGE_KEYS and (any(stages) or not p.se_only):
            _suggest(trial, p)
    return None


# The seed's own configuration and the same net without SE, run first in every study.
SEED_POINT: dict[str, Any] = {
    **{k: True for k in SE_STAGE_KEYS},
    "se_form": "scale_shift",
    "se_position": "pre_bn",
    "se_reduction": 16,
    "conv_dropout": 0.4,
    "classifier_dropout": 0.5,
    "pool": "max",
    "lr": 2e-3,
    "weight_decay": 0.05,
}
NO_SE_POINT: dict[str, Any] = {
    **{k: False for k in SE_STAGE_KEYS},
    "conv_dropout": 0.4,
    "classifier_dropout": 0.5,
    "pool": "max",
    "lr": 2e-3,
    "weight_decay": 0.05,
}
FIXED_POINTS = {"seed": SEED_POINT, "no_se": NO_SE_POINT}


def to_configs(params: dict[str, Any]) -> tuple[ModelConfig, dict[str, Any]]:
    """A trial's flat parameters -> (ModelConfig, TrainConfig overrides)."""
    stages = tuple(bool(params[k]) for k in SE_STAGE_KEYS)
    model_fields = {"se_stages": stages}
    for k in MODEL_KEYS:
        if k in params:
            model_fields[k] = params[k]
    return ModelConfig(**model_fields), {k: params[k] for k in TRAIN_KEYS if k in params}


def best_config_json(params: dict[str, Any]) -> dict[str, Any]:
    """What `gtsrb train --config` and `make train-best` read: ModelConfig + TrainConfig fields."""
    model, train = to_configs(params)
    d = model.to_dict()
    out = {k: d[k] for k in ("se_stages", *MODEL_KEYS)}
    out["se_stages"] = list(out["se_stages"])
    return {**out, **train}
