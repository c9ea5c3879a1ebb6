"""The demo's /predict API through gradio_client, against a real server (``python -m ui.app``).

One server serves the whole module. Bad uploads must come back as clear errors
that name the user's file; unusual but valid images are classified with a note;
a checkpoint holding pickled code is refused before anything in it runs.
"""

from __future__ import annotations

import hashlib
import re
import struct
import subprocess
import sys
import zlib
from pathlib import Path

import numpy as np
import pytest
from fixtures import checkerboard
from PIL import Image
from ui_server import CHECKPOINT, REPO, serve

from gtsrb.classes import CLASS_NAMES
from gtsrb.explain import EXCITATIONS_FILE, load_excitations

pytest.importorskip("gradio_client")  # the `ui` extra
pytestmark = pytest.mark.slow  # a real Gradio server in a subprocess
from gradio_client import Client, handle_file
from gradio_client.exceptions import AppError

STOP = REPO / "ui" / "examples" / "14-stop.png"
STOP_ID = 14
SE_WIDTHS = {"stage1": 64, "stage2": 128, "stage3": 256, "stage4": 512}  # the committed checkpoint's SE stages
SERVER_LOG = REPO / "artifacts" / "ui" / "api-server.log"


# --------------------------------------------------------------------------- fixtures

@pytest.fixture(scope="module")
def server_url():
    SERVER_LOG.parent.mkdir(parents=True, exist_ok=True)
    with serve(log=SERVER_LOG) as url:
        yield url


@pytest.fixture(scope="module")
def client(server_url):
    return Client(server_url, verbose=False)


@pytest.fixture(scope="module")
def local():
    """The same checkpoint loaded in this process: what the API must agree with."""
    from gtsrb.inference import Classifier

    return Classifier.load(CHECKPOINT)


def predict(client: Client, path: Path) -> dict:
    return client.predict(handle_file(str(path)), api_name="/predict")


def check_well_formed(r: dict) -> None:
    """The shape every /predict answer has."""
    assert isinstance(r, dict), r
    top5 = r["top5"]
    assert len(top5) == 5
    probs = [t["probability"] for t in top5]
    assert probs == sorted(probs, reverse=True)
    assert all(0.0 <= p <= 1.0 for p in probs)
    assert sum(probs) <= 1.0 + 1e-5
    for t in top5:
        assert 0 <= t["class_id"] < len(CLASS_NAMES)
        assert t["name"] == CLASS_NAMES[t["class_id"]]
    assert len({t["class_id"] for t in top5}) == 5
    assert r["prediction"] == top5[0]
    for key in ("se_off", "se_held"):  # the committed checkpoint has class averages, so both come back
        c = r[key]
        assert len(c["top5"]) == 5 and c["prediction"] == c["top5"][0], key
        assert 0.0 <= c["probability_of_se_on_class"] <= 1.0, key
    assert r["se_held"]["blocks"] == r["se_off"]["blocks"]
    assert set(r["excitations"]) == set(SE_WIDTHS)
    for stage, width in SE_WIDTHS.items():
        e = r["excitations"][stage]
        values = np.asarray(e["values"])
        assert values.shape == (width,), stage
        assert ((values >= 0) & (values <= 1)).all(), stage
        for key in ("predicted_class_mean", "all_classes_mean"):
            avg = np.asarray(e[key])
            assert avg.shape == (width,), (stage, key)
            assert ((avg >= 0) & (avg <= 1)).all(), (stage, key)
        assert 0.0 <= e["class_specificity"] <= 1.0, stage
        assert e["distance_to_predicted_class_mean"] >= 0 and e["distance_to_all_classes_mean"] >= 0
    cam = r["gradcam"]
    assert cam["class_id"] == top5[0]["class_id"]
    heat = np.asarray(cam["heatmap"])
    assert heat.shape == (28, 28)
    assert ((heat >= 0) & (heat <= 1)).all()
    pre = np.asarray(r["preprocessed"])
    assert pre.shape == (28, 28, 3)
    assert ((pre >= 0) & (pre <= 255)).all()
    assert isinstance(r["input_note"], str)


# --------------------------------------------------------------------------- a real image

@pytest.mark.timeout(300)
def test_real_stop_sign(client, local):
    r = predict(client, STOP)
    check_well_formed(r)
    assert r["file"] == STOP.name
    assert r["prediction"]["class_id"] == STOP_ID
    assert r["prediction"]["name"] == CLASS_NAMES[STOP_ID] == "Stop"
    assert r["input_note"] == ""  # a 32x32 RGB PNG: nothing unusual to say

    # The API reports the model's real SE gates and probabilities, not something made up.
    expected = local.predict(STOP)
    assert set(expected.excitations) == set(r["excitations"])
    for stage, values in expected.excitations.items():
        np.testing.assert_allclose(r["excitations"][stage]["values"], values[0], atol=1e-4, err_msg=stage)
    for t in r["top5"]:
        assert t["probability"] == pytest.approx(float(expected.probs[0, t["class_id"]]), abs=1e-5)
    np.testing.assert_array_equal(np.asarray(r["preprocessed"]), local.preprocess(STOP)[0])

    assert r["checkpoint_sha256"] == hashlib.sha256(CHECKPOINT.read_bytes()).hexdigest()
    assert r["gradcam"]["class_id"] == STOP_ID


def test_se_off_switches_only_the_named_blocks(client, local):
    """The API's second input: the SE blocks to switch off (omitted: all), as the page's toggles do."""
    every = predict(client, STOP)["se_off"]
    assert every["blocks"] == list(SE_WIDTHS)
    averages, _meta = load_excitations(CHECKPOINT.parent / EXCITATIONS_FILE)
    for blocks in (["stage4"], ["stage1", "stage2"], []):
        r = client.predict(handle_file(str(STOP)), blocks, api_name="/predict")
        check_well_formed(r)
        assert r["se_off"]["blocks"] == blocks
        with local.se_disabled(blocks):
            expected = local.predict(STOP).probs[0]
        for t in r["se_off"]["top5"]:
            assert t["probability"] == pytest.approx(float(expected[t["class_id"]]), abs=1e-5), blocks
        # held: each named gate at its average over the class averages' images (Classifier.se_held)
        assert r["se_held"]["blocks"] == blocks
        with local.se_held({b: averages[b]["overall_mean"] for b in blocks}):
            expected = local.predict(STOP).probs[0]
        for t in r["se_held"]["top5"]:
            assert t["probability"] == pytest.approx(float(expected[t["class_id"]]), abs=1e-5), blocks
    assert r["se_off"]["top5"] == r["top5"] == r["se_held"]["top5"]  # nothing switched off: the SE-on answer
    with pytest.raises(AppError, match="no SE block named stage9"):
        client.predict(handle_file(str(STOP)), ["stage9"], api_name="/predict")


def test_without_class_averages_only_the_identity_counterfactual_is_shown(local, tmp_path):
    import shutil

    from ui.app import Demo
    from ui.panels import se_off_markdown

    shutil.copy(CHECKPOINT, tmp_path / "best.pt")  # no excitations.npz beside it
    demo = Demo(tmp_path / "best.pt")
    array = local.preprocess(STOP)
    off, held = demo.se_off(array, ["stage1"], STOP_ID)
    assert demo.stats is None and held is None and off["blocks"] == ["stage1"]
    text = se_off_markdown({"class_id": STOP_ID, "name": "Stop"}, off, held)
    assert "replaced by the identity" in text and "held" not in text


def test_confidence_is_calibrated_and_a_non_sign_is_unsure(client, tmp_path):
    sure = predict(client, STOP)["confidence"]
    assert sure["calibrated"] and not sure["unsure"] and sure["reasons"] == []
    assert sure["probability"] >= sure["threshold"]
    assert sure["distance"] <= sure["distance_q99"]
    board = tmp_path / "checkerboard.png"
    Image.fromarray(checkerboard()).save(board)
    c = predict(client, board)["confidence"]
    assert c["unsure"] and c["unlike_training"] and c["distance"] > c["distance_q99"]
    assert any("unlike the training data" in reason for reason in c["reasons"])


# --------------------------------------------------------------------------- bad input
# --------------------------------------------------------------------------- bad input

def _png_header_only(width: int, height: int) -> bytes:
    """A PNG signature and IHDR claiming width x height, then an empty IDAT and IEND."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)  # 8-bit grayscale
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"")) + chunk(b"IEND", b"")


def _huge_png(path: Path) -> None:
    # 10000x10000 (100 megapixels, over the 40 MP limit), about 120 kB on disk.
    Image.new("L", (10_000, 10_000), 128).save(path, optimize=False)


def _bad(kind: str, tmp_path: Path) -> tuple[Path, tuple[str, ...]]:
    """Write one bad upload into tmp_path: (its path, words one of which the message must hold)."""
    if kind == "text":
        p = tmp_path / "notes.txt"
        p.write_text("this is a text file, not a traffic sign\n")
        return p, ("not an image",)
    if kind == "empty":
        p = tmp_path / "empty.png"
        p.write_bytes(b"")
        return p, ("empty",)
    if kind == "huge":
        p = tmp_path / "huge-10000x10000.png"
        _huge_png(p)
        return p, ("megapixels",)
    if kind == "bomb-header":
        # Over PIL's own decompression-bomb limit: refused when the header is read.
        p = tmp_path / "bomb-30000x30000.png"
        p.write_bytes(_png_header_only(30_000, 30_000))
        return p, ("megapixels", "too large")
    if kind == "png-garbage":
        p = tmp_path / "garbage.png"
        p.write_bytes(b"\x89PNG\r\n\x1a\n" + bytes(np.random.default_rng(0).integers(0, 256, 4096, dtype=np.uint8)))
        return p, ("corrupt",)
    if kind == "truncated":
        p = tmp_path / "truncated-stop.png"
        data = STOP.read_bytes()
        p.write_bytes(data[: len(data) // 2])
        return p, ("corrupt", "truncated")
    raise ValueError(kind)


BAD_KINDS = ["text", "empty", "huge", "bomb-header", "png-garbage", "truncated"]


def _check_refused(client: Client, path: Path, words: tuple[str, ...]) -> str:
    with pytest.raises(AppError) as info:
        predict(client, path)
    message = str(info.value.message)
    assert message.startswith("Cannot use this file."), message
    low = message.lower()
    assert any(w in low for w in words), message
    assert path.name in message, message
    # The user's file name, not the server's temp path (or ours) to it.
    assert not re.search(r"[/\\]\S*" + re.escape(path.name), message), message
    assert str(path.parent) not in message
    return message


@pytest.mark.timeout(300)
@pytest.mark.parametrize("kind", BAD_KINDS)
def test_bad_input_is_refused_clearly(client, tmp_path, kind):
    path, words = _bad(kind, tmp_path)
    _check_refused(client, path, words)


@pytest.mark.timeout(300)
def test_huge_image_is_refused_from_its_header(client, tmp_path):
    """A header-only PNG claiming 10000x10000: decoding would fail, so the refusal must come first."""
    path = tmp_path / "header-only-10000x10000.png"
    path.write_bytes(_png_header_only(10_000, 10_000))
    message = _check_refused(client, path, ("megapixels",))
    assert "10000x10000" in message and "40 megapixels" in message


@pytest.mark.timeout(300)
def test_no_file_is_refused(client):
    with pytest.raises(AppError) as info:
        client.predict(None, api_name="/predict")
    assert str(info.value.message).startswith("No image received"), info.value.message


@pytest.mark.timeout(300)
def test_oversized_upload_is_refused(client, server_url, tmp_path):
    """Over the 20 MB upload limit: gradio_client refuses it, and so does the server itself."""
    import httpx

    path = tmp_path / "oversized.png"
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + bytes(21 * 1024 * 1024))
    with pytest.raises(ValueError, match="maximum file size"):
        predict(client, path)
    with path.open("rb") as f:
        r = httpx.post(server_url + "gradio_api/upload", files={"files": (path.name, f, "image/png")}, timeout=120)
    assert r.status_code == 413, r.text


# --------------------------------------------------------------------------- unusual but valid images

def _stop() -> Image.Image:
    return Image.open(STOP).convert("RGB")


def _unusual(kind: str, tmp_path: Path) -> tuple[Path, tuple[str, ...]]:
    """Write one unusual image derived from the Stop example: (path, words its input_note must hold)."""
    stop = _stop()
    if kind == "grayscale":
        p = tmp_path / "stop-gray.png"
        stop.convert("L").save(p)
        return p, ("grayscale",)
    if kind == "rgba":
        a = np.asarray(stop.convert("RGBA")).copy()
        a[:3, :, 3] = 0  # a transparent border of background
        a[-3:, :, 3] = 0
        a[:, :3, 3] = 0
        a[:, -3:, 3] = 0
        p = tmp_path / "stop-rgba.png"
        Image.fromarray(a, "RGBA").save(p)
        return p, ("rgba", "transparent")
    if kind == "gray16":
        a = np.asarray(stop.convert("L"), dtype=np.uint16) * 257  # 0..255 -> 0..65535
        img = Image.fromarray(a)
        assert img.mode == "I;16"
        p = tmp_path / "stop-16bit.png"
        img.save(p)
        return p, ("16-bit",)
    if kind == "palette":
        p = tmp_path / "stop-palette.png"
        stop.convert("P", palette=Image.Palette.ADAPTIVE, colors=64).save(p)
        return p, ("palette",)
    if kind == "gif":
        frames = [stop.convert("P", palette=Image.Palette.ADAPTIVE, colors=64),
                  Image.new("RGB", stop.size, (0, 0, 255)).convert("P", palette=Image.Palette.ADAPTIVE),
                  Image.new("RGB", stop.size, (0, 200, 0)).convert("P", palette=Image.Palette.ADAPTIVE)]
        p = tmp_path / "stop-animated.gif"
        frames[0].save(p, save_all=True, append_images=frames[1:], duration=200, loop=0)
        with Image.open(p) as check:
            assert check.n_frames == 3
        return p, ("animated", "3 frames", "first frame")
    raise ValueError(kind)


@pytest.mark.timeout(300)
@pytest.mark.parametrize("kind", ["grayscale", "rgba", "gray16", "palette", "gif"])
def test_unusual_image_is_classified_with_a_note(client, local, tmp_path, kind):
    path, words = _unusual(kind, tmp_path)
    r = predict(client, path)
    check_well_formed(r)
    assert r["file"] == path.name
    note = r["input_note"].lower()
    for w in words:
        assert w in note, r["input_note"]
    # Same top-1 and gates as the model in this process on the same file.
    expected = local.predict(path)
    assert r["prediction"]["class_id"] == int(expected.probs[0].argmax())
    for stage, values in expected.excitations.items():
        np.testing.assert_allclose(r["excitations"][stage]["values"], values[0], atol=1e-4, err_msg=stage)
    if kind in ("rgba", "palette", "gif"):
        # Colour survives: still a Stop sign (the GIF's first frame is the Stop sign).
        assert r["prediction"]["class_id"] == STOP_ID, r["top5"]
    else:
        # Without colour this model does not see a Stop sign (it says Yield): the 16-bit copy must
        # land exactly where the 8-bit grayscale one does, since it scales back to the same pixels.
        gray = local.predict(_stop().convert("L"))
        assert r["prediction"]["class_id"] == int(gray.probs[0].argmax())
        assert r["prediction"]["probability"] == pytest.approx(float(gray.probs[0].max()), abs=1e-5)


@pytest.mark.timeout(300)
def test_grayscale_transparency_key_becomes_gray(client, tmp_path):
    a = np.asarray(_stop().convert("L")).copy()
    a[:8] = 0  # the top rows: value 0, declared transparent by the PNG's tRNS chunk
    path = tmp_path / "stop-gray-trns.png"
    Image.fromarray(a).save(path, transparency=0)
    r = predict(client, path)
    assert "transparent pixels became gray" in r["input_note"]
    assert np.asarray(r["preprocessed"])[0, 0].tolist() == [128, 128, 128]


@pytest.mark.timeout(300)
def test_exif_orientation_is_applied(client, tmp_path):
    exif = Image.Exif()
    exif[0x0112] = 6  # orientation 6: turn 90 degrees clockwise to view (the pixels are turned 90 counter-clockwise)
    path = tmp_path / "stop-exif-rotated.jpg"
    _stop().transpose(Image.Transpose.ROTATE_90).save(path, quality=95, exif=exif)
    r = predict(client, path)
    assert r["prediction"]["class_id"] == STOP_ID, r["top5"]
    assert "EXIF orientation" in r["input_note"]


# --------------------------------------------------------------------------- the server keeps serving

@pytest.mark.timeout(300)
def test_server_keeps_serving_after_bad_input(client, tmp_path):
    # Every bad input again (in case this test runs alone), then a good request on the same client...
    for kind in BAD_KINDS:
        folder = tmp_path / kind
        folder.mkdir()
        path, words = _bad(kind, folder)
        _check_refused(client, path, words)
    r = predict(client, STOP)
    check_well_formed(r)
    assert r["prediction"]["class_id"] == STOP_ID
    # ...and on a fresh connection.
    r2 = predict(Client(client.src, verbose=False), STOP)
    assert r2["top5"] == r["top5"]


# --------------------------------------------------------------------------- unsafe or missing checkpoints

MARKER_TEXT = "PAYLOAD-RAN-0xC0FFEE"


class CustomObject:
    """An instance of a class from outside torch: loading it would mean importing and running code."""

    def __init__(self):
        self.note = "not plain data"


class PrintPayload:
    def __reduce__(self):
        return (print, (MARKER_TEXT,))


class OpenPayload:
    """Unpickling it would create a file: an observable side effect."""

    def __init__(self, target: Path):
        self.target = str(target)

    def __reduce__(self):
        return (open, (self.target, "w"))


def _evil_checkpoint(kind: str, tmp_path: Path) -> tuple[Path, Path]:
    """(checkpoint path, a file that exists only if the payload ran)."""
    import torch

    marker = tmp_path / "payload-ran.txt"
    payload = {"custom": CustomObject(), "print": PrintPayload(), "open": OpenPayload(marker)}[kind]
    path = tmp_path / f"evil-{kind}.pt"
    state = {"model": {}, "model_config": {}, "epoch": 1, "x": payload}
    if kind == "open":
        state["model"] = {"w": torch.zeros(2)}
    torch.save(state, path)
    return path, marker


@pytest.mark.timeout(300)
@pytest.mark.parametrize("kind", ["custom", "print", "open"])
def test_pickled_code_checkpoint_is_refused(tmp_path, capfd, kind):
    from gtsrb.checkpoint import CheckpointError
    from gtsrb.inference import Classifier

    path, marker = _evil_checkpoint(kind, tmp_path)
    capfd.readouterr()
    with pytest.raises(CheckpointError, match="refused") as info:
        Classifier.load(path)
    assert str(path) in str(info.value)
    assert "\n" not in str(info.value)
    assert MARKER_TEXT not in capfd.readouterr().out
    assert not marker.exists()

    # The demo refuses it too, with one line and status 2, before any server starts.
    proc = subprocess.run([sys.executable, "-m", "ui.app", "--checkpoint", str(path), "--port", "9"],
                          check=False, cwd=REPO, capture_output=True, text=True, timeout=240)
    assert proc.returncode == 2, proc.stdout + proc.stderr
    errors = [ln for ln in proc.stderr.splitlines() if ln.startswith("demo: error:")]
    assert len(errors) == 1, proc.stderr
    assert "refused" in errors[0] and path.name in errors[0], errors[0]
    assert proc.stderr.rstrip().splitlines()[-1] == errors[0], proc.stderr  # nothing after it (no traceback)
    assert "Traceback" not in proc.stderr
    assert "Running on" not in proc.stdout
    assert MARKER_TEXT not in proc.stdout + proc.stderr
    assert not marker.exists()


@pytest.mark.timeout(300)
def test_missing_checkpoint_says_how_to_get_one():
    proc = subprocess.run([sys.executable, "-m", "ui.app", "--checkpoint", "nowhere/best.pt", "--port", "9"],
                          check=False, cwd=REPO, capture_output=True, text=True, timeout=240)
    assert proc.returncode == 2, proc.stdout + proc.stderr
    errors = [ln for ln in proc.stderr.splitlines() if ln.startswith("demo: error:")]
    assert len(errors) == 1, proc.stderr
    assert "nowhere/best.pt" in errors[0] and "no such checkpoint" in errors[0]
    assert "make train-best" in errors[0]
    assert "Traceback" not in proc.stderr and "Running on" not in proc.stdout


def test_server_address_follows_gradio_conventions(monkeypatch):
    from ui.app import server_address

    monkeypatch.delenv("GRADIO_SERVER_NAME", raising=False)
    monkeypatch.delenv("GRADIO_SERVER_PORT", raising=False)
    assert server_address(None, None) == ("127.0.0.1", 7860)
    monkeypatch.setenv("GRADIO_SERVER_NAME", "0.0.0.0")
    monkeypatch.setenv("GRADIO_SERVER_PORT", "7911")
    assert server_address(None, None) == ("0.0.0.0", 7911)
    assert server_address("127.0.0.1", 8000) == ("127.0.0.1", 8000)  # the flags win
    monkeypatch.setenv("GRADIO_SERVER_PORT", "seventy")
    with pytest.raises(ValueError, match="GRADIO_SERVER_PORT='seventy'"):
        server_address(None, None)


def test_make_demo_serves_on_gradio_server_port(tmp_path):
    """`GRADIO_SERVER_PORT=P make demo` serves on P (the Makefile passes no --port unless PORT= is given)."""
    import os
    import time
    import urllib.request

    from benchmarks.loadtest.servers import free_port

    port = free_port()
    env = {**os.environ, "GRADIO_SERVER_PORT": str(port), "GRADIO_ANALYTICS_ENABLED": "False"}
    log = tmp_path / "demo.log"
    with open(log, "w") as out:
        proc = subprocess.Popen(["make", "demo", f"BIN={Path(sys.executable).parent}", "STAMP="], cwd=REPO, env=env,
                                stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        deadline = time.monotonic() + 180
        while True:
            assert proc.poll() is None, log.read_text()
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/", timeout=2) as r:
                    assert r.status == 200
                    break
            except OSError:
                assert time.monotonic() < deadline, log.read_text()
                time.sleep(1)
    finally:
        os.killpg(proc.pid, 15)
        proc.wait(timeout=30)
