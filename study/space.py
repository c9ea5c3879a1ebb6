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

SE_STAGE_KEYS = tuple(f"se_stage{i}" for i in range(1, NUM_STAGES + 1))
TRAIN_KEYS = ("lr", "weight_decay")


def define_space(trial) -> dict[str, Any] | None:
    """Optuna define-by-run space. SE settings are asked only when some stage has SE."""
    stages = [trial.suggest_categorical(k, [True, False]) for k in SE_STAGE_KEYS]
    if any(stages):
        trial.suggest_categorical("se_form", ["gate", "scale_shift"])
        trial.suggest_categorical("se_position", ["pre_bn", "post_act"])
        trial.suggest_categorical("se_reduction", [4, 8, 16, 32])
    trial.suggest_float("conv_dropout", 0.0, 0.5)
    trial.suggest_float("classifier_dropout", 0.0, 0.6)
    trial.suggest_categorical("pool", ["max", "avg"])
    trial.suggest_float("lr", 5e-4, 8e-3, log=True)
    trial.suggest_float("weight_decay", 1e-3, 0.2, log=True)
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
    for k in ("se_form", "se_position", "se_reduction", "conv_dropout", "classifier_dropout", "pool"):
        if k in params:
            model_fields[k] = params[k]
    return ModelConfig(**model_fields), {k: params[k] for k in TRAIN_KEYS if k in params}


def best_config_json(params: dict[str, Any]) -> dict[str, Any]:
    """What `gtsrb train --config` and `make train-best` read: ModelConfig + TrainConfig fields."""
    model, train = to_configs(params)
    d = model.to_dict()
    out = {k: d[k] for k in ("se_stages", "se_form", "se_position", "se_reduction",
                             "conv_dropout", "classifier_dropout", "pool")}
    out["se_stages"] = list(out["se_stages"])
    return {**out, **train}
