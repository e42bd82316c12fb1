"""Paper-style tables (CSV, Markdown, LaTeX) and figures for the ablation.

Column names say which detector made them: ``FVD-syn`` / ``CLIPSIM-syn`` come from the suite's own domain
evaluators, never from I3D / OpenAI CLIP, and the paper's published numbers are printed in a separate,
labelled table, never in our columns.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from .paper_numbers import PAPER_SOURCE, PAPER_TABLE1
from .utils import atomic_write_bytes, atomic_write_text

# column -> (path in the evaluation summary, better direction)
METRICS = {
    "FVD": (("metrics", "fvd"), "lower"),
    "CLIPSIM": (("metrics", "clipsim"), "higher"),
    "FVD-syn": (("metrics", "fvd_syn"), "lower"),
    "CLIPSIM-syn": (("metrics", "clipsim_syn"), "higher"),
    "attr acc": (("metrics", "attr_acc"), "higher"),
    "motion MAE": (("metrics", "motion", "agreement", "mae"), "lower"),
    "motion Spearman": (("metrics", "motion", "agreement", "spearman"), "higher"),
    "motion binary acc": (("metrics", "motion", "agreement", "binary_accuracy"), "higher"),
    "motion (measured)": (("metrics", "motion"), "closer to requested"),
    "motion control": (("metrics", "motion_control"), "higher"),
    "motion gain": (("metrics", "motion_control", "gain"), "higher"),
}

# dotted lines drawn on the metric bars: (value, label)
REFERENCE_LINES = {"motion control": (0.5, "condition ignored"), "motion gain": (1.0, "follows exactly")}


def _get(summary: dict, path: tuple):
    node = summary
    for k in path:
        if not isinstance(node, dict) or k not in node:
            return None
        node = node[k]
    if isinstance(node, dict):
        return node.get("value"), node.get("ci_low"), node.get("ci_high")
    return node, None, None


def build_table(summaries: dict[str, dict], arch: dict[str, dict], stats: dict[str, dict],
                order: list[str]) -> pd.DataFrame:
    rows = []
    for name in [n for n in order if n in summaries]:
        s = summaries[name]
        row = {"variant": name}
        for col, (path, _) in METRICS.items():
            got = _get(s, path)
            if got is None:
                continue
            row[col], row[f"{col} ci_low"], row[f"{col} ci_high"] = got
        a = arch.get(name if name in arch else ("Conv1dAttn1dBlocks" if name == "Untrained" else ""), {})
        row["params total"] = a.get("params_total")
        row["params temporal"] = a.get("params_temporal")
        row["GFLOPs"] = a.get("gflops")
        row["train clips/s"] = stats.get(name, {}).get("clips_per_s")
        row["final loss"] = stats.get(name, {}).get("final_loss")
        rows.append(row)
    return pd.DataFrame(rows)


def _fmt(v, ci_lo=None, ci_hi=None, digits=3):
    if v is None or (isinstance(v, float) and not np.isfinite(v)):
        return "–"
    s = f"{v:.{digits}f}"
    if ci_lo is not None and ci_hi is not None and np.isfinite(ci_lo) and np.isfinite(ci_hi):
        s += f" [{ci_lo:.{digits}f}, {ci_hi:.{digits}f}]"
    return s


def display_table(table: pd.DataFrame) -> pd.DataFrame:
    """Values with their confidence intervals as strings, arrows on the metric names."""
    out = pd.DataFrame({"variant": table["variant"]})
    for col, (_, better) in METRICS.items():
        if col in table:
            arrow = {"lower": "↓", "higher": "↑"}.get(better, "")
            digits = 2 if col.startswith("FVD") else 3
            out[f"{col} {arrow}"] = [_fmt(r[col], r.get(f"{col} ci_low"), r.get(f"{col} ci_high"), digits)
                                     for _, r in table.iterrows()]
    for col in ("params total", "params temporal"):
        out[col] = [f"{int(v):,}" if v is not None and np.isfinite(v) else "–" for v in table[col]]
    out["GFLOPs"] = [_fmt(v, digits=2) for v in table["GFLOPs"]]
    out["train clips/s"] = [_fmt(v, digits=1) for v in table["train clips/s"]]
    return out


def protocol_lines(protocol: dict) -> list[str]:
    det = "; ".join(f"{k}: sha256 {str(v)[:16]}" for k, v in protocol.get("detectors", {}).items())
    ref = protocol.get("reference")
    ref_line = (f"FVD reference: {ref['videos']} real videos of {ref['source']} ({ref['skipped']} unusable skipped)"
                if ref else f"FVD-syn reference: {protocol.get('n_reference')} real clips of the train split")
    lines = [f"N = {protocol.get('N')} generated videos per row, {protocol.get('frames')} frames at "
             f"{protocol.get('resolution')}x{protocol.get('resolution')} px; {ref_line}."]
    ps = protocol.get("prompt_set") or {}
    if ps.get("rule"):
        lines.append(f"Prompts: {ps['rule']}; {ps.get('samples_per_prompt')} video(s) per prompt"
                     + (f", first {ps['limit']} prompts" if ps.get("limit") else "") + ".")
    td = protocol.get("training_data")
    if td:
        lines.append(f"Training data: {td['clips']} clips of {td['source']} at {td['fps']} fps "
                     f"({td['skipped']} skipped, listed in {Path(td['skipped_list']).name}).")
    if protocol.get("codec") and protocol.get("codec") != "pixels":
        lines.append(f"Codec: {protocol['codec']} ({protocol.get('latent_resolution')} px latents).")
    return lines + [f"Detectors: {det or 'see run.json'}.", "Intervals: 95 % bootstrap over videos."]


def write_tables(table: pd.DataFrame, out: str | Path, protocol: dict, stem: str = "ablate_blocks") -> None:
    out = Path(out)
    atomic_write_text(out / f"{stem}.csv", table.to_csv(index=False))
    disp = display_table(table)
    paper = pd.DataFrame(PAPER_TABLE1)
    md = [f"# Temporal block ablation ({stem})", "", *protocol_lines(protocol), "",
          disp.to_markdown(index=False), "",
          f"Untrained = {protocol.get('untrained', 'random-init Conv1dAttn1dBlocks, never trained')}."
          + (" Real clips = the benchmark's own test clips (the best a model can score with these evaluators and "
             "this N)." if "reference" not in protocol else ""),
          "motion control = fraction of prompts whose measured motion moved in the requested direction when the "
          "same prompt, seed and first frame were generated again with the requested score at the other end of the "
          "training range (0.5 = the condition is ignored; ties count 1/2); motion gain = mean measured change per "
          "unit of requested change (1 = follows exactly).", "",
          f"## Published numbers (not ours): {PAPER_SOURCE}", "", paper.to_markdown(index=False), ""]
    atomic_write_text(out / f"{stem}.md", "\n".join(md))
    tex = disp.to_latex(index=False, escape=True, caption=" ".join(protocol_lines(protocol)), label=f"tab:{stem}")
    atomic_write_text(out / f"{stem}.tex", tex)


def write_figures(table: pd.DataFrame, out: str | Path, row_dirs: dict[str, Path], names: list[str],
                  real_videos=None, n_prompts: int = 3, stem: str = "ablate_blocks") -> None:
    """``<stem>.png``: one bar chart per metric with CI whiskers; ``samples.png``: frames of a few prompts."""
    import io

    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from .harness import load_samples
    out = Path(out)
    cols = [c for c in METRICS if c in table]
    ncols = min(5, len(cols))
    nrows = -(-len(cols) // ncols)
    fig, axes = plt.subplots(nrows, ncols, figsize=(3.2 * ncols, 3.6 * nrows), squeeze=False)
    for ax in axes.flat[len(cols):]:
        ax.axis("off")
    for ax, col in zip(axes.flat, cols):
        vals = table[col].astype(float).to_numpy()
        lo = table.get(f"{col} ci_low", pd.Series([np.nan] * len(vals))).astype(float).to_numpy()
        hi = table.get(f"{col} ci_high", pd.Series([np.nan] * len(vals))).astype(float).to_numpy()
        err = np.clip(np.vstack([np.nan_to_num(vals - lo), np.nan_to_num(hi - vals)]), 0, None)
        ax.bar(range(len(vals)), vals, yerr=err, capsize=3,
               color=["tab:gray" if v in ("Untrained", "Real clips", "Spatial") else "tab:blue"
                      for v in table["variant"]])
        ax.set_xticks(range(len(vals)), table["variant"], rotation=70, fontsize=7)
        ax.set_title(f"{col} ({METRICS[col][1]} is better)", fontsize=9)
        if col in REFERENCE_LINES:
            ax.axhline(REFERENCE_LINES[col][0], color="k", ls=":", lw=0.8, label=REFERENCE_LINES[col][1])
            ax.legend(fontsize=6, loc="lower right")
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=120)
    plt.close(fig)
    atomic_write_bytes(out / f"{stem}.png", buf.getvalue())

    # sample frames: rows = (variant, prompt), columns = frames
    rows = [(n, d) for n, d in row_dirs.items()]
    pick = names[:n_prompts]
    grids = []
    for n, d in rows:
        grids.append((n, load_samples(d, pick)))
    if real_videos is not None:
        grids.append(("Real clips", real_videos[:len(pick)]))
    T = grids[0][1].shape[2]
    fig, axes = plt.subplots(len(grids) * len(pick), T, figsize=(T * 0.9, len(grids) * len(pick) * 0.95),
                             squeeze=False)
    for gi, (n, vids) in enumerate(grids):
        for pi in range(len(pick)):
            for t in range(T):
                ax = axes[gi * len(pick) + pi][t]
                ax.imshow(vids[pi, :, t].permute(1, 2, 0).numpy(), interpolation="nearest")
                ax.set_xticks([])
                ax.set_yticks([])
                if t == 0:
                    ax.set_ylabel(f"{n}\n{pick[pi]}", fontsize=5, rotation=0, ha="right", va="center")
    fig.tight_layout(pad=0.1)
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=110)
    plt.close(fig)
    atomic_write_bytes(out / "samples.png", buf.getvalue())
