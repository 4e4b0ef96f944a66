"""PNG plots of a `python -m bench run` result (matplotlib, Agg backend: no display needed).

Input is the `systems` mapping of the run's JSON: {system: {"median": {...}, "runs": [{...}, ...]}}.
"""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # before pyplot: headless boxes have no display
import matplotlib.pyplot as plt  # noqa: E402

__all__ = ["throughput", "ttft_cdf", "rss", "make_all"]


def _spread(results: dict, name: str, key: str) -> tuple[float, float, float] | None:
    """(median, median - min, max - median) over the repeats, for error bars."""
    vals = [r[key] for r in results[name]["runs"] if r.get(key) is not None]
    med = results[name]["median"].get(key)
    if med is None or not vals:
        return None
    return med, med - min(vals), max(vals) - med


def _bars(ax, results: dict, keys: list[tuple[str, str]], ylabel: str, fmt: str) -> None:
    names = list(results)
    width = 0.8 / len(keys)
    for i, (key, label) in enumerate(keys):
        xs, hs, lo, hi = [], [], [], []
        for j, n in enumerate(names):
            if (s := _spread(results, n, key)) is not None:
                xs.append(j + (i - (len(keys) - 1) / 2) * width)
                hs.append(s[0])
                lo.append(s[1])
                hi.append(s[2])
        if xs:
            b = ax.bar(xs, hs, width, yerr=[lo, hi], capsize=3, label=label)
            ax.bar_label(b, fmt=fmt, fontsize=7, padding=2)
    ax.set_xticks(range(len(names)), names)
    ax.set_ylabel(ylabel)
    ax.grid(axis="y", alpha=0.3)
    if len(keys) > 1:
        ax.legend(fontsize=8)


def throughput(results: dict, path: Path) -> Path:
    """Requests/s (stream, non-stream) and system CPU ms per request per system; bars: medians, whiskers: range."""
    fig, (a, b) = plt.subplots(1, 2, figsize=(11, 4))
    _bars(a, results, [("stream_rps", "stream"), ("nonstream_rps", "non-stream")], "requests/s", "%.0f")
    a.set_title("throughput (closed loop)")
    _bars(b, results, [("stream_cpu_ms_per_req", "stream"), ("nonstream_cpu_ms_per_req", "non-stream")],
          "CPU ms / request", "%.3f")
    b.set_title("system CPU per request")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


def ttft_cdf(samples: dict[str, list[float]], path: Path) -> Path:
    """CDF of time to first event at concurrency 1 (ms, log x), one line per system."""
    fig, ax = plt.subplots(figsize=(7, 4))
    for name, vals in samples.items():
        if vals:
            v = sorted(vals)
            ax.plot(v, [(i + 1) / len(v) for i in range(len(v))], label=name, drawstyle="steps-post")
    ax.set_xscale("log")
    ax.set_xlabel("time to first event (ms), concurrency 1")
    ax.set_ylabel("fraction of requests")
    ax.grid(alpha=0.3, which="both")
    ax.legend(fontsize=8)
    ax.set_title("TTFT CDF")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


def rss(results: dict, path: Path) -> Path:
    """Peak RSS of each system's process tree under load (MB)."""
    fig, ax = plt.subplots(figsize=(6, 4))
    _bars(ax, {n: o for n, o in results.items() if o["median"].get("rss_mb") is not None} or results,
          [("rss_mb", "RSS")], "MB", "%.1f")
    ax.set_title("RSS under load (all processes of the system)")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


def make_all(results: dict, ttfts: dict[str, list[float]], out_dir: Path, stem: str) -> dict[str, Path]:
    """The three PNGs of a run in `out_dir`, named `<stem>-<plot>.png`."""
    out_dir.mkdir(parents=True, exist_ok=True)
    return {"throughput": throughput(results, out_dir / f"{stem}-throughput.png"),
            "ttft-cdf": ttft_cdf(ttfts, out_dir / f"{stem}-ttft-cdf.png"),
            "rss": rss(results, out_dir / f"{stem}-rss.png")}
