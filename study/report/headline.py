"""The page's opening paragraph (REPORT.md and README.md), quoted from the figures the other blocks made."""

from __future__ import annotations

from pathlib import Path

from study.records import ARM_LABELS, PICKED_ON_SEED, TOP
from study.report.common import md_table
from study.report.runs import COMPARED


def headline_block(headline: dict, checkpoint: Path, held_out: Path | None) -> dict:
    """The page's opening paragraph (REPORT.md and README.md): the release model, the recipe, the SE
    ablation's arms, the SE blocks' specificity and the leakage gap, all quoted from the other blocks."""
    if not (headline.get("best_model") and all(k in headline for k in ("seed", "no_se"))):
        return {}
    lk = headline.get("leakage") or {}
    bm = headline["best_model"]
    split_ckpt = checkpoint.parent / "split" / "best.pt"
    if held_out == split_ckpt:
        cfg = headline.get("config_file")
        what = f"study `{Path(cfg).parent.name}`'s best config (`{cfg}`)" if cfg else "the study's best config"
        h = (f"Release model `{checkpoint}`: {what} with the accuracy recipe, trained on all "
             f"39,209 training images (GTSRB's protocol); its official-test score comes from an independent "
             f"run (the set is not on the development machine). Its twin trained on the train split alone "
             f"(`{split_ckpt}`) scores **{bm['accuracy'] * 100:.2f}%** on the held-out track-split test "
             f"({bm['errors']} errors in {bm['n']:,})"
             + (f" on its ROI crops and **{headline['split_full_frame'] * 100:.2f}%** on the same images' whole "
                f"frames" if "split_full_frame" in headline else "")
             + f", ECE {bm['ece'] * 100:.2f}%; with each SE gate held at "
             f"its val average, {bm['se_held_accuracy'] * 100:.2f}%, and with the SE blocks switched off, "
             f"{bm['se_off_accuracy'] * 100:.2f}%.")
    else:
        h = (f"Best model (`{checkpoint}`): test accuracy {bm['accuracy'] * 100:.2f}%, ECE "
             f"{bm['ece'] * 100:.2f}%; with each SE gate held at its val average, "
             f"{bm['se_held_accuracy'] * 100:.2f}%, and with its SE blocks switched off, "
             f"{bm['se_off_accuracy'] * 100:.2f}%.")
    rc = headline.get("recipe")
    shipped = headline.get("top1", {})
    if "test_full_frame" in shipped:
        h += (f" The recipe that ships ({headline['ablation_recipe']}) with this configuration on the train split, "
              f"over {shipped['runs']} seeds: test **{shipped['test']}%** on ROI crops and "
              f"**{shipped['test_full_frame']}%** on whole frames (`make ablation`, section 3).")
    elif rc:
        h += (f" The recipe ({rc['held']}) with {rc['what']} on the train split: val {rc['val']}%, test "
              f"{rc['test']}% over {rc['seeds']} seed(s), {rc['epochs']} epochs, {rc['minutes']:.0f} min of "
              f"training per run (`results/REPORT.md`, section 2.1)")
        if "vs_old" in rc:
            vs = rc["vs_old"] if rc["vs_old"].startswith("-") else "+" + rc["vs_old"]
            h += f"; {vs} points on test against the old recipe, paired over {rc['pairs']} seed(s)."
        else:
            h += "."
    arms = [k for k in COMPARED if k in headline]
    full = all("test_full_frame" in headline[k] for k in arms)
    rows = [[ARM_LABELS[k], headline[k]["runs"], headline[k]["final_val"], headline[k]["test"],
             *([headline[k]["test_full_frame"]] if full else [])] for k in arms]
    h += f"\n\nSE ablation ({headline.get('ablation_budget', '?')}; `make ablation`):\n\n"
    h += md_table(["model (ablation budget)", "seeds", "final val acc %", "test acc % (ROI crops)",
                   *(["test acc % (whole frames)"] if full else [])], rows)
    h += "\n"
    if any(k in headline for k in TOP) and headline.get("top_continued"):
        h += (f"\nThe study's top arms include their seed-{PICKED_ON_SEED} run, the study trial that picked them "
              f"for its high val, so their means lean high; `results/REPORT.md`, section 3, pairs them without it.\n")
    if headline.get("specificity"):
        h += ("\nClass specificity η² of the served model's SE blocks (val split, which the release model "
              "trained on): " + ", ".join(f"{k} {v:.2f}" for k, v in headline["specificity"].items()) + ".")
    if lk:
        h += (f" Split leakage: the random split reads {lk['gap_points']:+.2f} points higher on its own test "
              f"split than the track split ({lk['random_test'] * 100:.2f}% vs {lk['track_test'] * 100:.2f}%).")
    return {"headline": h}
