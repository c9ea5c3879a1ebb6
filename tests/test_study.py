"""The Ray Tune study: space, a real smoke study on a two-node Ray cluster with a trial killed
on purpose, a driver on local Ray interrupted and resumed."""

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

optuna = pytest.importorskip("optuna")  # the `study` extra
pd = pytest.importorskip("pandas")
pytest.importorskip("ray")

pytestmark = pytest.mark.slow  # a real Ray study

from gtsrb.model import PRESETS
from gtsrb.config import split_config
from study.space import FIXED_POINTS, NO_SE_POINT, SEED_POINT, best_config_json, define_space, to_configs
from study.records import optuna_storage_url
from study.tune import REPO


def test_fixed_points_are_the_seed_and_the_seed_without_se():
    seed_model, seed_train = to_configs(SEED_POINT)
    assert seed_model == PRESETS["seed"]
    no_se_model, _ = to_configs(NO_SE_POINT)
    assert no_se_model == PRESETS["vgg11"]
    assert seed_train == {"lr": 2e-3, "weight_decay": 0.05}


def test_space_asks_se_settings_only_when_some_stage_has_se():
    study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=0))
    for point in FIXED_POINTS.values():
        study.enqueue_trial(point)
    study.optimize(lambda t: define_space(t) or 0.0, n_trials=30)
    first, second = study.trials[0].params, study.trials[1].params
    assert first == SEED_POINT and second == NO_SE_POINT
    for t in study.trials:
        has_se = any(t.params[f"se_stage{i}"] for i in range(1, 6))
        assert ("se_form" in t.params) == has_se
        if has_se:
            assert t.params["se_reduction"] in (4, 8, 16, 32)
            assert t.params["se_form"] in ("gate", "scale_shift")
        assert t.params["pool"] in ("max", "avg")
        to_configs(t.params)  # every sampled point builds a valid ModelConfig


def test_best_config_json_is_what_gtsrb_train_reads():
    params = {**SEED_POINT, "se_stage1": False, "se_form": "gate", "pool": "avg", "lr": 3e-3}
    model, train = split_config(json.loads(json.dumps(best_config_json(params))))
    assert model == to_configs(params)[0]
    assert train == {"lr": 3e-3, "weight_decay": 0.05}


# A quarter of the synthetic train split (whole tracks): the trials only have to run, not learn.
TRAIN_FRACTION = "0.25"


def _study_cmd(data: Path, name: str) -> list[str]:
    return [sys.executable, "-m", "study.tune", "--data", str(data), "--smoke-test", "--name", name,
            "--train-fraction", TRAIN_FRACTION, "--num-cpus", "2"]


# Loaded at start-up by every process of the study: the first trial to finish epoch 1 kills its own
# process once (the marker file remembers), to show the retry from its checkpoint.
CRASH_ONCE_HOOK = """
import importlib.abc, importlib.machinery, os, signal, sys
from pathlib import Path


def _patch(train):
    fit = train.fit

    def fit_that_crashes_once(*args, on_epoch=None, **kwargs):
        def crash_once(row, ckpt_dir):
            on_epoch(row, ckpt_dir)
            if row["epoch"] != 1:
                return
            try:  # exactly one trial wins the marker, exactly once
                fd = os.open(Path(CRASH_DIR) / "crashed", os.O_CREAT | os.O_EXCL | os.O_WRONLY)
            except FileExistsError:
                return
            os.close(fd)
            os.kill(os.getpid(), signal.SIGKILL)

        return fit(*args, on_epoch=crash_once if on_epoch else None, **kwargs)

    train.fit = fit_that_crashes_once


class _PatchOnImport(importlib.abc.MetaPathFinder):
    # Patches gtsrb.train when a process imports it, so that no other process pays for torch.
    def find_spec(self, name, path, target=None):
        if name != "gtsrb.train":
            return None
        spec = importlib.machinery.PathFinder.find_spec(name, path)
        run = spec.loader.exec_module

        def exec_module(module):
            run(module)
            _patch(module)

        spec.loader.exec_module = exec_module
        return spec


sys.meta_path.insert(0, _PatchOnImport())
"""


@pytest.fixture(scope="module")
def smoke_study(framed_pack, tmp_path_factory):
    """One real smoke study on a two-node Ray cluster on 127.0.0.1 (study/cluster_smoke.sh: `ray start`
    head + worker, the study via RAY_ADDRESS, then it stops that cluster); the first trial to finish epoch 1 kills itself
    once. The local-Ray path (no RAY_ADDRESS) runs in the resume test below."""
    root = tmp_path_factory.mktemp("study")
    crash_dir = tmp_path_factory.mktemp("crash")
    # The crash is injected from here: a sitecustomize on the trials' PYTHONPATH wraps gtsrb.train.fit.
    hook = tmp_path_factory.mktemp("hook")
    (hook / "sitecustomize.py").write_text(CRASH_ONCE_HOOK.replace("CRASH_DIR", repr(str(crash_dir))))
    pythonpath = os.pathsep.join(filter(None, [str(hook), os.environ.get("PYTHONPATH")]))
    env = {**os.environ, "STUDY_ROOT": str(root), "PYTHONPATH": pythonpath, "RAY_PORT": "6390",
           "TRAIN_FRACTION": TRAIN_FRACTION, "BIN": str(Path(sys.executable).parent)}
    env.pop("RAY_ADDRESS", None)
    # A bystander that `ray stop` would kill ("monitor.py" in its arguments is one of its patterns), standing
    # in for a study running beside the smoke cluster on the same machine.
    bystander = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(900)", "monitor.py"])
    try:
        r = subprocess.run(["bash", str(REPO / "study" / "cluster_smoke.sh"), str(framed_pack), "smoke"],
                           env=env, cwd=REPO, capture_output=True, text=True, timeout=600)
        r.bystander_alive = bystander.poll() is None
    finally:
        bystander.kill()
    return root / "smoke", r, crash_dir


def test_smoke_study_runs_without_errors_and_writes_its_summaries(smoke_study):
    study_dir, r, _ = smoke_study
    assert r.returncode == 0, (r.stdout[-2000:], r.stderr[-3000:])
    assert "trial error" not in r.stderr
    for name in ("summary.csv", "curves.csv", "best_config.json", "top.md", "optuna.db", "params.png", "history.png",
                 "parallel.png", "intermediate.png"):
        assert (study_dir / name).is_file(), name
    top = (study_dir / "top.md").read_text()
    assert "No parameter importances: " in top  # 3 trials are too few
    # Each trial's outcome is in the table, and the header counts them: a running study's leader can be
    # a trial that has not finished.
    summary = pd.read_csv(study_dir / "summary.csv")
    counts = summary["outcome"].value_counts()
    assert "(3 trials: " in top and all(f"{n} {outcome}" in top for outcome, n in counts.items())
    assert top.count(" | full budget | ") + top.count(" | stopped early (ASHA) | ") == len(summary)
    profile = json.loads((study_dir / "profile.json").read_text())  # how it was run, overrides included
    assert (profile["trials"], profile["epochs"], profile["grace"], profile["train_fraction"]) == (3, 2, 1, 0.25)
    assert "--smoke-test" in profile["command"]
    summary = pd.read_csv(study_dir / "summary.csv")
    assert len(summary) == 3 and (summary["status"] == "TERMINATED").all()
    best = json.loads((study_dir / "best_config.json").read_text())
    split_config(best)  # gtsrb train --config accepts it


def test_the_two_enqueued_trials_ran_with_the_seed_and_no_se_configs(smoke_study):
    study_dir, _, _ = smoke_study
    summary = pd.read_csv(study_dir / "summary.csv")
    assert set(summary["role"]) >= {"seed", "no_se"}
    seed = summary[summary["role"] == "seed"].iloc[0]
    assert seed["se_form"] == "scale_shift" and seed["se_reduction"] == 16 and seed["conv_dropout"] == 0.4
    no_se = summary[summary["role"] == "no_se"].iloc[0]
    assert not any(no_se[f"se_stage{i}"] for i in range(1, 6))


def test_a_trial_killed_on_purpose_is_retried_from_its_checkpoint(smoke_study):
    study_dir, _, crash_dir = smoke_study
    assert (crash_dir / "crashed").exists(), "no trial was killed"
    summary = pd.read_csv(study_dir / "summary.csv")
    retried = summary[summary["retried_from_epoch"] == 1]
    assert len(retried) == 1
    # it went on from epoch 1 to the end instead of starting over
    trial_dir = study_dir / retried.iloc[0]["trial_dir"]
    epochs = [json.loads(line)["epoch"] for line in (trial_dir / "result.json").read_text().splitlines()]
    assert epochs == [1, 2]


def test_the_optuna_study_holds_every_trial_with_asha_stops_as_pruned(smoke_study):
    study_dir, _, _ = smoke_study
    study = optuna.load_study(study_name="smoke", storage=optuna_storage_url(study_dir))
    summary = pd.read_csv(study_dir / "summary.csv")
    assert len(study.trials) == len(summary) == 3
    by_params = {json.dumps({k: v for k, v in sorted(t.params.items())}): t for t in study.trials}
    for trial_dir in summary["trial_dir"]:
        params = json.loads((study_dir / trial_dir / "params.json").read_text())
        t = by_params[json.dumps(dict(sorted(params.items())))]
        curve = [json.loads(line)["val_accuracy"] for line in (study_dir / trial_dir / "result.json").read_text().splitlines()]
        assert list(t.intermediate_values.values()) == pytest.approx(curve)
        if len(curve) < 2:  # ASHA stopped it at the first rung
            assert t.state == optuna.trial.TrialState.PRUNED
        else:
            assert t.state == optuna.trial.TrialState.COMPLETE and t.value == pytest.approx(curve[-1])


def test_an_asha_stop_is_told_to_optuna_as_pruned_and_a_full_run_as_complete():
    from study.searcher import PruningOptunaSearch
    from study.space import define_space

    search = PruningOptunaSearch(space=define_space, metric="val_accuracy", mode="max", max_t=4)
    for trial_id, epochs in (("stopped", 2), ("full", 4)):
        search.suggest(trial_id)
        for epoch in range(1, epochs + 1):
            result = {"val_accuracy": epoch / 10, "epoch": epoch, "training_iteration": 1 + epoch % 2}
            if epoch < epochs:
                search.on_trial_result(trial_id, result)
        search.on_trial_complete(trial_id, result)  # Ray hands the last result to this one only
    stopped, full = search._ot_study.trials
    assert stopped.state == optuna.trial.TrialState.PRUNED and stopped.intermediate_values == {1: 0.1, 2: 0.2}
    assert full.state == optuna.trial.TrialState.COMPLETE and full.value == 0.4


def test_trainer_event_files_live_inside_each_trial_folder(smoke_study):
    study_dir, _, _ = smoke_study
    for params in study_dir.glob("*/params.json"):
        assert list((params.parent / "train").glob("events.out.tfevents.*")), params.parent
        assert list(params.parent.glob("events.out.tfevents.*")), "Ray's own TensorBoard file"


def _finished_trials(study_dir: Path) -> dict[str, int]:
    done = {}
    for f in study_dir.glob("*/result.json"):
        rows = [json.loads(line) for line in f.read_text().splitlines() if line.strip()]
        if rows and rows[-1].get("done"):
            done[f.parent.name] = len(rows)
    return done


def _terminated_in_state(study_dir: Path) -> set[str]:
    """Trial folders that the driver's last saved experiment state records as finished."""
    names = set()
    for f in study_dir.glob("experiment_state-*.json"):
        try:
            trials = [json.loads(entry[0]) for entry in json.loads(f.read_text())["trial_data"]]
        except (OSError, ValueError, KeyError, IndexError):  # being rewritten
            continue
        names |= {t["relative_logdir"] for t in trials if t.get("status") == "TERMINATED"}
    return names


def test_an_interrupted_study_resumes_on_another_machine_without_rerunning_finished_trials(framed_pack, tmp_path):
    env = {**os.environ, "STUDY_ROOT": str(tmp_path), "RAY_USAGE_STATS_ENABLED": "0"}
    study_dir = tmp_path / "resume"
    proc = subprocess.Popen(_study_cmd(framed_pack, "resume"), env=env, cwd=REPO,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 400
    # Interrupt once the driver has saved a finished trial in its state: a trial that finishes in
    # the instant before Ctrl-C, before the driver saved it, is run again on resume (Ray's
    # at-least-once restore), and that is not what this test is about.
    while not _terminated_in_state(study_dir) and time.time() < deadline and proc.poll() is None:
        time.sleep(0.5)
    proc.send_signal(signal.SIGINT)  # Ctrl-C
    proc.wait(timeout=120)
    recorded = _terminated_in_state(study_dir)
    finished = {name: n for name, n in _finished_trials(study_dir).items() if name in recorded}
    assert finished, "no trial finished before the interrupt"
    total_before = len(list(study_dir.glob("*/params.json")))
    assert total_before < 3 or len(finished) < 3, "the study ended before the interrupt"
    # Carried to another machine as git carries it (.gitignore): without the checkpoints' weights and
    # the trainer's own files. An unfinished trial then starts over.
    for weights in study_dir.glob("*/checkpoint_*/last.pt"):
        weights.unlink()
    for trainer_files in study_dir.glob("*/train"):
        shutil.rmtree(trainer_files)

    r = subprocess.run(_study_cmd(framed_pack, "resume"), env=env, cwd=REPO, capture_output=True, text=True,
                       timeout=600)
    assert r.returncode == 0, r.stderr[-3000:]
    assert "continuing the study" in r.stderr
    after = _finished_trials(study_dir)
    for trial, n_results in finished.items():
        assert after[trial] == n_results, f"{trial} was run again"
    summary = pd.read_csv(study_dir / "summary.csv")
    assert len(summary) == 3 and (summary["status"] == "TERMINATED").all()
    # The Optuna study went on in the same SQLite file: the trials told before the interrupt are still
    # there (TPE's history), and the study ends with the 3 trials told once each.
    study = optuna.load_study(study_name="resume", storage=optuna_storage_url(study_dir))
    told = [t for t in study.trials if t.state.is_finished()]
    assert len(told) == 3
    told_params = [t.params for t in told]
    for trial in finished:
        assert json.loads((study_dir / trial / "params.json").read_text()) in told_params, trial


def test_the_trials_ran_on_both_ray_nodes_and_the_script_stopped_the_cluster(smoke_study):
    study_dir, _, _ = smoke_study
    summary = pd.read_csv(study_dir / "summary.csv")
    nodes = {n for cell in summary["nodes"].dropna() for n in str(cell).split(",")}
    assert len(nodes) >= 2, f"all trials on one node: {nodes}"
    with pytest.raises(ConnectionRefusedError):  # the head's GCS port is closed
        socket.create_connection(("127.0.0.1", 6390), timeout=5).close()
    left = subprocess.run(["pgrep", "-f", "--", "/tmp/ray-smoke\\.|:6390( |$)"], capture_output=True, text=True)
    assert left.stdout == "", f"the smoke cluster left processes behind: {left.stdout}"


def test_the_script_stops_only_its_own_cluster(smoke_study):
    _, r, _ = smoke_study
    assert r.bystander_alive, "cluster_smoke.sh killed a process that is not its cluster's (as `ray stop` does)"


def test_summaries_count_a_trial_that_has_not_reported_yet_but_do_not_list_it(tmp_path):
    """A study stopped between sittings can hold a trial Ray started but that never reported an epoch."""
    from study.summary import write_summaries

    for name, results in (("train_trial_aaaa0001_1", [0.5, 0.9]), ("train_trial_bbbb0002_2", [])):
        trial = tmp_path / name
        trial.mkdir()
        (trial / "params.json").write_text(json.dumps(NO_SE_POINT))
        if results:
            (trial / "result.json").write_text("".join(
                json.dumps({"trial_id": "aaaa0001", "epoch": e + 1, "val_accuracy": v, "done": e == 1,
                            "epoch_seconds": 1800.0 * (e + 1)}) + "\n"
                for e, v in enumerate(results)))
    top = write_summaries(tmp_path, max_epochs=2)
    assert "(2 trials: 1 full budget, 1 pending)" in top
    assert "trained for 1.5 h in all" in top  # 1800 s + 3600 s
    summary = pd.read_csv(tmp_path / "summary.csv")
    assert list(summary["trial_id"]) == ["aaaa0001"]
    assert list(summary["train_seconds"]) == [5400.0]
    assert set(pd.read_csv(tmp_path / "curves.csv")["trial_id"]) == {"aaaa0001"}
