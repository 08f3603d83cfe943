"""Where a run's wall time goes: seconds per named phase, and the process's CPU share."""
from __future__ import annotations

import contextlib
import time
from typing import Dict, Iterator, Optional


class PhaseTimer:
    """Adds up wall seconds per phase, carried over from a checkpoint on resume
    (`before`); `cpu_s` is the process's CPU time (every thread) over the same span."""

    def __init__(self, before: Optional[Dict[str, float]] = None, cpu_before: float = 0.0):
        self.seconds: Dict[str, float] = dict(before or {})
        self._cpu_before, self._cpu_start = cpu_before, time.process_time()

    @contextlib.contextmanager
    def phase(self, name: str) -> Iterator[None]:
        start = time.perf_counter()
        try:
            yield
        finally:
            self.seconds[name] = self.seconds.get(name, 0.0) + time.perf_counter() - start

    def cpu_s(self) -> float:
        return self._cpu_before + time.process_time() - self._cpu_start

    def rounded(self) -> Dict[str, float]:
        return {name: round(seconds, 2) for name, seconds in self.seconds.items()}


def format_time_split(seconds: Dict[str, float], wall_s: float, cpu_s: float) -> str:
    """A table of the phases, largest first, with their shares of the wall time."""
    wall_s = max(wall_s, 1e-9)
    rows = [f"{'phase':<22} {'seconds':>9} {'share':>7}"]
    for name, value in sorted(seconds.items(), key=lambda item: -item[1]):
        rows.append(f"{name:<22} {value:9.1f} {100 * value / wall_s:6.1f}%")
    untimed = wall_s - sum(seconds.values())
    rows.append(f"{'(untimed)':<22} {untimed:9.1f} {100 * untimed / wall_s:6.1f}%")
    rows.append(f"{'wall time':<22} {wall_s:9.1f}   CPU share {cpu_s / wall_s:.2f} cores")
    return "\n".join(rows)
