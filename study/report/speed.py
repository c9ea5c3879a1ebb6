"""Speed: `make bench` (the training step on CPU and GPU), the precision rule and its check
(`make precision-check`), and the demo's load test (`make loadtest`)."""

from __future__ import annotations

import numpy as np
import scipy.stats

from study.report.common import machine_text, md_table


# The cited CPU bench run (results/SPEED.md): `make bench` on the development machine.
BENCH_CPU = "results/bench/2026-12-01-cpu-2core-amd-avx2.json"


# Bench runs behind the precision rule, one per CPU kind (results/SPEED.md).
PRECISION_RULE_RUNS = ("results/bench/2026-11-26-cpu-2core-run13.json", BENCH_CPU)


def _n(v, digits: int = 0) -> str:
    return "–" if v is None else f"{v:,.{digits}f}"


def _rate(d: dict | None) -> str:
    """A bench figure with its spread: median [slowest–fastest round]."""
    return "–" if not d else f"{d['median']:,.0f} [{d['min']:,.0f}–{d['max']:,.0f}]"


ROUTE_NOTES = {
    "stock": "plain `torch.nn` modules: no CPU route",
    "default_twin": "the default's options spelled out (a check of the method)",
    "nchw": "NCHW activations instead of channels_last",
    "fp32": "precision forced to fp32", "bf16": "precision forced to bf16 (autocast)",
}


def speed_table(now: dict, name: str) -> str:
    """One `make bench` run: the training step and its variants (median and spread over
    alternating rounds, each against the stock step), the naive pipeline, inference and packing."""
    m = now["machine"]
    stock = now["train_variants_img_s"]["stock"]["median"]
    rows = [["default training step (`train_img_s`)", _rate(now["train_img_s_spread"]),
             f"{now['train_img_s'] / stock:.2f}", "what `gtsrb train`, the study and train-best run"]]
    for key, d in now["train_variants_img_s"].items():
        note = ROUTE_NOTES.get(key) or f"`gtsrb.cpu_routes`: only `{key.removeprefix('route_')}`"
        rows.append([f"variant `{key}`", _rate(d), f"{d['median'] / stock:.2f}", note])
    rows.append(["naive: torchvision GTSRB + PIL + DataLoader, fp32", _rate(now.get("naive_img_s_spread")),
                 _n(now.get("naive_img_s", 0) / stock, 2) if now.get("naive_img_s") else "–", ""])
    table = md_table(["training, seed preset, batch 128", "img/s, median [min–max]", "÷ stock", ""], rows)
    t = now.get("targets", {}).get("speedup_vs_naive")
    lines = [
        f"- `speedup_vs_naive` {_n(now.get('speedup_vs_naive'), 2)}"
        + (f" (target {t['target']}: {'met' if t['met'] else '**not met**'})" if t else ""),
        f"- the default and its twin agree within the spread: {'yes' if now.get('default_agrees') else '**no**'}",
        f"- fp32 matrix products: {now['matmul_gflops']:,.0f} GFLOP/s, so a ceiling of {now['ceiling_img_s']:,.0f} "
        f"img/s at {now['train_gflop_per_image']:.3f} GFLOP per training image; `ratio_to_ceiling` "
        f"{now['ratio_to_ceiling']:.2f}",
        f"- one image through `Classifier.predict` with its excitations: {now['infer_ms_p50']:.1f} ms at p50, "
        f"{now['infer_ms_p99']:.1f} ms at p99; evaluation (`predict_arrays`, batches of 512): "
        f"{now['eval_img_s']:,.0f} img/s",
    ]
    if "pack_s" in now:
        lines.append(f"- packing the archive (39,209 images): {now['pack_s']:.1f} s, against {now['pack_naive_s']:.1f} s "
                     "for a plain sequential decode loop")
    flags = ", ".join(m.get("cpu_flags", [])) or "none of AVX2, AVX-512, AVX-512-BF16, AMX"
    return (table + "\n\n" + "\n".join(lines) + f"\n\nOne run of `make bench` (`python -m benchmarks.bench --json`; older runs: `python -m study.bench`, `gtsrb bench --json`), `{name}` in "
            f"`results/bench/`: {machine_text(m)}; CPU flags: {flags}; {now['train_variants_img_s']['stock']['rounds']} "
            "rounds, the variants in turn.")


def precision_rule_table(runs: list[tuple[str, dict]]) -> str:
    """fp32 against bf16 training on each CPU kind a bench ran on, and what "auto" picks there."""
    def rate(d: dict, *keys: str) -> float | None:
        for k in keys:  # the current bench's {"median": ...} or an older run's plain figure
            v = d.get("train_variants_img_s", {}).get(k)
            if v is not None:
                return v["median"] if isinstance(v, dict) else v
        return None

    rows = []
    for name, r in runs:
        fp32, bf16 = rate(r, "fp32"), rate(r, "bf16", "bf16_channels_last")
        m = r["machine"]
        flags = ", ".join(m.get("cpu_flags", [])) or "not recorded"
        rows.append([f"{m['cpu']} ({m.get('cpu_capability', '?')}; flags: {flags})", _n(fp32), _n(bf16),
                     _n(bf16 / fp32, 2) if fp32 and bf16 else "–",
                     r.get("train_precision") or ("bf16" if r.get("ceiling_bf16_img_s") else "fp32"), f"`{name}`"])
    return md_table(["CPU", "fp32 img/s", "bf16 img/s", "bf16 ÷ fp32", "`auto` picks", "bench run"], rows)


def gpu_table(now: dict, before: dict | None, now_name: str, before_name: str) -> str:
    """The bench's GPU block (``make bench`` on a CUDA machine), before and after a change."""
    b = (before or {}).get("gpu", {})
    g = now["gpu"]

    def cell(d: dict, key: str) -> str:
        if key not in d:
            return "–"
        if d[key] is None:
            return "fell back to eager"
        frac = d.get(key.replace("train_img_s", "bf16_peak_fraction"))
        return f"{d[key]:,.0f}" + (f" ({frac * 100:.1f}% of peak)" if frac is not None else "")

    def sync_free(d: dict) -> str:
        return {True: "yes", False: "**no**"}.get(d.get("step_is_sync_free"), "–")

    names = {"eager": "default step (eager, channels_last)", "eager_noaug": "the same without augmentation",
             "compile": "`torch.compile`, channels_last", "compile_nchw": "`torch.compile`, NCHW"}
    rows = [[f"batch {batch}: {label}, img/s", cell(b, f"train_img_s_b{batch}_{key}"), cell(g, f"train_img_s_b{batch}_{key}")]
            for batch in (128, 1024) for key, label in names.items()]
    rows.append(["a step makes no host sync (`step_is_sync_free`)", sync_free(b), sync_free(g)])
    rows.append(["bf16 matmul peak, TFLOP/s", _n(b.get("bf16_matmul_tflops")), _n(g.get("bf16_matmul_tflops"))])
    rows.append(["host CPU fp32 matmul, GFLOP/s", _n((before or {}).get("matmul_gflops")), _n(now.get("matmul_gflops"))])
    table = md_table(["figure (bf16 autocast, data on the GPU)", f"before (`{before_name}`)", f"now (`{now_name}`)"], rows)
    return table + (f"\n\nOn {machine_text(now['machine'])}, {now['machine'].get('gpu', 'a GPU')}; each column is one run of the bench (`gtsrb bench --json` then, `make bench` now) "
                    f"on a lent machine, in `results/bench/`. Peak: the measured bf16 matmul rate; "
                    f"FLOP per image: the nominal {now['train_gflop_per_image']:.3f} G.")


def precision_table(record: dict) -> str:
    """Final val accuracy per (seed, epochs) of the fp32 path, its channels_last control and the
    bf16 path, with each one's distance from fp32, from study/precision.py's record."""
    runs = record.get("runs", [])
    paths = ("fp32", "fp32_channels_last", "bf16")
    rows, spread, gaps_from_fp32 = [], {}, {}

    def acc(r):
        return f"{r['final_val_accuracy'] * 100:.2f}{' †' if r.get('relabelled_from') else ''}" if r else "–"

    for epochs in sorted({r["epochs"] for r in runs}):
        for seed in sorted({r["seed"] for r in runs if r["epochs"] == epochs}):
            got = {r["path"]: r for r in runs if r["epochs"] == epochs and r["seed"] == seed}
            if "fp32" not in got or len(got) < 2:
                continue
            f, c, h = (got.get(p) for p in paths)
            gaps = {}  # control and bf16 against fp32, in points
            for path, r in zip(paths[1:], (c, h)):
                if r:
                    gaps[path] = (r["final_val_accuracy"] - f["final_val_accuracy"]) * 100
                    gaps_from_fp32.setdefault((epochs, path), []).append(gaps[path])
            rows.append([seed, epochs, acc(f), acc(c), acc(h),
                         *(f"{gaps[p]:+.2f}" if p in gaps else "–" for p in paths[1:]),
                         " / ".join(f"{np.mean(r['images_per_s']):.0f}" if r else "–" for r in (f, c, h))])
        for path in paths:
            accs = [r["final_val_accuracy"] for r in runs if r["epochs"] == epochs and r["path"] == path]
            if len(accs) > 1:
                spread.setdefault(epochs, {})[path] = (max(accs) - min(accs)) * 100
    text = md_table(["seed", "epochs", "fp32 val %", "fp32 channels_last val % (control)", "bf16 val %",
                     "control − fp32, points", "bf16 − fp32, points", "img/s over whole epochs, fp32 / control / bf16"],
                    rows)
    for epochs, d in spread.items():
        text += (f"\n\nAt {epochs} epochs the same path moves by " + " and ".join(f"{v:.2f} points ({k})" for k, v in d.items())
                 + " between seeds.")
        for path in paths[1:]:
            gaps = np.array(gaps_from_fp32.get((epochs, path), []))
            if len(gaps) > 1:
                se = gaps.std(ddof=1) / np.sqrt(len(gaps))
                half = scipy.stats.t.ppf(0.975, len(gaps) - 1) * se
                text += (f" {path} − fp32 over {len(gaps)} seeds: mean {gaps.mean():+.2f} points (standard error "
                         f"{se:.2f}; 95% interval {gaps.mean() - half:+.2f} to {gaps.mean() + half:+.2f}), within 0.3 "
                         f"points on {int((abs(gaps) <= 0.3).sum())}, below on {int((gaps < 0).sum())}.")
    fp32 = {(r["epochs"], r["seed"]): r["final_val_accuracy"] for r in runs if r["path"] == "fp32"}
    for path, why in record.get("superseded", {}).items():
        old = {(r["epochs"], r["seed"]): r["final_val_accuracy"] for r in runs if r["path"] == path}
        parts = []
        for epochs in sorted({e for e, _ in old}):
            gaps = [(old[k] - fp32[k]) * 100 for k in sorted(old) if k[0] == epochs and k in fp32]
            if gaps:
                parts.append(f"at {epochs} epochs {path} − fp32 averaged {np.mean(gaps):+.2f} points over {len(gaps)} seeds")
        text += f"\n\nNot in the table: {why} (path `{path}` in the JSON)" + "".join(f"; {p}" for p in parts) + "."
    if any(r.get("relabelled_from") for r in runs):
        text += ("\n\n†: recorded as path fp32 before a layout fix; its activations were channels_last (the step "
                 "passed the augmented NHWC batch on) with the weights stored NCHW, so it is listed by its activation "
                 "layout (`relabelled_from` in the JSON).")
    if record.get("command"):
        text += f" Machine: {machine_text(record.get('machine'))}."
    return text


def demo_speed_text(lt: dict, name: str) -> str:
    """`make loadtest`'s rows: the demo beside the no-op floor, per method."""
    rows = {(r["target"], r["method"]): r for r in lt["rows"]}
    out = []
    for (target, method), r in rows.items():
        if target != "demo":
            continue
        floor = rows.get(("noop", method))
        out.append([method, f"{r['clients']}×{r['requests_per_client']}", f"{r['p50_ms']:.0f}", f"{r['p95_ms']:.0f}",
                    f"{r['p99_ms']:.0f}", f"{r['errors']}/{r['lost']}",
                    f"{floor['p50_ms']:.0f} / {floor['p99_ms']:.0f}" if floor else "–"])
    return (md_table(["method", "clients × requests", "p50 ms", "p95 ms", "p99 ms", "errors/lost",
                      "no-op floor p50 / p99 ms"], out)
            + f"\n\n`{lt['command']}` on {lt['date'][:10]}, {machine_text(lt['machine'])}; checkpoint "
            f"`{lt['checkpoint']}` (sha256 {lt['checkpoint_sha256'][:12]}…). The floor is a no-op Gradio app with the "
            f"same input and queue, measured in the same run (`results/ui/{name}`).")
