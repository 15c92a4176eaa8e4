"""Draw the Asklepios dashboard's panels from a real Prometheus, with matplotlib.

NOT GRAFANA. Grafana cannot be installed where this repository is built, so this is
a matplotlib rendering of k8s/monitoring/dashboard.json: every panel's own queries,
run unchanged against a Prometheus over a time range, drawn in the dashboard's grid
layout with the panel's title, unit, legend, value mappings and thresholds. It is
close to what Grafana shows, not the same picture; the picture's caption says so.
It draws docs/dashboard.png, the README's picture (docs/monitoring.md: how).

What it understands of Grafana: rows; stat (last value, threshold colours, text
modes); timeseries (lines or bars, the right-hand legend table with its calcs,
dashed thresholds, the dashboard's annotations); state-timeline (value mappings);
table (instant queries, merge + organize transformations, per-column units);
bargauge; heatmap (Prometheus buckets, zero cells hidden). Range queries use one
step for the whole picture (a target's `interval` is its minimum step); instant
queries (`instant: true`) are run at the end of the range. Times are UTC.

matplotlib is not a dependency of the project; install it for this script only:

    .venv/bin/pip install matplotlib
    .venv/bin/python hack/render-dashboard.py --prometheus http://127.0.0.1:9090 \\
        --start now-15m --end now --output docs/dashboard.png
    # --start/--end: unix seconds, or now / now-<N>s|m|h
"""

from __future__ import annotations

import argparse
import json
import math
import re
import time
import urllib.parse
import urllib.request
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import matplotlib.colors as mcolors
import numpy as np
import numpy.typing as npt
from matplotlib.axes import Axes
from matplotlib.figure import Figure
from matplotlib.patches import Rectangle
from matplotlib.ticker import FuncFormatter, MaxNLocator

ROOT = Path(__file__).resolve().parents[1]
DASHBOARD = ROOT / "k8s" / "monitoring" / "dashboard.json"
CAPTION = (
    "Not Grafana: a matplotlib rendering (hack/render-dashboard.py) of the dashboard's own queries "
    "(k8s/monitoring/dashboard.json), run unchanged against a real Prometheus."
)

JSON = dict[str, Any]
Floats = npt.NDArray[np.float64]

# Grafana's dark theme, approximately.
BACKGROUND, PANEL, BORDER, TEXT, DIM, GRID = "#111217", "#181b1f", "#2c3235", "#ccccdc", "#8e8e9e", "#25282d"
NAMED = {
    "green": "#73bf69",
    "red": "#f2495c",
    "orange": "#ff9830",
    "yellow": "#fade2a",
    "blue": "#5794f2",
    "purple": "#b877d9",
    "dark-orange": "#fa6400",
    "text": TEXT,
    "transparent": "none",
}
CLASSIC = ["#7eb26d", "#eab839", "#6ed0e0", "#ef843c", "#e24d42", "#1f78c1", "#ba43a9", "#705da0", "#508642"]

# Layout, in pixels at DPI: the 24-column grid, one grid row unit, margins.
DPI = 100
WIDTH = 1800
MARGIN = 16
UNIT = 32  # Grafana: 30 px a grid row, plus the gap
GAP = 8
HEADER = 96
TITLE = 26  # a panel's title bar


def color(name: str) -> str:
    return NAMED.get(name, name)


# ------------------------------------------------------------------ Prometheus


@dataclass
class Series:
    labels: dict[str, str]
    values: Floats  # on the picture's time grid; NaN where the series has no sample


class Prometheus:
    def __init__(self, url: str) -> None:
        if urllib.parse.urlsplit(url).scheme not in ("http", "https"):
            raise SystemExit(f"--prometheus must be an http(s) URL, not {url!r}")
        self.url = url.rstrip("/")
        self._open = urllib.request.build_opener(urllib.request.ProxyHandler({})).open

    def get(self, path: str, **params: str | float) -> Any:
        url = f"{self.url}/api/v1/{path}?{urllib.parse.urlencode(params)}"
        try:
            with self._open(url, timeout=60) as resp:
                body = json.loads(resp.read())
        except urllib.error.HTTPError as exc:
            body = json.loads(exc.read())
        if body.get("status") != "success":
            raise SystemExit(f"Prometheus refused {params.get('query', path)!r}: {body.get('error')}")
        return body["data"]

    def range(self, expr: str, grid: Floats, step: float) -> list[Series]:
        start, end = float(grid[0]), float(grid[-1])
        result = self.get("query_range", query=expr, start=start, end=end, step=step)["result"]
        found = []
        for item in result:
            values = np.full(len(grid), np.nan)
            for ts, raw in item["values"]:
                values[round((float(ts) - start) / step)] = float(raw)
            found.append(Series(item["metric"], values))
        return found

    def instant(self, expr: str, at: float) -> list[tuple[dict[str, str], float]]:
        result = self.get("query", query=expr, time=at)["result"]
        if isinstance(result, list):
            return [(item["metric"], float(item["value"][1])) for item in result]
        return [({}, float(result[1]))]  # a scalar


# ------------------------------------------------------------------ formatting


def number(value: float, decimals: int | None = None) -> str:
    if not math.isfinite(value):
        return str(value)
    if decimals is not None:
        return f"{value:.{decimals}f}"
    if value == round(value) and abs(value) < 1e6:
        return f"{value:.0f}"
    if abs(value) >= 1000:
        for div, suffix in ((1e9, " Bil"), (1e6, " Mil"), (1e3, " K")):
            if abs(value) >= div:
                return f"{value / div:.3g}{suffix}"
    return f"{value:.3g}"


def duration(value: float, decimals: int | None = None) -> str:
    size = abs(value)
    for limit, div, name in ((60, 1, "s"), (3600, 60, "min"), (86400, 3600, "hour"), (math.inf, 86400, "day")):
        if size < limit or limit == math.inf:
            scaled = value / div
            if decimals is None:
                digits = 0 if abs(scaled) >= 10 or scaled == round(scaled) else (1 if abs(scaled) >= 1 else 3)
            else:
                digits = decimals
            if size < 1 and name == "s" and size != 0 and decimals is None:
                return f"{value * 1000:.3g} ms"
            return f"{scaled:.{digits}f} {name}"
    raise AssertionError("unreachable")


def byte_size(value: float, decimals: int | None = None) -> str:
    size = abs(value)
    for power, name in ((3, "GiB"), (2, "MiB"), (1, "KiB")):
        if size >= 1024**power:
            scaled = value / 1024**power
            digits = (0 if scaled == round(scaled) else 1) if decimals is None else decimals
            return f"{scaled:.{digits}f} {name}"
    return f"{value:.0f} B"


def formatter(unit: str | None, decimals: int | None = None) -> Callable[[float], str]:
    if unit == "s":
        return lambda v: duration(v, decimals)
    if unit == "bytes":
        return lambda v: byte_size(v, decimals)
    return lambda v: number(v, decimals)


def legend(template: str, labels: dict[str, str]) -> str:
    """A target's legendFormat filled in (`__auto` or none: the series' labels)."""
    if template and template != "__auto":
        return re.sub(r"\{\{\s*(\w+)\s*\}\}", lambda m: labels.get(m.group(1), ""), template).strip()
    shown = {k: v for k, v in labels.items() if k != "__name__"}
    return labels.get("__name__", "") + ("{" + ", ".join(f'{k}="{v}"' for k, v in shown.items()) + "}")


def threshold_color(fieldconfig: JSON, value: float) -> str:
    steps = fieldconfig.get("thresholds", {}).get("steps") or [{"color": "green", "value": None}]
    chosen = steps[0]["color"]
    for step in steps[1:]:
        if step["value"] is not None and value >= step["value"]:
            chosen = step["color"]
    return color(chosen)


def time_step(seconds: float) -> float:
    """A tick spacing giving 5 to 10 time labels."""
    for step in (5, 10, 15, 30, 60, 120, 300, 600, 900, 1800, 3600, 7200, 10800, 21600, 43200, 86400):
        if seconds / step <= 9:
            return float(step)
    return 86400.0 * math.ceil(seconds / 86400 / 9)


def clock(ts: float, _pos: object = None) -> str:
    return datetime.fromtimestamp(ts, tz=UTC).strftime("%H:%M:%S" if ts % 60 else "%H:%M")


# ---------------------------------------------------------------------- drawing


@dataclass
class Context:
    prom: Prometheus
    fig: Figure
    height: float  # of the figure, pixels
    grid: Floats  # the range queries' evaluation times
    step: float
    annotations: list[tuple[float, str, str]]  # (time, colour, name)
    dim_prefix: str  # removed from every label value shown

    def box(self, left: float, top: float, width: float, height: float) -> tuple[float, float, float, float]:
        """Figure coordinates of a box given in pixels from the top left."""
        return (left / WIDTH, 1 - (top + height) / self.height, width / WIDTH, height / self.height)

    def axes(self, left: float, top: float, width: float, height: float, **kw: Any) -> Axes:
        ax = self.fig.add_axes(self.box(left, top, width, height), **kw)
        ax.set_facecolor("none")
        return ax

    def clean(self, labels: dict[str, str]) -> dict[str, str]:
        if not self.dim_prefix:
            return labels
        return {k: v.removeprefix(self.dim_prefix) for k, v in labels.items()}

    def range(self, target: JSON) -> tuple[list[Series], Floats, float]:
        minimum = parse_duration(target["interval"]) if target.get("interval") else 0.0
        if minimum <= self.step:
            return self.prom.range(target["expr"], self.grid, self.step), self.grid, self.step
        grid = np.arange(float(self.grid[-1]), float(self.grid[0]) - 1e-9, -minimum)[::-1].copy()
        return self.prom.range(target["expr"], grid, minimum), grid, minimum


def parse_duration(text: str) -> float:
    found = re.fullmatch(r"(\d+(?:\.\d+)?)(ms|s|m|h|d)", text.strip())
    if not found:
        raise SystemExit(f"cannot read the duration {text!r}")
    return float(found.group(1)) * {"ms": 0.001, "s": 1, "m": 60, "h": 3600, "d": 86400}[found.group(2)]


def frame(ctx: Context, panel: JSON) -> tuple[float, float, float, float]:
    """Draw a panel's background and title; the pixel box left for its content."""
    pos = panel["gridPos"]
    column = (WIDTH - 2 * MARGIN) / 24
    left, top = MARGIN + pos["x"] * column + GAP / 2, HEADER + pos["y"] * UNIT + GAP / 2
    width, height = pos["w"] * column - GAP, pos["h"] * UNIT - GAP
    back = ctx.axes(left, top, width, height)
    back.set_facecolor(PANEL)
    back.set_xticks([])
    back.set_yticks([])
    for spine in back.spines.values():
        spine.set_color(BORDER)
    back.text(8 / width, 1 - 15 / height, panel["title"], color=TEXT, fontsize=10, weight="bold",
              transform=back.transAxes, va="center", ha="left")  # fmt: skip
    return left + 8, top + TITLE, width - 16, height - TITLE - 8


def no_data(ctx: Context, box: tuple[float, float, float, float]) -> None:
    ax = ctx.axes(*box)
    ax.axis("off")
    ax.text(0.5, 0.5, "No data", color=DIM, fontsize=12, ha="center", va="center", transform=ax.transAxes)


def time_axis(ax: Axes, grid: Floats) -> None:
    ax.set_xlim(float(grid[0]), float(grid[-1]))
    spacing = time_step(float(grid[-1] - grid[0]))
    first = math.ceil(float(grid[0]) / spacing) * spacing
    ax.set_xticks(list(np.arange(first, float(grid[-1]) + 1e-9, spacing)))
    ax.xaxis.set_major_formatter(FuncFormatter(clock))


def style(ax: Axes) -> None:
    ax.tick_params(colors=DIM, labelsize=8, length=0)
    for spine in ax.spines.values():
        spine.set_visible(False)
    ax.grid(True, color=GRID, linewidth=0.8)
    ax.set_axisbelow(True)


def instant_or_last(ctx: Context, target: JSON) -> list[tuple[dict[str, str], float]]:
    """An instant target at the range's end; a range target reduced to its last value."""
    if target.get("instant"):
        return ctx.prom.instant(target["expr"], float(ctx.grid[-1]))
    found = []
    for series in ctx.range(target)[0]:
        finite = series.values[np.isfinite(series.values)]
        if len(finite):
            found.append((series.labels, float(finite[-1])))
    return found


def draw_stat(ctx: Context, panel: JSON, box: tuple[float, float, float, float]) -> None:
    defaults = panel["fieldConfig"]["defaults"]
    fmt = formatter(defaults.get("unit"), defaults.get("decimals"))
    items = [
        (legend(t.get("legendFormat", ""), ctx.clean(labels)), value)
        for t in panel["targets"]
        for labels, value in instant_or_last(ctx, t)
    ]
    if not items:
        no_data(ctx, box)
        return
    mode = panel["options"].get("textMode", "auto")
    ax = ctx.axes(*box)
    ax.axis("off")
    width = 1 / len(items)
    for i, (name, value) in enumerate(items):
        x = (i + 0.5) * width
        tint = threshold_color(defaults, value)
        big = 26 if len(items) == 1 else 18
        if mode == "name":
            ax.text(x, 0.45, name, color=tint, fontsize=13, ha="center", va="center", transform=ax.transAxes)
            continue
        if mode == "value_and_name" or (mode == "auto" and len(items) > 1):
            ax.text(x, 0.82, name, color=TEXT, fontsize=9, ha="center", va="center", transform=ax.transAxes)
        ax.text(x, 0.4, fmt(value), color=tint, fontsize=big, weight="bold", ha="center", va="center",
                transform=ax.transAxes)  # fmt: skip


def legend_table(ctx: Context, panel: JSON, entries: list[tuple[str, str, Floats]], fmt: Callable[[float], str],
                 box: tuple[float, float, float, float]) -> None:  # fmt: skip
    """Grafana's legend as a table on the right: name, then the panel's calcs."""
    calcs = panel["options"].get("legend", {}).get("calcs", [])
    names = {"lastNotNull": "Last *", "max": "Max", "mean": "Mean", "min": "Min", "last": "Last"}
    ax = ctx.axes(*box)
    ax.axis("off")
    ax.set_xlim(0, box[2])
    ax.set_ylim(box[3], 0)
    columns = [box[2] - 62 * (len(calcs) - i) for i in range(len(calcs))]
    for x, calc in zip(columns, calcs, strict=True):
        ax.text(x + 58, 8, names.get(calc, calc), color=DIM, fontsize=8, ha="right", va="center")
    for row, (name, tint, values) in enumerate(entries[: int((box[3] - 16) // 15)]):
        y = 24 + row * 15
        ax.plot([0, 12], [y, y], color=tint, linewidth=3, solid_capstyle="butt")
        shown = name if len(name) <= 26 else name[:25] + "…"
        ax.text(17, y, shown, color=TEXT, fontsize=8, va="center")
        finite = values[np.isfinite(values)]
        for x, calc in zip(columns, calcs, strict=True):
            if not len(finite):
                text = "-"
            elif calc in ("lastNotNull", "last"):
                text = fmt(float(finite[-1]))
            else:
                text = fmt(float(getattr(np, calc)(finite)))
            ax.text(x + 58, y, text, color=TEXT, fontsize=8, ha="right", va="center")


def annotate(ctx: Context, ax: Axes) -> None:
    for when, tint, _name in ctx.annotations:
        ax.axvline(when, color=tint, linewidth=1, linestyle=(0, (4, 3)), alpha=0.8)


def draw_timeseries(ctx: Context, panel: JSON, box: tuple[float, float, float, float]) -> None:
    defaults = panel["fieldConfig"]["defaults"]
    custom = defaults.get("custom", {})
    fmt = formatter(defaults.get("unit"), defaults.get("decimals"))
    entries: list[tuple[str, str, Floats]] = []
    for target in panel["targets"]:  # a target's series by name: stable colours from run to run
        named = [(legend(target.get("legendFormat", ""), ctx.clean(s.labels)), s) for s in ctx.range(target)[0]]
        for name, series in sorted(named, key=lambda pair: pair[0]):
            entries.append((name, CLASSIC[len(entries) % len(CLASSIC)], series.values))
    if not entries:
        no_data(ctx, box)
        return
    left, top, width, height = box
    legend_width = 0.0
    if panel["options"].get("legend", {}).get("placement", "bottom") == "right":
        calcs = len(panel["options"]["legend"].get("calcs", []))
        longest = max(len(name) for name, _, _ in entries)
        legend_width = min(24 + 6.2 * min(longest, 26) + 62 * calcs, width * 0.45)
        legend_table(ctx, panel, entries, fmt, (left + width - legend_width, top, legend_width, height))
    ax = ctx.axes(left + 58, top, width - legend_width - 66, height - 18)
    style(ax)
    bars = custom.get("drawStyle") == "bars"
    alpha = custom.get("fillOpacity", 10) / 100
    for _name, tint, values in entries:
        if bars:  # at one bar per step the bars are areas: translucent, so that none hides another
            ax.fill_between(ctx.grid, values, 0, step="mid", color=tint, alpha=min(alpha, 0.35), linewidth=0)
            ax.step(ctx.grid, values, where="mid", color=tint, linewidth=1.4)
        else:
            ax.plot(ctx.grid, values, color=tint, linewidth=1.4)
            ax.fill_between(ctx.grid, values, 0, color=tint, alpha=alpha, linewidth=0)
    if custom.get("thresholdsStyle", {}).get("mode") in ("dashed", "line"):
        for step in defaults.get("thresholds", {}).get("steps", []):
            if step["value"] is not None and color(step["color"]) != "none":
                ax.axhline(step["value"], color=color(step["color"]), linestyle=(0, (6, 4)), linewidth=1)
    annotate(ctx, ax)
    time_axis(ax, ctx.grid)
    if defaults.get("unit") == "bytes":  # round MiB, not round bytes
        mib = 1024.0**2
        high = ax.get_ylim()[1]
        spacing = mib * float(MaxNLocator(nbins=4, steps=[1, 2, 2.5, 5, 10]).tick_values(0, high / mib)[1])
        ax.set_yticks(list(np.arange(0, high + 1, spacing)))
    else:
        integer = defaults.get("unit") in ("short", "none")
        ax.yaxis.set_major_locator(MaxNLocator(nbins=4, steps=[1, 2, 2.5, 5, 10], integer=integer))
    ax.yaxis.set_major_formatter(FuncFormatter(lambda v, _p: fmt(v)))
    low, high = ax.get_ylim()
    finite = [v for _, _, values in entries for v in values[np.isfinite(values)]]
    top = max(finite, default=0.0)
    ax.set_ylim(min(low, 0), high if top > 0 else 1)


def draw_state_timeline(ctx: Context, panel: JSON, box: tuple[float, float, float, float]) -> None:
    [mapping] = panel["fieldConfig"]["defaults"]["mappings"]
    states = {float(k): (v["text"], color(v.get("color", "text"))) for k, v in mapping["options"].items()}
    rows = sorted(
        ((legend(t.get("legendFormat", ""), ctx.clean(s.labels)), s.values) for t in panel["targets"]
         for s in ctx.range(t)[0]),
        key=lambda row: row[0],
    )  # fmt: skip
    if not rows:
        no_data(ctx, box)
        return
    left, top, width, height = box
    ax = ctx.axes(left + 90, top, width - 98, height - 40)
    style(ax)
    ax.grid(False)
    seen: dict[str, str] = {}
    px_per_second = (width - 98) / float(ctx.grid[-1] - ctx.grid[0])
    for i, (_name, values) in enumerate(rows):
        y = len(rows) - 1 - i
        start = 0
        while start < len(values):
            end = start
            while end + 1 < len(values) and values[end + 1] == values[start]:
                end += 1
            value = float(values[start])
            if math.isfinite(value) and value in states:
                text, tint = states[value]
                seen[text] = tint
                x0 = float(ctx.grid[start]) - ctx.step / 2
                span = float(ctx.grid[end] - ctx.grid[start]) + ctx.step
                ax.broken_barh([(x0, span)], (y - 0.42, 0.84), facecolors=tint, alpha=0.85, linewidth=0)
                if span * px_per_second > 7 * len(text) + 8:
                    ax.text(x0 + 4 / px_per_second, y, text, color="#000000", fontsize=8, va="center")
            start = end + 1
    ax.set_yticks(range(len(rows)))
    ax.set_yticklabels([name for name, _ in reversed(rows)])
    ax.set_ylim(-0.5, len(rows) - 0.5)
    annotate(ctx, ax)
    time_axis(ax, ctx.grid)
    order = [text for text, _ in states.values() if text in seen]
    key = ctx.axes(left, top + height - 14, width, 14)
    key.axis("off")
    key.set_xlim(0, width)
    key.set_ylim(0, 1)
    x = 90.0
    for text in order:
        key.plot([x, x + 12], [0.5, 0.5], color=seen[text], linewidth=6, solid_capstyle="butt")
        key.text(x + 17, 0.5, text, color=TEXT, fontsize=8, va="center")
        x += 30 + 6.5 * len(text)


def draw_table(ctx: Context, panel: JSON, box: tuple[float, float, float, float]) -> None:
    at = float(ctx.grid[-1])
    frames: list[list[dict[str, Any]]] = []
    for target in panel["targets"]:
        frames.append([
            {**ctx.clean(labels), f"Value #{target['refId']}": value}
            for labels, value in ctx.prom.instant(target["expr"], at)
        ])  # fmt: skip
    # Grafana's "merge": rows that agree on the label columns they share become one row.
    label_sets = [{k for row in f for k in row if not k.startswith("Value #")} for f in frames if f]
    keys = sorted(set.intersection(*label_sets)) if label_sets else []
    merged: dict[tuple[str, ...], dict[str, Any]] = {}
    for frame_rows in frames:
        for row in frame_rows:
            merged.setdefault(tuple(str(row.get(k, "")) for k in keys), {}).update(row)
    organize: JSON = next((t["options"] for t in panel.get("transformations", []) if t["id"] == "organize"), {})
    excluded = {k for k, v in organize.get("excludeByName", {}).items() if v}
    order = organize.get("indexByName", {})
    names = organize.get("renameByName", {})
    columns = sorted({k for row in merged.values() for k in row} - excluded - {"__name__"},
                     key=lambda k: (order.get(k, 99), k))  # fmt: skip
    columns = [c for c in order if c not in excluded] if order else columns
    if not merged:
        no_data(ctx, box)
        return
    units: dict[str, Callable[[float], str]] = {}
    for override in panel["fieldConfig"].get("overrides", []):
        props = {p["id"]: p["value"] for p in override["properties"]}
        units[override["matcher"]["options"]] = formatter(props.get("unit"), props.get("decimals"))
    header = [names.get(c, c) for c in columns]
    sort = panel["options"].get("sortBy", [{}])[0].get("displayName")
    rows = list(merged.values())
    if sort in header:
        source = columns[header.index(sort)]
        rows.sort(key=lambda r: str(r.get(source, "")))

    def cell(row: dict[str, Any], column: str) -> str:
        value = row.get(column)
        if value is None:
            return ""
        if isinstance(value, float):
            return units.get(names.get(column, column), number)(value)
        return str(value)

    table = [[cell(row, c) for c in columns] for row in rows]
    left, top, width, height = box
    ax = ctx.axes(left, top, width, height)
    ax.axis("off")
    ax.set_xlim(0, width)
    ax.set_ylim(height, 0)
    widths = [max(len(h), *(len(r[i]) for r in table)) + 3 for i, h in enumerate(header)]
    scale = width / sum(widths)
    xs = np.cumsum([0, *widths[:-1]]) * scale
    ax.plot([0, width], [22, 22], color=BORDER, linewidth=1)
    for x, text in zip(xs, header, strict=True):
        ax.text(x + 4, 11, text, color=NAMED["blue"], fontsize=9, weight="bold", va="center")
    for r, values in enumerate(table[: int((height - 24) // 22)]):
        y = 34 + r * 22
        ax.plot([0, width], [y + 11, y + 11], color=GRID, linewidth=0.8)
        for x, text in zip(xs, values, strict=True):
            ax.text(x + 4, y, text, color=TEXT, fontsize=9, va="center")


def draw_bargauge(ctx: Context, panel: JSON, box: tuple[float, float, float, float]) -> None:
    defaults = panel["fieldConfig"]["defaults"]
    fmt = formatter(defaults.get("unit"), defaults.get("decimals"))
    items = [
        (legend(t.get("legendFormat", ""), ctx.clean(labels)), value)
        for t in panel["targets"]
        for labels, value in instant_or_last(ctx, t)
    ]
    if not items:
        no_data(ctx, box)
        return
    low, high = float(defaults.get("min", 0)), float(defaults.get("max", max(v for _, v in items)))
    left, top, width, height = box
    ax = ctx.axes(left, top, width, height)
    ax.axis("off")
    ax.set_xlim(0, width)
    ax.set_ylim(height, 0)
    row = min(34.0, height / len(items))
    for i, (name, value) in enumerate(items):
        y = i * row
        ax.text(0, y + 8, name, color=TEXT, fontsize=9, va="center")
        bar_width = width - 90
        ax.add_patch(Rectangle((0, y + 16), bar_width, row - 20, color=GRID, linewidth=0))
        share = min(max((value - low) / (high - low), 0.0), 1.0) if high > low else 1.0
        ax.add_patch(Rectangle((0, y + 16), bar_width * share, row - 20, color=threshold_color(defaults, value),
                                   linewidth=0))  # fmt: skip
        ax.text(width, y + 16 + (row - 20) / 2, fmt(value), color=threshold_color(defaults, value), fontsize=11,
                weight="bold", ha="right", va="center")  # fmt: skip


def draw_heatmap(ctx: Context, panel: JSON, box: tuple[float, float, float, float]) -> None:
    [target] = panel["targets"]
    found, grid, step = ctx.range(target)
    buckets = sorted(found, key=lambda s: float(s.labels.get("le", "inf")))
    if not buckets:
        no_data(ctx, box)
        return
    cumulative = np.vstack([np.nan_to_num(s.values) for s in buckets])
    counts = np.diff(cumulative, axis=0, prepend=0)  # Prometheus buckets are cumulative
    counts[counts <= 1e-9] = np.nan  # filterValues: zero cells are not drawn
    options = panel["options"]
    left, top, width, height = box
    ax = ctx.axes(left + 58, top, width - 130, height - 18)
    style(ax)
    ax.grid(False)
    edges = np.append(grid - step, grid[-1])
    scheme = options.get("color", {}).get("scheme", "Oranges")
    norm = mcolors.PowerNorm(gamma=float(options.get("color", {}).get("exponent", 0.5)), vmin=0)
    mesh = ax.pcolormesh(edges, np.arange(len(buckets) + 1), counts, cmap=scheme, norm=norm, edgecolors=PANEL,
                         linewidth=options.get("cellGap", 1) * 0.5)  # fmt: skip
    unit = options.get("yAxis", {}).get("unit")
    fmt = formatter(unit)
    labels = [fmt(float(s.labels["le"])) if s.labels["le"] != "+Inf" else "+Inf" for s in buckets]
    ax.set_yticks(np.arange(len(buckets)) + 0.5)
    ax.set_yticklabels(labels, fontsize=7)
    time_axis(ax, ctx.grid)  # the dashboard's range: a cell wider than it is clipped, as in Grafana
    scale = ctx.axes(left + width - 60, top + 4, 10, height - 30)
    bar = ctx.fig.colorbar(mesh, cax=scale)
    bar.outline.set_visible(False)
    scale.tick_params(colors=DIM, labelsize=7, length=0)
    ax.text(1.0, 1.0, f"cell: {duration(step)}", color=DIM, fontsize=7, ha="right", va="bottom",
            transform=ax.transAxes)  # fmt: skip


def draw_row(ctx: Context, panel: JSON) -> None:
    pos = panel["gridPos"]
    top = HEADER + pos["y"] * UNIT
    ax = ctx.axes(MARGIN, top, WIDTH - 2 * MARGIN, UNIT)
    ax.axis("off")
    ax.text(0.0, 0.45, "⌄  " + panel["title"], color=TEXT, fontsize=12, weight="bold", va="center",
            transform=ax.transAxes)  # fmt: skip


DRAW: dict[str, Callable[[Context, JSON, tuple[float, float, float, float]], None]] = {
    "stat": draw_stat,
    "timeseries": draw_timeseries,
    "state-timeline": draw_state_timeline,
    "table": draw_table,
    "bargauge": draw_bargauge,
    "heatmap": draw_heatmap,
}


def annotation_marks(prom: Prometheus, dashboard: JSON, grid: Floats) -> list[tuple[float, str, str]]:
    """Where the dashboard's annotation queries mark an event: the first time of each run of samples."""
    found = []
    for item in dashboard.get("annotations", {}).get("list", []):
        if not item.get("expr") or not item.get("enable", True):
            continue
        step = max(parse_duration(item.get("step", "60s")), float(grid[1] - grid[0]) if len(grid) > 1 else 1.0)
        points = np.arange(float(grid[-1]), float(grid[0]) - 1e-9, -step)[::-1].copy()
        for series in prom.range(item["expr"], points, step):
            present = np.isfinite(series.values)
            for i in np.flatnonzero(present & ~np.concatenate(([False], present[:-1]))):
                found.append((float(points[i]), color(item.get("iconColor", "red")), item["name"]))
    return found


def render(prom: Prometheus, dashboard: JSON, start: float, end: float, step: float, caption: str,
           dim_prefix: str) -> Figure:  # fmt: skip
    panels = dashboard["panels"]
    bottom = max(p["gridPos"]["y"] + p["gridPos"]["h"] for p in panels)
    height = HEADER + bottom * UNIT + MARGIN
    fig = Figure(figsize=(WIDTH / DPI, height / DPI), dpi=DPI, facecolor=BACKGROUND)
    count = math.floor((end - start) / step) + 1
    grid = start + step * np.arange(count, dtype=np.float64)
    ctx = Context(prom, fig, height, grid, step, annotation_marks(prom, dashboard, grid), dim_prefix)
    head = ctx.axes(MARGIN, 8, WIDTH - 2 * MARGIN, HEADER - 16)
    head.axis("off")
    head.text(0, 0.78, dashboard["title"], color=TEXT, fontsize=18, weight="bold", va="center",
              transform=head.transAxes)  # fmt: skip
    span = (
        f"{datetime.fromtimestamp(start, tz=UTC):%Y-%m-%d %H:%M:%S} to "
        f"{datetime.fromtimestamp(end, tz=UTC):%H:%M:%S} UTC, step {number(step)} s"
    )
    marks = {name: tint for _, tint, name in ctx.annotations}
    right = 1.0
    for name, tint in reversed(marks.items()):  # right-aligned, each in its colour
        head.text(right, 0.78, f"┆ {name}", color=tint, fontsize=10, ha="right", va="center", transform=head.transAxes)
        right -= (len(name) + 4) * 7.5 / (WIDTH - 2 * MARGIN)
    label = span + ("   annotations:" if marks else "")
    head.text(right, 0.78, label, color=DIM, fontsize=10, ha="right", va="center", transform=head.transAxes)
    head.text(0, 0.22, caption, color=NAMED["orange"], fontsize=11, va="center", transform=head.transAxes)
    for panel in panels:
        if panel["type"] == "row":
            draw_row(ctx, panel)
            continue
        DRAW[panel["type"]](ctx, panel, frame(ctx, panel))
    return fig


def when(text: str, now: float) -> float:
    text = text.strip()
    if text == "now":
        return now
    if text.startswith("now-"):
        return now - parse_duration(text.removeprefix("now-"))
    return float(text)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--prometheus", required=True, help="Prometheus base URL, e.g. http://127.0.0.1:9090")
    parser.add_argument("--start", required=True, help="unix seconds, or now-<N>s|m|h")
    parser.add_argument("--end", default="now", help="unix seconds, or now (default)")
    parser.add_argument("--step", type=float, help="seconds between points (default: the range / 480, at least 1)")
    parser.add_argument("--dashboard", type=Path, default=DASHBOARD, help="default: k8s/monitoring/dashboard.json")
    parser.add_argument("--output", type=Path, default=ROOT / "docs" / "dashboard.png")
    parser.add_argument("--caption", default=CAPTION, help="the line under the title (says it is not Grafana)")
    parser.add_argument("--strip-prefix", default="", help="removed from label values shown (long test node names)")
    args = parser.parse_args(argv)
    now = time.time()
    start, end = when(args.start, now), when(args.end, now)
    if end <= start:
        parser.error("--end must be after --start")
    step = args.step or max(1.0, round((end - start) / 480))
    dashboard = json.loads(args.dashboard.read_text())
    fig = render(Prometheus(args.prometheus), dashboard, start, end, step, args.caption, args.strip_prefix)
    args.output.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(args.output, dpi=DPI, facecolor=BACKGROUND)
    print(f"{args.output}: {dashboard['title']!r}, {end - start:.0f} s, step {step:g} s")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
