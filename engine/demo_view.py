"""What `lstm-stream demo` shows: the replay's running record, a live terminal table, latency, a plot.

The live view is plain ANSI (no extra dependency): a progress bar, throughput and latency percentiles, then
one compact cell per stream (its true activity, the model's current prediction and probability). When
stdout is not a terminal it degrades to one plain progress line every tenth of the replay.
"""
from __future__ import annotations

import os
import shutil
import sys
import time

import numpy as np

CELL_WIDTH = 34  # characters per stream cell: "07 walking   -> running    93% ok"
MAX_ROWS = 12  # rows of stream cells drawn live; more streams are summarised in one line
LEGEND = "cell: stream  true activity -> prediction now  probability  ok=right --=wrong"


class ReplayRecord:
    """Everything the replay measured: outputs (N, T, O) as answered by the daemon, round-trip latencies."""

    def __init__(self, n_streams: int, n_steps: int, n_outputs: int):
        self.outputs = np.full((n_streams, n_steps, n_outputs), np.nan, dtype=np.float32)
        self.done = np.zeros(n_streams, dtype=np.int64)  # steps answered per stream
        self.latencies: list = []  # seconds, one per step
        self.started = time.perf_counter()
        self.finished: float | None = None

    def record(self, n: int, t: int, y, latency: float) -> None:
        """Store stream n's output y (O,) for step t and the step's round-trip latency in seconds."""
        self.outputs[n, t] = y
        self.done[n] = t + 1
        self.latencies.append(latency)

    @property
    def steps_done(self) -> int:
        """Steps answered so far, over all streams."""
        return int(self.done.sum())

    @property
    def elapsed(self) -> float:
        """Seconds since the replay started (until it finished)."""
        return (self.finished or time.perf_counter()) - self.started

    def percentiles_ms(self) -> tuple:
        """Round-trip latency p50, p90, p99 in milliseconds (NaN before the first reply)."""
        if not self.latencies:
            return (float("nan"),) * 3
        return tuple(float(v) * 1e3 for v in np.percentile(self.latencies, [50, 90, 99]))

    def predictions(self) -> np.ndarray:
        """Predicted class per answered step (N, T); -1 where a step has no answer."""
        answered = ~np.isnan(self.outputs[..., 0])
        return np.where(answered, np.nan_to_num(self.outputs).argmax(axis=-1), -1)


def latency_line(record: ReplayRecord) -> str:
    """'latency p50 0.21 ms  p90 0.35 ms  p99 0.80 ms' for the steps so far."""
    p50, p90, p99 = record.percentiles_ms()
    return f"latency p50 {p50:.2f} ms  p90 {p90:.2f} ms  p99 {p99:.2f} ms"


class LiveView:
    """Redraws the live table in place on a terminal, or prints plain progress lines elsewhere."""

    def __init__(self, record: ReplayRecord, labels, class_names, *, title: str, stream=None,
                 interval: float = 0.1):
        self.record, self.labels, self.class_names = record, np.asarray(labels), tuple(class_names)
        self.title, self.interval = title, interval
        self.out = stream or sys.stdout
        self.tty = bool(getattr(self.out, "isatty", lambda: False)())
        self.color = self.tty and "NO_COLOR" not in os.environ
        self._drawn_lines = 0
        self._last_draw = 0.0
        self._next_tenth = 1
        self.total = record.outputs.shape[0] * record.outputs.shape[1]

    def update(self, force: bool = False) -> None:
        """Redraw if the refresh interval has passed (or force); cheap to call after every reply."""
        now = time.perf_counter()
        if self.tty:
            if force or now - self._last_draw >= self.interval:
                self._last_draw = now
                self._redraw(self.render_table())
        else:
            done = self.record.steps_done
            while self._next_tenth <= 10 and done * 10 >= self._next_tenth * self.total:
                self._print(self.progress_line())
                self._next_tenth += 1

    def close(self) -> None:
        """Draw the final state once more (terminal) so the table shows every stream's last prediction."""
        if self.tty:
            self._redraw(self.render_table())

    def progress_line(self, with_latency: bool = True) -> str:
        """One plain line: progress, throughput, streams currently right (and latency percentiles)."""
        rec, done = self.record, self.record.steps_done
        rate = done / rec.elapsed if rec.elapsed > 0 else 0.0
        right, started = self._currently_right()
        line = (f"{done * 100 // self.total:3d}%  {done}/{self.total} steps  {rate:,.0f} steps/s  "
                f"right now {right}/{started} streams")
        return f"{line}  {latency_line(rec)}" if with_latency else line

    def render_table(self) -> list:
        """The live view as lines: title, progress bar, latency, legend, then a grid of per-stream cells.

        Every line fits the terminal's width, so that moving the cursor up by the line count redraws in place.
        """
        done = self.record.steps_done
        width = max(CELL_WIDTH, shutil.get_terminal_size((100, 24)).columns - 1)
        bar_width = max(10, min(40, width - 75))
        filled = bar_width * done // self.total
        header = [self.title, f"[{'#' * filled}{'.' * (bar_width - filled)}] {self.progress_line(False)}",
                  f"round-trip {latency_line(self.record)}", LEGEND, ""]
        lines = [line[:width] for line in header]
        cols = max(1, width // (CELL_WIDTH + 2))
        cells = [self._cell(n) for n in range(len(self.labels))]
        rows = [cells[i:i + cols] for i in range(0, len(cells), cols)]
        for row in rows[:MAX_ROWS]:
            lines.append("  ".join(row))
        if len(rows) > MAX_ROWS:
            lines.append(f"... and {len(cells) - MAX_ROWS * cols} more streams")
        return lines

    def _currently_right(self) -> tuple:
        rec = self.record
        started = np.flatnonzero(rec.done > 0)
        if not len(started):
            return 0, 0
        latest = rec.outputs[started, rec.done[started] - 1].argmax(axis=-1)
        return int((latest == self.labels[started]).sum()), len(started)

    def _cell(self, n: int) -> str:
        t = int(self.record.done[n])
        true = self.class_names[self.labels[n]]
        if t == 0:
            return f"{n:02d} {true:<10.10} -> {'...':<10} {'':>3}    "[:CELL_WIDTH].ljust(CELL_WIDTH)
        y = self.record.outputs[n, t - 1]
        k = int(y.argmax())
        ok = k == self.labels[n]
        text = f"{n:02d} {true:<10.10} -> {self.class_names[k]:<10.10} {y[k] * 100:3.0f}% {'ok' if ok else '--'}"
        if self.color:
            return f"\x1b[{32 if ok else 31}m{text}\x1b[0m"
        return text

    def _redraw(self, lines: list) -> None:
        up = f"\x1b[{self._drawn_lines}F" if self._drawn_lines else ""
        self.out.write(up + "".join(f"\x1b[2K{line}\n" for line in lines))
        self.out.flush()
        self._drawn_lines = len(lines)

    def _print(self, line: str) -> None:
        self.out.write(line + "\n")
        self.out.flush()


def plot_stream(path, X, outputs, label: int, class_names, channel_names, sample_rate_hz: float,
                title: str) -> None:
    """Draw one stream's signals X (T, C) and its per-step class probabilities outputs (T, O) to path (PNG)."""
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError as e:
        raise RuntimeError("--plot needs matplotlib: pip install 'lstm-stream[plot]' "
                           "(or pip install matplotlib)") from e
    t = np.arange(len(X)) / sample_rate_hz
    fig, (ax_x, ax_p, ax_c) = plt.subplots(3, 1, figsize=(10, 7), sharex=True,
                                           gridspec_kw={"height_ratios": [3, 3, 1]})
    for c, name in enumerate(channel_names):
        ax_x.plot(t, X[:, c], lw=1, label=name)
    ax_x.set_ylabel("raw sensor value")
    ax_x.legend(ncol=len(channel_names), fontsize=8, loc="upper right")
    for k, name in enumerate(class_names):
        ax_p.plot(t, outputs[:, k], lw=2 if k == label else 1, label=name + (" (true)" if k == label else ""))
    ax_p.set_ylabel("probability")
    ax_p.set_ylim(-0.02, 1.02)
    ax_p.legend(ncol=len(class_names), fontsize=8, loc="best")
    pred = outputs.argmax(axis=-1)
    ax_c.scatter(t, pred, c=np.where(pred == label, "tab:green", "tab:red"), s=8)
    ax_c.set_yticks(range(len(class_names)), class_names, fontsize=7)
    ax_c.set_xlabel("time (s)")
    ax_c.set_ylabel("predicted")
    fig.suptitle(title)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
