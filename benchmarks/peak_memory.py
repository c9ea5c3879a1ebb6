"""Peak memory of hostile input: what a 21000x21000 PPM costs `gtsrb pack`, and what a data URL, a 16-bit
PNG and an RGBA PNG cost the demo server. Development-only measurement, not a test.

    python benchmarks/peak_memory.py [--checkpoint results/best] [--json out.json]

(a) and (b): the peak RSS of a fresh `gtsrb pack` process (``os.wait4``'s ru_maxrss) on a small valid
archive, and on the same archive with one member replaced by a 21000x21000 PPM (1.3 GB of pixels,
deflated to about 1.3 MB; written in chunks, so this script stays small). Target: (b) at most 300 MB
above (a).

(c): ``python -m ui.app`` on a free port; after a warm-up request, each case's growth of the server's
peak RSS (VmHWM of /proc/PID/status, reset between cases through /proc/PID/clear_refs where the kernel
allows, else counted from the peak before the case). Target: at most 300 MB each.
"""

from __future__ import annotations

import argparse
import base64
import io
import json
import os
import socket
import subprocess
import sys
import tempfile
import time
import zipfile
from pathlib import Path

import httpx
import numpy as np
from PIL import Image

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "tests"))
from fixtures import make_training_tree, zip_tree  # noqa: E402  (the tests' synthetic archive)

TARGET_MB = 300
SIDE = 21000
FILE_META = {"_type": "gradio.FileData"}


def cpu_name() -> str:
    for line in Path("/proc/cpuinfo").read_text().splitlines():
        if line.startswith("model name"):
            return line.split(":", 1)[1].strip()
    return "unknown CPU"


def child_peak_mb(args: list[str]) -> tuple[float, int, str]:
    """Run ``args``; (its peak RSS in MB, exit status, last stderr line)."""
    with tempfile.TemporaryFile() as err:
        proc = subprocess.Popen(args, cwd=REPO, stdout=subprocess.DEVNULL, stderr=err,
                                env={**os.environ, "OMP_NUM_THREADS": "1"})
        _, status, usage = os.wait4(proc.pid, 0)
        proc.returncode = os.waitstatus_to_exitcode(status)
        err.seek(0)
        lines = err.read().decode(errors="replace").strip().splitlines()
    return usage.ru_maxrss / 1024, proc.returncode, lines[-1] if lines else ""


def bomb_zip(valid: Path, out: Path, member_suffix: str = "00003/00000_00000.ppm") -> Path:
    """``valid`` with one PPM replaced by a SIDE x SIDE one of zeros, streamed through deflate."""
    chunk = bytes(64 << 20)
    with zipfile.ZipFile(valid) as src, zipfile.ZipFile(out, "w", zipfile.ZIP_DEFLATED) as dst:
        for info in src.infolist():
            if info.filename.endswith(member_suffix):
                left = SIDE * SIDE * 3
                with dst.open(info.filename, "w", force_zip64=True) as f:
                    f.write(f"P6\n{SIDE} {SIDE}\n255\n".encode())
                    while left:
                        f.write(chunk[: min(left, len(chunk))])
                        left -= min(left, len(chunk))
            else:
                dst.writestr(info, src.read(info))
    return out


def measure_pack(tmp: Path) -> dict:
    valid = zip_tree(make_training_tree(tmp / "tree", tracks=10, frames=1), tmp / "valid.zip")
    bomb = bomb_zip(valid, tmp / "bomb.zip")
    gtsrb = [sys.executable, "-m", "gtsrb.cli", "pack"]
    valid_mb, valid_rc, _ = child_peak_mb([*gtsrb, str(valid), "--out", str(tmp / "valid.h5")])
    bomb_mb, bomb_rc, bomb_err = child_peak_mb([*gtsrb, str(bomb), "--out", str(tmp / "bomb.h5")])
    return {"valid_archive_mb": round(valid_mb, 1), "valid_exit": valid_rc,
            "ppm_21000_mb": round(bomb_mb, 1), "ppm_21000_exit": bomb_rc, "ppm_21000_message": bomb_err,
            "bomb_zip_bytes": bomb.stat().st_size, "difference_mb": round(bomb_mb - valid_mb, 1)}


# --------------------------------------------------------------------------- the demo server


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def hwm_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    raise RuntimeError("no VmHWM")


def reset_hwm(pid: int) -> bool:
    """Reset the peak RSS to the current RSS (Linux: 5 into clear_refs); False where not allowed."""
    try:
        Path(f"/proc/{pid}/clear_refs").write_text("5")
        return True
    except OSError:
        return False


def upload(url: str, name: str, data: bytes) -> dict:
    r = httpx.post(url + "gradio_api/upload", files={"files": (name, data)}, timeout=120)
    r.raise_for_status()
    return {"path": r.json()[0], "orig_name": name, "meta": FILE_META}


def predict(url: str, image) -> str:
    """POST /gradio_api/call/predict and read its events: 'complete', the error's message, or the HTTP refusal."""
    r = httpx.post(url + "gradio_api/call/predict", json={"data": [image, None]}, timeout=120)
    if r.status_code != 200:
        return f"HTTP {r.status_code}: {r.json().get('detail')}"
    with httpx.stream("GET", f"{url}gradio_api/call/predict/{r.json()['event_id']}", timeout=300) as s:
        text = "".join(s.iter_text())
    if "event: complete" in text:
        return "complete"
    return json.loads(text.split("event: error", 1)[1].split("data:", 1)[1].splitlines()[0]).get("error", text)


def raw_post(url: str, declared: int, body: bytes) -> str:
    """A POST declaring ``declared`` bytes, of which ``body`` is sent: the reply's status line."""
    host, port = url.split("//", 1)[1].rstrip("/").split(":")
    with socket.create_connection((host, int(port)), timeout=60) as sock:
        sock.sendall(b"POST /gradio_api/call/predict HTTP/1.1\r\nHost: demo\r\nContent-Type: application/json\r\n"
                     + f"Content-Length: {declared}\r\n\r\n".encode() + body)
        reply = sock.recv(65536)
    return reply.split(b"\r\n", 1)[0].decode(errors="replace")


def png(img: Image.Image) -> bytes:
    buf = io.BytesIO()
    img.save(buf, "PNG")
    return buf.getvalue()


def demo_cases(url: str) -> dict:
    """name -> a function that sends the case and returns what the server answered."""
    stop = (REPO / "ui" / "examples" / "14-stop.png").read_bytes()
    data_url = "data:image/png;base64," + base64.b64encode(png(Image.new("RGB", (5000, 5000), (200, 30, 30)))).decode()
    big_body = b'{"data": [{"url": "data:image/png;base64,' + b"A" * (1 << 20)
    side16 = int((10_000_000) ** 0.5)  # at the 16-bit cap: accepted, decoded, classified
    return {
        "data URL, 186 MB body": lambda: raw_post(url, 186 << 20, big_body),
        "data URL, small body": lambda: predict(url, {"url": data_url}),
        "16-bit PNG 6000x6666 (78 kB)": lambda: predict(url, upload(
            url, "flat16.png", png(Image.fromarray(np.full((6666, 6000), 30000, np.uint16))))),
        "RGBA PNG 4000x4000": lambda: predict(url, upload(url, "rgba.png", png(Image.new("RGBA", (4000, 4000),
                                                                                         (200, 30, 30, 128))))),
        f"16-bit PNG {side16}x{side16} (at the cap)": lambda: predict(url, upload(
            url, "cap16.png", png(Image.fromarray(np.full((side16, side16), 30000, np.uint16))))),
        f"RGBA PNG {side16}x{side16} (at the cap)": lambda: predict(url, upload(
            url, "cap-rgba.png", png(Image.new("RGBA", (side16, side16), (200, 30, 30, 128))))),
        "RGB PNG 6324x6324 (at the 8-bit cap)": lambda: predict(url, upload(
            url, "cap-rgb.png", png(Image.new("RGB", (6324, 6324), (200, 30, 30))))),
        "Stop sign 32x32 (normal)": lambda: predict(url, upload(url, "stop.png", stop)),
    }


def measure_demo(checkpoint: str, tmp: Path) -> dict:
    port = free_port()
    url = f"http://127.0.0.1:{port}/"
    log = open(tmp / "demo.log", "w")
    proc = subprocess.Popen([sys.executable, "-m", "ui.app", "--checkpoint", checkpoint, "--port", str(port)],
                            cwd=REPO, stdout=log, stderr=subprocess.STDOUT,
                            env={**os.environ, "GRADIO_ANALYTICS_ENABLED": "False", "OMP_NUM_THREADS": "1"})
    try:
        deadline = time.monotonic() + 240
        while True:
            if proc.poll() is not None:
                raise RuntimeError((tmp / "demo.log").read_text())
            try:
                if httpx.get(url, timeout=2).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            if time.monotonic() > deadline:
                raise RuntimeError("the demo did not start in 240 s")
            time.sleep(1)
        cases = demo_cases(url)
        cases["Stop sign 32x32 (normal)"]()  # warm-up: lazy initialisation belongs to the baseline
        baseline = hwm_mb(proc.pid)
        results = {"baseline_peak_mb": round(baseline, 1), "cases": {}}
        for name, send in cases.items():
            resettable = reset_hwm(proc.pid)
            before = hwm_mb(proc.pid)
            answer = send()
            time.sleep(0.5)
            after = hwm_mb(proc.pid)
            results["cases"][name] = {"growth_mb": round(after - before, 1), "answer": answer[:160],
                                      "peak_reset": resettable}
        return results
    finally:
        proc.terminate()
        proc.wait(timeout=60)
        log.close()


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--checkpoint", default="results/best")
    p.add_argument("--json", type=Path, help="also write the figures here")
    p.add_argument("--skip-demo", action="store_true")
    a = p.parse_args(argv)
    out: dict = {"cpu": cpu_name(), "cores": os.cpu_count(), "target_mb": TARGET_MB}
    with tempfile.TemporaryDirectory() as d:
        tmp = Path(d)
        out["pack"] = measure_pack(tmp)
        pk = out["pack"]
        print(f"{out['cpu']}, {out['cores']} cores")
        print(f"gtsrb pack, valid archive:        peak {pk['valid_archive_mb']:7.1f} MB (exit {pk['valid_exit']})")
        print(f"gtsrb pack, 21000x21000 PPM zip:  peak {pk['ppm_21000_mb']:7.1f} MB (exit {pk['ppm_21000_exit']}, "
              f"zip {pk['bomb_zip_bytes'] / 1e6:.1f} MB)")
        print(f"  difference {pk['difference_mb']:+.1f} MB (target <= {TARGET_MB}): {pk['ppm_21000_message']}")
        if not a.skip_demo:
            out["demo"] = measure_demo(a.checkpoint, tmp)
            print(f"demo server: peak after warm-up {out['demo']['baseline_peak_mb']:.1f} MB")
            for name, r in out["demo"]["cases"].items():
                print(f"  {name:38s} growth {r['growth_mb']:7.1f} MB  {r['answer'][:110]}")
    if a.json:
        a.json.write_text(json.dumps(out, indent=1) + "\n")
    growths = [r["growth_mb"] for r in out.get("demo", {}).get("cases", {}).values()]
    worst = max([out["pack"]["difference_mb"], *growths])
    print(f"worst: {worst:.1f} MB ({'within' if worst <= TARGET_MB else 'OVER'} the {TARGET_MB} MB target)")
    return 0 if worst <= TARGET_MB else 1


if __name__ == "__main__":
    sys.exit(main())
