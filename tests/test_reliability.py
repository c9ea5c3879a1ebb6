"""The seven reliability defects of issue 17, one test (or more) each, named by defect."""

import json
import zipfile

import numpy as np
import pytest
import torch
from PIL import Image

from gtsrb.checkpoint import load_checkpoint, save_checkpoint
from gtsrb.cli import main
from gtsrb.archive import DataError
from gtsrb.preprocess import MAX_PIXELS, decode
from gtsrb.model import ModelConfig, build_model
from gtsrb.config import TrainConfig
from gtsrb.train import fit

TINY = ModelConfig(cfg=(16, "M", 32, "M", 64, 64, "M", 128, 128, "M", 128, 128, "M"))
QUICK = TrainConfig(epochs=2, batch_size=64, histograms=False)


@pytest.fixture(scope="module")
def tiny_ckpt(tmp_path_factory):
    path = tmp_path_factory.mktemp("ckpt") / "best.pt"
    save_checkpoint({"model_config": TINY.to_dict(), "model": build_model(TINY).state_dict(), "epoch": 0}, path)
    return path


@pytest.fixture(scope="module")
def sign_png(tmp_path_factory):
    path = tmp_path_factory.mktemp("img") / "sign.png"
    Image.fromarray(np.full((40, 40, 3), 128, np.uint8)).save(path)
    return path


def _one_line_exit_2(capsys, args, *needles):
    assert main(args) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and err.startswith("gtsrb: error: "), err
    for n in needles:
        assert n in err, err
    return err


# 1. A kill while best.pt is written: resume repairs it, and the orphaned temp file goes.
@pytest.mark.slow
def test_1_resume_rebuilds_a_best_pt_lost_to_a_kill_and_removes_the_orphan(synthetic_pack, tmp_path, capsys):
    def stop(row, _):
        raise KeyboardInterrupt  # after epoch 1's last.pt (and best.pt) are written

    with pytest.raises(KeyboardInterrupt):
        fit(TINY, synthetic_pack, tmp_path, QUICK, on_epoch=stop, progress=False)
    # What kill -9 during the write of best.pt leaves: last.pt at epoch 1, no best.pt, a temp file.
    (tmp_path / "best.pt").unlink()
    orphan = tmp_path / ".best.pt.tmp-4242"
    orphan.write_bytes(b"\0" * 1000)
    history = fit(TINY, synthetic_pack, tmp_path, QUICK, resume=True, progress=False)
    assert len(history) == 2 and (tmp_path / "best.pt").is_file() and not orphan.exists()
    best = load_checkpoint(tmp_path / "best.pt")
    assert best["epoch"] == max(history, key=lambda h: h["val_accuracy"])["epoch"]  # the first best, as ever


@pytest.mark.slow
def test_1_a_finished_run_without_best_pt_gets_one_on_resume(synthetic_pack, tmp_path, capsys):
    args = ["train", "--data", str(synthetic_pack), "--config", json.dumps({"cfg": list(TINY.cfg)}),
            "--epochs", "1", "--batch-size", "64", "--out", str(tmp_path)]
    assert main(args) == 0
    (tmp_path / "best.pt").unlink()
    assert main([*args, "--resume"]) == 0
    last, best = load_checkpoint(tmp_path / "last.pt"), load_checkpoint(tmp_path / "best.pt")
    for k in last["model"]:
        assert torch.equal(last["model"][k], best["model"][k]), k


# 2. The library's decoder has a pixel cap, for the fast PPM path too, with the limit in the message.
@pytest.mark.slow
def test_2_a_ppm_over_the_pixel_cap_is_refused_before_decoding(tiny_ckpt, tmp_path, capsys):
    small = b"P6\n40 40\n255\n" + bytes(40 * 40 * 3)
    with pytest.raises(DataError, match=r"40x40.*the limit is 0 megapixels"):
        decode(small, "small.ppm", max_pixels=1000)
    assert decode(small, "small.ppm").size == (40, 40)
    side = int(MAX_PIXELS**0.5) + 10  # just over the default cap: 121 MB of pixels
    big = tmp_path / "big.ppm"
    big.write_bytes(f"P6\n{side} {side}\n255\n".encode() + bytes(side * side * 3))
    _one_line_exit_2(capsys, ["predict", str(tiny_ckpt), str(big)], str(big), "the limit is 40 megapixels")
    with pytest.raises(DataError, match=f"{side}x{side}.*the limit is 40 megapixels"):
        decode(big.read_bytes(), str(big))
    from gtsrb.inference import load_image

    with pytest.raises(DataError, match="the limit is 40 megapixels"):
        load_image(big)


@pytest.mark.slow
def test_2_pack_refuses_a_listed_ppm_over_the_cap(synthetic_zip, tmp_path, capsys):
    side = int(MAX_PIXELS**0.5) + 10
    hostile = tmp_path / "hostile.zip"
    with zipfile.ZipFile(synthetic_zip) as src, zipfile.ZipFile(hostile, "w", zipfile.ZIP_DEFLATED) as dst:
        for info in src.infolist():
            data = src.read(info)
            if info.filename.endswith("00003/00000_00000.ppm"):
                data = f"P6\n{side} {side}\n255\n".encode() + bytes(side * side * 3)
            dst.writestr(info, data)
    _one_line_exit_2(capsys, ["pack", str(hostile), "--out", str(tmp_path / "p.h5")], "00000_00000.ppm",
                     "the limit is 40 megapixels")
    assert not (tmp_path / "p.h5").exists()


# 3. A checkpoint whose weights do not fit its config: one line, exit 2, in predict, evaluate and the demo.
@pytest.mark.slow
@pytest.mark.parametrize("case", ["wrong_shapes", "wrong_keys", "other_architecture", "bad_image_size"])
def test_3_mismatched_checkpoints_end_with_one_line(case, tmp_path, sign_png, synthetic_pack, capsys):
    state = build_model(TINY).state_dict()
    config = TINY.to_dict()
    if case == "wrong_shapes":
        state["classifier.5.weight"] = torch.zeros(10, 512)
    elif case == "wrong_keys":
        state = {f"net.{k}": v for k, v in state.items()}
    elif case == "other_architecture":
        config = ModelConfig().to_dict()  # the seed preset's config over TINY's weights
    else:
        config["image_size"] = -5
    path = tmp_path / "bad.pt"
    save_checkpoint({"model_config": config, "model": state, "epoch": 0}, path)
    _one_line_exit_2(capsys, ["predict", str(path), str(sign_png)], str(path))
    _one_line_exit_2(capsys, ["evaluate", str(path), "--data", str(synthetic_pack)], str(path))
    pytest.importorskip("gradio")  # the `ui` extra
    from ui.app import main as demo_main

    assert demo_main(["--checkpoint", str(path)]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and str(path) in err


# 4. pack --out at a directory or under a regular file: refused at once, before any decoding.
@pytest.mark.parametrize("where", ["directory", "under_a_file"])
def test_4_pack_checks_out_before_decoding(where, synthetic_zip, tmp_path, monkeypatch, capsys):
    import gtsrb.data

    def no_decoding(*a, **k):
        raise AssertionError("decoded before checking --out")

    monkeypatch.setattr(gtsrb.data, "decode_records", no_decoding)
    if where == "directory":
        out, needle = tmp_path, "a directory"
    else:
        (tmp_path / "file").write_text("x")
        out, needle = tmp_path / "file" / "p.h5", "is a file, not a folder"
    _one_line_exit_2(capsys, ["pack", str(synthetic_zip), "--out", str(out)], str(out), needle)


# 5. Messages that say what is wrong.
def test_5_random_bytes_are_not_called_code(tmp_path, sign_png, capsys):
    path = tmp_path / "random.pt"
    path.write_bytes(np.random.default_rng(0).integers(0, 256, 5000, dtype=np.uint8).tobytes())
    err = _one_line_exit_2(capsys, ["predict", str(path), str(sign_png)], "not a readable checkpoint")
    assert "more than weights" not in err


def test_5_an_empty_class_folder_is_called_empty(tmp_path, capsys):
    from fixtures import make_training_tree

    tree = make_training_tree(tmp_path / "t", tracks=2, frames=1)
    folder = tree / "Final_Training" / "Images" / "00007"
    for f in folder.iterdir():
        f.unlink()
    _one_line_exit_2(capsys, ["pack", str(tree), "--out", str(tmp_path / "p.h5")], "00007", "missing or empty")


def test_5_a_directory_given_to_predict_is_called_a_directory(tiny_ckpt, tmp_path, capsys):
    _one_line_exit_2(capsys, ["predict", str(tiny_ckpt), str(tmp_path)], str(tmp_path), "a directory, not an image")


# 6. An interrupt after the rename keeps the complete pack and says so; one before it leaves nothing.
@pytest.mark.parametrize("written", [True, False])
def test_6_an_interrupt_around_the_rename_is_reported_truthfully(written, synthetic_zip, tmp_path, monkeypatch, capsys):
    import gtsrb.data

    real_pack = gtsrb.data.pack

    def pack_then_interrupt(sources, out, **kw):
        if written:
            real_pack(sources, out, **kw)
        raise KeyboardInterrupt

    monkeypatch.setattr(gtsrb.data, "pack", pack_then_interrupt)
    out = tmp_path / "p.h5"
    code = main(["pack", str(synthetic_zip), "--out", str(out)])
    err = capsys.readouterr().err
    if written:
        assert code == 0 and out.is_file() and f"interrupted after {out} was written in full" in err
    else:
        assert code == 130 and not out.exists() and "interrupted" in err


# 7. evaluate writes nothing beside the checkpoint unless --out says where.
def test_7_evaluate_leaves_the_checkpoint_folder_alone(tiny_ckpt, synthetic_pack, tmp_path, capsys):
    assert main(["evaluate", str(tiny_ckpt), "--data", str(synthetic_pack), "--json"]) == 0
    assert sorted(p.name for p in tiny_ckpt.parent.iterdir()) == ["best.pt"]
    assert main(["evaluate", str(tiny_ckpt), "--data", str(synthetic_pack), "--out", str(tmp_path / "ev")]) == 0
    assert (tmp_path / "ev" / "per_class.csv").is_file()
