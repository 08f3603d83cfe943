"""The benchmark's smoke run: it completes and reports every figure (timings are
not asserted here: they belong to the benchmark's own output)."""
import json
import os
import subprocess
import sys

from tests.conftest import ROOT

KEYS = {"search_step_s", "search_step_all_ops_s", "controller_update_s", "fixed_step_s",
        "startup_s", "valid_forward_s", "search_images_per_s", "fixed_images_per_s",
        "traces_after_warmup", "device", "tf_version", "cpu_count", "peak_rss_mb"}


def test_quick_benchmark_reports_every_figure_and_no_retracing():
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2")
    result = subprocess.run([sys.executable, "-m", "src.benchmark", "--quick"], cwd=ROOT, env=env,
                            capture_output=True, text=True, timeout=900)
    assert result.returncode == 0, result.stderr[-3000:]
    figures = json.loads(result.stdout.strip().splitlines()[-1])
    assert KEYS <= set(figures)
    assert figures["traces_after_warmup"] == 0
    assert figures["quick"] is True
    assert all(figures[key] > 0 for key in ("search_step_s", "search_step_all_ops_s",
                                            "controller_update_s", "fixed_step_s", "peak_rss_mb"))


def test_device_check_quick_prints_one_json_object_with_every_part():
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2", PYTHON=sys.executable)
    result = subprocess.run(["bash", os.path.join(ROOT, "tools", "device_check.sh"), "--quick"],
                            cwd=ROOT, env=env, capture_output=True, text=True, timeout=900)
    assert result.returncode == 0, result.stderr[-3000:]
    report = json.loads(result.stdout)  # the whole of stdout: one object
    assert report["ok"] is True and report["quick"] is True and report["device"]
    for part in ("benchmark_off", "benchmark_bfloat16"):
        assert report[part]["search_steps_per_s"] > 0 and report[part]["fixed_images_per_s"] > 0
        assert report[part]["peak_rss_mb"] > 0 and report[part]["peak_device_mb"] is None
    for part in ("search_2_epochs", "retrain_1_epoch"):
        assert report[part]["train_steps_per_s"] > 0 and report[part]["peak_rss_mb"] > 0
    assert report["search_2_epochs"]["train_steps"] == 4
    assert report["device_busy_share"] is None and report["device_busy_note"]
