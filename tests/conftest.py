"""Shared test set-up: quiet TensorFlow, the repo root importable, tiny configs."""
import os
import shutil
import sys

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if ROOT not in sys.path:
    sys.path.insert(0, ROOT)

import pytest  # noqa: E402

from src.configs import ChildConfig  # noqa: E402


def tiny_child_config(**overrides) -> ChildConfig:
    """The configuration kept for tests: real code paths, seconds to run."""
    base = dict(num_classes=3, channel=1, img_size=16, num_layers=3, out_filters=4,
                num_reductions=2, use_aux_heads=True, keep_prob=1.0, drop_path_keep_prob=0.6)
    base.update(overrides)
    return ChildConfig(**base)


@pytest.fixture
def tiny_config():
    return tiny_child_config()


CLASSES = ("0", "1", "2")


@pytest.fixture(scope="session")
def tiny_folders(tmp_path_factory):
    """3 classes from the bundled digits: 16 train, 4 valid, 4 test images each."""
    root = tmp_path_factory.mktemp("digits")
    counts = {"train": 16, "valid": 4, "test": 4}
    for split, count in counts.items():
        for name in CLASSES:
            source = os.path.join(ROOT, "data", split, name)
            os.makedirs(root / split / name)
            for file in sorted(os.listdir(source))[:count]:
                shutil.copy(os.path.join(source, file), root / split / name / file)
    return root


# TensorFlow's fixed start-up lines, printed at import before any flag or log level applies.
TF_STARTUP_LINES = ("WARNING: All log messages before absl::InitializeLog() is called",
                    "port.cc:153] oneDNN custom operations are on")


def without_tf_startup_lines(stderr: str) -> list:
    """stderr's lines, less TensorFlow's fixed start-up lines."""
    return [line for line in stderr.strip().splitlines()
            if not any(marker in line for marker in TF_STARTUP_LINES)]
