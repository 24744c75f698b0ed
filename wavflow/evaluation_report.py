"""`wavflow evaluate` results as markdown: the quality table (means of every metric per anchor
and model, with a legend saying what the figures mean) and the density table, kept apart.

Both read the report `wavflow.evaluation.evaluate` returns.
"""

from __future__ import annotations

import math
from typing import Any

COLUMNS = (
    ("PESQ-wb", "pesq_wb", "{:.2f}"),
    ("STOI", "stoi", "{:.3f}"),
    ("MCD dB", "mcd_db", "{:.2f}"),
    ("log-mel dB (all / speech)", ("log_mel_db", "log_mel_speech_db"), "{:.2f}"),
    ("silence dB", "silence_db", "{:+.1f}"),
    ("V/UV", "vuv_error", "{:.3f}"),
    ("F0 cents", "f0_rmse_cents", "{:.1f}"),
)


def quality_table(report: dict[str, Any]) -> str:
    """The markdown table of `evaluate`'s means, one row per anchor and model, with a legend."""
    columns = list(COLUMNS)
    if any("dnsmos_ovrl" in row["mean"] for row in report["rows"].values()):
        columns.append(("DNSMOS ovrl (noise-suppression predictor)", "dnsmos_ovrl", "{:.2f}"))
    lines = [
        "| model | " + " | ".join(name for name, _, _ in columns) + " |",
        "|---" * (len(columns) + 1) + "|",
    ]
    for label, row in report["rows"].items():
        cells = [_cell(row["mean"], keys, form) for _, keys, form in columns]
        lines.append(f"| {label} | " + " | ".join(cells) + " |")
    settings = report["settings"]
    count, cap = len(report["utterances"]), settings["max_seconds"]
    length = f"the first {cap:g} s of each" if cap else "whole"
    lines.append(
        f"\n{count} utterance{'s' * (count != 1)} at {report['sample_rate']} Hz ({length}), "
        f"models sampled at temperature {settings['temperature']:g}. "
        f"PESQ: {settings['pesq']}. STOI: {settings['stoi']}. MCD: {settings['mcd']}. Frames: "
        f"{settings['frames']}; silence dB = output level minus real level there. V/UV: share of "
        f"frames voiced in one but not the other; F0 cents: RMS on frames voiced in both; F0 by "
        f"{settings['f0']}."
    )
    return "\n".join(lines)


def _cell(mean: dict[str, float], keys: str | tuple[str, ...], form: str) -> str:
    keys = (keys,) if isinstance(keys, str) else keys
    values = [mean.get(key, math.nan) for key in keys]
    return " / ".join("-" if math.isnan(v) else form.format(v) for v in values)


def density_table(report: dict[str, Any]) -> str:
    """The models' density figures (nats per sample), apart from the quality table."""
    lines = [
        "| model | steps | NLL of real audio | KL to teacher | teacher NLL of its samples |",
        "|---|---|---|---|---|",
    ]
    for label, row in report["rows"].items():
        if "density" in row:
            density = row["density"]
            cells = [density.get(k, math.nan) for k in ("nll_of_real_audio", "kl_to_teacher")]
            cells.append(density.get("teacher_nll_of_samples", math.nan))
            text = " | ".join("-" if math.isnan(v) else f"{v:.4g}" for v in cells)
            lines.append(f"| {label} | {row['step']} | {text} |")
    return "\n".join(lines)
