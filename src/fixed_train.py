"""The fixed-arc loop: retrain one arc into a final model (main_child_trainer.py).

data -> FixedChild -> compiled steps -> checkpoints every epoch, evaluation,
results.json, curves and the list of misclassified test images.
"""
from __future__ import annotations

import dataclasses
import os
import time
from typing import Dict, Tuple

import numpy as np
import tensorflow as tf

from src import arc as arc_lib
from src import data as data_lib
from src import budget, checkpoints, distribute, harness, reporting, run_dir, serving
from src.child_steps import FixedChildSteps
from src.configs import FixedTrainConfig
from src.epoch_loop import train_one_epoch
from src.fixed_child import FixedChild
from src.optim import cosine_lr

ARC_FILE = "arc.txt"  # the arc retrained, as main_child_trainer.py --child_fixed_arc_file reads it
# What each epoch puts in TensorBoard (the evaluation ones on evaluated epochs only).
EPOCH_SCALARS = ("train_loss", "train_accuracy", "valid_accuracy", "test_accuracy")
# The epoch records kept in the checkpoint (history.json and results.json are rewritten
# from them on resume): budget_plan is the --budget_minutes plan (None without a budget),
# run_wall_s the whole run's seconds (start-up included) up to the last checkpoint.
EMPTY_RECORDS = {"epochs": [], "wall_time_s": 0.0, "budget_plan": None, "run_wall_s": 0.0}
# --budget_minutes measures this many training steps after the first (which traces), and
# this many evaluation batches after the first.
MEASURE_STEPS = 20
MEASURE_EVAL_BATCHES = 5


def predict(steps: FixedChildSteps, split: data_lib.Split, batch_size: int) -> np.ndarray:
    """Predicted class ids [N] for a split, in order."""
    return np.concatenate([steps.eval_step(images).numpy()
                           for images, _ in data_lib.eval_batches(split, batch_size)])


def accuracy(predictions: np.ndarray, labels: np.ndarray) -> float:
    return float(np.mean(predictions == labels)) if len(labels) else 0.0


def check_resumable(output_dir: str, arc: str) -> None:
    """A checkpoint made for another arc cannot be resumed; never overwrite it."""
    previous = run_dir.read_json(os.path.join(output_dir, run_dir.RESULTS_FILE), default={})
    if previous.get("arc") and previous["arc"] != arc:
        raise run_dir.OutputDirError(
            f"{output_dir} holds a run of another arc ({previous['arc']}); "
            "choose another --output_dir or pass --reset_output_dir")


def run(config: FixedTrainConfig) -> Dict:
    """Trains (or resumes) the fixed child; returns what results.json holds (in a
    multi-worker run, every worker returns it; only the chief writes it)."""
    arc = arc_lib.parse_arc(config.arc, config.child.num_cells)
    arc_text = arc_lib.format_arc(arc)
    with harness.open_run(config.run, config.flags,
                          check_folder=lambda out: check_resumable(out, arc_text)) as this_run:
        config = dataclasses.replace(config, run=this_run.config)
        loading = time.time()
        dataset = data_lib.load_dataset(config.data, retraining=True)
        print(f"Data ready in {time.time() - loading:.1f} s (decoding any new folder into the "
              f"cache included; the lines above say which split was decoded)")
        child_config = _child_config_for(config, dataset)
        print(f"Classes ({dataset.num_classes}): {', '.join(dataset.class_names)}")
        return _train(config, child_config, arc, arc_text, dataset, this_run)


def _child_config_for(config: FixedTrainConfig, dataset):
    """The number of classes comes from the folders, never a hard-coded 10."""
    return dataclasses.replace(config.child, num_classes=dataset.num_classes,
                               channel=config.data.channel, img_size=config.data.img_size)


def _train(config, child_config, arc, arc_text, dataset, this_run: harness.Run) -> Dict:
    out, run_cfg, summaries = config.run.output_dir, config.run, this_run.summaries
    strategy = this_run.strategy
    harness.seed_everything(run_cfg.seed, run_cfg.deterministic)
    with strategy.scope():  # mirrored weights, per-replica BN statistics
        model = FixedChild(child_config, arc, seed=run_cfg.seed)
    steps = FixedChildSteps(model, config.optim, dataset.train.images.shape[1:], strategy)
    if distribute.is_distributed(strategy):
        print(f"Strategy: {run_cfg.strategy}, {strategy.num_replicas_in_sync} replicas, "
              f"{config.data.batch_size // strategy.num_replicas_in_sync} images each per step")
    print(f"Arc: {arc_text}")
    print(f"Model has {model.num_params()} params")
    print(f"Aux head uses {model.num_aux_params()} params")
    run_dir.write_text_atomic(os.path.join(out, ARC_FILE), arc_text + "\n")
    reporting.save_arc_picture(arc, os.path.join(out, "arc.png"))
    summaries.png("arc", os.path.join(out, "arc.png"), step=0)

    epoch_var = tf.Variable(0, dtype=tf.int64, name="epoch")
    step_var = tf.Variable(0, dtype=tf.int64, name="step")
    records = checkpoints.JsonRecords(EMPTY_RECORDS)
    checkpoint = tf.train.Checkpoint(model=model, optimizer=steps.optimizer,
                                     epoch=epoch_var, step=step_var, records=records)
    manager, restored = this_run.restore(checkpoint, optimizers=[steps.optimizer])
    history = harness.restored_records(records, EMPTY_RECORDS)
    if restored:
        print(f"Resumed from {restored} at epoch {int(epoch_var)}, step {int(step_var)}")
        _save_history(out, history)  # as of that checkpoint
    train_data = data_lib.TrainBatches(dataset.train, config.data)
    plan = budget.chosen_plan(config.run, config.optim, history["budget_plan"], int(epoch_var),
                              lambda: _measured_plan(config, steps, model, checkpoint, train_data,
                                                     dataset, strategy))
    config = harness.follow_budget(this_run, config, plan, history)
    run_cfg = config.run
    run_wall_before = history["run_wall_s"]
    wall_before, start = history["wall_time_s"], time.time()

    batches_per_epoch = train_data.batches_per_pass
    total_steps = max(1, run_cfg.num_epochs * batches_per_epoch)
    valid_acc = test_acc = test_pred = None

    def step_fn(images, labels):
        # Fraction of training done, for the drop-path ramp.
        progress = min(1.0, (int(step_var) + 1) / total_steps)
        return steps.train_step(images, labels, tf.constant(progress, tf.float32))

    for epoch in range(int(epoch_var), run_cfg.num_epochs):
        lr = cosine_lr(epoch, config.optim)
        steps.set_learning_rate(lr)
        record = {"epoch": epoch + 1, "lr": lr}
        batches = distribute.distribute_batches(strategy, train_data.epoch(epoch))
        record.update(train_one_epoch(step_fn, batches, batches_per_epoch, epoch,
                                      lr, step_var, run_cfg.log_every, start,
                                      desc=f"epoch {epoch + 1}", check_stop=this_run.stop.check,
                                      summaries=summaries))
        if this_run.evaluates_after(epoch):
            valid_acc, test_acc, test_pred = _evaluate(steps, dataset, config.data)
            record.update(valid_accuracy=valid_acc, test_accuracy=test_acc)
        history["epochs"].append(record)
        history["wall_time_s"] = wall_before + time.time() - start
        history["run_wall_s"] = run_wall_before + time.time() - run_cfg.started_at
        this_run.checkpoint_epoch(manager, epoch_var, records, history, epoch + 1)
        # Everything below is rewritten from the checkpoint on resume.
        this_run.epoch_scalars(record, EPOCH_SCALARS, epoch + 1)
        _save_history(out, history)
        _write_results(config, model, arc_text, int(epoch_var), valid_acc, test_acc,
                       history["wall_time_s"], dataset,
                       budget.results_fields(plan, history["run_wall_s"]))

    if test_pred is None:  # nothing trained now (--num_epochs 0, or already done)
        valid_acc, test_acc, test_pred = _evaluate(steps, dataset, config.data)
    _report_misclassified(out, dataset, test_pred)
    model_dir = serving.export_model(model, dataset, config.data.img_size, config.data.channel,
                                     os.path.join(out, serving.MODEL_DIR))
    print(f"Exported the model (SavedModel, uint8 images in): {model_dir}")
    results = _write_results(config, model, arc_text, int(epoch_var), valid_acc, test_acc,
                             wall_before + time.time() - start, dataset, budget.results_fields(
                                 plan, run_wall_before + time.time() - run_cfg.started_at))
    print(end_of_run_summary(results, model_dir))
    return results


# ----------------------------------------------------------------------------
# --budget_minutes: measure, plan (src/budget.py), keep the plan in the checkpoint


def _measured_plan(config: FixedTrainConfig, steps: FixedChildSteps, model: FixedChild,
                   checkpoint: tf.train.Checkpoint, train_data: data_lib.TrainBatches,
                   dataset, strategy) -> budget.BudgetPlan:
    """Times training steps and evaluation batches on weights put back afterwards (so the
    budgeted run trains exactly as its reproduce flags would), a checkpoint, the export
    and the files of an epoch; plans the epochs that fit (printed)."""
    eval_size = config.data.eval_batch_size
    with harness.weights_kept(checkpoint) as checkpoint_s:
        first_step_s, step_s = _time_train_steps(steps, strategy, train_data, MEASURE_STEPS)
        _, eval_batch_s = _time_eval_batches(steps, dataset.test, eval_size, MEASURE_EVAL_BATCHES)
    export_s, files_s = _time_export(model, dataset, config.data), _time_epoch_files()
    evaluated = [dataset.test] + ([] if config.data.train_on_valid else [dataset.valid])
    eval_batches = sum(data_lib.num_batches(len(split.labels), eval_size) for split in evaluated)
    costs = budget.RunCosts(
        epoch_s=step_s * train_data.batches_per_pass, eval_s=eval_batch_s * eval_batches,
        eval_every=config.run.eval_every_epochs, per_epoch_s=checkpoint_s + files_s,
        tail_s=export_s + files_s)
    plan = budget.plan_run(
        config.run.budget_minutes, time.time() - config.run.started_at, costs,
        measurements={"step_s": step_s, "first_step_s": first_step_s,
                      "steps_per_epoch": train_data.batches_per_pass,
                      "eval_batch_s": eval_batch_s, "eval_batches": eval_batches,
                      "checkpoint_s": checkpoint_s, "export_s": export_s, "files_s": files_s})
    print(plan.log_line())
    return plan


def _time_train_steps(steps: FixedChildSteps, strategy, train_data: data_lib.TrainBatches,
                      count: int) -> Tuple[float, float]:
    """(seconds of the first step, tracing included; mean seconds of the `count` after
    it). Epoch 1's batches; the caller puts the weights back."""
    return harness.time_train_steps(lambda images, labels: steps.train_step(
        images, labels, tf.constant(0.0)), strategy, train_data, count)


def _time_eval_batches(steps: FixedChildSteps, split: data_lib.Split, batch_size: int,
                       count: int) -> Tuple[float, float]:
    """(seconds of the first evaluation batch, tracing included; mean seconds of the
    `count` after it)."""
    # Repeated: a split of one batch still times one after tracing.
    return harness.time_each(data_lib.eval_batches(split, batch_size).repeat().take(count + 1),
                             lambda batch: steps.eval_step(batch[0]).numpy())


def _time_export(model: FixedChild, dataset, data_config) -> float:
    """Seconds of exporting the model (the run's last work), into a folder then deleted."""
    return harness.seconds_writing(lambda folder: serving.export_model(
        model, dataset, data_config.img_size, data_config.channel,
        os.path.join(folder, serving.MODEL_DIR)))


def _time_epoch_files() -> float:
    """Seconds of writing an epoch's history and curves, into a folder then deleted."""
    record = {"epoch": 1, "lr": 0.1, "train_loss": 1.0, "train_accuracy": 0.5,
              "valid_accuracy": 0.5, "test_accuracy": 0.5}
    return harness.seconds_writing(
        lambda folder: _save_history(folder, {"epochs": [record], "wall_time_s": 1.0}))


def end_of_run_summary(results: Dict, model_dir: str) -> str:
    """What the retrain gave and what to run next."""
    wrong = round((1.0 - results["test_accuracy"]) * results["num_test_images"])
    return (f"\nTest accuracy {results['test_accuracy']:.4f} ({wrong} of "
            f"{results['num_test_images']} test images wrong, see misclassified.png), "
            f"{results['wall_time_s']:.0f} s.\nModel: {model_dir}\nClassify new images:\n"
            f"  python predict.py --model {model_dir} path/to/images")


VALID_TRAINED_ON = "valid_accuracy: n/a (--train_on_valid: the validation images are trained on)"


def _evaluate(steps, dataset, data_config):
    """(valid accuracy, test accuracy, test predictions [N]); the valid accuracy is None
    when the validation images are part of the training set (--train_on_valid)."""
    batch_size = data_config.eval_batch_size
    if data_config.train_on_valid:
        valid_acc = None
        print(VALID_TRAINED_ON)
    else:
        valid_acc = accuracy(predict(steps, dataset.valid, batch_size), dataset.valid.labels)
        print(f"valid_accuracy: {valid_acc:.4f}")
    test_pred = predict(steps, dataset.test, batch_size)
    test_acc = accuracy(test_pred, dataset.test.labels)
    print(f"test_accuracy: {test_acc:.4f}")
    return valid_acc, test_acc, test_pred


def _save_history(out: str, history: Dict) -> None:
    harness.write_history(out, history)
    epochs = history["epochs"]
    evaluated = [e for e in epochs if "test_accuracy" in e]
    reporting.save_curves(os.path.join(out, "accuracy.png"), {
        "train": [(e["epoch"], e["train_accuracy"]) for e in epochs],
        # None under --train_on_valid: no valid curve.
        "valid": [(e["epoch"], e["valid_accuracy"]) for e in evaluated
                  if e.get("valid_accuracy") is not None],
        "test": [(e["epoch"], e["test_accuracy"]) for e in evaluated]},
        title="accuracy", ylabel="accuracy")
    reporting.save_curves(os.path.join(out, "loss.png"), {
        "train loss": [(e["epoch"], e["train_loss"]) for e in epochs]},
        title="training loss (cross-entropy + 0.4 aux)", ylabel="loss")


def _report_misclassified(out: str, dataset, test_pred: np.ndarray) -> None:
    test = dataset.test
    count = reporting.write_misclassified(os.path.join(out, "misclassified.csv"), test.paths,
                                          test.labels, test_pred, dataset.class_names)
    # The images as the model saw them before normalisation (uint8; a memmap is read only
    # at the rows shown).
    reporting.save_misclassified_grid(os.path.join(out, "misclassified.png"), test.images,
                                      test.labels, test_pred, dataset.class_names)
    print(f"{count} of {len(test.labels)} test images misclassified: "
          f"{os.path.join(out, 'misclassified.csv')}")


def _write_results(config, model, arc_text, epochs_done, valid_acc, test_acc, wall_time,
                   dataset, budget_fields: Dict) -> Dict:
    results = {
        "arc": arc_text, "valid_accuracy": valid_acc, "test_accuracy": test_acc,
        "params": model.num_params(), "aux_head_params": model.num_aux_params(),
        "epochs_done": epochs_done, "num_epochs": config.run.num_epochs,
        "wall_time_s": round(wall_time, 2), "class_names": dataset.class_names,
        "num_train_images": int(len(dataset.train.labels)),
        "num_test_images": int(len(dataset.test.labels)), "flags": config.flags,
        **budget_fields,  # "budget" (planned and actual) and "reproduce_flags"
    }
    run_dir.write_json_atomic(os.path.join(config.run.output_dir, run_dir.RESULTS_FILE), results)
    return results
