"""One folder per retrain, named by every setting that changes it (for the study tools).

tools/search_vs_random.py and tools/rank_fidelity.py retrain many models under a search's
folder. Each gets WORK/<label>-<hash>, where <hash> is the first 12 hex digits of the
SHA-256 of the canonical JSON (sorted keys, no spaces) of its settings: arc, seed, budget
or preset content, overrides, data split. The folder keeps those settings in
settings.json and, once the retrain has finished, its results in finished.json. So a
rerun with the same settings reuses the finished run (or resumes an unfinished one from
its checkpoint), and a rerun with any setting changed trains in a new folder, leaving
the old one as it is.
"""
from __future__ import annotations

import hashlib
import json
import os
from typing import Any, Callable, Dict, Optional, Sequence, Tuple

from src import data as data_lib
from src import run_dir
from src.configs import ConfigError

SETTINGS_FILE = "settings.json"  # the settings the folder is keyed by
FINISHED_FILE = "finished.json"  # written when the retrain has returned: reuse it
HASH_DIGITS = 12


def canonical_json(settings: Any) -> str:
    """JSON with sorted keys and no spaces: equal settings give equal text."""
    return json.dumps(settings, sort_keys=True, separators=(",", ":"), default=str)


def settings_hash(settings: Any) -> str:
    return hashlib.sha256(canonical_json(settings).encode("utf-8")).hexdigest()[:HASH_DIGITS]


def file_sha256(path: str) -> str:
    """The SHA-256 of a file's bytes (a preset's content, not its name, keys a run)."""
    try:
        with open(path, "rb") as f:
            return hashlib.sha256(f.read()).hexdigest()
    except OSError as error:
        raise ConfigError(f"cannot read {path}: {error.strerror}") from None


def split_lists_sha256(list_dir: str) -> str:
    """One SHA-256 over the three split lists (train, valid, test) in list_dir."""
    digest = hashlib.sha256()
    for name in data_lib.SPLIT_NAMES:
        path = data_lib.split_list_path(list_dir, name)
        digest.update(f"{name}:{file_sha256(path)}\n".encode("utf-8"))
    return digest.hexdigest()


def keyed_folder(work_dir: str, label: str, settings: Dict) -> str:
    """WORK/<label>-<hash of settings>."""
    return os.path.join(work_dir, f"{label}-{settings_hash(settings)}")


def claim_folder(folder: str, settings: Dict) -> Optional[Dict]:
    """Makes the folder and records its settings; returns the finished run's results if
    one with these settings is there, else None. ConfigError if the folder holds other
    settings (a hash prefix collision, or a folder edited by hand): never overwritten."""
    recorded = run_dir.read_json(os.path.join(folder, SETTINGS_FILE), default=None)
    if recorded is not None and canonical_json(recorded) != canonical_json(settings):
        raise ConfigError(f"{folder} holds a run with other settings ({SETTINGS_FILE} differs); "
                          "move it away to retrain there")
    if recorded is None:
        os.makedirs(folder, exist_ok=True)
        run_dir.write_json_atomic(os.path.join(folder, SETTINGS_FILE), settings)
    finished = run_dir.read_json(os.path.join(folder, FINISHED_FILE), default=None)
    return finished.get("results") if isinstance(finished, dict) else None


def run_keyed(work_dir: str, label: str, settings: Dict,
              train: Callable[[str], Dict]) -> Tuple[Dict, str, bool]:
    """(results, folder, reused): train(folder) in the folder keyed by settings, or the
    results of the finished run already there."""
    folder = keyed_folder(work_dir, label, settings)
    finished = claim_folder(folder, settings)
    if finished is not None:
        return finished, folder, True
    results = train(folder)
    run_dir.write_json_atomic(os.path.join(folder, FINISHED_FILE),
                              {"settings": settings, "results": results})
    return results, folder, False


def write_summary(search_dir: str, work_dir: str, name: str, study_settings: Dict,
                  report: Dict) -> str:
    """Writes the report to WORK/<name>-<hash of the study's settings>.json (kept per
    study) and SEARCH_DIR/<name>.json (the latest study); returns the latter's path."""
    report = {**report, "study_settings": study_settings}
    os.makedirs(work_dir, exist_ok=True)
    run_dir.write_json_atomic(os.path.join(work_dir, f"{name}-{settings_hash(study_settings)}.json"),
                              report)
    path = os.path.join(search_dir, f"{name}.json")
    run_dir.write_json_atomic(path, report)
    return path


def save_png(figure, path: str) -> None:
    """Writes a matplotlib Figure (Agg canvas) as a PNG, atomically."""
    import io

    from matplotlib.backends.backend_agg import FigureCanvasAgg
    FigureCanvasAgg(figure)
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", dpi=110)
    run_dir.write_bytes_atomic(path, buffer.getvalue())


def new_figure(width: float, height: float):
    from matplotlib.figure import Figure
    return Figure(figsize=(width, height), layout="constrained")


def fmt_ci(interval: Sequence[float], digits: int = 3) -> str:
    return f"[{interval[0]:+.{digits}f}, {interval[1]:+.{digits}f}]"
