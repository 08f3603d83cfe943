"""The search loop (main_controller_child_trainer.py), spec sections 4 and 5.

Each epoch: one pass of shared-child training, a fresh controller sample per
step; the controller phase (REINFORCE; this loop owns the reward); 10 sampled
arcs printed with their one-batch accuracy, as the authors do. Every
eval_every_epochs: the shared child's valid and test accuracy, and the
controller's lift with its error bar (the policy's arcs, kept in the arc
history, against uniform ones). At the end the final selection scores the best
arcs seen and fresh ones from the final policy on the final weights, and
best_arc.txt becomes its winner (src/selection.py).
"""
from __future__ import annotations

import dataclasses
import os
import random
import time
from typing import Callable, Dict, List, Optional

import numpy as np
import tensorflow as tf

from src import arc as arc_lib
from src import data as data_lib
from src import checkpoints, distribute, harness, reporting, run_dir, selection
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
# rewritten from them on resume.
EMPTY_RECORDS = {"epochs": [], "arc_history": [], "wall_time_s": 0.0, "time_split_s": {},
                 "cpu_time_s": 0.0}


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



def sample_arc(controller: Controller) -> List[int]:
    arc, _, _ = controller.sample()
    return [int(a) for a in arc.numpy()]


ArcSampler = Callable[[], List[int]]


def uniform_sampler(rng: random.Random, num_cells: int) -> ArcSampler:
    """Uniformly random arcs: every input id and every op equally likely."""
    return lambda: list(arc_lib.random_arc(rng, num_cells))


def epoch_rng(seed: int, epoch: int, stream: int) -> random.Random:
    """A generator fixed by (seed, epoch, stream), so a resumed epoch draws the same arcs."""
    return random.Random(f"{seed}/{epoch}/{stream}")


def controller_in_charge(ctrl: ControllerConfig, epoch: int) -> bool:
    """Whether the controller samples the child's arcs (and trains) in this 0-based epoch."""
    return ctrl.policy == "controller" and epoch >= ctrl.start_epoch


def trains_controller(ctrl: ControllerConfig, epoch: int) -> bool:
    return controller_in_charge(ctrl, epoch) and (epoch + 1) % ctrl.train_every == 0


def child_arc_sampler(state: SearchState, config: SearchConfig, epoch: int) -> ArcSampler:
    """The arcs the shared child trains on (and the shown arcs) in this epoch: the
    controller's, or uniformly random ones (warm-up epochs, random search)."""
    if controller_in_charge(config.controller, epoch):
        return lambda: sample_arc(state.controller)
    return uniform_sampler(epoch_rng(config.run.seed, epoch, 0), config.child.num_cells)


def batch_accuracy(steps: SharedChildSteps, images, labels, arc) -> float:
    return float(steps.count_correct(images, labels, arc)) / int(labels.shape[0])


def split_accuracy(steps: SharedChildSteps, split: data_lib.Split, batch_size: int,
                   sampler: ArcSampler) -> float:
    """Accuracy of the shared child on a whole split with a freshly sampled arc for every
    batch, as the authors evaluate (one arc on fixed batches: selection.score_arcs). The
    batches mix the classes (the child's BN uses batch statistics, see
    data.mixed_eval_batches)."""
    correct = 0
    for images, labels in data_lib.mixed_eval_batches(split, batch_size):
        correct += int(steps.count_correct(images, labels, sampler()))
    return correct / max(1, len(split.labels))


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
    """The validation split cut in two (src/selection.py): `selection` chooses,
    `report` is read once at the end; both as fixed batch lists."""
    selection: data_lib.Split
    report: data_lib.Split
    selection_batches: selection.Batches
    report_batches: selection.Batches


def validation_halves(dataset, config: SearchConfig) -> Halves:
    chosen, reported = selection.stratified_halves(dataset.valid, config.run.seed)
    print(f"Validation split cut in two, stratified by class (seed {config.run.seed}): "
          f"{len(chosen.labels)} selection images (rewards, lift, final selection), "
          f"{len(reported.labels)} report images (read once, at the end)")
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
    wall_before = records["wall_time_s"]

    def note_time():
        records.update(wall_time_s=wall_before + time.time() - start,
                       time_split_s=timer.rounded(), cpu_time_s=timer.cpu_s())

    results = {}
    if restored:
        print(f"Resumed from {restored} at epoch {int(state.epoch)}, "
              f"baseline {float(state.reinforce.baseline):.6f}")
        results = _write_epoch_files(config, state, records)  # as of that checkpoint
    train_data = data_lib.TrainBatches(dataset.train, config.data)
    timer.seconds["setup"] = timer.seconds.get("setup", 0.0) + time.time() - start
    if int(state.epoch) < run_cfg.num_epochs:  # trace up front, so the first ETA is right
        with timer.phase("tracing"):
            tracing_start = time.time()
            state.child_steps.warm_up(*next(iter(data_lib.eval_batches(
                dataset.train, config.data.batch_size))))
            print(f"Traced the shared child's compiled pieces in {time.time() - tracing_start:.1f}s")
        run_dir.failpoint("traced")
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
            record.update(train_one_epoch(
                lambda images, labels: child_step(state, images, labels, sampler),
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
                record.update(_evaluate(state, halves.selection, dataset.test,
                                        config.data.eval_batch_size, sampler))
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


def child_step(state: SearchState, images, labels, sampler: ArcSampler = None) -> Dict:
    """One shared-child training step on a freshly sampled arc (no controller gradient);
    the arc comes from the controller unless another sampler is given."""
    arc = sampler() if sampler is not None else sample_arc(state.controller)
    return state.child_steps.train_step(images, labels, arc)


def policy_arcs(state: SearchState, config: SearchConfig, epoch: int, stream: int,
                count: int) -> List[List[int]]:
    """`count` arcs of the search's policy: the controller's, or uniform ones under
    --search_policy random (drawn from their own (seed, epoch, stream) generator)."""
    if config.controller.policy == "random":
        uniform = uniform_sampler(epoch_rng(config.run.seed, epoch, stream), config.child.num_cells)
        return [uniform() for _ in range(count)]
    return [sample_arc(state.controller) for _ in range(count)]


def _score_policy_arcs(state: SearchState, halves: Halves, config: SearchConfig, epoch: int):
    """(arc history entries, lift record): num_lift_arcs arcs of the policy scored on the
    selection half; under the controller, as many uniform arcs on the same batches, and
    the lift with its standard error and 95% interval."""
    n = config.controller.num_lift_arcs
    if n == 0:
        return [], {}
    count_correct = state.child_steps.count_correct
    arcs = policy_arcs(state, config, epoch, stream=3, count=n)
    images = len(halves.selection.labels)
    if config.controller.policy == "random":
        scores = selection.score_arcs(count_correct, arcs, halves.selection_batches)
        print(f"policy arcs, mean selection accuracy {np.mean(scores):.4f} ({n} arcs); "
              "controller_lift: n/a (--search_policy random: the policy is the uniform "
              "distribution, there is nothing to compare it with)")
        lift = {"policy_arc_scores": scores}
    else:
        uniform = uniform_sampler(epoch_rng(config.run.seed, epoch, 1), config.child.num_cells)
        lift = selection.measure_lift(count_correct, arcs, [uniform() for _ in range(n)],
                                      halves.selection_batches)
        print(selection.format_lift(lift, n, images))
        scores = lift["controller_arc_scores"]
    scored = [{"epoch": epoch + 1, "arc": arc_lib.format_arc(arc), "selection_accuracy": score}
              for arc, score in zip(arcs, scores)]
    return scored, lift


def _final_selection(state: SearchState, halves: Halves, config: SearchConfig,
                     records: Dict) -> Dict:
    """The cell chosen on the final weights: the best arcs seen, plus fresh ones from the
    final policy, scored on the selection half; the winner reported on the other half."""
    started = time.time()
    fresh = policy_arcs(state, config, config.run.num_epochs, stream=2,
                        count=config.controller.num_final_arcs)
    candidates = selection.final_candidates(records["arc_history"], fresh)
    if not candidates:
        print("Final selection: no candidates (--num_lift_arcs 0 and --num_final_arcs 0)")
        return {}
    print(f"Final selection: {len(candidates)} candidates ({len(candidates) - len(fresh)} "
          f"best seen in the search, the rest fresh from the final policy) on the final weights, "
          f"{len(halves.selection.labels)} selection images")
    final = selection.select_final(state.child_steps.count_correct, candidates,
                                   halves.selection_batches, halves.report_batches)
    run_dir.failpoint("final_selection")
    out = config.run.output_dir
    # results.json, written last by the caller, is what says the selection is done.
    run_dir.write_json_atomic(os.path.join(out, FINAL_SELECTION_FILE), final)
    run_dir.write_text_atomic(os.path.join(out, BEST_ARC_FILE), final["best_arc"] + "\n")
    reporting.save_arc_picture(final["best_arc"], os.path.join(out, "best_arc.png"))
    print(f"Final selection took {reporting.format_duration(time.time() - started)}. Best arc: "
          f"{final['best_arc']}\n  selection accuracy {final['best_arc_selection_accuracy']:.4f} "
          f"(the maximum of {len(candidates)} scores: biased upward)\n  report accuracy "
          f"{final['best_arc_report_accuracy']:.4f} (the {len(halves.report.labels)} report "
          "images, unseen by any choice: an unbiased estimate, on the shared weights)")
    return final


def controller_update(state: SearchState, valid_iter, ctrl) -> Dict:
    """One REINFORCE update from ctrl.num_aggregate sampled arcs, each rewarded with the
    shared child's accuracy on one validation batch plus the entropy bonus."""
    samples = [state.controller.sample() for _ in range(ctrl.num_aggregate)]
    arcs = [arc for arc, _, _ in samples]
    entropies = [float(entropy) for _, _, entropy in samples]
    batches = [next(valid_iter) for _ in samples]
    accuracies = score_arcs_on_batches(state.child_steps, [[int(a) for a in arc.numpy()] for arc in arcs],
                                       batches)
    rewards = [reward_from(acc, entropy, ctrl.entropy_weight)
               for acc, entropy in zip(accuracies, entropies)]
    metrics = dict(state.reinforce.update(tf.stack(arcs), tf.constant(rewards, tf.float32)))
    metrics.update(rewards=rewards, accuracy=float(np.mean(accuracies)),
                   entropy=float(np.mean(entropies)))
    return metrics


def score_arcs_on_batches(steps: SharedChildSteps, arcs: List[List[int]], batches) -> List[float]:
    """Accuracy of each arc on its (images, labels) batch. Under a strategy with several
    replicas, one arc per replica at once (the last round padded with the first arc);
    every worker holds the same arcs and batches, and gets every accuracy."""
    replicas = steps.strategy.num_replicas_in_sync
    if not distribute.is_distributed(steps.strategy) or replicas == 1:
        return [batch_accuracy(steps, images, labels, arc) for arc, (images, labels) in zip(arcs, batches)]
    accuracies = []
    for start in range(0, len(arcs), replicas):
        round_arcs, round_batches = arcs[start:start + replicas], batches[start:start + replicas]
        padding = replicas - len(round_arcs)
        counts = steps.count_correct_in_parallel(round_batches + [round_batches[0]] * padding,
                                                 round_arcs + [round_arcs[0]] * padding)
        accuracies += [count / int(labels.shape[0])
                       for count, (_, labels) in zip(counts, round_batches)]
    return accuracies


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
    """Samples 10 arcs and prints each with its accuracy on one validation batch (the
    authors' progress display: one-batch figures, never used to choose)."""
    print(f"Here are {NUM_SHOWN_ARCS} architectures")
    for _ in range(NUM_SHOWN_ARCS):
        arc = sampler()
        images, labels = next(valid_iter)
        acc = batch_accuracy(state.child_steps, images, labels, arc)
        normal, reduction = arc_lib.split_arc(arc)
        print(f"{arc_lib.format_arc(normal)}\n{arc_lib.format_arc(reduction)}\nval_acc={acc:.4f}")
        print("-" * 80)


def _evaluate(state: SearchState, valid: data_lib.Split, test: data_lib.Split, batch_size: int,
              sampler: ArcSampler) -> Dict:
    """The shared child's accuracy with a freshly sampled arc per batch (the authors'),
    on the selection half and on the test split."""
    valid_acc = split_accuracy(state.child_steps, valid, batch_size, sampler=sampler)
    test_acc = split_accuracy(state.child_steps, test, batch_size, sampler=sampler)
    print(f"valid_accuracy: {valid_acc:.4f} (selection half)")
    print(f"test_accuracy: {test_acc:.4f}")
    return {"valid_accuracy": valid_acc, "test_accuracy": test_acc}


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
            "final_candidates", "top_arcs")})
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
    run_dir.write_json_atomic(os.path.join(config.run.output_dir, run_dir.RESULTS_FILE), results)
    return results


def retrain_command(output_dir: str) -> str:
    return ("python main_child_trainer.py --flagfile presets/cpu_final.flags "
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
    else:
        lines.append("Controller lift: n/a (random search)")
    lines += ["", f"Wall time {reporting.format_duration(results['wall_time_s'])} "
              f"({results['wall_time_s']:.0f} s), CPU share {results['cpu_share']:.2f} cores:", "",
              "| phase | seconds |", "|---|---|"]
    lines += [f"| {name} | {seconds:.1f} |" for name, seconds in
              sorted(results["time_split_s"].items(), key=lambda item: -item[1])]
    lines += ["", "Retrain the best cell into the final model:", "", "```",
              retrain_command(out), "```", ""]
    text = "\n".join(lines)
    run_dir.write_text_atomic(os.path.join(out, SUMMARY_FILE), text)
    print(text)
