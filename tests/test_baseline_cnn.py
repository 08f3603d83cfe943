"""tools/baseline_cnn.py: the hand-designed CNN baseline trains, evaluates and writes its
results."""
import json

import pytest

from tools import baseline_cnn


def test_baseline_fits_its_epochs_to_the_budget_and_writes_its_results(tiny_folders, tmp_path):
    out = tmp_path / "baseline"
    results = baseline_cnn.main([
        "--train_data_dir", str(tiny_folders / "train"),
        "--val_data_dir", str(tiny_folders / "valid"), "--test_data_dir", str(tiny_folders / "test"),
        "--img_size", "16", "--batch_size", "16",
        "--budget_minutes", "0.001", "--output_dir", str(out)])
    with open(out / "results.json") as f:
        written = json.load(f)
    assert written == results
    assert 0.0 <= written["test_accuracy"] <= 1.0 and 0.0 <= written["valid_accuracy"] <= 1.0
    assert written["test_errors"] == round((1 - written["test_accuracy"]) * 12)  # 12 test images
    # A budget shorter than the first epoch: that one epoch, timed.
    assert written["params"] > 0 and written["epochs"] == 1
    assert written["budget"]["epochs_from"] == "budget" and written["budget"]["first_epoch_s"] > 0


def test_the_model_has_about_0_14m_params_on_28_px_digits():
    params = baseline_cnn.trainable_params(baseline_cnn.build_model(28, 1, 10))
    assert 100_000 <= params <= 200_000


def test_the_budget_sets_the_epochs_and_the_cosine_ends_at_lr_min():
    # 45 minutes, 60 s of set-up, 30 s an epoch: 88 epochs.
    assert baseline_cnn.epochs_for_budget(45 * 60, 60, 30) == 88
    assert baseline_cnn.epochs_for_budget(10, 5, 30) == 1  # at least one
    assert baseline_cnn.cosine_lr(0, 88, 0.05, 0.0) == pytest.approx(0.05)
    assert baseline_cnn.cosine_lr(44, 88, 0.05, 0.0) == pytest.approx(0.025)
    assert baseline_cnn.cosine_lr(87, 88, 0.05, 0.0) < 0.0001


def test_train_on_valid_trains_on_both_splits_and_reports_no_valid_accuracy(tiny_folders, tmp_path,
                                                                            capsys):
    results = baseline_cnn.main([
        "--train_data_dir", str(tiny_folders / "train"),
        "--val_data_dir", str(tiny_folders / "valid"), "--test_data_dir", str(tiny_folders / "test"),
        "--img_size", "16", "--batch_size", "16", "--epochs", "1", "--train_on_valid",
        "--output_dir", str(tmp_path / "baseline")])
    assert results["train_on_valid"] is True and results["valid_accuracy"] is None
    assert results["num_test_images"] == 12
    assert "60 training images" in capsys.readouterr().out  # 48 train + 12 valid
