"""The framing augmentation's data path (issue 33): a pack with whole frames and ROI boxes, the boxes
following the class-aware mirror, and fit() training on frames while validating on the ROI crops."""

import numpy as np
import pytest
import torch

from gtsrb.classes import mirror_table
from gtsrb.data import load_pack, pack
from gtsrb.model import ModelConfig
from gtsrb.config import TrainConfig
from gtsrb.train import fit, mirror_batch

TINY = ModelConfig(cfg=(16, "M", 32, "M", 64, 64, "M", 128, 128, "M", 128, 128, "M"))


def test_a_framed_pack_stores_frames_and_roi_boxes_beside_the_same_roi_images(framed_pack, synthetic_pack):
    framed = load_pack(framed_pack)
    assert framed.frames.shape == (len(framed.labels), 32, 32, 3) and framed.frames.dtype == np.uint8
    assert framed.boxes.shape == (len(framed.labels), 4) and framed.attrs["frame_size"] == 32
    # The fixture states a 64 px original with ROI 5..58 inclusive: fractions 5/64 and 59/64.
    np.testing.assert_allclose(framed.boxes, np.tile([5 / 64, 5 / 64, 59 / 64, 59 / 64], (len(framed.labels), 1)),
                               atol=1e-6)
    plain = load_pack(synthetic_pack)
    assert plain.frames is None and plain.boxes is None
    np.testing.assert_array_equal(framed.split, plain.split)  # the same split
    # The frame is the whole image: the unpacked full-frame pack at 32 px would hold the same pixels.
    val = framed.subset("val")
    assert val.frames.shape[0] == len(val.labels) and val.boxes.shape[0] == len(val.labels)


def test_keep_splits_keeps_the_frames_of_the_kept_rows(synthetic_zip, tmp_path):
    out = tmp_path / "val.h5"
    pack([synthetic_zip], out, roi=True, frame_size=40, keep_splits=["val"])
    p = load_pack(out)
    assert len(p.frames) == len(p.labels) == len(p.boxes) and p.frames.shape[1] == 40


def test_the_mirror_flips_a_box_with_its_frame():
    torch.manual_seed(0)
    table = torch.tensor(mirror_table())
    labels = torch.tensor([19, 1] * 200)  # 19 mirrors into 20; 1 never flips
    frames = torch.randint(0, 256, (len(labels), 8, 8, 3), dtype=torch.uint8)
    boxes = torch.tensor([0.1, 0.2, 0.6, 0.9]).repeat(len(labels), 1)
    out, new, = mirror_batch(frames, labels, table, boxes)
    flipped = new != labels
    assert 0.4 < flipped[labels == 19].float().mean() < 0.6 and not flipped[labels == 1].any()
    torch.testing.assert_close(boxes[flipped], torch.tensor([0.4, 0.2, 0.9, 0.9]).expand(int(flipped.sum()), 4))
    torch.testing.assert_close(boxes[~flipped], torch.tensor([0.1, 0.2, 0.6, 0.9]).expand(int((~flipped).sum()), 4))


def test_framing_on_a_pack_without_frames_is_refused_by_name(synthetic_pack, tmp_path):
    with pytest.raises(ValueError, match="frame-size"):
        fit(TINY, synthetic_pack, tmp_path, TrainConfig(epochs=1, framing=0.5), progress=False)


@pytest.mark.slow
def test_fit_with_framing_trains_on_the_frames_and_without_it_on_the_roi_images(framed_pack, synthetic_zip, tmp_path):
    def run(pack_path, framing, name):
        config = TrainConfig(epochs=1, batch_size=64, framing=framing, histograms=False, device="cpu")
        return fit(TINY, pack_path, tmp_path / name, config, progress=False)[-1]

    # Framing off: the frames are ignored and the run is the plain ROI run; on: another run, same val set.
    roi_pack = tmp_path / "roi.h5"
    pack([synthetic_zip], roi_pack, roi=True)
    plain, framed_off = run(roi_pack, 0.0, "plain"), run(framed_pack, 0.0, "off")
    framed_on = run(framed_pack, 0.8, "on")
    assert plain["train_loss"] == framed_off["train_loss"]
    assert framed_on["train_loss"] != plain["train_loss"]
    assert np.isfinite(framed_on["val_loss"]) and 0 <= framed_on["val_accuracy"] <= 1


def test_evaluate_reports_both_framings_of_a_framed_pack(framed_pack, synthetic_pack, tmp_path):
    from gtsrb.checkpoint import save_checkpoint
    from gtsrb.evaluate import evaluate
    from gtsrb.model import build_model

    torch.manual_seed(0)
    ckpt = tmp_path / "best.pt"
    save_checkpoint({"model_config": TINY.to_dict(), "model": build_model(TINY).state_dict(), "epoch": 1}, ckpt)
    both = evaluate(ckpt, framed_pack, "test")
    # The frames at the model's size are the full-frame pack's images: the same scores.
    assert both["full_frame"]["accuracy"] == evaluate(ckpt, synthetic_pack, "test")["accuracy"]
    assert "full_frame" not in evaluate(ckpt, synthetic_pack, "test")
