"""Warm-up, random search, step-sized epochs, the controller's lift (the presets:
tests/test_presets.py)."""
import dataclasses
import json
import os
import random

import numpy as np
import pytest

from src import arc as arc_lib
from src import run_dir, search
from src.configs import ControllerConfig, RunConfig
from src.controller import Controller
from src.checkpoints import restore_or_start
from tests.test_end_to_end import read, search_config


def tiny_search(folders, out, num_epochs, **controller):
    config = search_config(folders, out, num_epochs)
    return dataclasses.replace(
        config, controller=dataclasses.replace(config.controller, num_lift_arcs=2, **controller),
        run=dataclasses.replace(config.run, steps_per_epoch=3))


def trained_controller(config):
    """The controller of the run's last checkpoint."""
    child = dataclasses.replace(config.child, num_classes=3, channel=1, img_size=16)
    state = search.build_state(dataclasses.replace(config, child=child))
    restore_or_start(state.checkpoint(), config.run.output_dir, run_dir.CHECKPOINT_DIR)
    return state.controller


def assert_same_weights(a: Controller, b: Controller):
    for va, vb in zip(a.trainable_variables, b.trainable_variables):
        np.testing.assert_array_equal(va.numpy(), vb.numpy())


def assert_different_weights(a: Controller, b: Controller):
    assert any(not np.array_equal(va.numpy(), vb.numpy())
               for va, vb in zip(a.trainable_variables, b.trainable_variables))


def test_warm_up_epochs_leave_the_controller_untouched_then_it_trains(tiny_folders, tmp_path):
    out = tmp_path / "warm"
    config = tiny_search(tiny_folders, out, num_epochs=2, start_epoch=2)
    results = search.run(config)
    assert results["child_steps"] == 6  # 2 epochs of 3 steps each
    assert_same_weights(trained_controller(config), Controller(config.controller))
    log = read(out / "stdout")
    assert log.count("uniformly random arcs (warm-up)") == 2 and "ctrl_step=" not in log

    # Epoch 3 is past the warm-up: the controller trains.
    config = tiny_search(tiny_folders, out, num_epochs=3, start_epoch=2)
    search.run(config)
    assert_different_weights(trained_controller(config), Controller(config.controller))
    assert "ctrl_step=" in read(out / "stdout")


def test_random_search_never_trains_the_controller_and_samples_every_op(tiny_folders, tmp_path):
    out = tmp_path / "random"
    config = tiny_search(tiny_folders, out, num_epochs=2, policy="random")
    results = search.run(config)
    assert results["search_policy"] == "random"
    assert_same_weights(trained_controller(config), Controller(config.controller))
    assert "ctrl_step=" not in read(out / "stdout")
    # Its arcs, and the final candidates (the best arc among them), are uniformly random:
    # every op shows up.
    history = json.loads(read(out / "arc_history.json"))
    assert len(history) == 2 * 2  # 2 arcs of the policy at each of the 2 evaluations
    candidates = [entry["arc"] for entry in json.loads(read(out / "final_selection.json"))["candidates"]]
    assert results["best_arc"] in candidates and len(candidates) == results["final_candidates"]
    arcs = [arc_lib.parse_arc(text) for text in candidates]
    assert {op for arc in arcs for op in arc[1::2]} == set(range(arc_lib.NUM_BRANCHES))
    # Nothing to compare the policy with: the lift is absent, and the log says why.
    assert results["controller_lift"] is None and results["controller_lift_ci95"] is None
    assert "controller_lift: n/a (--search_policy random" in read(out / "stdout")


def test_uniform_sampler_covers_every_input_and_op_evenly():
    sample = search.uniform_sampler(random.Random(0), num_cells=5)
    arcs = np.array([arc.numpy() for arc in sample(2000)])
    ops = arcs[:, 1::2].ravel()
    assert np.allclose(np.bincount(ops, minlength=5) / ops.size, 0.2, atol=0.02)
    # Node k (k = 2..6, column 4 * (k - 2)) reads ids 0..k-1 uniformly.
    for node in range(5):
        ids = arcs[:, 4 * node]
        assert set(ids) == set(range(node + 2))
    for arc in arcs[:50]:
        arc_lib.validate_arc(list(arc))


def test_the_lift_is_written_to_results_history_and_the_log(tiny_folders, tmp_path):
    out = tmp_path / "lift"
    results = search.run(tiny_search(tiny_folders, out, num_epochs=1))
    record = json.loads(read(out / "history.json"))["epochs"][-1]
    # The per-arc scores are kept, and the summary figures are theirs.
    policy, uniform = record["controller_arc_scores"], record["random_arc_scores"]
    assert len(policy) == len(uniform) == 2
    assert results["controller_valid_accuracy"] == pytest.approx(np.mean(policy))
    assert results["random_valid_accuracy"] == pytest.approx(np.mean(uniform))
    assert results["controller_lift"] == pytest.approx(np.mean(policy) - np.mean(uniform))
    low, high = results["controller_lift_ci95"]
    assert low <= results["controller_lift"] <= high and results["controller_lift_se"] >= 0
    assert record["controller_lift"] == results["controller_lift"]
    assert json.loads(read(out / "results.json"))["controller_lift"] == results["controller_lift"]
    assert "controller_lift: " in read(out / "stdout")
    assert os.path.getsize(out / "search.png") > 0


def test_epochs_of_a_given_number_of_child_steps(tiny_folders, tmp_path):
    config = tiny_search(tiny_folders, tmp_path / "steps", num_epochs=2)
    config = dataclasses.replace(config, run=dataclasses.replace(config.run, steps_per_epoch=5))
    results = search.run(config)
    # 48 training images in batches of 12 are 4 batches a pass; 5 steps an epoch crosses passes.
    assert results["child_steps"] == 10
    assert [e["step"] for e in json.loads(read(tmp_path / "steps" / "history.json"))["epochs"]] == [5, 10]


def test_bad_policy_and_warm_up_values_are_config_errors():
    with pytest.raises(ValueError, match="--search_policy"):
        ControllerConfig(policy="greedy")
    with pytest.raises(ValueError, match="--controller_start_epoch"):
        ControllerConfig(start_epoch=-1)
    with pytest.raises(ValueError, match="--child_steps_per_epoch"):
        RunConfig(steps_per_epoch=-1)
