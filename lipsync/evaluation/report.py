"""``lipsync eval``'s outputs: ``report.md`` (one row per case and the mean), ``report.json`` (every figure
and curve) and ``plots/<case>.png`` (per-frame sync confidence and the offset curve)."""

from __future__ import annotations

import json
import math
from dataclasses import asdict
from pathlib import Path

from lipsync.evaluation.cases import safe_name
from lipsync.evaluation.evaluator import CaseResult

COLUMNS = [
    # header, section of CaseResult, key, format
    ("LSE-C ↑", "sync", "lse_c", "{:.3f}"),
    ("LSE-D ↓", "sync", "lse_d", "{:.3f}"),
    ("offset (frames)", "sync", "offset", "{:d}"),
    ("StableSyncNet sim ↑", "stable_sync", "sim_at_zero", "{:.3f}"),
    ("CSIM ↑", "identity", "csim", "{:.3f}"),
    ("unchanged PSNR dB ↑", "unchanged", "psnr_db", "{:.2f}"),
    ("unchanged SSIM ↑", "unchanged", "ssim", "{:.4f}"),
]


def _value(result: CaseResult, section: str, key: str):
    block = getattr(result, section)
    return None if block is None else block.get(key)


def means(results: list[CaseResult]) -> dict[str, float | None]:
    out = {}
    for _, section, key, _ in COLUMNS:
        values = [v for r in results if (v := _value(r, section, key)) is not None and math.isfinite(v)]
        out[f"{section}.{key}"] = sum(values) / len(values) if values else None
    return out


def markdown(results: list[CaseResult], description: dict, skipped: list[str]) -> str:
    lines = ["# lipsync eval", ""]
    lines += [f"- {line}" for line in skipped]
    lines.append(f"- identity embedder: `{description['identity_embedder']}`; faces: `{description['face_analyzer']}`")
    lines += ["", "| case | " + " | ".join(c[0] for c in COLUMNS) + " |", "|---" * (len(COLUMNS) + 1) + "|"]
    for r in results:
        cells = []
        for _, section, key, fmt in COLUMNS:
            v = _value(r, section, key)
            cells.append(fmt.format(v) if v is not None else ("n/a" if section in r.errors else "–"))
        lines.append(f"| {r.name} | " + " | ".join(cells) + " |")
    mean = means(results)
    cells = [((fmt if fmt != "{:d}" else "{:.2f}").format(v) if (v := mean[f"{s}.{k}"]) is not None else "–")
             for _, s, k, fmt in COLUMNS]
    lines.append("| **mean** | " + " | ".join(cells) + " |")
    errors = [f"- {r.name}: {k}: {msg}" for r in results for k, msg in r.errors.items()]
    if errors:
        lines += ["", "Not scored:", *errors]
    return "\n".join(lines) + "\n"


def plot_case(result: CaseResult, path: Path) -> Path | None:
    """Per-frame confidence and the offset curve(s); None when there is no sync curve to draw."""
    if result.sync is None and result.stable_sync is None:
        return None
    import matplotlib

    matplotlib.use("Agg")  # headless
    import matplotlib.pyplot as plt

    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(11, 3.6))
    if result.sync is not None:
        s = result.sync
        start = s["frames"][0]
        ax1.plot(range(start, start + len(s["frame_conf"])), s["frame_conf"], alpha=0.35, label="per window")
        ax1.plot(range(start, start + len(s["frame_conf_smoothed"])), s["frame_conf_smoothed"], label="median of 9")
        ax1.set_title(f"SyncNet confidence per frame (LSE-C {s['lse_c']:.2f})")
        ax1.set_xlabel("frame (25 fps)")
        ax1.legend(loc="best")
        ax2.plot(s["offsets"], s["mean_dist"], marker=".", label="SyncNet mean distance")
        ax2.axvline(s["offset"], color="grey", linestyle=":")
        ax2.set_ylabel("mean distance")
    if result.stable_sync is not None:
        st = result.stable_sync
        twin = ax2.twinx()
        twin.plot(st["offsets"], [v if v is not None else float("nan") for v in st["mean_sim"]], color="tab:green",
                  marker=".", label="StableSyncNet mean cosine")
        twin.set_ylabel("mean cosine similarity")
    ax2.set_title("offset curve")
    ax2.set_xlabel("offset (frames; > 0: picture lags sound)")
    fig.suptitle(result.name)
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)
    return path


def write_report(out_dir: Path, results: list[CaseResult], description: dict, skipped: list[str]) -> dict[str, Path]:
    out_dir.mkdir(parents=True, exist_ok=True)
    plots = out_dir / "plots"
    plots.mkdir(exist_ok=True)
    written = {"markdown": out_dir / "report.md", "json": out_dir / "report.json"}
    cases = []
    for r in results:
        png = plot_case(r, plots / f"{safe_name(r.name)}.png")
        cases.append({**asdict(r), "plot": str(png.relative_to(out_dir)) if png else None})
    written["markdown"].write_text(markdown(results, description, skipped))
    written["json"].write_text(json.dumps({"metrics": description, "skipped": skipped, "mean": means(results),
                                           "cases": cases}, indent=2))
    return written
