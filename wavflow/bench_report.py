"""`wavflow bench` results as bench.md (a markdown table) and bench.png (two log-log plots)."""

from __future__ import annotations

from pathlib import Path


def markdown_table(result: dict) -> str:
    """bench.md: one row per measurement, then the machine ceiling."""
    lines = [
        f"torch {result['torch']}, {result['device']}, {result['threads']} threads",
        "",
        "| method | runtime | dtype | batch | audio (s) | median (s) | samples/s (batch total) "
        "| RTF | x naive "
        "| x cached | MFLOP/sample | GFLOP/s | peak MB | log-mel dB vs PyTorch fp32 |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for row in result["rows"]:

        def fmt(value, spec):
            return "-" if value is None else format(value, spec)

        lines.append(
            f"| {row['method']}{' (steady state, extrapolated)' if row['extrapolated'] else ''} "
            f"| {row.get('runtime', 'pytorch')} | {row['dtype']} "
            f"| {row['batch']} | {row['seconds_of_audio']:.2f} | {row['median_s']:.3f} "
            f"| {row['samples_per_s']:.0f} | {row['real_time_factor']:.3f} "
            f"| {fmt(row['speedup_vs_naive'], '.1f')} | {fmt(row['speedup_vs_cached'], '.2f')} "
            f"| {row['flops_per_sample'] / 1e6:.2f} | {row['achieved_gflops']:.1f} "
            f"| {row['peak_memory_mb']:.0f} | {fmt(row['quality_log_mel_db_vs_fp32'], '.3f')} |"
        )
    lines.append("")
    for name, ceiling in result["ceiling"].items():
        lines.append(
            f"Machine ceiling ({name}): matmul {ceiling['matmul_gflops']:.0f} GFLOP/s, "
            f"convolution {ceiling['conv_gflops']:.0f} GFLOP/s."
        )
    return "\n".join(lines) + "\n"


def plot_benchmark(result: dict, path: Path) -> None:
    """bench.png: time against audio length per method (log-log, batch 1, first dtype), and
    samples/s against batch size (longest length).

    A bare `Figure` rendered by its own Agg canvas, not pyplot's: the application's matplotlib
    backend is left as it was, and nothing stays registered with pyplot.
    """
    from matplotlib.figure import Figure

    rows = result["rows"]
    dtype = result["settings"]["dtypes"][0]
    figure = Figure(figsize=(12, 4.5))
    left, right = figure.subplots(1, 2)
    for method, runtime in dict.fromkeys((r["method"], r.get("runtime", "pytorch")) for r in rows):
        ours = [
            r
            for r in rows
            if (r["method"], r.get("runtime", "pytorch"), r["dtype"]) == (method, runtime, dtype)
        ]
        label = method if runtime == "pytorch" else f"{method} ({runtime})"
        first = [r for r in ours if r["batch"] == min(x["batch"] for x in ours)]
        style = "--" if any(r["extrapolated"] for r in first) else "-"
        left.plot(
            [r["seconds_of_audio"] for r in first],
            [r["median_s"] for r in first],
            style,
            marker="o",
            label=label,
        )
        longest = max(r["seconds_of_audio"] for r in ours)
        at_longest = sorted(
            (r for r in ours if r["seconds_of_audio"] == longest), key=lambda r: r["batch"]
        )
        right.plot(
            [r["batch"] for r in at_longest],
            [r["samples_per_s"] for r in at_longest],
            style,
            marker="o",
            label=label,
        )
    left.set(
        xscale="log",
        yscale="log",
        xlabel="audio length (s)",
        ylabel="time (s)",
        title=f"generation time, batch 1, {dtype} (dashed: extrapolated)",
    )
    right.set(
        xscale="log",
        yscale="log",
        xlabel="batch size",
        ylabel="samples / s",
        title="throughput against batch size",
    )
    for axis in (left, right):
        axis.grid(True, which="both", alpha=0.3)
        axis.legend(fontsize=8)
    figure.tight_layout()
    figure.savefig(path, dpi=120)
