"""Figures for a sweep's analysis: accuracy vs budget, per-bin panels,
compute-optimal vs best-of-N, and the FLOPs-matched bars (the paper's Figure 1).

Inputs are the plain JSON-ready data from `ttc_jax.analysis.sweep.analyze_sweep`
and `ttc_jax.analysis.flops.flops_matched_table`; a None (a budget a strategy
was not swept at) drops that point. Each function writes one PNG and returns
its path.

Figures are built on an explicit Agg canvas rather than through pyplot: that
renders headless whatever backend the process has selected, and no figure is
ever registered with pyplot, so nothing stays open after a save (the figure is
freed with its last reference).
"""

from __future__ import annotations

import math
import os
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from matplotlib.patches import Patch, Rectangle
from matplotlib.ticker import FixedLocator, MaxNLocator, NullLocator, PercentFormatter

Value = float | None
Curve = Sequence[Value] | tuple[Sequence[float], Sequence[Value]]

DPI = 120
SINGLE_SIZE = (7.0, 4.5)
_COLORS = ("tab:blue", "tab:orange", "tab:green", "tab:red", "tab:purple", "tab:brown",
           "tab:pink", "tab:gray", "tab:olive", "tab:cyan")
_STYLES = ("-", "--", ":", "-.")
_MARKERS = ("o", "s", "^", "D", "v", "P", "X", "*")
_LEGEND_INSIDE_MAX = 4  # more curves than this: the legend goes outside, right of the axes
_ACCOUNTING_TITLES = {"v1": "v1 accounting (inference 2N FLOPs/token)",
                      "iclr": "ICLR accounting (4N FLOPs/token, verifier counted)"}


# ---------------------------------------------------------------- validation


def _check_budgets(budgets: Sequence[float]) -> np.ndarray:
  xs = np.asarray(list(budgets), dtype=np.float64)
  if xs.ndim != 1 or xs.size == 0:
    raise ValueError(f"need a non-empty list of budgets, got {budgets!r}")
  if not np.all(np.isfinite(xs)) or np.any(xs <= 0):
    raise ValueError(f"budgets must be positive (log2 axis), got {list(budgets)}")
  return xs


def _as_values(values: Sequence[Value], what: str, n: int | None = None) -> np.ndarray:
  """Floats with NaN for None; `n`: the length the values must have."""
  if isinstance(values, (str, bytes)) or not isinstance(values, (Sequence, np.ndarray)):
    raise ValueError(f"{what}: expected a list of numbers or None, got {type(values).__name__}")
  if n is not None and len(values) != n:
    raise ValueError(f"{what}: {len(values)} values for {n} budgets")
  try:
    return np.array([np.nan if v is None else float(v) for v in values], dtype=np.float64)
  except (TypeError, ValueError):
    raise ValueError(f"{what}: values must be numbers or None, got {list(values)!r}") from None


def _curve_points(curve: Curve, xs: np.ndarray, what: str,
                  pairs: bool = False) -> tuple[np.ndarray, np.ndarray]:
  """A curve aligned with the budgets, or with `pairs` also an explicit
  (xs, ys) tuple (e.g. the router, whose cost includes its probe), as finite
  points sorted by x."""
  if pairs and isinstance(curve, tuple):
    if len(curve) != 2:
      raise ValueError(f"{what}: an (xs, ys) tuple needs exactly 2 entries, got {len(curve)}")
    px = _as_values(curve[0], f"{what} xs")
    py = _as_values(curve[1], f"{what} ys", len(px))
    if np.any(px[np.isfinite(px)] <= 0):
      raise ValueError(f"{what}: x positions must be positive (log2 axis)")
  else:
    px, py = xs, _as_values(curve, what, len(xs))
  keep = np.isfinite(px) & np.isfinite(py)
  order = np.argsort(px[keep], kind="stable")
  return px[keep][order], py[keep][order]


# ---------------------------------------------------------------- axes helpers


def _new_figure(size: tuple[float, float], ncols: int = 1, **subplot_kw):
  fig = Figure(figsize=size, dpi=DPI)
  FigureCanvasAgg(fig)  # Agg, whatever backend pyplot would pick
  axes = fig.subplots(1, ncols, squeeze=False, **subplot_kw)[0]
  return fig, axes


def _save(fig: Figure, path: str | os.PathLike) -> Path:
  path = Path(path)
  path.parent.mkdir(parents=True, exist_ok=True)
  fig.tight_layout()
  # bbox "tight" keeps a legend placed outside the axes inside the image
  fig.savefig(path, dpi=DPI, format="png", bbox_inches="tight", pad_inches=0.1)
  fig.clear()
  return path


def _style(i: int) -> dict:
  """Distinct color, then line style, then marker, so >10 curves stay apart."""
  return dict(color=_COLORS[i % len(_COLORS)], linestyle=_STYLES[(i // len(_COLORS)) % 4],
              marker=_MARKERS[i % len(_MARKERS)])


def _budget_label(b: float) -> str:
  return f"{b:g}"


def _log2_x(ax, budgets: np.ndarray, extra: np.ndarray | None = None, max_labels: int = 12):
  """log2 x with ticks at the swept budgets (1, 2, 4, ...), thinned to at most
  `max_labels` labels; limits cover `extra` points too (router costs)."""
  ax.set_xscale("log", base=2)
  ticks = np.unique(budgets)
  step = max(1, math.ceil(ticks.size / max_labels))
  ax.xaxis.set_major_locator(FixedLocator(ticks))
  ax.xaxis.set_minor_locator(NullLocator())
  ax.set_xticklabels([_budget_label(t) if i % step == 0 else "" for i, t in enumerate(ticks)])
  span = ticks if extra is None or extra.size == 0 else np.concatenate([ticks, extra])
  lo, hi = float(span.min()), float(span.max())
  ax.set_xlim(lo / 2 ** 0.35, hi * 2 ** 0.35)  # a margin of a third of a doubling


def _accuracy_ylim(ax, values: list[np.ndarray]):
  """Tight but padded around the data (a sweep's curves often span a few
  points of accuracy), within [0, 1] plus a sliver; accuracy in percent."""
  finite = np.concatenate([v[np.isfinite(v)] for v in values] + [np.zeros(0)])
  if finite.size == 0:
    lo, hi = 0.0, 1.0
  else:
    lo, hi = float(finite.min()), float(finite.max())
    pad = max(0.1 * (hi - lo), 0.02)
    lo, hi = min(max(0.0, lo - pad), lo), max(min(1.0, hi + pad), hi)  # never clip data
    if hi - lo < 0.05:  # a flat curve: keep a readable window
      mid = (hi + lo) / 2
      lo, hi = max(0.0, mid - 0.025), min(1.0, mid + 0.025)
  edge = 0.02 * (hi - lo)  # markers at exactly 0% or 100% stay whole
  ax.set_ylim(lo - edge, hi + edge)
  # ticks at 1, 2 or 5 x 10^k, labelled with just the decimals that step needs
  locator = MaxNLocator(nbins=10, steps=[1, 2, 5, 10])
  step = float(np.diff(locator.tick_values(lo, hi))[:1].max(initial=0.1))
  ax.yaxis.set_major_locator(locator)
  ax.yaxis.set_major_formatter(PercentFormatter(
      xmax=1.0, decimals=max(0, -math.floor(math.log10(100 * step) + 1e-9))))


def _legend(ax, n: int):
  if n == 0:
    return
  if n > _LEGEND_INSIDE_MAX:
    ax.legend(loc="upper left", bbox_to_anchor=(1.02, 1.0), fontsize=8, frameon=False)
  else:
    ax.legend(loc="best", fontsize=8)


def _no_data(ax):
  ax.text(0.5, 0.5, "no data", transform=ax.transAxes, ha="center", va="center", color="gray")


def _default_bin_labels(n: int) -> list[str]:
  if n == 1:
    return ["bin 1"]
  return [f"bin {b + 1}" + (" (easiest)" if b == 0 else " (hardest)" if b == n - 1 else "")
          for b in range(n)]


# ---------------------------------------------------------------- figures


def accuracy_vs_budget(budgets: Sequence[float], curves: Mapping[str, Sequence[Value]],
                       path: str | os.PathLike, *, title: str,
                       intervals: Mapping[str, tuple[Sequence[Value], Sequence[Value]]]
                       | None = None) -> Path:
  """Accuracy against generation budget (log2 x), one line per curve; an
  optional (low, high) band per curve, drawn in the curve's color."""
  xs = _check_budgets(budgets)
  intervals = dict(intervals or {})
  unknown = sorted(set(intervals) - set(curves))
  if unknown:
    raise ValueError(f"intervals for curves not plotted: {unknown}")
  fig, (ax,) = _new_figure(SINGLE_SIZE)
  plotted = []
  for i, (name, values) in enumerate(curves.items()):
    px, py = _curve_points(values, xs, f"curve {name!r}")
    style = _style(i)
    if name in intervals:
      low, high = _interval(intervals[name], len(xs), name)
      ok = np.isfinite(low) & np.isfinite(high)
      order = np.argsort(xs, kind="stable")
      ax.fill_between(xs[order], low[order], high[order], where=ok[order], color=style["color"],
                      alpha=0.15, linewidth=0)
      # whiskers too: a band over one budget (or an isolated one) has no area
      ax.vlines(xs[ok], low[ok], high[ok], color=style["color"], alpha=0.5, linewidth=1)
      plotted += [low[ok], high[ok]]
    ax.plot(px, py, label=name, markersize=4, linewidth=1.5, **style)
    plotted.append(py)
  if not any(p.size for p in plotted):
    _no_data(ax)
  _log2_x(ax, xs)
  _accuracy_ylim(ax, plotted)
  ax.set_xlabel("generation budget (generations per question)")
  ax.set_ylabel("accuracy")
  ax.set_title(title)
  ax.grid(True, alpha=0.3)
  _legend(ax, len(curves))
  return _save(fig, path)


def _interval(band, n: int, name: str) -> tuple[np.ndarray, np.ndarray]:
  if not isinstance(band, Sequence) or len(band) != 2:
    raise ValueError(f"interval for {name!r} must be a (low, high) pair")
  low = _as_values(band[0], f"interval low of {name!r}", n)
  high = _as_values(band[1], f"interval high of {name!r}", n)
  both = np.isfinite(low) & np.isfinite(high)
  if np.any(low[both] > high[both]):
    raise ValueError(f"interval for {name!r} has low > high")
  return low, high


def per_bin_panels(budgets: Sequence[float], curves_by_bin: Mapping[str, Sequence[Sequence[Value]]],
                   path: str | os.PathLike, *, title: str,
                   bin_labels: Sequence[str] | None = None) -> Path:
  """One panel per difficulty bin (bin 0 = easiest, labelled 1 as in the paper), the same curves in each,
  a shared y axis and one legend for the figure."""
  xs = _check_budgets(budgets)
  if not all(isinstance(v, Sequence) for v in curves_by_bin.values()):
    raise ValueError("curves_by_bin values must be lists of per-bin curves")
  counts = {name: len(per_bin) for name, per_bin in curves_by_bin.items()}
  if len(set(counts.values())) > 1:
    raise ValueError(f"curves have different numbers of bins: {counts}")
  n_bins = next(iter(counts.values()), len(bin_labels or ()))
  if n_bins == 0:
    raise ValueError("per_bin_panels needs at least one bin (curves or bin_labels)")
  labels = _default_bin_labels(n_bins) if bin_labels is None else list(bin_labels)
  if len(labels) != n_bins:
    raise ValueError(f"{len(labels)} bin labels for {n_bins} bins")
  fig, axes = _new_figure((2.6 * n_bins + 0.8, 3.6), ncols=n_bins, sharey=True)
  plotted = []
  handles = []
  for i, (name, per_bin) in enumerate(curves_by_bin.items()):
    style = _style(i)
    for b, ax in enumerate(axes):
      px, py = _curve_points(per_bin[b], xs, f"curve {name!r} bin {b}")
      line, = ax.plot(px, py, label=name, markersize=3.5, linewidth=1.3, **style)
      plotted.append(py)
    handles.append(line)
  for b, ax in enumerate(axes):
    _log2_x(ax, xs, max_labels=5)
    ax.set_title(labels[b], fontsize=10)
    ax.set_xlabel("budget")
    ax.grid(True, alpha=0.3)
  _accuracy_ylim(axes[0], plotted)  # shared by every panel
  axes[0].set_ylabel("accuracy")
  if not any(p.size for p in plotted):
    _no_data(axes[0])
  fig.suptitle(title)
  fig.tight_layout()
  if handles:
    # below the panels: a row of panels leaves no room at the side
    fig.legend(handles=handles, loc="upper center", bbox_to_anchor=(0.5, 0.0), fontsize=8,
               ncols=min(len(handles), 4), frameon=False)
  return _save(fig, path)


def compute_optimal_vs_baseline(budgets: Sequence[float], baseline: Sequence[Value],
                                compute_optimal: Mapping[str, Curve], path: str | os.PathLike,
                                *, title: str, efficiency: Sequence[dict] | None = None,
                                baseline_label: str = "best-of-N weighted (baseline)") -> Path:
  """The baseline against compute-optimal curves. A curve is a list aligned
  with `budgets`, or an (xs, ys) tuple where its costs differ (the router
  pays for its probe). `efficiency` (analyze_sweep's rows for one curve,
  e.g. compute_optimal["oracle"]["efficiency"]: budget, baseline_accuracy,
  matched_budget, ratio) labels each baseline point with its ratio (how many
  times less compute that curve needs to match it), with a dotted line back
  to the matched budget; rows with ratio None (never matched) are skipped."""
  xs = _check_budgets(budgets)
  fig, (ax,) = _new_figure(SINGLE_SIZE)
  bx, by = _curve_points(baseline, xs, "baseline")
  ax.plot(bx, by, label=baseline_label, color="black", marker="o", markersize=4, linewidth=2)
  plotted, extra = [by], []
  for i, (name, curve) in enumerate(compute_optimal.items()):
    px, py = _curve_points(curve, xs, f"curve {name!r}", pairs=True)
    style = _style(i)
    ax.plot(px, py, label=name, markersize=4, linewidth=1.5, **style)
    plotted.append(py)
    extra.append(px)
  matched_x = _annotate_efficiency(ax, efficiency or [])
  if matched_x.size:  # a legend entry explains the labels
    ax.plot([], [], color="gray", linestyle=":", linewidth=0.9,
            label="n×: baseline budget ÷ the budget\nwhere compute-optimal matches it")
  if not any(p.size for p in plotted):
    _no_data(ax)
  _log2_x(ax, xs, np.concatenate(extra + [matched_x]))
  _accuracy_ylim(ax, plotted)
  ax.set_xlabel("generations per question (router: incl. its probe)")
  ax.set_ylabel("accuracy")
  ax.set_title(title)
  ax.grid(True, alpha=0.3)
  _legend(ax, 1 + len(compute_optimal) + int(matched_x.size > 0))
  return _save(fig, path)


def _annotate_efficiency(ax, rows: Sequence[dict]) -> np.ndarray:
  """Ratio labels above the baseline points; returns the matched x positions."""
  matched = []
  for row in rows:
    missing = {"budget", "baseline_accuracy", "ratio"} - set(row)
    if missing:
      raise ValueError(f"efficiency row lacks {sorted(missing)}: {row!r}")
    if row["ratio"] is None or row["baseline_accuracy"] is None:
      continue
    x, y = float(row["budget"]), float(row["baseline_accuracy"])
    if row.get("matched_budget") is not None:
      m = float(row["matched_budget"])
      ax.plot([m, x], [y, y], color="gray", linestyle=":", linewidth=0.9, zorder=1)
      matched.append(m)
    ax.annotate(f"{float(row['ratio']):.3g}×", (x, y), textcoords="offset points",
                xytext=(0, 8), ha="center", fontsize=8, color="dimgray", zorder=5,
                bbox=dict(boxstyle="round,pad=0.15", facecolor="white", edgecolor="none",
                          alpha=0.8))
  return np.asarray(matched, dtype=np.float64)


def flops_matched_bars(rows: Sequence[dict], path: str | os.PathLike, *, title: str) -> Path:
  """The paper's Figure 1: per accounting a panel, per difficulty bin a group
  of bars (one per R), each the small model's compute-optimal relative
  improvement over the large model's greedy accuracy, in percent. A bin with
  no improvement to show (no budget within the matched FLOPs, or the large
  model at 0 there) is a hatched empty slot marked n/a."""
  if not rows:
    raise ValueError("flops_matched_bars needs at least one row")
  by_accounting: dict[str, list[dict]] = {}
  for row in rows:
    missing = {"accounting", "r", "bins"} - set(row)
    if missing:
      raise ValueError(f"flops_matched row lacks {sorted(missing)}: {row!r}")
    by_accounting.setdefault(row["accounting"], []).append(row)
  n_bins = _check_bins(by_accounting)
  fig, axes = _new_figure((max(SINGLE_SIZE[0], 1.1 * n_bins + 2.5) * len(by_accounting),
                           SINGLE_SIZE[1]), ncols=len(by_accounting), sharey=True)
  for ax, (accounting, group) in zip(axes, by_accounting.items()):
    _bar_panel(ax, group, n_bins)
    ax.set_title(_ACCOUNTING_TITLES.get(accounting, accounting), fontsize=10)
  axes[0].set_ylim(*_percent_limits(rows))  # shared; bars would pin an edge at 0
  axes[0].set_ylabel("relative improvement over large greedy (%)")
  fig.suptitle(title)
  return _save(fig, path)


def _percent_limits(rows: Sequence[dict]) -> tuple[float, float]:
  """Room above and below the bars (and zero) for the value labels."""
  values = [100.0 * float(b["relative_improvement"]) for row in rows for b in row["bins"]
            if b.get("relative_improvement") is not None] + [0.0]
  lo, hi = min(values), max(values)
  pad = max(0.12 * (hi - lo), 5.0)
  return lo - (pad if lo < 0 else 0.5 * pad), hi + (pad if hi > 0 else 0.5 * pad)


def _check_bins(by_accounting: dict[str, list[dict]]) -> int:
  """Every row must cover the same bins 0..n-1."""
  seen = set()
  for group in by_accounting.values():
    for row in group:
      if not all(isinstance(b, Mapping) for b in row["bins"]):
        raise ValueError(f"flops_matched row bins must be dicts: {row['bins']!r}")
      seen.add(tuple(b.get("bin", i) for i, b in enumerate(row["bins"])))
  if len(seen) != 1:
    raise ValueError(f"flops_matched rows cover different bins: {sorted(seen)}")
  bins = seen.pop()
  if bins != tuple(range(len(bins))) or not bins:
    raise ValueError(f"flops_matched bins must be 0..n-1, got {list(bins)}")
  return len(bins)


def _bar_panel(ax, group: list[dict], n_bins: int):
  """Grouped bars for one accounting; n/a slots get a hatched legend entry
  saying why."""
  width = 0.8 / len(group)
  reasons = set()
  handles = []
  for i, row in enumerate(group):
    color = _COLORS[i % len(_COLORS)]
    offsets = np.arange(n_bins) - 0.4 + width * (i + 0.5)
    for x, entry in zip(offsets, row["bins"]):
      value = entry.get("relative_improvement")
      if value is None:
        ax.add_patch(Rectangle((x - width / 2, 0.0), width, 1.0, transform=ax.get_xaxis_transform(),
                               fill=False, hatch="///", edgecolor=color, alpha=0.45, linewidth=0.8))
        ax.text(x, 0.5, "n/a", transform=ax.get_xaxis_transform(), ha="center", va="center",
                rotation=90, fontsize=8, color=color)
        reasons.add("no swept budget within the matched FLOPs"
                    if row.get("matched_budget") is None else "large model scores 0 in the bin")
        continue
      percent = 100.0 * float(value)
      ax.bar(x, percent, width, color=color, edgecolor="white", linewidth=0.5)
      ax.annotate(f"{percent:+.0f}", (x, percent), textcoords="offset points",
                  xytext=(0, 2 if percent >= 0 else -2), ha="center",
                  va="bottom" if percent >= 0 else "top", fontsize=6.5)
    handles.append(Patch(color=color, label=_r_label(row)))
  handles += [Patch(fill=False, hatch="///", edgecolor="gray", label=f"n/a: {reason}")
              for reason in sorted(reasons)]
  ax.axhline(0.0, color="black", linewidth=0.8)
  ax.set_xticks(np.arange(n_bins), _default_bin_labels(n_bins), fontsize=8)
  ax.set_xlim(-0.6, n_bins - 0.4)
  ax.set_xlabel("difficulty bin")
  ax.grid(True, axis="y", alpha=0.3)
  # below the panel: "best" would still cover bars or n/a slots
  ax.legend(handles=handles, loc="upper center", bbox_to_anchor=(0.5, -0.16),
            ncols=min(3, len(handles)), fontsize=8, frameon=False,
            title="R = D_inference / D_pretrain", title_fontsize=8)


def _r_label(row: dict) -> str:
  """'R = 0.16: budget 64 (K≈252)': the swept budget within the matched FLOPs."""
  budget, k = row.get("matched_budget"), row.get("multiplier")
  k_text = "" if k is None else f" (K≈{float(k):.3g})"
  swept = "no budget" if budget is None else f"budget {budget}"
  return f"R = {float(row['r']):g}: {swept}{k_text}"
