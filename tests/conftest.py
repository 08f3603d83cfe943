"""Shared test set-up: quiet TensorFlow, the repo root importable, tiny configs."""
import os
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
