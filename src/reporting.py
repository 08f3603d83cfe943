"""What a run shows and leaves behind for people: progress, pictures, error lists.

Pictures are drawn with OpenCV and numpy only (OpenCV images are BGR uint8).
"""
from __future__ import annotations

import csv
import io
import math
import shutil
import sys
import time
from typing import Callable, Dict, List, Optional, Sequence, TextIO, Tuple, Union

import cv2
import numpy as np

from src.arc import ArcError, NUM_BRANCHES, cell_nodes, parse_arc, split_arc, unused_ids, validate_arc
from src.run_dir import write_bytes_atomic, write_text_atomic

FONT = cv2.FONT_HERSHEY_SIMPLEX
WHITE = (255, 255, 255)
BLACK = (0, 0, 0)
DARK_GREY = (60, 60, 60)
LIGHT_GREY = (225, 225, 225)

OP_SHORT_NAMES = ("sep3x3", "sep5x5", "avg3x3", "max3x3", "id")
# BGR, from the tab10 palette; one colour per op so edges can be told apart at a glance.
OP_COLOURS = ((180, 119, 31), (189, 103, 148), (44, 160, 44), (40, 39, 214), (110, 110, 110))
# tab10 again (BGR) for curves.
SERIES_COLOURS = ((180, 119, 31), (14, 127, 255), (44, 160, 44), (40, 39, 214), (189, 103, 148),
                  (75, 86, 140), (194, 119, 227), (127, 127, 127), (34, 189, 188), (207, 190, 23))


# ----------------------------------------------------------------------------
# Progress


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


def _is_tty(stream: TextIO) -> bool:
    try:
        return bool(stream.isatty())
    except (AttributeError, ValueError):  # no isatty, or a closed stream
        return False


def _format_postfix_value(value) -> str:
    # float() also turns 0-d tensors and numpy scalars into numbers; it only
    # runs when the bar is drawn, so a tensor costs one sync 5 times a second.
    try:
        return f"{float(value):.4g}"
    except (TypeError, ValueError):
        return str(value)


def _format_rate(steps_per_second: Optional[float]) -> str:
    if not steps_per_second:
        return "? step/s"
    if steps_per_second >= 1:
        return f"{steps_per_second:.1f} step/s"
    return f"{1 / steps_per_second:.1f} s/step"


class ProgressBar:
    """A one-line progress bar with ETA, redrawn with '\\r' on a terminal only.

    On anything that is not a TTY (log files, CI) it writes nothing at all,
    since the training log lines already say where the run is.
    `stream=None` means sys.stderr at construction time (so a Tee installed
    earlier is honoured). `clock` exists for tests.
    """

    REDRAW_INTERVAL_S = 0.2  # at most ~5 redraws per second
    BAR_WIDTH = 20

    def __init__(self, total_steps: int, desc: str = "", stream: Optional[TextIO] = None,
                 leave: bool = True, clock: Callable[[], float] = time.perf_counter):
        self.total = max(int(total_steps or 0), 0)
        self.desc = desc
        self.stream = sys.stderr if stream is None else stream
        self.leave = leave
        self.n = 0
        self._clock = clock
        self._postfix: Dict[str, object] = {}
        self._enabled = _is_tty(self.stream)
        self._closed = False
        self._start = clock()
        self._last_draw = -math.inf
        self._drawn_length = 0  # characters of the line on screen, to blank leftovers
        if self._enabled:
            # One character less than the terminal: a line that wraps cannot be redrawn by '\r'.
            self._max_width = max(shutil.get_terminal_size().columns - 1, 20)
            self._draw(self._start)

    def update(self, n: int = 1, **postfix) -> None:
        """Advances by n steps; keyword arguments are shown after the bar (loss=0.123)."""
        self.n += n
        if not self._enabled:
            return
        if postfix:
            self._postfix = postfix
        now = self._clock()
        if now - self._last_draw >= self.REDRAW_INTERVAL_S:
            self._draw(now)

    def write(self, message: str, file: Optional[TextIO] = None) -> None:
        """Prints a line (to sys.stdout by default) without garbling the bar."""
        visible = self._enabled and not self._closed
        if visible:
            self._clear_line()
        print(message, file=sys.stdout if file is None else file, flush=True)
        if visible:
            self._draw(self._clock())

    def close(self) -> None:
        """Draws the final state and ends the line (or blanks it if leave=False)."""
        if self._closed:
            return
        self._closed = True
        if not self._enabled:
            return
        if self.leave:
            # One write starting with '\r', so that Tee keeps it out of the log file.
            self.stream.write(self._padded_line(self._clock()) + "\n")
            self.stream.flush()
        else:
            self._clear_line()

    def __enter__(self) -> "ProgressBar":
        return self

    def __exit__(self, *exc_info) -> None:
        self.close()

    def eta(self) -> str:
        """Time left at the current rate, as text ('?' before the first step)."""
        elapsed = self._clock() - self._start
        if not self.total or self.n == 0 or elapsed <= 0:
            return "?"
        return format_duration(max(self.total - self.n, 0) * elapsed / self.n)

    def render(self, now: float, with_bar: bool = True) -> str:
        """The text of the bar at time `now` (no '\\r')."""
        elapsed = now - self._start
        rate = self.n / elapsed if self.n > 0 and elapsed > 0 else None
        parts = [self.desc] if self.desc else []
        if self.total:
            fraction = min(self.n / self.total, 1.0)
            eta = max(self.total - self.n, 0) / rate if rate else None
            parts.append(f"{fraction * 100:3.0f}%")
            if with_bar:
                filled = int(fraction * self.BAR_WIDTH)
                parts.append("[" + "#" * filled + "." * (self.BAR_WIDTH - filled) + "]")
            parts += [f"{self.n}/{self.total}", _format_rate(rate),
                      f"elapsed {format_duration(elapsed)}", f"eta {format_duration(eta)}"]
        else:  # unknown length: count only
            parts += [f"{self.n} steps", _format_rate(rate), f"elapsed {format_duration(elapsed)}"]
        parts += [f"{key}={_format_postfix_value(value)}" for key, value in self._postfix.items()]
        return " ".join(parts)

    def _padded_line(self, now: float) -> str:
        line = self.render(now)
        if len(line) > self._max_width:
            # On a narrow terminal the numbers (loss, ETA) matter more than the bar.
            line = self.render(now, with_bar=False)[:self._max_width]
        padded = line.ljust(self._drawn_length)
        self._drawn_length = len(line)
        return "\r" + padded

    def _draw(self, now: float) -> None:
        self.stream.write(self._padded_line(now))
        self.stream.flush()
        self._last_draw = now

    def _clear_line(self) -> None:
        self.stream.write("\r" + " " * self._drawn_length + "\r")
        self.stream.flush()
        self._drawn_length = 0


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


def _to_bgr(image: np.ndarray) -> np.ndarray:
    """A 3-channel BGR image from an HxW, HxWx1, RGB or RGBA one."""
    if image.ndim == 3 and image.shape[2] == 1:
        image = image[:, :, 0]
    if image.ndim == 2:
        return cv2.cvtColor(image, cv2.COLOR_GRAY2BGR)
    if image.shape[2] == 4:
        return cv2.cvtColor(image, cv2.COLOR_RGBA2BGR)
    return np.ascontiguousarray(image[:, :, ::-1])  # RGB -> BGR


def _resize_tile(image: np.ndarray, min_side: int = 64, max_side: int = 160) -> np.ndarray:
    """Upscales small images by an integer factor (crisp pixels), shrinks big ones."""
    height, width = image.shape[:2]
    if min(height, width) < min_side:
        factor = math.ceil(min_side / min(height, width))
        return cv2.resize(image, (width * factor, height * factor), interpolation=cv2.INTER_NEAREST)
    if max(height, width) > max_side:
        scale = max_side / max(height, width)
        size = (max(1, round(width * scale)), max(1, round(height * scale)))
        return cv2.resize(image, size, interpolation=cv2.INTER_AREA)
    return image


def _fit_text(text: str, max_width: int, scale: float, min_scale: float = 0.3,
              thickness: int = 1) -> Tuple[str, float]:
    """Shrinks the font, then cuts the text with '..', until it fits in max_width pixels."""
    while scale > min_scale and _text_width(text, scale, thickness) > max_width:
        scale = round(scale - 0.05, 2)
    while len(text) > 3 and _text_width(text, scale, thickness) > max_width:
        text = text[:-3] + ".."
    return text, scale


def _text_width(text: str, scale: float, thickness: int = 1) -> int:
    return cv2.getTextSize(text, FONT, scale, thickness)[0][0]


def save_misclassified_grid(path: str, images, true_labels, pred_labels,
                            class_names: Sequence[str], max_images: int = 64) -> bool:
    """A PNG grid of up to max_images misclassified images captioned 'true->pred',
    spread evenly over all the misclassified ones.

    images: [N,H,W], [N,H,W,1] or [N,H,W,3] (RGB), uint8 or float in [0,1].
    Returns False (and writes nothing) when nothing is misclassified.
    """
    wrong = _misclassified_indices(true_labels, pred_labels)
    if wrong.size == 0:
        return False
    # Evenly spaced over the list, so that every class (the list is in class order) shows.
    shown = wrong[np.linspace(0, wrong.size - 1, min(max_images, wrong.size)).round().astype(int)]
    true, pred = _as_labels(true_labels), _as_labels(pred_labels)
    tiles = [_resize_tile(_to_bgr(image)) for image in _to_uint8(np.asarray(images)[shown])]
    captions = [f"{_class_name(class_names, true[i])}->{_class_name(class_names, pred[i])}" for i in shown]
    tile_h = max(t.shape[0] for t in tiles)
    tile_w = max(t.shape[1] for t in tiles)
    caption_scale = 0.4
    # Cells widen for long class names, up to a point; beyond it the text shrinks.
    cell_w = min(max(tile_w, max(_text_width(c, caption_scale) for c in captions)), max(tile_w, 180)) + 8
    caption_h, pad, header_h = 18, 6, 30
    cols = math.ceil(math.sqrt(len(tiles)))
    rows = math.ceil(len(tiles) / cols)
    cell_h = tile_h + caption_h
    canvas_w = max(cols * (cell_w + pad) + pad, 320)
    canvas = np.full((header_h + rows * (cell_h + pad) + pad, canvas_w, 3), 255, np.uint8)
    header = f"{wrong.size} misclassified, {len(tiles)} shown (true->predicted)"
    header, header_scale = _fit_text(header, canvas_w - 2 * pad, 0.55)
    cv2.putText(canvas, header, (pad, 21), FONT, header_scale, BLACK, 1, cv2.LINE_AA)
    for index, (tile, caption) in enumerate(zip(tiles, captions)):
        row, col = divmod(index, cols)
        x0 = pad + col * (cell_w + pad)
        y0 = header_h + pad + row * (cell_h + pad)
        tx = x0 + (cell_w - tile.shape[1]) // 2
        canvas[y0:y0 + tile.shape[0], tx:tx + tile.shape[1]] = tile
        text, scale = _fit_text(caption, cell_w - 2, caption_scale)
        text_x = x0 + (cell_w - _text_width(text, scale)) // 2
        cv2.putText(canvas, text, (text_x, y0 + tile_h + 13), FONT, scale, BLACK, 1, cv2.LINE_AA)
    _write_png(path, canvas)
    return True


def _write_png(path: str, image: np.ndarray) -> None:
    ok, encoded = cv2.imencode(".png", image)
    if not ok:
        raise OSError(f"could not encode a PNG for {path}")
    write_bytes_atomic(path, encoded.tobytes())


# ----------------------------------------------------------------------------
# Cell diagrams
#
# Layout: the cell's ids run top to bottom in one column (h[i-1], h[i],
# node 2 .. node B+1, concat). Edges are arcs that leave the column on the
# side of their role (x inputs on the left, y inputs and the edges into
# concat on the right) and bulge out in proportion to the ids they skip, so
# they never cross a box, and longer edges nest outside shorter ones. Each op
# label sits at the tip of its arc; two tips at the same height are at least
# two spans apart, so labels do not overlap.

_BOX_W, _BOX_H = 110, 36
_ROW_H = 78
_SPAN_STEP = 40  # how far an arc bulges out per id it spans
_TITLE_H = 56
_MARGIN = 16
_EDGE_OFFSET = 7  # edges leave a box below its middle and arrive above it
_LABEL_SCALE, _BOX_SCALE, _TITLE_SCALE = 0.5, 0.55, 0.8


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


def _box_fill(node_id: int, num_nodes: int) -> Tuple[int, int, int]:
    if node_id < 2:
        return (250, 228, 200)  # inputs: light blue
    if node_id == num_nodes + 2:
        return (205, 240, 205)  # output: light green
    return (205, 240, 255)  # nodes: light yellow


def _bezier(p0, control, p2, steps: int = 49) -> np.ndarray:
    t = np.linspace(0.0, 1.0, steps)[:, None]
    return (1 - t) ** 2 * np.asarray(p0, float) + 2 * (1 - t) * t * np.asarray(control, float) \
        + t ** 2 * np.asarray(p2, float)


def _point_back_along(points: np.ndarray, distance: float) -> np.ndarray:
    """The point of the polyline `distance` pixels before its end."""
    remaining = distance
    for i in range(len(points) - 1, 0, -1):
        segment = np.linalg.norm(points[i] - points[i - 1])
        if segment >= remaining:
            return points[i] + (points[i - 1] - points[i]) * (remaining / segment)
        remaining -= segment
    return points[0]


def _draw_arrow_curve(image, points: np.ndarray, colour, thickness: int) -> None:
    """Draws a polyline ending in an arrowhead of fixed size."""
    head_len = 11.0
    tail = _point_back_along(points, head_len)
    body = np.vstack([points[np.linalg.norm(points - points[-1], axis=1) > head_len], tail])
    cv2.polylines(image, [np.round(body).astype(np.int32)], False, colour, thickness, cv2.LINE_AA)
    start = tuple(int(round(v)) for v in tail)
    end = tuple(int(round(v)) for v in points[-1])
    cv2.arrowedLine(image, start, end, colour, thickness, cv2.LINE_AA, tipLength=0.9)


def _put_centred(image, text: str, centre, scale: float, colour, thickness: int = 1) -> None:
    (width, height), _ = cv2.getTextSize(text, FONT, scale, thickness)
    origin = (int(round(centre[0] - width / 2)), int(round(centre[1] + height / 2)))
    cv2.putText(image, text, origin, FONT, scale, colour, thickness, cv2.LINE_AA)


def _draw_label(image, text: str, centre, colour) -> None:
    """The op name on a white tag with a border in the op's colour (hides lines behind it)."""
    (width, height), _ = cv2.getTextSize(text, FONT, _LABEL_SCALE, 1)
    x, y = int(round(centre[0])), int(round(centre[1]))
    half_w, half_h = width // 2 + 5, height // 2 + 5
    cv2.rectangle(image, (x - half_w, y - half_h), (x + half_w, y + half_h), WHITE, -1)
    cv2.rectangle(image, (x - half_w, y - half_h), (x + half_w, y + half_h), colour, 1, cv2.LINE_AA)
    _put_centred(image, text, (x, y), _LABEL_SCALE, colour)


def _draw_box(image, text: str, centre, fill, bold: bool) -> None:
    x, y = centre
    top_left = (x - _BOX_W // 2, y - _BOX_H // 2)
    bottom_right = (x + _BOX_W // 2, y + _BOX_H // 2)
    cv2.rectangle(image, top_left, bottom_right, fill, -1)
    cv2.rectangle(image, top_left, bottom_right, DARK_GREY, 2 if bold else 1, cv2.LINE_AA)
    _put_centred(image, text, (x, y), _BOX_SCALE, BLACK)


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


def draw_cell(cell: Sequence[int], title: str) -> np.ndarray:
    """A BGR uint8 diagram of one cell (4 * B ints): boxes for ids, op-labelled arcs for edges."""
    cell = tuple(int(v) for v in cell)
    _check_cell(cell)
    num_nodes = len(cell) // 4
    max_span = num_nodes + 2  # h[i-1] -> concat
    half_width = _BOX_W // 2 + _SPAN_STEP * max_span + _MARGIN + 4
    width, centre_x = 2 * half_width, half_width
    height = _TITLE_H + (num_nodes + 3) * _ROW_H + _MARGIN // 2
    image = np.full((height, width, 3), 255, np.uint8)
    row_y = [_TITLE_H + _ROW_H * i + _ROW_H // 2 for i in range(num_nodes + 3)]

    _put_centred(image, title, (centre_x, _TITLE_H // 2 + 4), _TITLE_SCALE, BLACK, 2)
    edges = _cell_edges(cell)
    labels = []
    # Concat edges first so that op edges are drawn over them.
    for source, target, side, op in sorted(edges, key=lambda e: e[3] is not None):
        side_x = centre_x + side * _BOX_W // 2
        start = (side_x, row_y[source] + _EDGE_OFFSET)
        end = (side_x, row_y[target] - _EDGE_OFFSET)
        bulge = _SPAN_STEP * (target - source)
        # A quadratic Bezier's middle lies halfway to its control point.
        control = (side_x + side * 2 * bulge, (start[1] + end[1]) / 2)
        points = _bezier(start, control, end)
        if op is None:
            _draw_arrow_curve(image, points, (150, 150, 150), 1)
        else:
            _draw_arrow_curve(image, points, OP_COLOURS[op], 2)
            labels.append((OP_SHORT_NAMES[op], points[len(points) // 2], OP_COLOURS[op]))
    concat_inputs = set(unused_ids(cell))
    for node_id in range(num_nodes + 3):
        _draw_box(image, _box_name(node_id, num_nodes), (centre_x, row_y[node_id]),
                  _box_fill(node_id, num_nodes), bold=node_id in concat_inputs)
    for text, centre, colour in labels:  # last, so that no line crosses a label
        _draw_label(image, text, centre, colour)
    return image


def draw_arc(arc: Union[str, Sequence[int]]) -> np.ndarray:
    """Both cells of an arc side by side (normal left, reduction right), BGR uint8."""
    if isinstance(arc, str):
        arc = parse_arc(arc, num_cells=len(arc.split()) // 8)
    arc = tuple(int(v) for v in arc)
    num_cells = len(arc) // 8
    validate_arc(arc, num_cells)
    normal, reduction = split_arc(arc, num_cells)
    left, right = draw_cell(normal, "normal cell"), draw_cell(reduction, "reduction cell")
    separator = np.full((left.shape[0], 2, 3), LIGHT_GREY, np.uint8)
    return np.hstack([left, separator, right])


def save_arc_picture(arc: Union[str, Sequence[int]], path: str) -> np.ndarray:
    """Writes the PNG of draw_arc(arc) to `path` and returns the image."""
    image = draw_arc(arc)
    _write_png(path, image)
    return image


# ----------------------------------------------------------------------------
# Curves


def _nice_step(raw_step: float) -> float:
    """The 1, 2, 2.5 or 5 times a power of ten at or above raw_step."""
    exponent = math.floor(math.log10(raw_step))
    for multiple in (1, 2, 2.5, 5, 10):
        step = multiple * 10 ** exponent
        if step >= raw_step * (1 - 1e-9):
            return step
    return 10 ** (exponent + 1)


def _nice_ticks(low: float, high: float, max_ticks: int) -> List[float]:
    """Round tick values covering [low, high]."""
    step = _nice_step((high - low) / max(max_ticks - 1, 1))
    first = math.floor(low / step + 1e-9) * step
    last = math.ceil(high / step - 1e-9) * step
    count = int(round((last - first) / step)) + 1
    return [first + i * step for i in range(count)]


def _tick_text(value: float, step: float) -> str:
    decimals = max(0, -math.floor(math.log10(step) + 1e-9))
    if step % 1 and decimals == 0:
        decimals = 1  # 2.5
    if abs(step * 10 ** decimals - round(step * 10 ** decimals)) > 1e-6:
        decimals += 1
    text = f"{value:.{decimals}f}"
    return text.lstrip("-") if float(text) == 0 else text  # '0.0', not '-0.0'


def _padded_range(values: List[float], default: Tuple[float, float]) -> Tuple[float, float]:
    if not values:
        return default
    low, high = min(values), max(values)
    if high - low < 1e-12:  # one point, or a flat line: give it room
        pad = abs(low) * 0.05 or 0.5
        return low - pad, high + pad
    return low, high


def _finite_segments(points: Sequence[Tuple[float, float]]) -> List[List[Tuple[float, float]]]:
    """Splits a series at NaN/inf points (a diverged loss) into drawable runs."""
    segments, current = [], []
    for x, y in points:
        if math.isfinite(float(x)) and math.isfinite(float(y)):
            current.append((float(x), float(y)))
        elif current:
            segments.append(current)
            current = []
    if current:
        segments.append(current)
    return segments


def _rotated_text(text: str, scale: float) -> np.ndarray:
    """White image of `text` turned 90 degrees counter-clockwise (for the y label)."""
    (width, height), baseline = cv2.getTextSize(text, FONT, scale, 1)
    patch = np.full((height + baseline + 4, width + 4, 3), 255, np.uint8)
    cv2.putText(patch, text, (2, height + 2), FONT, scale, BLACK, 1, cv2.LINE_AA)
    return cv2.rotate(patch, cv2.ROTATE_90_COUNTERCLOCKWISE)


def draw_curves(series: Dict[str, Sequence[Tuple[float, float]]], title: str,
                xlabel: str = "epoch", ylabel: str = "", size: Tuple[int, int] = (960, 540)) -> np.ndarray:
    """A BGR line plot of named (x, y) series on shared axes, with ticks, labels and a legend."""
    width, height = size
    segments = {name: _finite_segments(points) for name, points in series.items()}
    xs = [x for runs in segments.values() for run in runs for x, _ in run]
    ys = [y for runs in segments.values() for run in runs for _, y in run]
    x_ticks = _nice_ticks(*_padded_range(xs, (0.0, 1.0)), max_ticks=10)
    y_ticks = _nice_ticks(*_padded_range(ys, (0.0, 1.0)), max_ticks=7)
    x_step, y_step = x_ticks[1] - x_ticks[0], y_ticks[1] - y_ticks[0]
    y_texts = [_tick_text(v, y_step) for v in y_ticks]
    tick_scale, legend_scale = 0.45, 0.5

    legend_names = [name if any(segments[name]) else f"{name} (no data)" for name in series]
    legend_w = max([_text_width(n, legend_scale) for n in legend_names] + [0]) + 50 if series else 0
    left = 30 + max(_text_width(t, tick_scale) for t in y_texts) + 16
    right = width - 20 - legend_w
    top, bottom = 50, height - 55
    image = np.full((height, width, 3), 255, np.uint8)

    def to_pixel(x: float, y: float) -> Tuple[float, float]:
        px = left + (x - x_ticks[0]) / (x_ticks[-1] - x_ticks[0]) * (right - left)
        py = bottom - (y - y_ticks[0]) / (y_ticks[-1] - y_ticks[0]) * (bottom - top)
        return px, py

    for value, text in zip(y_ticks, y_texts):
        py = int(round(to_pixel(x_ticks[0], value)[1]))
        cv2.line(image, (left, py), (right, py), LIGHT_GREY, 1)
        cv2.putText(image, text, (left - 8 - _text_width(text, tick_scale), py + 5), FONT, tick_scale,
                    DARK_GREY, 1, cv2.LINE_AA)
    for value in x_ticks:
        px = int(round(to_pixel(value, y_ticks[0])[0]))
        cv2.line(image, (px, top), (px, bottom), LIGHT_GREY, 1)
        text = _tick_text(value, x_step)
        cv2.putText(image, text, (px - _text_width(text, tick_scale) // 2, bottom + 20), FONT, tick_scale,
                    DARK_GREY, 1, cv2.LINE_AA)
    cv2.rectangle(image, (left, top), (right, bottom), DARK_GREY, 1)

    for index, name in enumerate(series):
        colour = SERIES_COLOURS[index % len(SERIES_COLOURS)]
        run_points = [np.round([to_pixel(x, y) for x, y in run]).astype(np.int32) for run in segments[name]]
        cv2.polylines(image, run_points, False, colour, 2, cv2.LINE_AA)
        if sum(len(run) for run in run_points) <= 60:  # markers while they stay readable
            for point in np.vstack(run_points) if run_points else []:
                cv2.circle(image, tuple(int(v) for v in point), 3, colour, -1, cv2.LINE_AA)
        legend_y = top + 12 + 24 * index
        cv2.line(image, (right + 20, legend_y), (right + 44, legend_y), colour, 2, cv2.LINE_AA)
        cv2.putText(image, legend_names[index], (right + 50, legend_y + 5), FONT, legend_scale, BLACK, 1,
                    cv2.LINE_AA)

    if not xs:
        _put_centred(image, "no data", ((left + right) / 2, (top + bottom) / 2), 0.8, (150, 150, 150))
    _put_centred(image, title, (width / 2, 24), 0.7, BLACK, 2)
    _put_centred(image, xlabel, ((left + right) / 2, height - 18), 0.55, BLACK)
    if ylabel:
        patch = _rotated_text(ylabel, 0.55)
        y0 = max(int((top + bottom) / 2 - patch.shape[0] / 2), 0)
        patch = patch[:height - y0]
        image[y0:y0 + patch.shape[0], 6:6 + patch.shape[1]] = patch
    return image


def save_curves(path: str, series: Dict[str, Sequence[Tuple[float, float]]], title: str,
                xlabel: str = "epoch", ylabel: str = "") -> np.ndarray:
    """Writes draw_curves(...) as a PNG to `path` and returns the image."""
    image = draw_curves(series, title, xlabel, ylabel)
    _write_png(path, image)
    return image
