"""What a run shows and leaves behind for people: progress, pictures, error lists.

The progress bar is tqdm's; pictures are matplotlib figures on the Agg canvas
(no pyplot, so no global state: it works headless and in threads), written as
PNG files. Functions that return a picture return it as cv2.imread would read
the file: BGR uint8.
"""
from __future__ import annotations

import csv
import io
import math
import sys
import time
import warnings
from typing import Callable, Dict, List, Optional, Sequence, TextIO, Tuple, Union

import cv2
import numpy as np
from tqdm import tqdm

from src.arc import (ArcError, NUM_BRANCHES, OP_NAMES, cell_nodes, format_arc, parse_arc,
                     split_arc, unused_ids, validate_arc)
from src.run_dir import write_bytes_atomic, write_text_atomic

OP_SHORT_NAMES = ("sep3x3", "sep5x5", "avg3x3", "max3x3", "id")
# tab10 colours, one per op, so that edges can be told apart at a glance.
OP_COLOURS = ("tab:blue", "tab:purple", "tab:green", "tab:red", "dimgray")
CONCAT_EDGE = {"color": "darkgray", "linestyle": "--", "linewidth": 1.2}
DPI = 100

# Class names in scripts the bundled DejaVu Sans lacks (CJK, ...) show as boxes in the
# pictures; misclassified.csv has them in full, so the warning would only be noise on stderr.
warnings.filterwarnings("ignore", message=r"Glyph \d+ .* missing from font", category=UserWarning,
                        module=__name__.replace(".", r"\."))


# ----------------------------------------------------------------------------
# Log lines


def format_flags(flags: Dict) -> str:
    """The run's flags, one `--name=value` a line, as the run's log starts."""
    lines = ["-" * 80] + [f"--{name}={value}" for name, value in sorted(flags.items())] + ["-" * 80]
    return "\n".join(lines)


def format_train_line(epoch: int, step: int, loss: float, lr: float, grad_norm: float,
                      correct: int, batch: int, minutes: float, eta: str) -> str:
    """A child training log line, in the image-folder variant's layout (plus the ETA)."""
    return (f"epoch={epoch:<4d} ch_step={step:<7d} loss={loss:.6f} lr={lr:.4e} "
            f"|g|={grad_norm:.4f} tr_acc={correct:>4d}/{batch:<4d} mins={minutes:.2f} "
            f"epoch_eta={eta}")


def format_duration(seconds: float) -> str:
    """A short duration: '12s', '3m05s', '1h02m'; '?' when unknown."""
    if seconds is None or not math.isfinite(seconds) or seconds < 0:
        return "?"
    total = int(round(seconds))
    if total < 60:
        return f"{total}s"
    if total < 3600:
        return f"{total // 60}m{total % 60:02d}s"
    return f"{total // 3600}h{total % 3600 // 60:02d}m"


# ----------------------------------------------------------------------------
# Progress


def _format_postfix_value(value) -> str:
    # float() also turns 0-d tensors and numpy scalars into numbers.
    try:
        return f"{float(value):.4g}"
    except (TypeError, ValueError):
        return str(value)


class _LazyPostfixTqdm(tqdm):
    """tqdm that formats the postfix values only when it draws the bar.

    Overriding format_dict is tqdm's documented way to customise what it
    shows; here it spares a float() (a device sync for a tensor) per step.
    """

    # No monitor thread: with miniters=1 the bar checks the time at every step anyway.
    monitor_interval = 0

    def __init__(self, *args, **kwargs):
        self.postfix_values: Dict[str, object] = {}  # before tqdm's first draw
        super().__init__(*args, **kwargs)

    @property
    def format_dict(self):
        values = super().format_dict
        values["postfix"] = ", ".join(f"{key}={_format_postfix_value(value)}"
                                      for key, value in self.postfix_values.items())
        return values


class ProgressBar:
    """A tqdm progress bar on a terminal; on anything else (log files, CI) it writes nothing,
    since the training log lines already say where the run is.

    `stream=None` means sys.stderr at construction time (so a Tee installed
    earlier is honoured). Every write of the bar starts with '\\r', which is
    how run_dir.Tee keeps it out of the log file. `clock` exists for tests.
    """

    def __init__(self, total_steps: int, desc: str = "", stream: Optional[TextIO] = None,
                 leave: bool = True, clock: Callable[[], float] = time.perf_counter):
        self.total = max(int(total_steps or 0), 0)
        self.n = 0
        self.leave = leave
        self._stream = sys.stderr if stream is None else stream
        self._clock = clock
        self._start = clock()
        # leave=False: close() draws the last state itself (see there). disable=None: off on a non-TTY.
        self._bar = _LazyPostfixTqdm(total=self.total or None, desc=desc, file=self._stream,
                                     leave=False, disable=None, unit="step", miniters=1)

    def update(self, n: int = 1, **postfix) -> None:
        """Advances by n steps; keyword arguments are shown after the bar (loss=0.123)."""
        self.n += n
        if postfix:
            self._bar.postfix_values = postfix
        self._bar.update(n)

    def write(self, message: str, file: Optional[TextIO] = None) -> None:
        """Prints a line (to sys.stdout by default) above the bar, which is redrawn below it."""
        out = sys.stdout if file is None else file
        self._bar.write(message, file=out)
        out.flush()

    def eta(self) -> str:
        """Time left at the mean rate so far, as text ('?' before the first step)."""
        # Counted here, not by tqdm: a disabled tqdm counts nothing, and the log lines need the ETA.
        elapsed = self._clock() - self._start
        if not self.total or self.n == 0 or elapsed <= 0:
            return "?"
        return format_duration(max(self.total - self.n, 0) * elapsed / self.n)

    def close(self) -> None:
        """Ends the bar, leaving its last state on screen if leave=True."""
        visible = not self._bar.disable
        last_line = str(self._bar) if visible else ""
        self._bar.close()
        if visible and self.leave:
            # tqdm's own leave=True ends the line with a bare '\n' that Tee would log as an
            # empty line; one '\r'-led write keeps the bar off the log file.
            self._stream.write(f"\r{last_line}\n")
            self._stream.flush()

    def __enter__(self) -> "ProgressBar":
        return self

    def __exit__(self, *exc_info) -> None:
        self.close()


# ----------------------------------------------------------------------------
# Figures


def _new_figure(width: float, height: float, **kwargs):
    """A matplotlib Figure of width x height inches on the Agg canvas."""
    # Imported on first use: matplotlib takes ~0.5 s to import, which code that only logs need not pay.
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure
    figure = Figure(figsize=(width, height), dpi=DPI, facecolor="white", **kwargs)
    FigureCanvasAgg(figure)
    return figure


def _png_bytes(figure) -> bytes:
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", dpi=DPI)
    return buffer.getvalue()


def _decode(png: bytes) -> np.ndarray:
    """The BGR uint8 pixels of a PNG."""
    return cv2.imdecode(np.frombuffer(png, np.uint8), cv2.IMREAD_COLOR)


def _save_figure(figure, path: str) -> np.ndarray:
    """Writes the figure as a PNG to `path` atomically; returns its BGR pixels."""
    png = _png_bytes(figure)
    write_bytes_atomic(path, png)
    return _decode(png)


# ----------------------------------------------------------------------------
# Misclassified examples


def _class_name(class_names: Sequence[str], label: int) -> str:
    return str(class_names[label]) if 0 <= label < len(class_names) else str(label)


def _as_labels(labels) -> np.ndarray:
    return np.asarray(labels).astype(np.int64).reshape(-1)


def _misclassified_indices(true_labels, pred_labels) -> np.ndarray:
    true, pred = _as_labels(true_labels), _as_labels(pred_labels)
    if true.shape != pred.shape:
        raise ValueError(f"{true.size} true labels but {pred.size} predictions")
    return np.flatnonzero(true != pred)


def write_misclassified(path: str, paths: Sequence, true_labels, pred_labels,
                        class_names: Sequence[str]) -> int:
    """Writes a CSV `path,true_class,predicted_class` of the wrong rows; returns their count."""
    wrong = _misclassified_indices(true_labels, pred_labels)
    if len(paths) != len(_as_labels(true_labels)):
        raise ValueError(f"{len(paths)} paths but {len(_as_labels(true_labels))} labels")
    true, pred = _as_labels(true_labels), _as_labels(pred_labels)
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(["path", "true_class", "predicted_class"])
    for i in wrong:
        image_path = paths[i]
        if isinstance(image_path, bytes):  # tf.data hands out file names as bytes
            image_path = image_path.decode("utf-8", "replace")
        writer.writerow([image_path, _class_name(class_names, true[i]), _class_name(class_names, pred[i])])
    write_text_atomic(path, buffer.getvalue())
    return int(wrong.size)


def _to_uint8(images: np.ndarray) -> np.ndarray:
    """uint8 pixels from uint8 or float images; floats above 1.5 are taken to be 0..255."""
    if images.dtype == np.uint8:
        return images
    images = images.astype(np.float32)
    scale = 1.0 if images.size and np.nanmax(images) > 1.5 else 255.0
    return np.clip(np.nan_to_num(images) * scale + 0.5, 0, 255).astype(np.uint8)


def _short(name: str, max_chars: int = 10) -> str:
    # matplotlib does not fit text into a box: long class names are cut so captions stay apart.
    return name if len(name) <= max_chars else name[:max_chars - 1] + "…"


def _grid_figure(tiles: np.ndarray, captions: List[str], header: str):
    """The tiles (all of one size) in a near-square grid, each under its caption.

    One Axes holds every tile, placed by its extent in units of a tile's
    width: 64 Axes of their own take matplotlib seconds to lay out.
    """
    if tiles.ndim == 4 and tiles.shape[3] == 1:
        tiles = tiles[..., 0]
    grey = {"cmap": "gray", "vmin": 0, "vmax": 255} if tiles.ndim == 3 else {}
    cols = math.ceil(math.sqrt(len(tiles)))
    rows = math.ceil(len(tiles) / cols)
    tile_h = tiles.shape[1] / tiles.shape[2]
    step_x, step_y, caption_h = 1.3, tile_h + 0.3, 0.25
    figure = _new_figure(max(1.2 * step_x * cols, 4.0), 1.2 * step_y * rows + 0.5, layout="constrained")
    figure.suptitle(header)
    ax = figure.add_subplot()
    for index, (tile, caption) in enumerate(zip(tiles, captions)):
        row, col = divmod(index, cols)
        left, top = col * step_x, row * step_y + caption_h
        ax.imshow(tile, extent=(left, left + 1, top + tile_h, top), **grey)
        ax.text(left + 0.5, top - 0.04, caption, fontsize=8, ha="center", va="bottom")
    ax.set_xlim(-0.15, cols * step_x - 0.15)
    ax.set_ylim(rows * step_y, 0)
    ax.set_aspect("equal")
    ax.set_axis_off()
    return figure


def save_misclassified_grid(path: str, images, true_labels, pred_labels,
                            class_names: Sequence[str], max_images: int = 64) -> bool:
    """A PNG grid of up to max_images misclassified images captioned 'true → pred',
    spread evenly over all the misclassified ones.

    images: [N,H,W], [N,H,W,1], [N,H,W,3] (RGB) or [N,H,W,4] (RGBA), uint8 or float in [0,1].
    Returns False (and writes nothing) when nothing is misclassified.
    """
    wrong = _misclassified_indices(true_labels, pred_labels)
    if wrong.size == 0:
        return False
    # Evenly spaced over the list, so that every class (the list is in class order) shows.
    shown = wrong[np.linspace(0, wrong.size - 1, min(max_images, wrong.size)).round().astype(int)]
    true, pred = _as_labels(true_labels), _as_labels(pred_labels)
    captions = [f"{_short(_class_name(class_names, true[i]))} → {_short(_class_name(class_names, pred[i]))}"
                for i in shown]
    header = f"{wrong.size} misclassified, {shown.size} shown (true → predicted)"
    _save_figure(_grid_figure(_to_uint8(np.asarray(images)[shown]), captions, header), path)
    return True


# ----------------------------------------------------------------------------
# Cell diagrams
#
# Layout (data units: one row per id): the cell's ids run top to bottom in one
# column (h[i-1], h[i], node 2 .. node B+1, concat). Edges are arcs that leave
# the column on the side of their role (x inputs on the left, y inputs and the
# edges into concat on the right) and bulge out in proportion to the ids they
# skip, so they never cross a box and longer edges nest outside shorter ones.
# Each op label sits at the tip of its arc; two tips at the same height are at
# least two spans apart, so labels do not overlap.

_BOX_W, _BOX_H = 1.3, 0.5
_BULGE = 0.5  # how far an arc's tip is from the column, per id it spans
_EDGE_OFFSET = 0.12  # edges leave a box below its middle and arrive above it
_INCHES_PER_ROW = 0.75


def _check_cell(cell: Sequence[int]) -> None:
    if not cell or len(cell) % 4:
        raise ArcError(f"a cell has 4 integers per node, got {len(cell)}")
    for node, (x_id, x_op, y_id, y_op) in enumerate(cell_nodes(cell)):
        node_id = node + 2
        for input_id, op in ((x_id, x_op), (y_id, y_op)):
            if not 0 <= input_id < node_id or not 0 <= op < NUM_BRANCHES:
                raise ArcError(f"node {node_id} has input id {input_id} op {op}: "
                               f"ids must be in 0..{node_id - 1}, ops in 0..{NUM_BRANCHES - 1}")


def _box_name(node_id: int, num_nodes: int) -> str:
    if node_id == 0:
        return "h[i-1]"
    if node_id == 1:
        return "h[i]"
    if node_id == num_nodes + 2:
        return "concat"
    return f"node {node_id}"


def _box_fill(node_id: int, num_nodes: int) -> str:
    if node_id < 2:
        return "#c8e4fa"  # inputs: light blue
    if node_id == num_nodes + 2:
        return "#cdf0cd"  # output: light green
    return "#fff0cd"  # nodes: light yellow


def _cell_edges(cell: Sequence[int]) -> List[Tuple[int, int, int, Optional[int]]]:
    """(source id, target id, side, op) for every edge; side -1 left, +1 right; op None into concat."""
    nodes = cell_nodes(cell)
    edges = []
    for node, (x_id, x_op, y_id, y_op) in enumerate(nodes):
        edges.append((x_id, node + 2, -1, x_op))
        edges.append((y_id, node + 2, +1, y_op))
    concat_id = len(nodes) + 2
    edges += [(source, concat_id, +1, None) for source in unused_ids(cell)]
    return edges


def _draw_edge(ax, source: int, target: int, side: int, op: Optional[int]) -> None:
    """An arrow from id `source` down to id `target`, bulging out on `side`, labelled with its op."""
    from matplotlib.patches import FancyArrowPatch
    x = side * _BOX_W / 2
    start, end = (x, -source - _EDGE_OFFSET), (x, -target + _EDGE_OFFSET)
    tip = _BULGE * (target - source)
    # arc3 bends by `rad` times the chord; the curve's middle is half way to its control point.
    # (Axes with an equal aspect make this hold in data units as it does on screen.)
    rad = 2 * side * tip / (end[1] - start[1])
    style = CONCAT_EDGE if op is None else {"color": OP_COLOURS[op], "linewidth": 2}
    ax.add_patch(FancyArrowPatch(start, end, connectionstyle=f"arc3,rad={rad}", arrowstyle="-|>",
                                 mutation_scale=14, shrinkA=0, shrinkB=0,
                                 zorder=1 if op is None else 2, **style))
    if op is not None:
        ax.text(x + side * tip, (start[1] + end[1]) / 2, OP_SHORT_NAMES[op], color=OP_COLOURS[op],
                fontsize=9, ha="center", va="center", zorder=4,
                bbox={"boxstyle": "round,pad=0.25", "facecolor": "white", "edgecolor": OP_COLOURS[op]})


def _draw_box(ax, node_id: int, num_nodes: int, bold: bool) -> None:
    from matplotlib.patches import FancyBboxPatch
    ax.add_patch(FancyBboxPatch((-_BOX_W / 2, -node_id - _BOX_H / 2), _BOX_W, _BOX_H,
                                boxstyle="round,pad=0,rounding_size=0.08", zorder=3,
                                facecolor=_box_fill(node_id, num_nodes), edgecolor="#3c3c3c",
                                linewidth=2.2 if bold else 1))
    ax.text(0, -node_id, _box_name(node_id, num_nodes), fontsize=10, ha="center", va="center", zorder=3)


def _cell_half_width(num_nodes: int) -> float:
    """Half the width of a cell's drawing: the widest arc (h[i-1] -> concat) and its label."""
    return _BOX_W / 2 + _BULGE * (num_nodes + 2) + 0.6


def _draw_cell_on(ax, cell: Tuple[int, ...], title: str) -> None:
    """Boxes for the ids of a valid `cell`, op-coloured arcs for its edges; bold boxes feed concat."""
    num_nodes = len(cell) // 4
    for edge in _cell_edges(cell):
        _draw_edge(ax, *edge)
    concat_inputs = set(unused_ids(cell))
    for node_id in range(num_nodes + 3):
        _draw_box(ax, node_id, num_nodes, bold=node_id in concat_inputs)
    half_width = _cell_half_width(num_nodes)
    ax.set_xlim(-half_width, half_width)
    ax.set_ylim(-num_nodes - 2.6, 0.6)
    ax.set_aspect("equal")
    ax.set_axis_off()
    ax.set_title(title, fontsize=14, fontweight="bold")


def _add_op_legend(figure) -> None:
    from matplotlib.lines import Line2D
    handles = [Line2D([], [], color=colour, linewidth=2, label=f"{short} = {name}")
               for short, name, colour in zip(OP_SHORT_NAMES, OP_NAMES, OP_COLOURS)]
    handles.append(Line2D([], [], label="into concat (bold boxes)", **CONCAT_EDGE))
    figure.legend(handles=handles, loc="outside lower center", ncols=3, frameon=False)


def _cell_figure(cell: Sequence[int], title: str):
    cell = tuple(int(v) for v in cell)
    _check_cell(cell)
    rows = len(cell) // 4 + 3
    figure = _new_figure(2 * _cell_half_width(rows - 3) * _INCHES_PER_ROW,
                         rows * _INCHES_PER_ROW + 1.5, layout="constrained")
    _draw_cell_on(figure.add_subplot(), cell, title)
    _add_op_legend(figure)
    return figure


def _arc_figure(arc: Union[str, Sequence[int]]):
    if isinstance(arc, str):
        arc = parse_arc(arc, num_cells=len(arc.split()) // 8)
    arc = tuple(int(v) for v in arc)
    num_cells = len(arc) // 8
    validate_arc(arc, num_cells)
    normal, reduction = split_arc(arc, num_cells)
    figure = _new_figure(14, 7, layout="constrained")
    left, right = figure.subplots(1, 2)
    _draw_cell_on(left, normal, "normal cell")
    _draw_cell_on(right, reduction, "reduction cell")
    _add_op_legend(figure)
    # The arc string as the title: the picture names exactly what it draws.
    figure.suptitle(format_arc(normal) + "  |  " + format_arc(reduction), fontsize=11,
                    family="monospace")
    return figure


def draw_cell(cell: Sequence[int], title: str) -> np.ndarray:
    """A BGR uint8 diagram of one cell (4 * B ints); raises ArcError for a bad cell."""
    return _decode(_png_bytes(_cell_figure(cell, title)))


def draw_arc(arc: Union[str, Sequence[int]]) -> np.ndarray:
    """Both cells of an arc side by side (normal left, reduction right), BGR uint8."""
    return _decode(_png_bytes(_arc_figure(arc)))


def save_arc_picture(arc: Union[str, Sequence[int]], path: str) -> np.ndarray:
    """Writes the PNG of draw_arc(arc) to `path` and returns the image (BGR uint8)."""
    return _save_figure(_arc_figure(arc), path)


# ----------------------------------------------------------------------------
# Curves


def _finite_xy(points: Sequence[Tuple]) -> Tuple[np.ndarray, np.ndarray]:
    """x and y arrays with NaN where a point is not finite (a diverged loss), which
    matplotlib draws as a gap in the line. Points may carry a third item (an interval)."""
    xy = np.asarray([point[:2] for point in points], dtype=np.float64).reshape(-1, 2)
    finite = np.isfinite(xy).all(axis=1)
    return np.where(finite, xy[:, 0], np.nan), np.where(finite, xy[:, 1], np.nan)


def _intervals(points: Sequence[Tuple]) -> Optional[np.ndarray]:
    """[2, N] distances below and above y of points (x, y, [low, high]); None if no
    point carries an interval."""
    if not any(len(point) > 2 and point[2] is not None for point in points):
        return None
    below_above = [(point[1] - point[2][0], point[2][1] - point[1])
                   if len(point) > 2 and point[2] is not None else (np.nan, np.nan)
                   for point in points]
    return np.asarray(below_above, dtype=np.float64).T


def _curves_figure(series: Dict[str, Sequence[Tuple]], title: str, xlabel: str,
                   ylabel: str, size: Tuple[int, int], hlines: Optional[Dict[str, float]] = None):
    figure = _new_figure(size[0] / DPI, size[1] / DPI, layout="constrained")
    ax = figure.add_subplot()
    any_data = False
    for name, points in series.items():
        x, y = _finite_xy(points)
        count = int(np.isfinite(y).sum())
        any_data = any_data or count > 0
        errors = _intervals(points)
        label = name if count else f"{name} (no data)"
        if errors is None:
            ax.plot(x, y, label=label, linewidth=2,
                    marker="o" if count <= 60 else None, markersize=4)  # markers while readable
        else:
            ax.errorbar(x, y, yerr=errors, label=label, linewidth=2, marker="o", markersize=4,
                        capsize=4)
    for name, level in (hlines or {}).items():
        ax.axhline(level, color="gray", linestyle="--", linewidth=1, label=name)
    if not any_data:
        ax.text(0.5, 0.5, "no data", transform=ax.transAxes, ha="center", va="center",
                fontsize=14, color="gray")
    ax.set_title(title, fontsize=13)
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.grid(alpha=0.35)
    if series:  # an empty legend would warn
        ax.legend(loc="upper left", bbox_to_anchor=(1.01, 1.0), frameon=False)
    return figure


def draw_curves(series: Dict[str, Sequence[Tuple[float, float]]], title: str,
                xlabel: str = "epoch", ylabel: str = "", size: Tuple[int, int] = (960, 540)) -> np.ndarray:
    """A BGR line plot (size in pixels) of named (x, y) series on shared axes, with a legend."""
    return _decode(_png_bytes(_curves_figure(series, title, xlabel, ylabel, size)))


def save_curves(path: str, series: Dict[str, Sequence[Tuple]], title: str,
                xlabel: str = "epoch", ylabel: str = "",
                hlines: Optional[Dict[str, float]] = None) -> np.ndarray:
    """Writes draw_curves(...) as a PNG to `path` and returns the image (BGR uint8).
    A point (x, y, [low, high]) is drawn with an error bar; `hlines` are named levels
    drawn across (a chance level)."""
    return _save_figure(_curves_figure(series, title, xlabel, ylabel, (960, 540), hlines), path)


# ----------------------------------------------------------------------------
# Scatter


def save_scatter(path: str, x: Sequence[float], y: Sequence[float], title: str, xlabel: str,
                 ylabel: str, highlight: Optional[int] = None,
                 highlight_label: str = "") -> np.ndarray:
    """A PNG scatter plot of (x, y) with a least-squares line; point `highlight` (an
    index) drawn apart, with its label. Returns the image (BGR uint8)."""
    figure = _new_figure(7.2, 5.4, layout="constrained")
    ax = figure.add_subplot()
    x, y = np.asarray(x, np.float64), np.asarray(y, np.float64)
    ax.scatter(x, y, s=40, color="tab:blue", label="arcs")
    if highlight is not None:
        ax.scatter([x[highlight]], [y[highlight]], s=140, marker="*", color="tab:red",
                   label=highlight_label or "highlighted", zorder=3)
    if len(x) >= 2 and np.ptp(x) > 0:
        slope, intercept = np.polyfit(x, y, 1)
        line_x = np.array([x.min(), x.max()])
        ax.plot(line_x, slope * line_x + intercept, color="gray", linestyle="--", linewidth=1,
                label="least squares")
    ax.set_title(title, fontsize=12)
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.grid(alpha=0.35)
    ax.legend(loc="best", frameon=False)
    return _save_figure(figure, path)
