"""The search loop (main_controller_child_trainer.py), spec sections 4 and 5.

Each epoch: one pass of shared-child training, a fresh controller sample per
step; the controller phase (REINFORCE; this loop owns the reward); 10 sampled
arcs with their validation accuracy; valid and test accuracy of the shared
child. The arcs seen each epoch are scored on the whole validation set and the
best so far is written to best_arc.txt.
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
from src import checkpoints, distribute, reporting, run_dir
from src.configs import ControllerConfig, SearchConfig
from src.controller import Controller
from src.controller_step import ReinforceTrainer, reward_from
from src.shared_child import SharedChild, choose_recompute
from src.summaries import RunSummaries
from src.train_steps import (SharedChildSteps, check_stop, cosine_lr, seed_everything,
                             stop_at_step_boundaries, train_one_epoch)

BEST_ARC_FILE = "best_arc.txt"
ARC_HISTORY_FILE = "arc_history.json"
HISTORY_FILE = "history.json"
NUM_SHOWN_ARCS = 10
# What measure_lift adds to an evaluated epoch's record (and results.json the last of).
LIFT_KEYS = ("controller_valid_accuracy", "random_valid_accuracy", "controller_lift")
# What each epoch puts in TensorBoard (those an epoch lacks are skipped).
EPOCH_SCALARS = ("train_loss", "train_accuracy", "valid_accuracy", "test_accuracy",
                 "controller_mean_reward", "baseline") + LIFT_KEYS


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
    seed_everything(config.run.seed, config.run.deterministic)
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
        records=checkpoints.JsonRecords({"epochs": [], "arc_history": [], "wall_time_s": 0.0}))


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
                   arc=None, sampler: ArcSampler = None) -> float:
    """Accuracy of the shared child on a whole split: with one given arc, or (as the
    authors evaluate) a freshly sampled arc for every batch. The batches mix the classes
    (the child's BN uses batch statistics, see data.mixed_eval_batches)."""
    correct = 0
    for images, labels in data_lib.mixed_eval_batches(split, batch_size):
        batch_arc = arc if arc is not None else sampler()
        correct += int(steps.count_correct(images, labels, batch_arc))
    return correct / max(1, len(split.labels))


def run(config: SearchConfig) -> Dict:
    """Searches (or resumes a search); returns what results.json holds (in a
    multi-worker run every worker returns it; only the chief writes it)."""
    strategy = distribute.build_strategy(config.run)
    chief = distribute.is_chief(strategy)
    run_config, restore_dir = distribute.worker_run_config(config.run, chief)
    config, out = dataclasses.replace(config, run=run_config), run_config.output_dir
    try:
        run_dir.prepare_output_dir(out, config.run.reset_output_dir and chief)
        with run_dir.RunLock(out), run_dir.Tee(out), stop_at_step_boundaries(), \
                distribute.peer_failures(strategy, config.run.collective_timeout_s):
            print(reporting.format_flags(config.flags))
            dataset = data_lib.load_dataset(config.data)
            config = dataclasses.replace(config, child=dataclasses.replace(
                config.child, num_classes=dataset.num_classes, channel=config.data.channel,
                img_size=config.data.img_size))
            print(f"Classes ({dataset.num_classes}): {', '.join(dataset.class_names)}")
            with RunSummaries(out) as summaries:
                return _search(config, dataset, summaries, strategy, restore_dir or out)
    finally:
        distribute.remove_worker_dir(out, chief)


def _search(config: SearchConfig, dataset, summaries: RunSummaries,
            strategy: tf.distribute.Strategy, restore_dir: str) -> Dict:
    out, run_cfg = config.run.output_dir, config.run
    state = build_state(config, strategy)
    print(f"Shared child has {state.child.num_params()} params (aux head excluded)")
    if distribute.is_distributed(strategy):
        print(f"Strategy: {run_cfg.strategy}, {strategy.num_replicas_in_sync} replicas: child steps "
              f"split each batch over them, controller updates score that many arcs at once")
    manager, restored = checkpoints.restore_or_start(
        state.checkpoint(), restore_dir, run_dir.CHECKPOINT_DIR,
        optimizers=[state.child_steps.optimizer], save_dir=None if restore_dir == out else out)
    records = _restored_records(state, out)
    results = {}
    if restored:
        print(f"Resumed from {restored} at epoch {int(state.epoch)}, "
              f"baseline {float(state.reinforce.baseline):.6f}")
        results = _write_epoch_files(config, state, records)  # as of that checkpoint
    wall_before, start = records["wall_time_s"], time.time()
    train_data = data_lib.TrainBatches(dataset.train, config.data)
    if int(state.epoch) < run_cfg.num_epochs:  # trace up front, so the first ETA is right
        tracing_start = time.time()
        state.child_steps.warm_up(*next(iter(data_lib.eval_batches(dataset.train,
                                                                    config.data.batch_size))))
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
        record.update(train_one_epoch(
            lambda images, labels: child_step(state, images, labels, sampler),
            distribute.distribute_batches(strategy, train_data.epoch(epoch, run_cfg.steps_per_epoch)),
            batches_per_epoch, epoch, lr,
            state.step, run_cfg.log_every, start, desc=f"epoch {epoch + 1} child",
            summaries=summaries))
        record["step"] = int(state.step)
        valid_iter = iter(data_lib.endless_shuffled_batches(
            dataset.valid, config.data.eval_batch_size, seed=run_cfg.seed + epoch))
        if trains_controller(config.controller, epoch):
            record.update(_train_controller(state, valid_iter, config, start, summaries))
        shown = _show_sampled_arcs(state, valid_iter, sampler)
        records["arc_history"] += _score_arcs(state, shown, dataset.valid,
                                              config.data.eval_batch_size, epoch + 1)
        if (epoch + 1) % run_cfg.eval_every_epochs == 0 or epoch + 1 == run_cfg.num_epochs:
            record.update(_evaluate(state, dataset, config.data.eval_batch_size, sampler))
            record.update(measure_lift(state, dataset.valid, config, epoch))
        records["epochs"].append(record)
        records["wall_time_s"] = wall_before + time.time() - start
        state.epoch.assign(epoch + 1)
        state.records.set(records)
        run_dir.failpoint("before_checkpoint")
        checkpoints.save(manager, epoch + 1)
        run_dir.failpoint("after_checkpoint")
        # Everything below is rewritten from the checkpoint on resume.
        results = _write_epoch_files(config, state, records)
        summaries.scalars({f"epoch/{key}": record.get(key) for key in EPOCH_SCALARS}, epoch + 1)
        summaries.png("best_arc", os.path.join(out, "best_arc.png"), step=epoch + 1)
    return results


def _restored_records(state: SearchState, out: str) -> Dict:
    """The epoch records of the restored checkpoint (empty at a fresh start). A checkpoint
    older than records in checkpoints gets them from the files, cut at its epoch."""
    records = state.records.get()
    epochs_done = int(state.epoch)
    if len(records["epochs"]) < epochs_done:
        history = run_dir.read_json(os.path.join(out, HISTORY_FILE), default={"epochs": []})
        arc_history = run_dir.read_json(os.path.join(out, ARC_HISTORY_FILE), default=[])
        previous = run_dir.read_json(os.path.join(out, run_dir.RESULTS_FILE), default={})
        records = {"epochs": run_dir.up_to_epoch(history["epochs"], epochs_done),
                   "arc_history": run_dir.up_to_epoch(arc_history, epochs_done),
                   "wall_time_s": float(previous.get("wall_time_s", 0.0))}
    return records


def _write_epoch_files(config: SearchConfig, state: SearchState, records: Dict) -> Dict:
    """best_arc.txt (and .png), arc_history.json, history.json, search.png and
    results.json, from the records of the last checkpointed epoch; returns the results."""
    out = config.run.output_dir
    if not records["arc_history"]:
        return {}  # a checkpoint from before records were kept, its files gone
    best = max(records["arc_history"], key=lambda entry: entry["valid_accuracy"])
    run_dir.write_text_atomic(os.path.join(out, BEST_ARC_FILE), best["arc"] + "\n")
    run_dir.write_json_atomic(os.path.join(out, ARC_HISTORY_FILE), records["arc_history"])
    reporting.save_arc_picture(best["arc"], os.path.join(out, "best_arc.png"))
    print(f"Best arc so far (valid accuracy {best['valid_accuracy']:.4f}, "
          f"epoch {best['epoch']}): {best['arc']}")
    _save_history(out, {"epochs": records["epochs"]})
    return _write_results(config, state, best, records)


def child_step(state: SearchState, images, labels, sampler: ArcSampler = None) -> Dict:
    """One shared-child training step on a freshly sampled arc (no controller gradient);
    the arc comes from the controller unless another sampler is given."""
    arc = sampler() if sampler is not None else sample_arc(state.controller)
    return state.child_steps.train_step(images, labels, arc)


def measure_lift(state: SearchState, valid: data_lib.Split, config: SearchConfig,
                 epoch: int) -> Dict:
    """The controller's lift: mean whole-validation accuracy of controller-sampled arcs
    minus that of uniformly random arcs, both on the current shared weights."""
    n = config.controller.num_lift_arcs
    if n == 0:
        return {}
    batch_size = config.data.eval_batch_size
    uniform = uniform_sampler(epoch_rng(config.run.seed, epoch, 1), config.child.num_cells)
    controller_acc = float(np.mean([split_accuracy(state.child_steps, valid, batch_size,
                                                   arc=sample_arc(state.controller))
                                    for _ in range(n)]))
    random_acc = float(np.mean([split_accuracy(state.child_steps, valid, batch_size, arc=uniform())
                                for _ in range(n)]))
    lift = controller_acc - random_acc
    print(f"controller_valid_accuracy: {controller_acc:.4f} random_valid_accuracy: "
          f"{random_acc:.4f} controller_lift: {lift:+.4f} ({n} arcs each, whole validation set)")
    return dict(zip(LIFT_KEYS, (controller_acc, random_acc, lift)))


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
                      summaries: RunSummaries) -> Dict:
    """REINFORCE: reward = shared-child accuracy on one validation batch + entropy bonus."""
    ctrl = config.controller
    print(f"Epoch {int(state.epoch) + 1}: training controller")
    rewards_seen = []
    with reporting.ProgressBar(ctrl.train_steps, desc="controller") as bar:
        for _ in range(ctrl.train_steps):
            metrics = controller_update(state, valid_iter, ctrl)
            rewards_seen += metrics["rewards"]
            state.controller_step.assign_add(1)
            summaries.scalars({"controller/reward": np.mean(metrics["rewards"]),
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
            check_stop()
    return {"controller_mean_reward": float(np.mean(rewards_seen)),
            "baseline": float(state.reinforce.baseline)}


def _show_sampled_arcs(state: SearchState, valid_iter, sampler: ArcSampler) -> List[Dict]:
    """Samples 10 arcs and prints each with its accuracy on one validation batch."""
    print(f"Here are {NUM_SHOWN_ARCS} architectures")
    shown = []
    for _ in range(NUM_SHOWN_ARCS):
        arc = sampler()
        images, labels = next(valid_iter)
        acc = batch_accuracy(state.child_steps, images, labels, arc)
        normal, reduction = arc_lib.split_arc(arc)
        print(f"{arc_lib.format_arc(normal)}\n{arc_lib.format_arc(reduction)}\nval_acc={acc:.4f}")
        print("-" * 80)
        shown.append({"arc": arc, "batch_accuracy": acc})
    return shown


def _score_arcs(state: SearchState, shown: List[Dict], valid: data_lib.Split, batch_size: int,
                epoch: int) -> List[Dict]:
    """Each arc of this epoch on the whole validation set (shared weights)."""
    scored = []
    for entry in shown:
        acc = split_accuracy(state.child_steps, valid, batch_size, arc=entry["arc"])
        scored.append({"epoch": epoch, "arc": arc_lib.format_arc(entry["arc"]),
                       "valid_accuracy": acc, "batch_accuracy": entry["batch_accuracy"]})
    return scored


def _evaluate(state: SearchState, dataset, batch_size: int, sampler: ArcSampler) -> Dict:
    valid_acc = split_accuracy(state.child_steps, dataset.valid, batch_size, sampler=sampler)
    test_acc = split_accuracy(state.child_steps, dataset.test, batch_size, sampler=sampler)
    print(f"valid_accuracy: {valid_acc:.4f}")
    print(f"test_accuracy: {test_acc:.4f}")
    return {"valid_accuracy": valid_acc, "test_accuracy": test_acc}


def _save_history(out: str, history: Dict) -> None:
    run_dir.write_json_atomic(os.path.join(out, HISTORY_FILE), history)
    epochs = history["epochs"]
    evaluated = [e for e in epochs if "valid_accuracy" in e]
    with_controller = [e for e in epochs if "controller_mean_reward" in e]
    lifted = [e for e in epochs if "controller_lift" in e]
    reporting.save_curves(os.path.join(out, "search.png"), {
        "child train accuracy": [(e["epoch"], e["train_accuracy"]) for e in epochs],
        "shared valid accuracy": [(e["epoch"], e["valid_accuracy"]) for e in evaluated],
        "controller reward": [(e["epoch"], e["controller_mean_reward"]) for e in with_controller],
        "baseline": [(e["epoch"], e["baseline"]) for e in with_controller],
        "controller arcs, valid": [(e["epoch"], e["controller_valid_accuracy"]) for e in lifted],
        "random arcs, valid": [(e["epoch"], e["random_valid_accuracy"]) for e in lifted],
        "controller lift": [(e["epoch"], e["controller_lift"]) for e in lifted]},
        title="search (shared-child accuracies, not retrained ones)", ylabel="accuracy / reward")


def _write_results(config: SearchConfig, state: SearchState, best: Dict, records: Dict) -> Dict:
    results = {
        "best_arc": best["arc"], "best_arc_valid_accuracy": best["valid_accuracy"],
        "best_arc_epoch": best["epoch"], "epochs_done": int(state.epoch),
        "num_epochs": config.run.num_epochs, "child_steps": int(state.step),
        "search_policy": config.controller.policy,
        "shared_child_params": state.child.num_params(),
        "baseline": float(state.reinforce.baseline),
        "wall_time_s": round(records["wall_time_s"], 2),
    }
    lifted = [e for e in records["epochs"] if "controller_lift" in e]
    if lifted:  # the last evaluation's
        results.update({key: lifted[-1][key] for key in LIFT_KEYS})
    results["flags"] = config.flags
    run_dir.write_json_atomic(os.path.join(config.run.output_dir, run_dir.RESULTS_FILE), results)
    return results
