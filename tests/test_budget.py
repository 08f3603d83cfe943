"""--budget_minutes: the planner on known numbers (src/budget.py), a budgeted tiny retrain
(its plan in results.json, the flags that reproduce it, a resume that keeps the plan), a
budgeted tiny search, and a --num_epochs given on the command line winning over a
flagfile's budget."""
import dataclasses
import datetime
import json
import os
import pathlib
import subprocess
import sys
import time

import pytest
import tensorflow as tf
from absl import flags

import cli_common
from src import budget, fixed_train, harness, run_dir, search
from src.arc import DEFAULT_ARC
from src.budget import BudgetPlan, BudgetTooSmall, RunCosts
from src.configs import (ChildConfig, ConfigError, ControllerConfig, DataConfig,
                         FixedTrainConfig, OptimConfig, RunConfig)
from src.controller import Controller
from src.controller_step import ReinforceTrainer
from src.optim import NesterovSGD, cosine_lr
from tests.conftest import ROOT
from tests.test_end_to_end import search_config


def read(path) -> str:
    with open(path) as f:
        return f.read()

# ----------------------------------------------------------------------------
# The planner, on known numbers

COSTS = RunCosts(epoch_s=50.0, eval_s=20.0, eval_every=5, per_epoch_s=2.0, tail_s=30.0)


def test_evaluations_come_every_n_epochs_and_after_the_last():
    assert [budget.num_evaluations(n, 5) for n in (0, 1, 4, 5, 6, 10, 11)] == [0, 1, 1, 1, 2, 2, 3]
    assert budget.num_evaluations(7, 1) == 7


def test_the_projection_adds_epochs_evaluations_checkpoints_and_the_end():
    # 12 epochs: 12 x (50 + 2) + 3 evaluations (5, 10, 12) x 20 + 30.
    assert budget.projected_s(12, COSTS) == 12 * 52 + 3 * 20 + 30


def test_the_plan_fills_the_budget_less_the_margin_and_what_is_gone():
    # 45 min = 2700 s, 95% = 2565 s; 65 s gone leave 2500 s: 46 epochs take 46 x 52 +
    # 10 x 20 + 30 = 2622 s, too many; 44 take 2288 + 9 x 20 + 30 = 2498 s; 45: 2570 s.
    assert budget.plan_epochs(2700, 65, COSTS) == 44
    assert budget.projected_s(44, COSTS) <= 2500 < budget.projected_s(45, COSTS)
    assert budget.plan_epochs(2700, 65, COSTS, max_epochs=10) == 10
    assert budget.plan_epochs(2700, 65, COSTS, safety_fraction=0.0) == 46  # 2635 s left
    assert budget.plan_epochs(100, 10, COSTS) == 0  # 85 s left, one epoch needs 102


def test_the_plan_spans_the_cosine_over_its_epochs_and_reproduces_without_a_budget():
    when = datetime.datetime(2026, 12, 1, 14, 0, 0)
    plan = budget.plan_run(45, 65, COSTS, measurements={"step_s": 0.5}, now=when)
    assert (plan.num_epochs, plan.lr_T_0) == (44, 44)
    assert plan.planned_s == pytest.approx(65 + 2498)
    assert plan.reproduce_flags() == ["--budget_minutes=0", "--num_epochs=44",
                                      "--child_lr_T_0=44"]
    line = plan.log_line()  # ends at 14:00 + the 2498 s to come
    assert "0.500 s/step" in line and "44 epochs" in line and "42.7 min (14:41:38)" in line
    # JSON, as the checkpoint and results.json keep it, and back.
    assert BudgetPlan.from_json(json.loads(json.dumps(plan.to_json()))) == plan
    run, optim = budget.apply_plan(RunConfig(num_epochs=630), OptimConfig(lr_T_0=10), plan)
    assert (run.num_epochs, optim.lr_T_0) == (44, 44)
    fields = budget.results_fields(plan, actual_wall_s=2490.0)
    assert fields["budget"]["planned_num_epochs"] == 44
    assert fields["budget"]["planned_minutes"] == pytest.approx(2563 / 60, abs=0.01)
    assert fields["budget"]["actual_minutes"] == 41.5
    assert fields["reproduce_flags"] == plan.reproduce_flags()
    assert budget.results_fields(None, 10.0) == {"budget": None, "reproduce_flags": None}


def test_the_controller_phase_counts_only_in_the_epochs_that_train_it():
    # From 0-based epoch 2, every 2nd epoch (e + 1 even): epochs 3, 5, 7 of 0..7.
    assert [budget.num_controller_phases(n, 2, 2) for n in (0, 2, 3, 4, 6, 8)] == [0, 0, 0, 1, 2, 3]
    assert [budget.num_controller_phases(n, 1, 0) for n in (0, 1, 5)] == [0, 1, 5]
    costs = RunCosts(epoch_s=10.0, controller_s=5.0, controller_every=1, controller_from=2)
    assert budget.projected_s(4, costs) == 4 * 10 + 2 * 5
    # 7 epochs: 70 + 5 x 5 = 95 s; 8: 80 + 6 x 5 = 110 s.
    assert budget.plan_epochs(100, 0, costs, safety_fraction=0.0) == 7
    assert budget.plan_epochs(100, 0, costs, safety_fraction=0.0, max_epochs=3) == 3


def test_a_budget_that_holds_no_epoch_says_what_one_needs():
    with pytest.raises(BudgetTooSmall, match=r"--budget_minutes 1 is too small: 50 s went .* "
                                             r"about 102 s more .* at least 2.67 min"):
        budget.plan_run(1, 50, COSTS)
    assert issubclass(BudgetTooSmall, ConfigError)  # one line, exit 2 (cli_common.run_or_exit)


@pytest.mark.parametrize("minutes", [-1.0, float("nan"), float("inf")])
def test_a_budget_out_of_range_is_a_config_error(minutes):
    with pytest.raises(ConfigError, match="--budget_minutes must be >= 0"):
        RunConfig(budget_minutes=minutes)
    with pytest.raises(ConfigError, match="multi_worker"):
        RunConfig(budget_minutes=5, strategy="multi_worker")


def test_the_process_start_is_before_now():
    started = budget.process_started_at()
    assert time.time() - 3600 < started <= time.time()


# ----------------------------------------------------------------------------
# --num_epochs on the command line beats a flagfile's budget

def test_only_flags_on_the_real_command_line_count():
    argv = ["main_child_trainer.py", "--flagfile=presets/x.flags", "--num_epochs", "5",
            "-seed=3", "--nochild_random_crop", "--", "--img_size=8"]
    on_line = cli_common.flags_on_command_line(argv)
    assert {"flagfile", "num_epochs", "seed", "child_random_crop"} <= on_line
    assert "5" not in on_line and "img_size" not in on_line and "budget_minutes" not in on_line


def parsed(argv):
    """The two flags as the scripts define them, parsed from argv (flagfiles read)."""
    values = flags.FlagValues()
    flags.DEFINE_integer("num_epochs", 630, "", flag_values=values)
    flags.DEFINE_float("budget_minutes", 0.0, "", flag_values=values)
    values(argv)
    return values


def test_a_command_line_num_epochs_beats_a_flagfile_budget(tmp_path, capsys):
    flagfile = tmp_path / "preset.flags"
    flagfile.write_text("--budget_minutes=30\n--num_epochs=7\n")
    argv = ["main_child_trainer.py", f"--flagfile={flagfile}", "--num_epochs", "0"]
    values = parsed(argv)
    assert cli_common.budget_minutes(cli_common.flags_on_command_line(argv), values) == 0.0
    assert capsys.readouterr().out == ("--budget_minutes 30 ignored: --num_epochs 0 is given "
                                       "on the command line\n")
    # The flagfile's own --num_epochs does not count: its budget stands, and so does one
    # given on the command line without --num_epochs.
    for argv in (["main_child_trainer.py", f"--flagfile={flagfile}"],
                 ["main_child_trainer.py", "--budget_minutes=30"]):
        values = parsed(argv)
        assert cli_common.budget_minutes(cli_common.flags_on_command_line(argv), values) == 30.0
    assert capsys.readouterr().out == ""


# ----------------------------------------------------------------------------
# A budgeted tiny retrain, stopped after epoch 1 and resumed

STEP_S = 10.0  # added to each measured step, so the plan holds a few epochs, whatever the machine
MINUTES = 3.0


def tiny_config(folders, out, **run) -> FixedTrainConfig:
    """16 px, 1 layer of 4 filters, no aux head: the fewest seconds of tracing."""
    data = DataConfig(train_dir=str(folders / "train"), valid_dir=str(folders / "valid"),
                      test_dir=str(folders / "test"), img_size=16, batch_size=12,
                      eval_batch_size=12)
    return FixedTrainConfig(
        arc=DEFAULT_ARC, data=data,
        child=ChildConfig(num_layers=1, out_filters=4, keep_prob=0.9, use_aux_heads=False),
        optim=OptimConfig(lr_max=0.05, lr_min=0.001),
        run=RunConfig(output_dir=str(out), log_every=2, **{"num_epochs": 630, **run}))


def slow_steps(monkeypatch):
    """Each measured training step takes STEP_S longer, as far as the planner knows:
    48 images in batches of 12 -> 4 steps, about 40 s an epoch, 2 to 3 epochs in 3 min."""
    real = fixed_train._time_train_steps

    def timed(*args):
        first_s, step_s = real(*args)
        return first_s, step_s + STEP_S
    monkeypatch.setattr(fixed_train, "_time_train_steps", timed)


def run_budgeted(folders, out) -> dict:
    return fixed_train.run(tiny_config(pathlib.Path(folders), out, budget_minutes=MINUTES))


def run_budgeted_in_a_process(folders: str, out: str) -> None:
    """run_budgeted in a process of its own, which the failpoint kills."""
    slow_steps(pytest.MonkeyPatch())
    run_budgeted(folders, out)


def killed_in_epoch_2(folders, out) -> subprocess.CompletedProcess:
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2")
    env[run_dir.FAILPOINT_ENV] = "before_checkpoint@2"  # epoch 1 and its files done
    code = ("from tests.test_budget import run_budgeted_in_a_process; "
            f"run_budgeted_in_a_process({str(folders)!r}, {str(out)!r})")
    return subprocess.run([sys.executable, "-c", code], cwd=ROOT, env=env, text=True,
                          capture_output=True, timeout=600)


def test_a_budgeted_run_plans_and_keeps_its_plan_on_resume(tiny_folders, tmp_path, monkeypatch):
    out = tmp_path / "budgeted"
    killed = killed_in_epoch_2(tiny_folders, out)
    assert killed.returncode == -9, killed.stderr[-2000:]
    first_plan = json.loads(read(out / "history.json"))["budget_plan"]
    # 3 min: 171 s usable, less what start-up and measuring took; about 40.5 s an epoch.
    plan = BudgetPlan.from_json(first_plan)
    assert plan.num_epochs == budget.plan_epochs(MINUTES * 60, plan.elapsed_s,
                                                 RunCosts(**plan.costs))
    assert plan.num_epochs >= 2, plan  # something left to resume
    assert plan.measurements["steps_per_epoch"] == 4 and plan.epoch_s > 4 * STEP_S

    slow_steps(monkeypatch)  # were it to measure again, it would plan the same way
    # The export is tested elsewhere; here it would only add seconds (the killed run
    # above timed a real one for its plan).
    monkeypatch.setattr(fixed_train.serving, "export_model", lambda *args: args[-1])
    results = run_budgeted(tiny_folders, out)
    assert results["budget"]["plan"] == first_plan  # measured_at included
    assert results["epochs_done"] == results["num_epochs"] == plan.num_epochs == plan.lr_T_0
    assert results["budget"]["planned_num_epochs"] == plan.num_epochs
    assert 0 < results["budget"]["actual_minutes"] < results["budget"]["planned_minutes"]
    assert results["reproduce_flags"] == ["--budget_minutes=0", f"--num_epochs={plan.num_epochs}",
                                          f"--child_lr_T_0={plan.num_epochs}"]
    log = read(out / "stdout")  # both sessions
    assert log.count("Budget 3 min: measured") == 1 and f"-> {plan.num_epochs} epochs" in log
    assert "Budget: the checkpoint's plan is kept, not measured again" in log
    assert log.count("Data ready in") == 2 and "decoded in" in log
    # One cosine period over exactly the planned epochs (the configs' T_0 would be 10).
    spanned = OptimConfig(lr_max=0.05, lr_min=0.001, lr_T_0=plan.num_epochs)
    assert [e["lr"] for e in json.loads(read(out / "history.json"))["epochs"]] == pytest.approx(
        [cosine_lr(epoch, spanned) for epoch in range(plan.num_epochs)])


def test_measuring_puts_back_the_weights_optimizer_and_dropout_generator():
    """So a budgeted run trains as its reproduce flags do (fixed_train measures inside)."""
    weight = tf.Variable([1.0, 2.0])
    optimizer = NesterovSGD([weight], OptimConfig())
    generator = tf.random.Generator.from_seed(3)
    checkpoint = tf.train.Checkpoint(w=weight, optimizer=optimizer, rng=generator)
    expected_draw = tf.random.Generator.from_seed(3).make_seeds(1).numpy()
    with harness.weights_kept(checkpoint) as checkpoint_s:
        optimizer.apply([tf.constant([0.5, -0.5])])
        generator.make_seeds(1)
        assert float(weight[0]) != 1.0 and int(optimizer.iterations) == 1
    assert checkpoint_s > 0
    assert weight.numpy().tolist() == [1.0, 2.0] and int(optimizer.iterations) == 0
    assert float(tf.reduce_max(tf.abs(optimizer.accumulator))) == 0.0
    assert (generator.make_seeds(1).numpy() == expected_draw).all()


# ----------------------------------------------------------------------------
# A budgeted tiny search, then rerun: the finished search keeps its plan

SEARCH_STEP_S = 15.0  # added to each measured child step: 4 steps, about 60 s an epoch
SEARCH_MINUTES = 5.0


def test_a_budgeted_search_plans_finishes_in_time_and_keeps_its_plan(
        tiny_folders, tmp_path, monkeypatch):
    out = tmp_path / "search"
    config = search_config(tiny_folders, out, num_epochs=630)  # the plan decides
    config = dataclasses.replace(config, run=dataclasses.replace(
        config.run, budget_minutes=SEARCH_MINUTES))
    real = search._time_child_steps

    def timed(*args):
        first_s, step_s = real(*args)
        return first_s, step_s + SEARCH_STEP_S
    monkeypatch.setattr(search, "_time_child_steps", timed)
    results = search.run(config)
    plan = BudgetPlan.from_json(results["budget"]["plan"])
    # 5 min: 285 s usable, less start-up, tracing and measuring; about 60 s an epoch.
    assert plan.num_epochs == budget.plan_epochs(SEARCH_MINUTES * 60, plan.elapsed_s,
                                                 RunCosts(**plan.costs)) >= 1
    assert plan.measurements["steps_per_epoch"] == 4 and plan.epoch_s > 4 * SEARCH_STEP_S
    assert plan.measurements["controller_update_s"] > 0 and plan.costs["controller_s"] > 0
    assert plan.measurements["tail_forwards"] == (10 + 4) * 1 + (5 + 2 * 3) * 1  # 1-batch halves
    assert results["final_selection"] is True
    assert results["epochs_done"] == results["num_epochs"] == plan.num_epochs == plan.lr_T_0
    assert 0 < results["budget"]["actual_minutes"] < results["budget"]["planned_minutes"]
    assert results["budget"]["planned_minutes"] <= SEARCH_MINUTES
    assert results["reproduce_flags"] == ["--budget_minutes=0", f"--num_epochs={plan.num_epochs}",
                                          f"--child_lr_T_0={plan.num_epochs}"]
    assert json.loads(read(out / "results.json"))["budget"] == results["budget"]
    spanned = dataclasses.replace(config.optim, lr_T_0=plan.num_epochs)
    assert [e["lr"] for e in json.loads(read(out / "history.json"))["epochs"]] == pytest.approx(
        [cosine_lr(epoch, spanned) for epoch in range(plan.num_epochs)])

    # Rerun on the finished folder: the checkpoint's plan, not measured (nor traced) again,
    # and no more epochs than planned; the final selection is redone, the same.
    again = search.run(config)
    assert again["budget"]["plan"] == results["budget"]["plan"]
    assert again["epochs_done"] == plan.num_epochs and again["best_arc"] == results["best_arc"]
    log = read(out / "stdout")  # both sessions
    assert log.count("Budget 5 min: measured") == 1 and f"-> {plan.num_epochs} epochs" in log
    assert "Budget: the checkpoint's plan is kept, not measured again" in log
    assert log.count("Traced the shared child") == 1


def test_measuring_puts_back_the_controller_its_adam_baseline_and_generator():
    """The search measures controller updates inside weights_kept(state.checkpoint())."""
    controller = Controller(ControllerConfig())
    reinforce = ReinforceTrainer(controller)
    checkpoint = tf.train.Checkpoint(controller=controller, reinforce=reinforce)
    before = [v.numpy().copy() for v in controller.variables + reinforce.variables]
    with harness.weights_kept(checkpoint):
        arcs, _, _ = controller.sample_batch(tf.constant(3))
        reinforce.update(arcs.numpy(), [0.5, 0.6, 0.7])
        assert int(reinforce.optimizer.iterations) == 1 and float(reinforce.baseline) != 0.0
    after = [v.numpy() for v in controller.variables + reinforce.variables]
    assert len(after) == len(before) and all((a == b).all() for a, b in zip(after, before))
    assert int(reinforce.optimizer.iterations) == 0 and float(reinforce.baseline) == 0.0
