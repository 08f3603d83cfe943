"""The search loop (main_controller_child_trainer.py), spec sections 4 and 5.

Each epoch: one pass of shared-child training, a fresh controller sample per
step; the controller phase (REINFORCE; this loop owns the reward); 10 sampled
arcs printed with their one-batch accuracy, as the authors do. Every
eval_every_epochs: the shared child's valid and test accuracy, and the
controller's lift with its error bar (the policy's arcs, kept in the arc
history, against uniform ones). At the end the final selection scores the best
arcs seen and fresh ones from the final policy on the final weights, and
best_arc.txt becomes its winner (src/selection.py). Under --budget_minutes the
number of epochs (and the cosine's period) is planned from measured costs
(_measured_plan, src/budget.py).
"""
from __future__ import annotations

import contextlib
import copy
import dataclasses
import enum
import io
import itertools
import os
import random
import time
from typing import Callable, Dict, List, Optional

import numpy as np
import tensorflow as tf

from src import arc as arc_lib
from src import data as data_lib
from src import budget, checkpoints, configs, distribute, harness, reporting, run_dir, selection
from src.child_steps import SharedChildSteps
from src.configs import ControllerConfig, SearchConfig
from src.controller import Controller
from src.controller_step import ReinforceTrainer, reward_from
from src.epoch_loop import train_one_epoch
from src.optim import cosine_lr
from src.phase_timer import PhaseTimer, format_time_split
from src.shared_child import SharedChild, choose_recompute

BEST_ARC_FILE = "best_arc.txt"
ARC_HISTORY_FILE = "arc_history.json"
FINAL_SELECTION_FILE = "final_selection.json"
SUMMARY_FILE = "summary.md"
NUM_SHOWN_ARCS = 10
LIFT_KEYS = selection.LIFT_KEYS
# What each epoch puts in TensorBoard (those an epoch lacks are skipped).
EPOCH_SCALARS = ("train_loss", "train_accuracy", "valid_accuracy", "test_accuracy",
                 "controller_mean_reward", "baseline", "controller_valid_accuracy",
                 "random_valid_accuracy", "controller_lift", "controller_lift_se")

# The epoch records kept in the checkpoint: every file of the output folder is
# rewritten from them on resume. budget_plan is the --budget_minutes plan (None without
# a budget), run_wall_s the whole run's seconds (start-up included) up to the last note.
EMPTY_RECORDS = {"epochs": [], "arc_history": [], "wall_time_s": 0.0, "time_split_s": {},
                 "cpu_time_s": 0.0, "budget_plan": None, "run_wall_s": 0.0}
# --budget_minutes times this many of each after the first (which instantiates the
# compiled functions): child steps, controller updates, scoring forward batches.
MEASURE_CHILD_STEPS = 10
MEASURE_CONTROLLER_UPDATES = 2
MEASURE_FORWARD_BATCHES = 5


@dataclasses.dataclass
class SearchState:
    """Everything the loop needs besides the data: models, steps, counters."""
    child: SharedChild
    child_steps: SharedChildSteps
    controller: Controller
    reinforce: ReinforceTrainer
    epoch: tf.Variable
    step: tf.Variable
    controller_step: tf.Variable
    records: checkpoints.JsonRecords  # the epoch records, saved with everything else

    def checkpoint(self) -> tf.train.Checkpoint:
        return tf.train.Checkpoint(
            child=self.child, child_optimizer=self.child_steps.optimizer,
            controller=self.controller, reinforce=self.reinforce,
            epoch=self.epoch, step=self.step, controller_step=self.controller_step,
            records=self.records)


def build_state(config: SearchConfig, strategy: Optional[tf.distribute.Strategy] = None
                ) -> SearchState:
    """Models and counters. Under a strategy the shared child is mirrored on every
    replica; the controller is not: every worker keeps its own, identical, copy (same
    seed, same rewards)."""
    harness.seed_everything(config.run.seed, config.run.deterministic)
    recompute, why = choose_recompute(config.child, config.data.batch_size)
    print(f"Separable convs {'recomputed' if recompute else 'not recomputed'} in the "
          f"backward pass ({why})")
    strategy = strategy or tf.distribute.get_strategy()
    with strategy.scope():
        child = SharedChild(config.child, seed=config.run.seed, recompute=recompute)
    controller = Controller(config.controller)
    return SearchState(
        child=child, child_steps=SharedChildSteps(child, config.optim, strategy),
        controller=controller, reinforce=ReinforceTrainer(controller, config.controller),
        epoch=tf.Variable(0, dtype=tf.int64, name="epoch"),
        step=tf.Variable(0, dtype=tf.int64, name="step"),
        controller_step=tf.Variable(0, dtype=tf.int64, name="controller_step"),
        records=checkpoints.JsonRecords(EMPTY_RECORDS))



# n -> n arcs, each int32 [8 * B]
ArcSampler = Callable[[int], List[tf.Tensor]]


class Stream(enum.IntEnum):
    """The uniform-arc generators of an epoch: epoch_rng(seed, epoch, stream)."""
    CHILD_ARCS = 0  # warm-up epochs' (and random search's) child and shown arcs
    LIFT_UNIFORM = 1  # the lift's uniform group
    FINAL_FRESH = 2  # random search's fresh candidates of the final selection
    LIFT_POLICY = 3  # random search's policy group of the lift
    HELD_OUT_UNIFORM = 4  # the held-out lift's uniform group


def controller_sampler(controller: Controller) -> ArcSampler:
    """The controller's arcs, all n drawn in one batched walk."""
    return lambda n: tf.unstack(controller.sample_batch(tf.constant(n))[0]) if n else []


def uniform_sampler(rng: random.Random, num_cells: int) -> ArcSampler:
    """Uniformly random arcs: every input id and every op equally likely."""
    return lambda n: [tf.constant(arc_lib.random_arc(rng, num_cells), tf.int32) for _ in range(n)]


def epoch_rng(seed: int, epoch: int, stream: Stream) -> random.Random:
    """A generator fixed by (seed, epoch, stream), so a resumed epoch draws the same arcs."""
    return random.Random(f"{seed}/{epoch}/{int(stream)}")


def controller_in_charge(ctrl: ControllerConfig, epoch: int) -> bool:
    """Whether the controller samples the child's arcs (and trains) in this 0-based epoch."""
    return ctrl.policy == "controller" and epoch >= ctrl.start_epoch


def trains_controller(ctrl: ControllerConfig, epoch: int) -> bool:
    return controller_in_charge(ctrl, epoch) and (epoch + 1) % ctrl.train_every == 0


def child_arc_sampler(state: SearchState, config: SearchConfig, epoch: int) -> ArcSampler:
    """The arcs the shared child trains on (and the shown arcs) in this epoch: the
    controller's, or uniformly random ones (warm-up epochs, random search)."""
    if controller_in_charge(config.controller, epoch):
        return controller_sampler(state.controller)
    return uniform_sampler(epoch_rng(config.run.seed, epoch, Stream.CHILD_ARCS), config.child.num_cells)


def run(config: SearchConfig) -> Dict:
    """Searches (or resumes a search); returns what results.json holds (in a
    multi-worker run every worker returns it; only the chief writes it)."""
    with harness.open_run(config.run, config.flags) as this_run:
        dataset = data_lib.load_dataset(config.data)
        config = dataclasses.replace(config, run=this_run.config, child=dataclasses.replace(
            config.child, num_classes=dataset.num_classes, channel=config.data.channel,
            img_size=config.data.img_size))
        print(f"Classes ({dataset.num_classes}): {', '.join(dataset.class_names)}")
        return _search(config, dataset, this_run)


@dataclasses.dataclass
class Halves:
    """The validation split cut in two (src/selection.py), each bounded to a seeded
    sample of --score_images: `selection` chooses, `report` is read once at the end;
    both also as fixed batch lists."""
    selection: data_lib.Split
    report: data_lib.Split
    selection_batches: selection.Batches
    report_batches: selection.Batches


def validation_halves(dataset, config: SearchConfig) -> Halves:
    chosen, reported = selection.stratified_halves(dataset.valid, config.run.seed)
    bound = config.controller.score_images
    sampled = [selection.bounded_sample(half, bound, config.run.seed) for half in (chosen, reported)]
    print(f"Validation split cut in two, stratified by class (seed {config.run.seed}): "
          f"{len(chosen.labels)} selection images (rewards, lift, final selection), "
          f"{len(reported.labels)} report images (read once, at the end)"
          + (f"; scoring reads a seeded sample of {len(sampled[0].labels)} and "
             f"{len(sampled[1].labels)} of them (--score_images {bound})"
             if len(sampled[0].labels) < len(chosen.labels) else ""))
    chosen, reported = sampled
    batch_size = config.data.eval_batch_size
    return Halves(chosen, reported, selection.fixed_batches(chosen, batch_size),
                  selection.fixed_batches(reported, batch_size))


def _search(config: SearchConfig, dataset, this_run: harness.Run) -> Dict:
    out, run_cfg, strategy = config.run.output_dir, config.run, this_run.strategy
    start = time.time()
    halves = validation_halves(dataset, config)
    state = build_state(config, strategy)
    print(f"Shared child has {state.child.num_params()} params (aux head excluded)")
    if distribute.is_distributed(strategy):
        print(f"Strategy: {run_cfg.strategy}, {strategy.num_replicas_in_sync} replicas: child steps "
              f"split each batch over them, controller updates score that many arcs at once")
    manager, restored = this_run.restore(state.checkpoint(), optimizers=[state.child_steps.optimizer])
    records = harness.restored_records(state.records, EMPTY_RECORDS)
    summaries = this_run.summaries
    timer = PhaseTimer(records["time_split_s"], records["cpu_time_s"])
    wall_before, run_wall_before = records["wall_time_s"], records["run_wall_s"]

    def note_time():
        records.update(wall_time_s=wall_before + time.time() - start,
                       run_wall_s=run_wall_before + time.time() - run_cfg.started_at,
                       time_split_s=timer.rounded(), cpu_time_s=timer.cpu_s())

    results = {}
    if restored:
        print(f"Resumed from {restored} at epoch {int(state.epoch)}, "
              f"baseline {float(state.reinforce.baseline):.6f}")
        results = _write_epoch_files(config, state, records)  # as of that checkpoint
    train_data = data_lib.TrainBatches(dataset.train, config.data)
    timer.seconds["setup"] = timer.seconds.get("setup", 0.0) + time.time() - start

    def trace():  # up front, so the first ETA (and a budget's measurements) are right
        with timer.phase("tracing"):
            tracing_start = time.time()
            state.child_steps.warm_up()
            print(f"Traced the shared child's compiled pieces in {time.time() - tracing_start:.1f}s")
        run_dir.failpoint("traced")

    def measure():  # a fresh start with a budget: trace, then time the parts
        trace()
        with timer.phase("budget"):
            return _measured_plan(config, state, halves, dataset, train_data)

    saved_plan = records["budget_plan"]
    plan = budget.chosen_plan(run_cfg, config.optim, saved_plan, int(state.epoch), measure)
    config = harness.follow_budget(this_run, config, plan, records)
    run_cfg = config.run
    measured = plan is not None and saved_plan is None
    if int(state.epoch) < run_cfg.num_epochs and not measured:
        trace()
    # An epoch is one pass over the training set, or steps_per_epoch batches.
    batches_per_epoch = run_cfg.steps_per_epoch or train_data.batches_per_pass

    for epoch in range(int(state.epoch), run_cfg.num_epochs):
        lr = cosine_lr(epoch, config.optim)
        state.child_steps.set_learning_rate(lr)
        record = {"epoch": epoch + 1, "lr": lr}
        sampler = child_arc_sampler(state, config, epoch)
        if not controller_in_charge(config.controller, epoch):
            print(f"Epoch {epoch + 1}: uniformly random arcs ("
                  f"{'random search' if config.controller.policy == 'random' else 'warm-up'})")
        with timer.phase("child_steps"):
            arcs = iter(sampler(batches_per_epoch))  # the epoch's arcs, drawn at once
            record.update(train_one_epoch(
                lambda images, labels: child_step(state, images, labels, next(arcs)),
                distribute.distribute_batches(strategy, train_data.epoch(epoch, run_cfg.steps_per_epoch)),
                batches_per_epoch, epoch, lr,
                state.step, run_cfg.log_every, start, desc=f"epoch {epoch + 1} child",
                check_stop=this_run.stop.check, summaries=summaries))
        record["step"] = int(state.step)
        valid_iter = reward_batches(halves.selection, config, epoch)
        if trains_controller(config.controller, epoch):
            with timer.phase("controller"):
                record.update(_train_controller(state, valid_iter, config, start, this_run))
        with timer.phase("shown_arcs"):
            _show_sampled_arcs(state, valid_iter, sampler)
            del valid_iter  # used up: nothing of it runs on beside the next epoch's steps
        if this_run.evaluates_after(epoch):
            with timer.phase("evaluation"):
                record.update(_evaluate(state, halves, dataset.test, config, sampler))
            with timer.phase("lift"):
                scored, lift = _score_policy_arcs(state, halves, config, epoch)
                records["arc_history"] += scored
                record.update(lift)
        records["epochs"].append(record)
        with timer.phase("checkpoints_and_files"):
            note_time()
            this_run.checkpoint_epoch(manager, state.epoch, state.records, records, epoch + 1)
            # Everything below is rewritten from the checkpoint on resume.
            results = _write_epoch_files(config, state, records)
            this_run.epoch_scalars(record, EPOCH_SCALARS, epoch + 1)
            if os.path.exists(os.path.join(out, "best_arc.png")):
                summaries.png("best_arc", os.path.join(out, "best_arc.png"), step=epoch + 1)

    if int(state.epoch) == run_cfg.num_epochs and config.controller.final_selection:
        # Not checkpointed: a resumed (or rerun) finished search redoes it from the last
        # checkpoint's weights and controller, and gets the same answer.
        with timer.phase("final_selection"):
            final = _final_selection(state, halves, config, records)
        note_time()
        results = _write_results(config, state, records, final)
        _write_summary(config, results)
    print(format_time_split(records["time_split_s"], records["wall_time_s"], records["cpu_time_s"]))
    return results


# ----------------------------------------------------------------------------
# --budget_minutes: measure, plan (src/budget.py); _search keeps the plan in the checkpoint


def _measured_plan(config: SearchConfig, state: SearchState, halves: Halves, dataset,
                   train_data: data_lib.TrainBatches) -> budget.BudgetPlan:
    """Times child steps, controller updates and scoring forward batches, then puts back
    all the checkpoint holds (weights, optimizers, controller, baseline, generators: the
    budgeted search runs as its reproduce flags would); times a checkpoint and an epoch's
    files; plans the epochs that fit (printed). Costs, in forward batches of the
    selection half (`sel`) and the report half (`rep`):
      epoch:      steps_per_epoch child steps + NUM_SHOWN_ARCS forwards;
      controller: train_steps updates, in the epochs that train it;
      evaluation: sel (the shared child's accuracy; + the test split's batches under
                  --search_test_accuracy) + lift arcs (2 x num_lift_arcs; num_lift_arcs
                  under random search) x sel;
      tail:       the final selection, (NUM_TOP_FROM_SEARCH + num_final_arcs) x sel +
                  NUM_TOP_REPORTED x rep + the held-out lift's 2 x num_lift_arcs x rep;
                  and the files;
      per epoch:  the checkpoint and the files."""
    run_cfg, ctrl = config.run, config.controller
    scored = itertools.cycle(halves.selection_batches)
    with harness.weights_kept(state.checkpoint()) as checkpoint_s:
        arcs = child_arc_sampler(state, config, 0)(MEASURE_CHILD_STEPS + 1)  # epoch 1's kind
        first_step_s, step_s = _time_child_steps(state, train_data, iter(arcs), MEASURE_CHILD_STEPS)
        _, forward_s = harness.time_each(
            zip(itertools.islice(scored, MEASURE_FORWARD_BATCHES + 1), arcs),
            lambda pair: int(state.child_steps.count_correct(*pair[0], pair[1])))
        update_s = 0.0
        if ctrl.policy == "controller":  # moves the controller: put back too
            _, update_s = harness.time_each(range(MEASURE_CONTROLLER_UPDATES + 1),
                                            lambda _: controller_update(state, scored, ctrl))
    files_s = _time_epoch_files(config, state)
    steps_per_epoch = run_cfg.steps_per_epoch or train_data.batches_per_pass
    sel, rep = len(halves.selection_batches), len(halves.report_batches)
    lift_arcs = ctrl.num_lift_arcs * (1 if ctrl.policy == "random" else 2)
    test = (data_lib.num_batches(len(dataset.test.labels), config.data.eval_batch_size)
            if ctrl.search_test_accuracy else 0)
    eval_forwards = sel + test + lift_arcs * sel
    held_out_arcs = 0 if ctrl.policy == "random" else 2 * ctrl.num_lift_arcs
    tail_forwards = ((selection.NUM_TOP_FROM_SEARCH + ctrl.num_final_arcs) * sel
                     + (selection.NUM_TOP_REPORTED + held_out_arcs) * rep
                     if ctrl.final_selection else 0)
    costs = budget.RunCosts(
        epoch_s=steps_per_epoch * step_s + NUM_SHOWN_ARCS * forward_s,
        eval_s=eval_forwards * forward_s, eval_every=run_cfg.eval_every_epochs,
        per_epoch_s=checkpoint_s + files_s, tail_s=tail_forwards * forward_s + files_s,
        controller_s=ctrl.train_steps * update_s, controller_every=ctrl.train_every,
        controller_from=ctrl.start_epoch)
    plan = budget.plan_run(
        run_cfg.budget_minutes, time.time() - run_cfg.started_at, costs,
        measurements={"step_s": step_s, "first_step_s": first_step_s,
                      "steps_per_epoch": steps_per_epoch, "forward_s": forward_s,
                      "controller_update_s": update_s, "eval_forwards": eval_forwards,
                      "tail_forwards": tail_forwards, "checkpoint_s": checkpoint_s,
                      "files_s": files_s})
    print(plan.log_line())
    return plan


def _time_child_steps(state: SearchState, train_data: data_lib.TrainBatches, arcs, count: int):
    """(seconds of the first child step, its instantiation included; mean seconds of the
    `count` after it), each on the next of `arcs`; the caller puts the weights back."""
    return harness.time_train_steps(
        lambda images, labels: child_step(state, images, labels, next(arcs)),
        state.child_steps.strategy, train_data, count)


def _time_epoch_files(config: SearchConfig, state: SearchState) -> float:
    """Seconds of writing an epoch's files (one evaluated epoch, one arc of the history),
    into a folder then deleted; their lines are not printed."""
    record = dict.fromkeys(EPOCH_SCALARS, 0.5)
    record.update(epoch=1, lr=0.1, controller_lift_ci95=[0.0, 1.0])
    arc = arc_lib.format_arc(arc_lib.random_arc(random.Random(0), config.child.num_cells))
    records = dict(copy.deepcopy(EMPTY_RECORDS), epochs=[record],
                   arc_history=[{"epoch": 1, "arc": arc, "selection_accuracy": 0.5}])

    def write(folder):
        scratch = dataclasses.replace(config, run=dataclasses.replace(config.run, output_dir=folder))
        with contextlib.redirect_stdout(io.StringIO()):
            _write_epoch_files(scratch, state, records)
    return harness.seconds_writing(write)


def _write_epoch_files(config: SearchConfig, state: SearchState, records: Dict) -> Dict:
    """best_arc.txt (and .png, the best so far: progress only), arc_history.json,
    history.json, search.png and results.json, from the records of the last
    checkpointed epoch; returns the results."""
    out = config.run.output_dir
    run_dir.write_json_atomic(os.path.join(out, ARC_HISTORY_FILE), records["arc_history"])
    _save_history(out, {"epochs": records["epochs"]}, config.child.num_classes)
    best = best_so_far(records["arc_history"])
    if best is not None:
        run_dir.write_text_atomic(os.path.join(out, BEST_ARC_FILE), best["arc"] + "\n")
        reporting.save_arc_picture(best["arc"], os.path.join(out, "best_arc.png"))
        print(f"Best arc so far (progress only, not the final choice: "
              f"{best['selection_accuracy']:.4f} on the selection half with epoch "
              f"{best['epoch']}'s weights): {best['arc']}")
    return _write_results(config, state, records, final=None)


def best_so_far(arc_history: List[Dict]) -> Optional[Dict]:
    if not arc_history:
        return None
    return max(arc_history, key=lambda entry: entry["selection_accuracy"])


def reward_batches(valid: data_lib.Split, config: SearchConfig, epoch: int):
    """An iterator over exactly the shuffled selection batches this epoch uses: one per
    controller reward, one per shown arc. Bounded, because an endless one kept filling
    its prefetch buffer beside the child steps, and took seconds to shut down."""
    ctrl = config.controller
    needed = NUM_SHOWN_ARCS + (ctrl.train_steps * ctrl.num_aggregate
                               if trains_controller(ctrl, epoch) else 0)
    return iter(data_lib.endless_shuffled_batches(
        valid, config.data.eval_batch_size, seed=config.run.seed + epoch).take(needed))


def child_step(state: SearchState, images, labels, arc) -> Dict:
    """One shared-child training step on the arc int32 [8 * B] (no controller gradient)."""
    return state.child_steps.train_step(images, labels, arc)


def policy_arcs(state: SearchState, config: SearchConfig, epoch: int, stream: Stream,
                count: int) -> List[tf.Tensor]:
    """`count` arcs of the search's policy: the controller's, or uniform ones under
    --search_policy random (drawn from their own (seed, epoch, stream) generator)."""
    if config.controller.policy == "random":
        return uniform_sampler(epoch_rng(config.run.seed, epoch, stream), config.child.num_cells)(count)
    return controller_sampler(state.controller)(count)


def _score_policy_arcs(state: SearchState, halves: Halves, config: SearchConfig, epoch: int):
    """(arc history entries, lift record): num_lift_arcs arcs of the policy scored on the
    selection half; under the controller, as many uniform arcs on the same batches, and
    the lift with its standard error and 95% interval."""
    n = config.controller.num_lift_arcs
    if n == 0:
        return [], {}
    count_correct = state.child_steps.count_correct
    arcs = policy_arcs(state, config, epoch, Stream.LIFT_POLICY, count=n)
    images = len(halves.selection.labels)
    if config.controller.policy == "random":
        scores = selection.score_arcs(count_correct, arcs, halves.selection_batches)
        print(f"policy arcs, mean selection accuracy {np.mean(scores):.4f} ({n} arcs); "
              "controller_lift: n/a (--search_policy random: the policy is the uniform "
              "distribution, there is nothing to compare it with)")
        lift = {"policy_arc_scores": scores}
    else:
        uniform = uniform_sampler(epoch_rng(config.run.seed, epoch, Stream.LIFT_UNIFORM),
                                  config.child.num_cells)
        lift = selection.measure_lift(count_correct, arcs, uniform(n), halves.selection_batches)
        print(selection.format_lift(lift, n, images))
        scores = lift["controller_arc_scores"]
    # One host copy per arc, not one eager op per integer of an arc tensor.
    scored = [{"epoch": epoch + 1, "arc": arc_lib.format_arc(arc.numpy()), "selection_accuracy": score}
              for arc, score in zip(arcs, scores)]
    return scored, lift


def _final_selection(state: SearchState, halves: Halves, config: SearchConfig,
                     records: Dict) -> Dict:
    """The cell chosen on the final weights: the best arcs seen, plus fresh ones from the
    final policy, scored on the selection half; the winner reported on the other half."""
    started = time.time()
    fresh = [arc.numpy() for arc in policy_arcs(state, config, config.run.num_epochs,
                                                Stream.FINAL_FRESH, config.controller.num_final_arcs)]
    candidates = selection.final_candidates(records["arc_history"], fresh)
    if not candidates:
        print("Final selection: no candidates (--num_lift_arcs 0 and --num_final_arcs 0)")
        return {}
    print(f"Final selection: {len(candidates)} candidates ({len(candidates) - len(fresh)} "
          f"best seen in the search, the rest fresh from the final policy) on the final weights, "
          f"{len(halves.selection.labels)} selection images")
    final = selection.select_final(state.child_steps.count_correct, candidates,
                                   halves.selection_batches, halves.report_batches)
    final.update(_held_out_lift(state, halves, config))
    run_dir.failpoint("final_selection")
    out = config.run.output_dir
    # results.json, written last by the caller, is what says the selection is done.
    run_dir.write_json_atomic(os.path.join(out, FINAL_SELECTION_FILE), final)
    run_dir.write_text_atomic(os.path.join(out, BEST_ARC_FILE), final["best_arc"] + "\n")
    reporting.save_arc_picture(final["best_arc"], os.path.join(out, "best_arc.png"))
    print(f"Final selection took {reporting.format_duration(time.time() - started)}. Best arc: "
          f"{final['best_arc']}\n  selection accuracy {final['best_arc_selection_accuracy']:.4f} "
          f"(the maximum of {len(candidates)} scores: biased upward)\n  report accuracy "
          f"{final['best_arc_report_accuracy']:.4f}, 95% CI [{final['best_arc_report_ci95'][0]:.4f}, "
          f"{final['best_arc_report_ci95'][1]:.4f}] (the {len(halves.report.labels)} report "
          "images, unseen by any choice: an unbiased estimate, on the shared weights)")
    return final


def _held_out_lift(state: SearchState, halves: Halves, config: SearchConfig) -> Dict:
    """The lift on the report half, read here for the first time: num_lift_arcs fresh
    arcs of the final policy against as many uniform ones, on the final weights. The
    selection-half lift is scored on the very images the rewards came from; this one is
    not (the weights were still trained on the policy's arcs). Keys held_out_*."""
    n, ctrl = config.controller.num_lift_arcs, config.controller
    if n == 0 or ctrl.policy == "random":
        return {}
    uniform = uniform_sampler(epoch_rng(config.run.seed, config.run.num_epochs, Stream.HELD_OUT_UNIFORM),
                              config.child.num_cells)
    lift = selection.measure_lift(state.child_steps.count_correct, controller_sampler(state.controller)(n),
                                  uniform(n), halves.report_batches)
    print("held-out " + selection.format_lift(lift, n, len(halves.report.labels))
          .replace("selection images", "report images"))
    return {"held_out_" + key: lift[key] for key in LIFT_KEYS}


def controller_update(state: SearchState, valid_iter, ctrl) -> Dict:
    """One REINFORCE update from ctrl.num_aggregate arcs sampled at once, each rewarded
    with the shared child's accuracy on one selection batch plus the entropy bonus."""
    arcs, _, entropies = state.controller.sample_batch(tf.constant(ctrl.num_aggregate))
    batches = [next(valid_iter) for _ in range(ctrl.num_aggregate)]
    accuracies = selection.paired_accuracies(state.child_steps, tf.unstack(arcs), batches)
    entropies = entropies.numpy()
    rewards = [reward_from(acc, entropy, ctrl.entropy_weight)
               for acc, entropy in zip(accuracies, entropies)]
    metrics = dict(state.reinforce.update(arcs, rewards))
    metrics.update(rewards=rewards, accuracy=float(np.mean(accuracies)),
                   entropy=float(np.mean(entropies)))
    return metrics


def _train_controller(state: SearchState, valid_iter, config: SearchConfig, start: float,
                      this_run: harness.Run) -> Dict:
    """REINFORCE: reward = shared-child accuracy on one validation batch + entropy bonus."""
    ctrl = config.controller
    print(f"Epoch {int(state.epoch) + 1}: training controller")
    rewards_seen = []
    with reporting.ProgressBar(ctrl.train_steps, desc="controller") as bar:
        for _ in range(ctrl.train_steps):
            metrics = controller_update(state, valid_iter, ctrl)
            rewards_seen += metrics["rewards"]
            state.controller_step.assign_add(1)
            this_run.summaries.scalars({"controller/reward": np.mean(metrics["rewards"]),
                               "controller/baseline": state.reinforce.baseline,
                               "controller/entropy": metrics["entropy"],
                               "controller/loss": metrics["loss"],
                               "controller/accuracy": metrics["accuracy"]},
                              int(state.controller_step))
            bar.write(f"ctrl_step={int(state.controller_step):<6d} loss={float(metrics['loss']):.4f} "
                      f"ent={metrics['entropy']:.2f} lr={ctrl.lr:.4f} "
                      f"|g|={float(metrics['grad_norm']):.4f} acc={metrics['accuracy']:.4f} "
                      f"bl={float(state.reinforce.baseline):.4f} "
                      f"mins={(time.time() - start) / 60:.2f}")
            bar.update()
            run_dir.failpoint("controller_update")
            this_run.stop.check()
    return {"controller_mean_reward": float(np.mean(rewards_seen)),
            "baseline": float(state.reinforce.baseline)}


def _show_sampled_arcs(state: SearchState, valid_iter, sampler: ArcSampler) -> None:
    """Samples 10 arcs and prints each with its accuracy on one selection batch (the
    authors' progress display: one-batch figures, never used to choose)."""
    print(f"Here are {NUM_SHOWN_ARCS} architectures")
    arcs = sampler(NUM_SHOWN_ARCS)
    batches = [next(valid_iter) for _ in arcs]
    for arc, acc in zip(arcs, selection.paired_accuracies(state.child_steps, arcs, batches)):
        normal, reduction = arc_lib.split_arc(arc.numpy().tolist())
        print(f"{arc_lib.format_arc(normal)}\n{arc_lib.format_arc(reduction)}\nval_acc={acc:.4f}")
        print("-" * 80)


def split_accuracy(steps: SharedChildSteps, split: data_lib.Split, batch_size: int,
                   sampler: ArcSampler) -> float:
    """Accuracy of the shared child on a whole split with a freshly sampled arc for every
    batch, as the authors evaluate. The batches mix the classes (the child's BN uses
    batch statistics, see data.mixed_eval_batches)."""
    batches = list(data_lib.mixed_eval_batches(split, batch_size))
    accuracies = selection.paired_accuracies(steps, sampler(len(batches)), batches)
    sizes = [int(labels.shape[0]) for _, labels in batches]
    return float(np.dot(accuracies, sizes) / max(1, sum(sizes)))


def _evaluate(state: SearchState, halves: Halves, test: data_lib.Split, config: SearchConfig,
              sampler: ArcSampler) -> Dict:
    """The shared child's accuracy with a freshly sampled arc per batch (the authors'),
    on the selection sample, and on the test split only under --search_test_accuracy."""
    batch_size = config.data.eval_batch_size
    record = {"valid_accuracy": split_accuracy(state.child_steps, halves.selection, batch_size, sampler)}
    print(f"valid_accuracy: {record['valid_accuracy']:.4f} (selection half)")
    if config.controller.search_test_accuracy:
        record["test_accuracy"] = split_accuracy(state.child_steps, test, batch_size, sampler)
        print(f"test_accuracy: {record['test_accuracy']:.4f} (--search_test_accuracy)")
    return record


def _save_history(out: str, history: Dict, num_classes: int) -> None:
    harness.write_history(out, history)
    epochs = history["epochs"]
    evaluated = [e for e in epochs if "valid_accuracy" in e]
    with_controller = [e for e in epochs if "controller_mean_reward" in e]
    lifted = [e for e in epochs if e.get("controller_lift") is not None]
    reporting.save_curves(os.path.join(out, "search.png"), {
        "child train accuracy": [(e["epoch"], e["train_accuracy"]) for e in epochs],
        "shared valid accuracy": [(e["epoch"], e["valid_accuracy"]) for e in evaluated],
        "controller reward": [(e["epoch"], e["controller_mean_reward"]) for e in with_controller],
        "baseline": [(e["epoch"], e["baseline"]) for e in with_controller],
        "controller arcs, valid": [(e["epoch"], e["controller_valid_accuracy"]) for e in lifted],
        "random arcs, valid": [(e["epoch"], e["random_valid_accuracy"]) for e in lifted],
        "controller lift, 95% CI": [(e["epoch"], e["controller_lift"],
                                     e.get("controller_lift_ci95")) for e in lifted]},
        title="search (shared-child accuracies, not retrained ones)", ylabel="accuracy / reward",
        hlines={"chance": 1.0 / num_classes})


def _write_results(config: SearchConfig, state: SearchState, records: Dict,
                   final: Optional[Dict]) -> Dict:
    """results.json: the final selection's fields once it has run ("final_selection":
    true), else the best arc so far as progress."""
    results = {"final_selection": bool(final)}
    if final:
        results.update({key: final[key] for key in (
            "best_arc", "best_arc_selection_accuracy", "best_arc_report_accuracy",
            "best_arc_report_ci95", "final_candidates", "top_arcs")})
        results.update({key: value for key, value in final.items() if key.startswith("held_out_")})
    else:
        best = best_so_far(records["arc_history"])
        if best is not None:
            results.update(best_arc=best["arc"], best_so_far_selection_accuracy=best["selection_accuracy"],
                           best_so_far_epoch=best["epoch"])
    results.update({
        "epochs_done": int(state.epoch), "num_epochs": config.run.num_epochs,
        "child_steps": int(state.step), "search_policy": config.controller.policy,
        "shared_child_params": state.child.num_params(),
        "baseline": float(state.reinforce.baseline),
        "wall_time_s": round(records["wall_time_s"], 2),
        "time_split_s": records["time_split_s"],
        "cpu_share": round(records["cpu_time_s"] / max(records["wall_time_s"], 1e-9), 3),
    })
    lifted = [e for e in records["epochs"] if "controller_valid_accuracy" in e]
    if lifted:  # the last evaluation's
        results.update({key: lifted[-1][key] for key in LIFT_KEYS})
    elif config.controller.policy == "random":
        results.update({key: None for key in LIFT_KEYS})
    results["flags"] = config.flags
    plan = records["budget_plan"] if config.run.budget_minutes else None
    # "budget" (planned and actual) and "reproduce_flags"
    results.update(budget.results_fields(plan and budget.BudgetPlan.from_json(plan),
                                         records["run_wall_s"]))
    run_dir.write_json_atomic(os.path.join(config.run.output_dir, run_dir.RESULTS_FILE), results)
    return results


def retrain_command(output_dir: str, search_flags) -> str:
    """The retrain that fits this search: its final preset, and --from_search."""
    return (f"python main_child_trainer.py --flagfile {configs.retrain_preset_for(search_flags)} "
            f"--from_search {output_dir}")


def _write_summary(config: SearchConfig, results: Dict) -> None:
    """summary.md and the same lines in the log: the top arcs, the lift, the time, the
    cell's picture and the command that retrains it."""
    out = config.run.output_dir
    lines = ["# Search summary", "", f"Best arc (`best_arc.txt`): `{results['best_arc']}`", "",
             "![best cell](best_arc.png)", "",
             f"Top {len(results['top_arcs'])} of {results['final_candidates']} candidates on the "
             "final shared weights (selection half: chooses; report half: read once, unbiased):", "",
             "| rank | arc | selection | report |", "|---|---|---|---|"]
    lines += [f"| {rank} | `{entry['arc']}` | {entry['selection_accuracy']:.4f} | "
              f"{entry['report_accuracy']:.4f} |"
              for rank, entry in enumerate(results["top_arcs"], start=1)]
    lines.append("")
    if results.get("controller_lift") is not None:
        low, high = results["controller_lift_ci95"]
        lines.append(f"Controller lift over uniform arcs (last evaluation): "
                     f"{results['controller_lift']:+.4f}, se {results['controller_lift_se']:.4f}, "
                     f"95% CI [{low:+.4f}, {high:+.4f}]")
        if results.get("held_out_controller_lift") is not None:
            low, high = results["held_out_controller_lift_ci95"]
            lines.append(f"Held-out lift (report half, final weights, fresh arcs): "
                         f"{results['held_out_controller_lift']:+.4f}, se "
                         f"{results['held_out_controller_lift_se']:.4f}, 95% CI [{low:+.4f}, {high:+.4f}]")
    else:
        lines.append("Controller lift: n/a (random search)")
    lines += ["", f"Wall time {reporting.format_duration(results['wall_time_s'])} "
              f"({results['wall_time_s']:.0f} s), CPU share {results['cpu_share']:.2f} cores:", "",
              "| phase | seconds |", "|---|---|"]
    lines += [f"| {name} | {seconds:.1f} |" for name, seconds in
              sorted(results["time_split_s"].items(), key=lambda item: -item[1])]
    lines += ["", "Retrain the best cell into the final model:", "", "```",
              retrain_command(out, config.flags), "```", ""]
    text = "\n".join(lines)
    run_dir.write_text_atomic(os.path.join(out, SUMMARY_FILE), text)
    print(text)
