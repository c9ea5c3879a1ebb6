"""Issue 34: nothing lost, nothing unbounded, one clear line for every bad input.

Every `python -m study.*` entry point, `gtsrb calibrate` and `gtsrb excitations` end a bad input with
one stderr line that names the file or flag and exit status 2, Ctrl-C with 130, and in both cases
leave every earlier output byte-identical. The entry points run in-process (a subprocess pays the
torch import each time); none of the table's cases trains.
"""

from __future__ import annotations

import hashlib
import importlib
import json
import os
import shutil
from dataclasses import dataclass, field
from pathlib import Path

import h5py
import numpy as np
import pytest
import torch

from gtsrb.archive import DataError
from gtsrb.checkpoint import save_checkpoint
from gtsrb.model import ModelConfig, build_model
from gtsrb.publish import check_file_target, publish_dir, recover
from gtsrb.config import RECIPE

TINY_CFG = [16, "M", 32, "M", 64, 64, "M", 128, 128, "M", 128, 128, "M"]
TINY = ModelConfig(cfg=tuple(TINY_CFG))  # SE on all 5 stages, as the seed preset
DEAD_PID = 2**30 + 7  # above any pid_max: no process has it


def snapshot(folder: Path) -> dict[str, str]:
    """sha256 of every file under folder, and every folder (leftover temp folders included)."""
    out = {}
    for p in sorted(folder.rglob("*")):
        rel = p.relative_to(folder).as_posix()
        out[rel] = hashlib.sha256(p.read_bytes()).hexdigest() if p.is_file() else "dir"
    return out


@pytest.fixture(scope="module")
def packs(framed_pack, tmp_path_factory) -> dict[str, Path]:
    """The synthetic pack as the recipe trains on it (ROI crops and whole frames), the same pack with its val
    split folded into train, and a file that is no pack."""
    root = tmp_path_factory.mktemp("packs")
    noval = root / "noval.h5"
    shutil.copyfile(framed_pack, noval)
    with h5py.File(noval, "r+") as f:
        split = f["split"][:]
        f["split"][...] = np.where(split == 1, 0, split)  # 1 = val -> 0 = train
    garbage = root / "garbage.h5"
    garbage.write_bytes(np.random.default_rng(0).integers(0, 256, 4096, dtype=np.uint8).tobytes())
    return {"pack": framed_pack, "noval": noval, "garbage": garbage}


def _write(path: Path, content: str | bytes) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    if isinstance(content, bytes):
        path.write_bytes(content)
    else:
        path.write_text(content)
    return path


def _trial(study: Path, lines: list[str], params: str | None = None) -> None:
    trial = study / "train_trial_aaaa0001_1_x"
    _write(trial / "params.json", params if params is not None else json.dumps({"pool": "max", "lr": 1e-3}))
    _write(trial / "result.json", "".join(line + "\n" for line in lines))


@pytest.fixture
def world(tmp_path, packs) -> dict[str, str]:
    """prev/: what earlier runs left (a release folder with another command's split/ and calibration.json
    inside, records, a precision file, studies); inputs/: configs, good and bad."""
    prev, inputs = tmp_path / "prev", tmp_path / "inputs"
    best = prev / "best"
    torch.manual_seed(0)
    save_checkpoint({"model_config": TINY.to_dict(), "model": build_model(TINY).state_dict(), "epoch": 1}, _write(best / "best.pt", b""))
    for name, text in (("metrics.json", '{"old": 1}\n'), ("history.json", "[]"), ("excitations.npz", b"npz"),
                       ("events.out.tfevents.1.host.0", b"events"), ("calibration.json", '{"temperature": 1}'),
                       ("split/metrics.json", '{"split": 1}'), ("split/best.pt", b"weights")):
        _write(best / name, text)
    _write(prev / "recipe" / "best" / "recipe-seed0.json", json.dumps({"arm": "recipe", "overrides": RECIPE}))
    _write(prev / "recipe" / "broken" / "recipe-seed0.json", '{"arm": "reci')
    _write(prev / "recipe" / "stale" / "recipe-seed0.json", json.dumps({"arm": "recipe", "overrides": {"mirror": True}}))
    _write(prev / "ablation" / "broken" / "seed-seed0.json", '{"arm": "seed", "se')
    _write(prev / "precision.json", json.dumps({"runs": []}))
    _write(prev / "precision-broken.json", '{"runs": [')
    _write(prev / "precision-list.json", "[1, 2]")
    result = json.dumps({"trial_id": "aaaa0001", "epoch": 1, "val_accuracy": 0.5})
    _trial(prev / "study-truncated", [result, result[:25]])
    _trial(prev / "study-badparams", [result], params='{"pool": "max", "lr"')
    _write(prev / "study-truncated" / "summary.csv", "trial_id\naaaa0001\n")
    (prev / "study-empty").mkdir()
    (prev / "a-folder.npz").mkdir()

    tiny = {"cfg": TINY_CFG, "train_fraction": 0.3, "batch_size": 64, "histograms": False}
    configs = {
        "tiny": json.dumps(tiny),
        "not_utf8": b'{"cfg": "\xff\xfe"}',
        "truncated": '{"cfg": [16, "M",',
        "a_list": json.dumps([tiny]),
        "unknown_key": json.dumps({**tiny, "colour": "red"}),
        "wrong_type": json.dumps({**tiny, "conv_dropout": "high"}),
        "nan": '{"lr": NaN}',
        "bad_value": json.dumps({**tiny, "se_form": "sideways"}),
        "bad_layers": json.dumps({"cfg": [16, "X", 32, "M"], "se_stages": [True]}),
        "bool_epochs": json.dumps({**tiny, "batch_size": True}),
    }
    names = {k: str(_write(inputs / f"{k}.json", v)) for k, v in configs.items()}
    return {**names, **{k: str(v) for k, v in packs.items()}, "prev": str(prev), "tmp": str(tmp_path),
            "nosuch": str(tmp_path / "nosuch")}


TB = ["--out", "{prev}/best", "--run", "{tmp}/run", "--epochs", "1"]  # study.train_best, into the earlier release
RECIPE_ARGS = ["--runs", "{tmp}/runs", "--results", "{prev}/recipe", "--seeds", "0", "--epochs", "1"]
ABL = ["--runs", "{tmp}/runs", "--results", "{prev}/ablation/broken", "--seeds", "0", "--epochs", "1"]
PREC = ["--runs", "{tmp}/runs", "--seeds", "0", "--epochs", "1"]


@dataclass
class Case:
    id: str
    entry: str  # the study module, or "gtsrb"
    args: list[str]
    needles: list[str] = field(default_factory=list)


CASES = [
    # study.train_best: the command of the issue, and every other input it reads
    Case("train_best-missing-pack", "train_best", ["--config", "{tiny}", "--data", "{nosuch}.h5", *TB], ["nosuch.h5", "no such"]),
    Case("train_best-garbage-pack", "train_best", ["--config", "{tiny}", "--data", "{garbage}", *TB], ["garbage.h5"]),
    Case("train_best-pack-without-val", "train_best", ["--config", "{tiny}", "--data", "{noval}", *TB], ["noval.h5", "val split"]),
    Case("train_best-split-protocol-without-val", "train_best",
         ["--config", "{tiny}", "--data", "{noval}", "--protocol", "split", *TB], ["noval.h5", "val"]),
    Case("train_best-missing-config", "train_best", ["--config", "{nosuch}.json", "--data", "{pack}", *TB], ["nosuch.json"]),
    Case("train_best-config-is-a-folder", "train_best", ["--config", "{prev}", "--data", "{pack}", *TB], ["prev", "cannot read"]),
    Case("train_best-config-not-utf8", "train_best", ["--config", "{not_utf8}", "--data", "{pack}", *TB], ["not_utf8.json", "UTF-8"]),
    Case("train_best-config-truncated", "train_best", ["--config", "{truncated}", "--data", "{pack}", *TB], ["truncated.json", "not valid JSON"]),
    Case("train_best-config-not-an-object", "train_best", ["--config", "{a_list}", "--data", "{pack}", *TB], ["a_list.json", "JSON object"]),
    Case("train_best-config-unknown-key", "train_best", ["--config", "{unknown_key}", "--data", "{pack}", *TB], ["unknown_key.json", "colour"]),
    Case("train_best-config-wrong-type", "train_best", ["--config", "{wrong_type}", "--data", "{pack}", *TB], ["wrong_type.json", "conv_dropout"]),
    Case("train_best-config-nan", "train_best", ["--config", "{nan}", "--data", "{pack}", *TB], ["nan.json", "lr"]),
    Case("train_best-config-bad-value", "train_best", ["--config", "{bad_value}", "--data", "{pack}", *TB], ["bad_value.json", "se_form"]),
    Case("train_best-config-bad-layers", "train_best", ["--config", "{bad_layers}", "--data", "{pack}", *TB], ["bad_layers.json"]),
    Case("train_best-config-bool-for-a-number", "train_best", ["--config", "{bool_epochs}", "--data", "{pack}", *TB], ["batch_size"]),
    Case("train_best-epochs-zero", "train_best", ["--config", "{tiny}", "--data", "{pack}", *TB[:4], "--epochs", "0"], ["--epochs", "0"]),
    Case("train_best-epochs-not-a-number", "train_best", ["--config", "{tiny}", "--data", "{pack}", *TB[:4], "--epochs", "ten"], ["--epochs", "ten"]),
    Case("train_best-out-is-a-file", "train_best",
         ["--config", "{tiny}", "--data", "{pack}", "--out", "{prev}/best/metrics.json", "--run", "{tmp}/run"], ["metrics.json", "a file"]),
    Case("train_best-out-in-proc", "train_best", ["--config", "{tiny}", "--data", "{pack}", "--out", "/proc/x", "--run", "{tmp}/run"], ["/proc/x"]),
    Case("train_best-run-inside-out", "train_best",
         ["--config", "{tiny}", "--data", "{pack}", "--out", "{prev}/best", "--run", "{prev}/best/run"], ["--run"]),
    Case("train_best-official-test-missing", "train_best",
         ["--config", "{tiny}", "--data", "{pack}", *TB, "--official-test", "{nosuch}-test"], ["nosuch-test"]),
    # study.recipe
    Case("recipe-missing-pack", "recipe", ["--data", "{nosuch}.h5", *RECIPE_ARGS], ["nosuch.h5"]),
    Case("recipe-pack-without-val", "recipe", ["--data", "{noval}", *RECIPE_ARGS], ["noval.h5", "val split"]),
    Case("recipe-best-config-truncated", "recipe",
         ["--data", "{pack}", "--preset", "best", "--config", "{truncated}", *RECIPE_ARGS], ["truncated.json"]),
    Case("recipe-no-roi-needs-full-frame", "recipe", ["--data", "{pack}", "--arms", "no_roi", *RECIPE_ARGS], ["--full-frame-data"]),
    Case("recipe-full-frame-pack-missing", "recipe",
         ["--data", "{pack}", "--full-frame-data", "{nosuch}-ff.h5", *RECIPE_ARGS], ["nosuch-ff.h5"]),
    Case("recipe-train-fraction-zero", "recipe", ["--data", "{pack}", *RECIPE_ARGS, "--train-fraction", "0"], ["--train-fraction"]),
    Case("recipe-cv-seed-beyond-the-folds", "recipe",
         ["--data", "{pack}", "--protocol", "cv", *RECIPE_ARGS[:4], "--seeds", "7"], ["--seeds", "fold"]),
    Case("recipe-truncated-record", "recipe", ["--data", "{pack}", "--name", "broken", *RECIPE_ARGS], ["recipe-seed0.json", "not valid JSON"]),
    Case("recipe-record-of-another-recipe", "recipe", ["--data", "{pack}", "--name", "stale", *RECIPE_ARGS], ["recipe-seed0.json", "--name NEW"]),
    # study.ablation
    Case("ablation-missing-pack", "ablation", ["--data", "{nosuch}.h5", *ABL], ["nosuch.h5"]),
    Case("ablation-random-pack-garbage", "ablation", ["--data", "{pack}", "--random-data", "{garbage}", *ABL], ["garbage.h5"]),
    Case("ablation-incumbent-config-not-utf8", "ablation",
         ["--data", "{pack}", "--arms", "incumbent", "--incumbent-config", "{not_utf8}", *ABL], ["not_utf8.json"]),
    Case("ablation-top-arm-without-study", "ablation",
         ["--data", "{pack}", "--arms", "top1", "--incumbent-config", "{tiny}", *ABL], ["--study"]),
    Case("ablation-negative-seed", "ablation", ["--data", "{pack}", *ABL, "--seeds", "-1"], ["--seeds", "-1"]),
    Case("ablation-truncated-record", "ablation", ["--data", "{pack}", "--arms", "seed", *ABL], ["seed-seed0.json", "not valid JSON"]),
    # study.precision
    Case("precision-missing-pack", "precision", ["--data", "{nosuch}.h5", "--out", "{prev}/precision.json", *PREC], ["nosuch.h5"]),
    Case("precision-truncated-record", "precision", ["--data", "{pack}", "--out", "{prev}/precision-broken.json", *PREC],
         ["precision-broken.json", "not valid JSON"]),
    Case("precision-record-not-an-object", "precision", ["--data", "{pack}", "--out", "{prev}/precision-list.json", *PREC],
         ["precision-list.json"]),
    Case("precision-epochs-negative", "precision", ["--data", "{pack}", "--out", "{prev}/precision.json", *PREC[:4], "--epochs", "-3"],
         ["--epochs"]),
    Case("precision-pack-without-val", "precision", ["--data", "{noval}", "--out", "{prev}/precision.json", *PREC], ["noval.h5", "val"]),
    # study.tune
    Case("tune-summarize-missing-folder", "tune", ["--summarize", "{nosuch}-study"], ["nosuch-study", "no such study folder"]),
    Case("tune-summarize-empty-folder", "tune", ["--summarize", "{prev}/study-empty"], ["study-empty", "no trial folders"]),
    Case("tune-summarize-truncated-result", "tune", ["--summarize", "{prev}/study-truncated"], ["result.json", "line 2"]),
    Case("tune-summarize-truncated-params", "tune", ["--summarize", "{prev}/study-badparams"], ["params.json", "not valid JSON"]),
    Case("tune-trials-zero", "tune", ["--data", "{pack}", "--trials", "0"], ["--trials", "0"]),
    Case("tune-cpus-per-trial-nan", "tune", ["--data", "{pack}", "--cpus-per-trial", "nan"], ["--cpus-per-trial"]),
    Case("tune-missing-pack", "tune", ["--data", "{nosuch}.h5"], ["nosuch.h5", "no packed data"]),
    Case("tune-pack-without-val", "tune", ["--data", "{noval}"], ["noval.h5", "val split"]),
    # gtsrb calibrate and gtsrb excitations
    Case("calibrate-pack-without-val", "gtsrb", ["calibrate", "{prev}/best/best.pt", "--data", "{noval}"], ["noval.h5", "val split"]),
    Case("calibrate-missing-pack", "gtsrb", ["calibrate", "{prev}/best/best.pt", "--data", "{nosuch}.h5"], ["nosuch.h5"]),
    Case("calibrate-out-in-proc", "gtsrb", ["calibrate", "{prev}/best/best.pt", "--data", "{pack}", "--out", "/proc/x.json"], ["/proc/x.json"]),
    Case("calibrate-out-is-a-folder", "gtsrb", ["calibrate", "{prev}/best/best.pt", "--data", "{pack}", "--out", "{prev}/best/split"],
         ["split", "is a folder"]),
    Case("excitations-pack-without-val", "gtsrb", ["excitations", "{prev}/best/best.pt", "--data", "{noval}"], ["noval.h5", "val split"]),
    Case("excitations-out-is-a-folder", "gtsrb", ["excitations", "{prev}/best/best.pt", "--data", "{pack}", "--out", "{prev}/a-folder.npz"],
         ["a-folder.npz", "is a folder"]),
    Case("excitations-out-under-a-file", "gtsrb",
         ["excitations", "{prev}/best/best.pt", "--data", "{pack}", "--out", "{prev}/best/metrics.json/x.npz"], ["metrics.json", "not a folder"]),
]


def _main(entry: str):
    if entry == "gtsrb":
        from gtsrb.cli import main

        return main, "gtsrb: error: "
    return importlib.import_module(f"study.{entry}").main, f"study.{entry}: error: "


@pytest.mark.parametrize("case", CASES, ids=[c.id for c in CASES])
def test_bad_input_ends_with_one_line_and_loses_nothing(case, world, capsys):
    main, prefix = _main(case.entry)
    prev = Path(world["prev"])
    before = snapshot(prev)
    code = main([a.format(**world) for a in case.args])
    err = capsys.readouterr().err.strip()
    assert code == 2, err
    assert len(err.splitlines()) == 1 and err.startswith(prefix), err
    for needle in case.needles:
        assert needle.format(**world) in err, err
    assert snapshot(prev) == before


def test_the_table_covers_every_entry_point():
    assert len(CASES) >= 25
    assert {c.entry for c in CASES} == {"train_best", "recipe", "ablation", "precision", "tune", "gtsrb"}


# --------------------------------------------------------------------------- Ctrl-C

@pytest.mark.parametrize("entry", ["train_best", "recipe", "ablation", "precision"])
def test_ctrl_c_in_training_leaves_the_earlier_outputs_and_exits_130(entry, world, monkeypatch, capsys):
    module = importlib.import_module(f"study.{entry}")

    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(module, "fit", interrupted)
    args = {
        "train_best": ["--config", "{tiny}", "--data", "{pack}", *TB],
        "recipe": ["--data", "{pack}", "--preset", "best", "--config", "{tiny}", *RECIPE_ARGS[:2], "--results",
                   "{prev}/recipe", "--name", "best", "--arms", "old", "--seeds", "0"],
        "ablation": ["--data", "{pack}", "--arms", "incumbent", "--incumbent-config", "{tiny}", *ABL],
        "precision": ["--data", "{pack}", "--out", "{prev}/precision.json", *PREC],
    }[entry]
    prev = Path(world["prev"])
    before = snapshot(prev)
    assert module.main([a.format(**world) for a in args]) == 130
    err = capsys.readouterr().err.strip()
    assert err == f"study.{entry}: error: interrupted"
    assert snapshot(prev) == before  # no temp folder left beside the release either


@pytest.mark.slow
def test_train_best_publishes_a_new_release_and_keeps_what_other_commands_put_in_it(world, monkeypatch, capsys):
    """A real (tiny) release: the new files replace the old ones in one swap; split/ and calibration.json,
    which `make train-best`'s second run and `make calibrate` put there, are carried over unchanged.
    Then a Ctrl-C after training, in the last step, leaves that release exactly as it was."""
    import study.train_best as train_best

    prev = Path(world["prev"])
    out = prev / "best"
    kept = {k: v for k, v in snapshot(out).items() if k.startswith("split") or k == "calibration.json"}
    inode = (out / "split" / "metrics.json").stat().st_ino
    args = [a.format(**world) for a in ["--config", "{tiny}", "--data", "{pack}", *TB]]
    assert train_best.main(args) == 0
    after = snapshot(out)
    assert {k: after[k] for k in kept} == kept
    assert json.loads((out / "metrics.json").read_text())["protocol"] == "official"
    assert "events.out.tfevents.1.host.0" not in after  # the old release's, replaced by this run's
    assert any(k.startswith("events.out.tfevents.") for k in after) and "excitations.npz" in after
    assert not [p for p in prev.iterdir() if p.name.startswith(".")]
    assert (out / "split" / "metrics.json").stat().st_ino == inode  # carried as a hard link, not copied
    capsys.readouterr()

    def interrupted(*a, **k):
        raise KeyboardInterrupt

    monkeypatch.setattr(train_best, "compute_excitations_file", interrupted)
    before = snapshot(prev)
    assert train_best.main(args) == 130  # resumes the finished run: no epoch to train, then the export
    assert snapshot(prev) == before


# --------------------------------------------------------------------------- gtsrb.publish

def _folder(root: Path, files: dict[str, str]) -> Path:
    for name, text in files.items():
        _write(root / name, text)
    return root


def test_publish_dir_swaps_the_new_folder_in_and_carries_the_entries_it_does_not_write(tmp_path):
    target = _folder(tmp_path / "best", {"metrics.json": "old", "stale.csv": "old", "split/a.json": "a",
                                         "calibration.json": "c"})
    inode = (target / "split" / "a.json").stat().st_ino
    with publish_dir(target, replace=("metrics.json", "stale.*")) as stage:
        assert stage.parent == tmp_path and stage.name.startswith(".best.tmp-") and not list(stage.iterdir())
        (stage / "metrics.json").write_text("new")
        assert (target / "metrics.json").read_text() == "old"  # nothing published until the block ends
    assert snapshot(target) == {"metrics.json": hashlib.sha256(b"new").hexdigest(),
                                "calibration.json": hashlib.sha256(b"c").hexdigest(), "split": "dir",
                                "split/a.json": hashlib.sha256(b"a").hexdigest()}
    assert (target / "split" / "a.json").stat().st_ino == inode  # linked, not copied
    assert sorted(p.name for p in tmp_path.iterdir()) == ["best"]


@pytest.mark.parametrize("error", [KeyboardInterrupt, ValueError, OSError])
def test_publish_dir_leaves_the_target_untouched_when_the_block_raises(error, tmp_path):
    target = _folder(tmp_path / "best", {"metrics.json": "old", "split/a.json": "a"})
    before = snapshot(tmp_path)
    with pytest.raises(error):
        with publish_dir(target) as stage:
            (stage / "metrics.json").write_text("half")
            raise error()
    assert snapshot(tmp_path) == before


@pytest.mark.parametrize("exchange", [True, False], ids=["renameat2", "two-renames"])
def test_publish_dir_replaces_a_whole_folder_with_or_without_an_atomic_exchange(exchange, tmp_path, monkeypatch):
    import gtsrb.publish

    if not exchange:
        monkeypatch.setattr(gtsrb.publish, "_exchange", lambda a, b: False)
    target = _folder(tmp_path / "out", {"old.txt": "old"})
    with publish_dir(target) as stage:
        (stage / "new.txt").write_text("new")
    assert sorted(p.name for p in target.iterdir()) == ["new.txt"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"]
    with publish_dir(tmp_path / "fresh" / "out") as stage:  # no target yet, no parent either
        (stage / "a").write_text("a")
    assert (tmp_path / "fresh" / "out" / "a").read_text() == "a"


def test_the_next_publish_recovers_what_a_crash_in_the_middle_left(tmp_path):
    # A kill between the two renames: the old folder set aside, the new one never arrived.
    _folder(tmp_path / f".best.old-{DEAD_PID}", {"metrics.json": "old"})
    _folder(tmp_path / f".best.tmp-{DEAD_PID + 1}", {"metrics.json": "half"})
    recover(tmp_path / "best")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["best"]
    assert (tmp_path / "best" / "metrics.json").read_text() == "old"
    # A kill after the swap, before the old folder was removed: the old one goes, the new one stays.
    _folder(tmp_path / f".best.old-{DEAD_PID}", {"metrics.json": "older"})
    with publish_dir(tmp_path / "best", replace=("metrics.json",)) as stage:
        (stage / "metrics.json").write_text("new")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["best"]
    assert (tmp_path / "best" / "metrics.json").read_text() == "new"


def test_publish_dir_leaves_a_live_process_s_temp_folder_alone(tmp_path):
    mine = _folder(tmp_path / f".best.tmp-{os.getppid()}", {"x": "building"})  # a live process: the parent
    with publish_dir(tmp_path / "best") as stage:
        (stage / "a").write_text("a")
    assert (mine / "x").read_text() == "building"


def test_publish_dir_refuses_a_file_target(tmp_path):
    (tmp_path / "best").write_text("x")
    with pytest.raises(DataError, match="best: is a file, not a folder"):
        with publish_dir(tmp_path / "best"):
            pass


@pytest.mark.parametrize("where", ["folder", "under_a_file", "proc"])
def test_check_file_target_refuses_what_could_not_be_written(where, tmp_path):
    (tmp_path / "file").write_text("x")
    path, needle = {"folder": (tmp_path, "is a folder"),
                    "under_a_file": (tmp_path / "file" / "deeper" / "c.json", "is a file, not a folder"),
                    "proc": (Path("/proc/c.json"), "cannot write here")}[where]
    with pytest.raises(DataError, match=needle):
        check_file_target(path)


def test_check_file_target_makes_nothing(tmp_path):
    assert check_file_target(tmp_path / "a" / "b" / "c.json") == tmp_path / "a" / "b" / "c.json"
    assert sorted(p.name for p in tmp_path.iterdir()) == []
