"""Render the Grafana dashboards' panels from real data into PNGs (README "Dashboards").

Grafana is not packaged on Debian, so this draws each panel of grafana/dashboards/*.json at
its gridPos with matplotlib, from the same queries Grafana would send: a real Prometheus
scrapes three real SafeGate nodes, the publisher and a probe (tests/support/monitoring.py)
while this script sends DNS traffic, issues feed orders, takes an upstream down and posts
reports. Nothing is made up; the numbers are whatever this machine produced.

    .venv/bin/python bench/render_dashboards.py [--seconds 120] [--out docs/img]
"""

from __future__ import annotations

import argparse
import io
import math
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

import matplotlib  # noqa: E402

matplotlib.use("Agg")
import matplotlib.dates as mdates  # noqa: E402
import matplotlib.pyplot as plt  # noqa: E402
from matplotlib.axes import Axes  # noqa: E402
from matplotlib.figure import Figure  # noqa: E402
from PIL import Image  # noqa: E402

from tests.support import dashboards as dash  # noqa: E402
from tests.support.monitoring import PrometheusServer, Stack, send_traffic  # noqa: E402

# Grafana's dark theme, roughly: the pictures should read like the real thing.
BG, PANEL, TEXT, MUTED, GRID = "#111217", "#181b1f", "#ccccdc", "#8e8e99", "#2c3235"
PALETTE = ("#73bf69", "#f2cc0c", "#8ab8ff", "#ff780a", "#f2495c", "#5794f2", "#b877d9",
           "#fade2a", "#37872d", "#c4162a")
GREEN, RED, ORANGE = "#73bf69", "#f2495c", "#ff9830"
UNIT_H = 0.34      # inches per Grafana grid row
WIDTH = 16.0       # inches for 24 grid columns
NODE_LOAD = (1.5, 1.0, 0.6)   # node-1 takes the most traffic behind dnsdist


# ---------------------------------------------------------------- the run


def drive(stack: Stack, seconds: float, log: Callable[[str], None]) -> tuple[float, float]:
    """Traffic with a slow swell, feed orders, an upstream outage and reports; returns the
    (start, end) of the data Prometheus holds."""
    prom = stack.prometheus
    assert prom is not None
    # Counters with labels appear at their first increment, and increase() cannot count
    # that one: let reports of each kind exist before the first scrape, as in a live system.
    stack.post_report("node-1")
    stack.post_report("node-1", "mistake")
    prom.wait_for("up", lambda r: len(r) == len(stack.gateways) + 2, 30, "every target up")
    start = time.time()
    events: list[tuple[float, str, Callable[[], None]]] = [
        (0.2, "feed order BCA-2026-0002", lambda: stack.publish_entry("BCA-2026-0002",
                                                                       "drugs.test")),
        (0.25, "report", lambda: stack.post_report("node-1")),
        (0.4, "first upstream down", stack.upstream_outage),
        (0.55, "report", lambda: stack.post_report("node-2", "mistake")),
        (0.6, "feed order BCA-2026-0003", lambda: stack.publish_entry("BCA-2026-0003",
                                                                       "proxy.test")),
        (0.85, "report", lambda: stack.post_report("node-3")),
    ]
    while (elapsed := time.time() - start) < seconds:
        phase = elapsed / seconds
        while events and events[0][0] <= phase:
            _, what, act = events.pop(0)
            log(f"{elapsed:5.1f} s: {what}")
            act()
        swell = 1.0 + 0.7 * math.sin(2 * math.pi * phase * 1.5)

        def weights(name: str, swell: float = swell, phase: float = phase) -> float:
            # social media picks up in the second half (a break between classes)
            extra = 1.0 + 2.0 * phase if name == "social.test" else 1.0
            return swell * extra

        tick = time.time()
        for gw, load in zip(stack.gateways, NODE_LOAD, strict=False):
            send_traffic([gw], weights=lambda n, load=load: weights(n) * load)
        time.sleep(max(0.0, 1.0 - (time.time() - tick)))
    time.sleep(2.0)  # the last scrape
    return start, time.time()


# ---------------------------------------------------------------- drawing


def fmt(value: float, unit: str, decimals: int | None = None) -> str:
    if math.isnan(value):
        return "NaN"
    if unit == "percentunit":
        return f"{value * 100:.{1 if decimals is None else decimals}f} %"
    if unit == "s":
        if value < 1:
            return f"{value * 1000:.{1 if decimals is None else decimals}f} ms"
        return f"{value:.{1 if decimals is None else decimals}f} s"
    if unit == "bytes":
        for scale, name in ((2**30, "GiB"), (2**20, "MiB"), (2**10, "KiB")):
            if abs(value) >= scale:
                return f"{value / scale:.{0 if decimals is None else decimals}f} {name}"
        return f"{value:.0f} B"
    suffix = " /s" if unit == "reqps" else ""
    if decimals == 0 or (decimals is None and float(value).is_integer()):
        return f"{value:,.0f}{suffix}"
    return f"{value:,.{2 if decimals is None else decimals}f}{suffix}"


def threshold_colour(panel: dict[str, Any], value: float) -> str:
    steps = panel["fieldConfig"]["defaults"].get("thresholds", {}).get("steps")
    if not steps or math.isnan(value):
        return TEXT
    colour = steps[0]["color"]
    for step in steps[1:]:
        if value >= step["value"]:
            colour = step["color"]
    return {"green": GREEN, "red": RED, "orange": ORANGE}.get(colour, colour)


def mapped_text(panel: dict[str, Any], value: float) -> str | None:
    for mapping in panel["fieldConfig"]["defaults"].get("mappings", []):
        hit = mapping.get("options", {}).get(f"{value:g}")
        if hit:
            return str(hit["text"])
    return None


def de_accumulate(buckets: list[tuple[str, float]]) -> list[tuple[str, float]]:
    """Cumulative `le` buckets -> count per bucket, as Grafana's "heatmap" format does."""
    ordered = sorted(buckets, key=lambda b: float(b[0]))
    out, below = [], 0.0
    for le, count in ordered:
        label = "> " + fmt(float(ordered[-2][0]), "s") if le == "+Inf" else "≤ " + fmt(
            float(le), "s")
        out.append((label, count - below))
        below = count
    return out


def series(prom: PrometheusServer, panel: dict[str, Any], values: dict[str, str],
           span: tuple[float, float] | None) -> list[tuple[str, Any]]:
    """(legend, data) per series: a float (instant) or (times, values) (range)."""
    out: list[tuple[str, Any]] = []
    for target in panel["targets"]:
        expr = dash.substitute(target["expr"], values)
        if span is None:
            answer = prom.query(expr)
            points = [(dash.legend(target.get("legendFormat", ""), s["metric"]),
                       float(s["value"][1])) for s in answer["data"]["result"]]
            if target.get("format") == "heatmap":
                points = de_accumulate(points)
            out.extend(points)
        else:
            step = max(1.0, (span[1] - span[0]) / 300)
            answer = prom.query_range(expr, span[0], span[1], step)
            for s in answer["data"]["result"]:
                ts = [mdates.date2num(_dt(float(t))) for t, _ in s["values"]]
                vs = [float(v) for _, v in s["values"]]
                out.append((dash.legend(target.get("legendFormat", ""), s["metric"]), (ts, vs)))
        if answer.get("status") != "success":
            raise RuntimeError(f"{panel['title']}: {answer}")
    return out


def _dt(t: float) -> Any:
    from datetime import datetime
    return datetime.fromtimestamp(t)


def draw_panel(ax: Axes, panel: dict[str, Any], data: list[tuple[str, Any]]) -> None:
    defaults = panel["fieldConfig"]["defaults"]
    unit, decimals = defaults.get("unit", "short"), defaults.get("decimals")
    ax.set_facecolor(PANEL)
    for spine in ax.spines.values():
        spine.set_visible(False)
    ax.set_title(panel["title"], loc="left", color=TEXT, fontsize=9, pad=4)
    if panel["type"] == "stat":
        ax.set_xticks([])
        ax.set_yticks([])
        n = max(1, len(data))
        for i, (label, value) in enumerate(data):
            x = (i + 0.5) / n
            text = mapped_text(panel, value) or fmt(value, unit, decimals)
            ax.text(x, 0.45, text, ha="center", va="center", transform=ax.transAxes,
                    fontsize=20 if n == 1 else 14, fontweight="bold",
                    color=threshold_colour(panel, value))
            if n > 1 or label not in ("", "value"):
                ax.text(x, 0.1, label, ha="center", va="center", transform=ax.transAxes,
                        fontsize=7, color=MUTED)
    elif panel["type"] == "bargauge":
        if not any(t.get("format") == "heatmap" for t in panel["targets"]):
            data = sorted(data, key=lambda d: d[0])
        data = data[:14]
        labels = [d[0] for d in data]
        vals = [0.0 if math.isnan(d[1]) else d[1] for d in data]
        colours = [threshold_colour(panel, v) if "thresholds" in defaults
                   else PALETTE[i % len(PALETTE)] for i, v in enumerate(vals)]
        ys = range(len(vals))
        top = max([*vals, 1e-9])
        ax.barh(list(ys), [top] * len(vals), color=GRID, height=0.6)
        ax.barh(list(ys), vals, color=colours, height=0.6)
        for y, v in zip(ys, vals, strict=True):
            ax.text(top * 1.01, y, fmt(v, unit, decimals), va="center", color=TEXT, fontsize=7)
        ax.set_yticks(list(ys), labels, fontsize=7, color=TEXT)
        ax.invert_yaxis()
        ax.set_xticks([])
        ax.set_xlim(0, top * 1.25)
    else:
        for i, (label, (ts, vs)) in enumerate(data):
            ax.plot(ts, vs, color=PALETTE[i % len(PALETTE)], linewidth=1.4, label=label)
        ax.grid(color=GRID, linewidth=0.5)
        ax.tick_params(colors=MUTED, labelsize=7)
        ax.xaxis.set_major_formatter(mdates.DateFormatter("%H:%M:%S"))
        if data and data[0][1][0]:
            span_s = (data[0][1][0][-1] - data[0][1][0][0]) * 86400
            step = next((s for s in (10, 15, 30, 60, 120, 300, 600, 1800, 3600)
                         if span_s / s <= 6), 7200)
            ax.xaxis.set_major_locator(mdates.SecondLocator(bysecond=range(0, 60, step))
                                       if step < 60 else mdates.MinuteLocator(
                                           byminute=range(0, 60, max(1, step // 60))))
        ax.yaxis.set_major_formatter(plt.FuncFormatter(  # type: ignore[attr-defined]
            lambda v, _: fmt(v, unit)))
        if "min" in defaults:
            ax.set_ylim(bottom=defaults["min"])
        if all(max(vs, default=0) <= 0 for _, (_, vs) in data):
            ax.set_ylim(0, 1)   # all zero: a flat line at the bottom, one label per tick
        if data:
            ax.legend(loc="upper left", fontsize=6.5, frameon=False, labelcolor=TEXT,
                      ncol=min(4, len(data)))


def render(prom: PrometheusServer, path: Path, span: tuple[float, float], out: Path,
           note: str) -> Path:
    doc = dash.load(path)
    values = {"__rate_interval": "10s", "__interval": "1s",
              "__range": f"{int(span[1] - span[0])}s", "datasource": "safegate-prometheus"}
    for var in dash.variables(doc):
        # multi-select dashboards open on "All"; the school one on its (first) gateway
        listed = prom.label_values(var.label, var.match)
        values[var.name] = var.all_value if var.multi and var.all_value else listed[0]
    panels = dash.panels(doc)
    rows = max(p["gridPos"]["y"] + p["gridPos"]["h"] for p in panels)
    fig: Figure = plt.figure(figsize=(WIDTH, rows * UNIT_H + 0.7), facecolor=BG)
    head = 0.7 / (rows * UNIT_H + 0.7)
    fig.text(0.01, 1 - head * 0.45, doc["title"], color=TEXT, fontsize=14, fontweight="bold",
             va="center")
    fig.text(0.99, 1 - head * 0.45, note, color=MUTED, fontsize=8, va="center", ha="right")
    for panel in panels:
        g = panel["gridPos"]
        pad_x, pad_y = 0.006, 0.012
        left = g["x"] / 24 + pad_x
        width = g["w"] / 24 - 2 * pad_x
        top = (1 - head) * (1 - g["y"] / rows)
        height = (1 - head) * g["h"] / rows
        is_graph = panel["type"] == "timeseries"
        inner = (0.035 if is_graph else 0.0, 0.18 if is_graph else 0.0)
        ax = fig.add_axes((left + inner[0] * width * 2 if is_graph else left,
                           top - height + pad_y + inner[1] * height,
                           width - (inner[0] * width * 2 if is_graph else 0),
                           height - 2 * pad_y - inner[1] * height - 0.03 * (1 - head)))
        if panel["type"] == "bargauge":
            labels_w = 0.35 * width
            ax.set_position((left + labels_w, top - height + pad_y, width - labels_w,
                             height - 2 * pad_y - 0.03 * (1 - head)))
        data = series(prom, panel, values, span if is_graph else None)
        draw_panel(ax, panel, data)
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=72, facecolor=BG)
    plt.close(fig)
    buf.seek(0)
    target = out / f"{path.stem}.png"
    # A 256-colour palette keeps each picture well under 200 KB with no visible loss.
    Image.open(buf).convert("RGB").quantize(colors=256).save(target, optimize=True)
    return target


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seconds", type=float, default=120.0, help="length of the recorded run")
    ap.add_argument("--out", type=Path, default=ROOT / "docs" / "img")
    args = ap.parse_args(argv)
    args.out.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="safegate-dash-") as tmp, \
            Stack(Path(tmp), nodes=3, probe_interval=10.0) as stack:
        stack.start()
        assert stack.prometheus is not None
        span = drive(stack, args.seconds, lambda line: print(line, flush=True))
        note = (f"real data: 3 SafeGate nodes, publisher, probe and Prometheus on this machine, "
                f"{args.seconds:.0f} s run, {time.strftime('%Y-%m-%d')}")
        for path in dash.dashboard_files():
            png = render(stack.prometheus, path, span, args.out, note)
            print(f"{png} ({png.stat().st_size // 1024} KB)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
