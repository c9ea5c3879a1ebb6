"""`make ablation`: is the study's winner real, does SE help, does it converge faster? Plus the split-leakage gap.

    python -m study.ablation --data data/gtsrb28-framed.h5 --full-frame-data data/gtsrb28.h5 \
        [--study results/study/cpu] [--incumbent-config results/study/cpu-quick/best_config.json] \
        [--random-data data/gtsrb28-framed-random.h5] [--arms seed no_se incumbent top1 ...] [--seeds 0 1 2] \
        [--epochs 8] [--precision auto|bf16|fp32] [--results results/ablation-framed]

One budget for every arm, the converging one: the accuracy recipe (``gtsrb.config.RECIPE``)
on the framed pack (ROI crops and whole frames), the track split's whole train part, the whole val
split, 8 epochs one-cycle, scored at the LAST epoch (the schedule is fixed; nothing is chosen on val),
on the test split's ROI crops and, with ``--full-frame-data``, its whole frames.

- ``seed``:  the seed preset (SE on every stage);
- ``no_se``: the same net with no SE block (the ``vgg11`` preset);
- ``incumbent``: the configuration released before this study (``--incumbent-config``, by default
  the quick study's winner): the one a study winner has to beat before ``make train-best``
  re-makes the release model with it;
- ``top1``, ``top2``, ``top3``: the study's best three searched configurations among the
  trials that ran its full budget, ranked by their last epoch's val accuracy (``--study``'s
  summary.csv and curves.csv; each with its own LR and weight decay). The fixed trials and
  a trial of the incumbent configuration are left out of that ranking: they are arms already;
- ``seed_random``: the seed preset on a pack split *at random* instead of by track,
  first seed only. Its test split shares tracks with its train split, so its gap to
  ``seed`` on the track split measures how much that protocol flatters.

Seed k of every arm shares the initial weights' seed and the data order's seed, so arms
compare as paired differences. Each finished run writes ``<results>/<arm>-seed<k>.json``
(per-epoch history, test accuracy, macro F1 and ECE of the last epoch); a run with that
file is skipped, and a killed run resumes from its ``last.pt``. Checkpoints stay under
``runs/ablation``.

A run the study has already trained is not trained again. The study's fixed trials (``seed``,
``no_se``), its top three and its trial of the incumbent configuration (if it has one) train with
seed 0, the recipe, the whole train split and the same schedule. So the seed-0 run of those
arms starts from its study trial's last checkpoint (where this machine still has it: git does
not carry the weights) and trains only the epochs the trial did not reach. A trial ASHA stopped
at its rung is thus continued to the end. The run's record says so (``adopted``: trial,
checkpoint, epochs and their training seconds), and the checkpoint is adopted only when its
model configuration, training configuration (all but threads, device, logging) and pack match
this run's.
"""

from __future__ import annotations

import dataclasses
import json
import shutil
import sys
import time
from pathlib import Path

import pandas as pd

from gtsrb.archive import DataError
from gtsrb.checkpoint import load_checkpoint
from gtsrb.data import load_pack
from gtsrb.inference import Classifier
from gtsrb.metrics import calibration, classification_metrics
from gtsrb.model import ModelConfig
from gtsrb.runfiles import RESUME_MAY_CHANGE, data_fingerprint
from gtsrb.config import PRECISIONS, RECIPE, split_config, TrainConfig
from gtsrb.train import fit
from gtsrb.util import atomic_path
from gtsrb.validate import fraction, non_negative_int, positive_int
from study.cli import ArgumentParser, check_config, entry_point, read_config, require_pack
from study.records import PRECISION_HELP, TOP, read_json, run_record, write_json
from study.space import best_config_json
from study.summary import PARAM_ORDER, study_budget

ARMS = ("seed", "no_se", "incumbent", *TOP, "seed_random")
INCUMBENT_CONFIG = Path("results/study/cpu-quick/best_config.json")  # the Makefile's QUICK_CONFIG


# How a run is carried out, not what it trains: a study trial that differs from an ablation run only
# here trained the same network on the same data in the same order.
NOT_COMPARED = RESUME_MAY_CHANGE  # what a continued study trial may differ in: what fit's resume allows
ADOPTED = "adopted.json"  # beside an adopted run's last.pt: which trial it continues


def trial_config(row: dict) -> dict:
    """A summary.csv row's configuration, in best_config.json's shape."""
    params = {key: row[key] for key in PARAM_ORDER if key in row and not pd.isna(row[key])}
    if "se_reduction" in params:
        params["se_reduction"] = int(params["se_reduction"])  # a float column where some trials have no SE
    return best_config_json(params)


def same_run(a: dict, b: dict) -> bool:
    """Whether two configurations (best_config.json's shape) train the same network the same way."""
    return split_config(a) == split_config(b)


def ranked_finishers(study: Path, incumbent: dict | None = None) -> pd.DataFrame:
    """The study's searched trials that ran its full budget, best last-epoch val accuracy first. The fixed
    trials (role ``seed``, ``no_se``) and a trial of the incumbent configuration have arms of their own, so
    a top arm is never a second copy of one."""
    summary = pd.read_csv(study / "summary.csv")
    curves = pd.read_csv(study / "curves.csv")
    last_epoch = study_budget(study, summary)[1]
    full = summary[summary["epochs_run"] >= last_epoch]
    if "role" in full:
        full = full[~full["role"].isin(["seed", "no_se"])]
    if incumbent is not None:
        full = full[[not same_run(trial_config(row), incumbent) for row in full.to_dict("records")]]
    last = curves.sort_values("epoch").groupby("trial_id")["val_accuracy"].last()
    return full.assign(last_val=full["trial_id"].map(last)).sort_values("last_val", ascending=False, kind="stable")


def top_configs(study: Path, k: int = len(TOP), incumbent: dict | None = None) -> list[dict]:
    """The study's best k configurations (best_config.json's shape) among the trials that ran the full
    budget, by their last epoch's val accuracy (other than the incumbent configuration)."""
    return [trial_config(row) for row in ranked_finishers(study, incumbent).head(k).to_dict("records")]


def study_trial(arm: str, study: Path | None, incumbent: dict | None = None) -> str | None:
    """The id of the study trial that trained this arm's configuration: the fixed trial of that role
    (``seed``, ``no_se``), the k-th finisher (``top<k>``) or the trial of the incumbent configuration
    (``incumbent``); None where there is none, or without a study."""
    if study is None or not (study / "summary.csv").is_file():
        return None
    if arm in TOP:
        ranked = ranked_finishers(study, incumbent)
        rank = TOP.index(arm)
        return str(ranked["trial_id"].iloc[rank]) if rank < len(ranked) else None
    summary = pd.read_csv(study / "summary.csv")
    if arm == "incumbent" and incumbent is not None:
        rows = [row for row in summary.to_dict("records") if same_run(trial_config(row), incumbent)]
        return str(rows[0]["trial_id"]) if rows else None
    if arm in ("seed", "no_se") and "role" in summary:
        rows = summary[summary["role"] == arm]
        return str(rows["trial_id"].iloc[0]) if len(rows) else None
    return None


def adopt_trial(study: Path, trial_id: str, out: Path, model_config: ModelConfig, train_config: TrainConfig,
                pack: Path) -> dict | None:
    """Put the study trial's last checkpoint at ``out/last.pt`` when that trial trained exactly this run;
    what was adopted (trial, checkpoint, epochs, their training seconds; also kept in ``out/adopted.json``
    for a run that is killed and resumed), or None with the reason printed."""
    found = sorted(study.glob(f"train_trial_{trial_id}_*/checkpoint_*/last.pt"))
    if not found:
        print(f"  study trial {trial_id}: no checkpoint with weights on this machine; training from scratch",
              flush=True)
        return None
    ckpt = load_checkpoint(found[-1])
    theirs, mine = ckpt["train_config"], dataclasses.asdict(train_config)
    differ = [k for k in mine if k not in NOT_COMPARED and theirs.get(k) != mine[k]]
    if ModelConfig.from_dict(ckpt["model_config"]) != model_config:
        differ.append("model_config")
    # The pack: its attributes, and where the checkpoint has one, the fingerprint of its contents.
    packed = load_pack(pack)
    data = {k: str(v) for k, v in ckpt["data"].items() if k not in ("path", "fingerprint")}
    fingerprint = data_fingerprint(packed)
    if data != {k: str(v) for k, v in packed.attrs.items()} or ckpt["data"].get("fingerprint", fingerprint) != fingerprint:
        differ.append("pack")
    if differ:
        print(f"  study trial {trial_id}: {found[-1]} differs in {', '.join(differ)}; training from scratch",
              flush=True)
        return None
    out.mkdir(parents=True, exist_ok=True)
    with atomic_path(out / "last.pt") as tmp:
        shutil.copyfile(found[-1], tmp)
    adopted = {"trial": trial_id, "checkpoint": str(found[-1]), "epochs": int(ckpt["epoch"]),
               "train_seconds": round(sum(h["seconds"] for h in ckpt["history"]), 1)}
    write_json(out / ADOPTED, adopted)
    print(f"  adopted study trial {trial_id} at epoch {ckpt['epoch']} ({found[-1]})", flush=True)
    return adopted


def done_at_another_budget(record: dict, train_config: TrainConfig) -> list[str]:
    """The budget fields where a finished run's record differs from what this ablation would train."""
    tc = record.get("train_config", {})
    fields = ("epochs", "train_fraction", "val_fraction", "label_smoothing", "mirror", "train_splits")
    mine = dataclasses.asdict(train_config)
    other = [f"{k} {tc.get(k)!r} (this run: {mine[k]!r})" for k in fields
             if (list(tc[k]) if isinstance(tc.get(k), (list, tuple)) else tc.get(k))
             != (list(mine[k]) if isinstance(mine[k], tuple) else mine[k])]
    if isinstance(record.get("recipe"), dict) and record["recipe"] != RECIPE:  # e.g. the input_norm it held
        other.append(f"recipe {record['recipe']} (this run: {RECIPE})")
    return other


def arm_spec(arm: str, study: Path | None, incumbent: dict | None = None) -> tuple[dict, str]:
    """(flat config dict for split_config, without the recipe; which pack: "track" or "random")."""
    if arm in ("seed", "seed_random"):
        return {"preset": "seed"}, "random" if arm == "seed_random" else "track"
    if arm == "no_se":
        return {"preset": "vgg11"}, "track"
    if arm == "incumbent":
        if incumbent is None:
            raise ValueError("arm incumbent needs --incumbent-config FILE (a best_config.json)")
        return incumbent, "track"
    if arm in TOP:
        if study is None or not (study / "summary.csv").is_file():
            raise ValueError(f"arm {arm} needs a study: --study DIR with summary.csv (run `make tune` first)")
        configs = top_configs(study, incumbent=incumbent)
        rank = TOP.index(arm)
        if rank >= len(configs):
            raise ValueError(f"arm {arm}: {study} has only {len(configs)} trial(s) at its full budget")
        return configs[rank], "track"
    raise ValueError(f"unknown arm {arm!r}; choose from {', '.join(ARMS)}")


def plan(arms, seeds) -> list[tuple[str, int]]:
    """Seed-major order, so an interrupted ablation still has every arm at the first seeds."""
    runs = []
    for i, seed in enumerate(seeds):
        for arm in arms:
            if arm == "seed_random" and i > 0:
                continue  # the leakage arm runs once
            runs.append((arm, seed))
    return runs


def score(checkpoint: Path, pack: Path, full_frame_pack: Path | None = None) -> dict:
    """The test split at this checkpoint: n, accuracy, macro P/R/F1 and ECE; with ``full_frame_pack``
    (the same split packed without --roi), ``full_frame``: the metrics on those whole frames."""
    test = load_pack(pack, "test")
    clf = Classifier.load(checkpoint)
    probs = clf.predict_arrays(test.images).probs
    out = {"n": int(len(test.labels)), **classification_metrics(test.labels, probs.argmax(1)),
           "ece": calibration(probs, test.labels)["ece"]}
    if full_frame_pack is not None:
        full = load_pack(full_frame_pack, "test")
        if list(full.filenames) != list(test.filenames):
            raise DataError(f"--full-frame-data {full_frame_pack}: its test split is not {pack}'s")
        out["full_frame"] = classification_metrics(full.labels, clf.predict_arrays(full.images).probs.argmax(1))
    return out


@entry_point("study.ablation")
def main(argv: list[str] | None = None) -> int:
    p = ArgumentParser(prog="python -m study.ablation", description=__doc__.split("\n\n")[0])
    p.add_argument("--data", type=Path, required=True, help="track-split pack made with --roi --frame-size 32")
    p.add_argument("--random-data", type=Path, help="random-split pack made with --roi --frame-size 32 (for seed_random)")
    p.add_argument("--full-frame-data", type=Path,
                   help="the track split packed without --roi: each record also scores its test split's whole frames")
    p.add_argument("--study", type=Path, help="a study folder, for the top1..top3 arms")
    p.add_argument("--incumbent-config", type=Path, default=INCUMBENT_CONFIG,
                   help="the configuration released before this study (a best_config.json): the incumbent "
                        "arm, and left out of the top arms' ranking")
    p.add_argument("--arms", nargs="+", default=list(ARMS), choices=ARMS)
    p.add_argument("--seeds", nargs="+", type=non_negative_int, default=[0, 1, 2])
    p.add_argument("--epochs", type=positive_int, default=8)
    p.add_argument("--train-fraction", type=fraction, default=1.0, help="whole tracks; 1.0 for the real ablation")
    p.add_argument("--precision", choices=PRECISIONS, default="auto",
                   help=PRECISION_HELP)
    p.add_argument("--runs", type=Path, default=Path("runs/ablation"))
    p.add_argument("--results", type=Path, default=Path("results/ablation"))
    a = p.parse_args(argv)

    packs = {"track": a.data, "random": a.random_data}
    arms = [x for x in a.arms if x != "seed_random" or a.random_data]
    # Every input before any training: the packs and their splits, the incumbent config, the study's
    # summaries, each arm's configuration.
    for kind, flag in (("track", "--data"), ("random", "--random-data")):
        if packs[kind] is not None:
            require_pack(packs[kind], ("train", "val", "test"), flag, frames=RECIPE.get("framing", 0) > 0)
    if a.full_frame_data is not None:
        require_pack(a.full_frame_data, ("test",), "--full-frame-data")
    # Read whenever an arm needs it: the incumbent arm, and the top arms' ranking, which leaves it out.
    incumbent = None
    if "incumbent" in arms or set(arms) & set(TOP):
        incumbent = read_config(a.incumbent_config, "--incumbent-config")
    try:
        specs = {arm: arm_spec(arm, a.study, incumbent) for arm in arms}
    except (KeyError, pd.errors.ParserError, pd.errors.EmptyDataError) as e:
        raise DataError(f"--study {a.study}: summary.csv or curves.csv is not a study's summary "
                        f"({type(e).__name__}: {e}); rewrite it with `python -m study.tune --summarize`") from None
    for arm, (flat, _) in specs.items():
        check_config({**flat, **RECIPE}, f"arm {arm}")
    a.results.mkdir(parents=True, exist_ok=True)
    for arm, seed in plan(arms, a.seeds):
        flat, pack_kind = specs[arm]
        model_config, train_over = split_config({**flat, **RECIPE})
        train_config = TrainConfig(**{**train_over, "epochs": a.epochs, "seed": seed,
                                      "train_fraction": a.train_fraction, "precision": a.precision,
                                      "histograms": False})
        done = a.results / f"{arm}-seed{seed}.json"
        if done.exists():
            record = read_json(done)
            if not isinstance(record, dict):
                raise DataError(f"{done}: not an ablation record (a JSON object)")
            if record.get("config", flat) != json.loads(json.dumps(flat)):
                raise DataError(f"{done} holds another configuration than this run's {arm} arm ({flat}): another "
                                f"incumbent, or the study's ranking has changed. Pass --results DIR for the new ablation.")
            other = done_at_another_budget(record, train_config)
            if other:
                raise DataError(f"{done} holds a run at another budget ({'; '.join(other)}). Move that folder's "
                                f"records away (the quick ablation's are in results/ablation-quick) or pass --results DIR.")
            print(f"{arm} seed {seed}: done, skipped", flush=True)
            continue
        out = a.runs / arm / f"seed{seed}"
        print(f"{arm} seed {seed}: training -> {out}", flush=True)
        if (out / "last.pt").exists():  # a killed run resumes; it may have started from a study trial
            adopted = read_json(out / ADOPTED) if (out / ADOPTED).is_file() else None
        else:
            trial = study_trial(arm, a.study, incumbent)
            adopted = adopt_trial(a.study, trial, out, model_config, train_config, packs[pack_kind]) if trial else None
        t0 = time.perf_counter()
        history = fit(model_config, packs[pack_kind], out, train_config,
                      resume=(out / "last.pt").exists(), progress=False)
        seconds = time.perf_counter() - t0
        test = score(out / "last.pt", packs[pack_kind], a.full_frame_data if pack_kind == "track" else None)
        # train_seconds counts every epoch's training, adopted ones included.
        record = run_record(
            "study.ablation", argv, seconds,
            arm=arm, seed=seed, pack=str(packs[pack_kind]), split_kind=pack_kind, config=flat, recipe=RECIPE,
            model_config=model_config.to_dict(), train_config=train_config.__dict__, history=history, test=test,
            test_at="last epoch", adopted=adopted)
        write_json(done, record)
        print(f"{arm} seed {seed}: last val {history[-1]['val_accuracy']:.4f} test {test['accuracy']:.4f} "
              f"ECE {test['ece']:.4f} ({seconds:.0f} s)", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
