"""Scoring arcs on the shared weights: the two validation halves, the controller's
lift with its error bar, and the final choice of the cell.

The validation split is cut once, stratified by class and seeded, into a
*selection* half and a *report* half. Everything that chooses (the controller's
rewards, the lift, the final selection) reads the selection half only; the
report half is read once, at the end, to report the chosen cell's accuracy
without the upward bias of a maximum taken over many noisy scores.
"""
from __future__ import annotations

from typing import Callable, Dict, List, Sequence, Tuple

import numpy as np
import tensorflow as tf

from src import arc as arc_lib
from src import data as data_lib
from src import stats

# Candidates of the final selection carried over from the search, and arcs listed
# in results.json's top_arcs (each scored on both halves).
NUM_TOP_FROM_SEARCH = 10
NUM_TOP_REPORTED = 5
# What measure_lift adds to an evaluated epoch's record.
LIFT_KEYS = ("controller_valid_accuracy", "random_valid_accuracy", "controller_lift",
             "controller_lift_se", "controller_lift_ci95")

Batches = List[Tuple[tf.Tensor, tf.Tensor]]
# (images, labels, arc) -> number of correct predictions on the shared weights.
CountCorrect = Callable[[tf.Tensor, tf.Tensor, Sequence[int]], tf.Tensor]


def subset(split: data_lib.Split, rows: np.ndarray) -> data_lib.Split:
    """The rows `rows` of a split, held in memory (a validation half is small)."""
    images = np.asarray(split.images[rows])  # uint8 [n, H, W, C]
    return data_lib.Split(images=images, labels=split.labels[rows],
                          paths=[split.paths[i] for i in rows], mean=split.mean, std=split.std,
                          in_memory=tf.constant(images))


def stratified_halves(split: data_lib.Split, seed: int
                      ) -> Tuple[data_lib.Split, data_lib.Split]:
    """(selection half, report half): each class's images shuffled by `seed` and cut in
    two; a class with an odd count gives its extra image to each half in turn."""
    rng = np.random.default_rng([seed, 5])  # its own stream: not the data order's
    selection, report = [], []
    odd_classes = 0
    for label in np.unique(split.labels):
        rows = rng.permutation(np.flatnonzero(split.labels == label))
        cut = len(rows) // 2 + (len(rows) % 2) * (1 - odd_classes % 2)
        odd_classes += len(rows) % 2
        selection += rows[:cut].tolist()
        report += rows[cut:].tolist()
    if not selection or not report:
        raise data_lib.DataError("the validation split needs at least 2 images to be cut "
                                 "into a selection half and a report half")
    return subset(split, np.sort(selection)), subset(split, np.sort(report))


def bounded_sample(split: data_lib.Split, max_images: int, seed: int) -> data_lib.Split:
    """A seeded random sample of at most max_images rows of a split (0: the whole split),
    in the split's order: scoring's cost then stays the same whatever the data's size."""
    if max_images == 0 or len(split.labels) <= max_images:
        return split
    rng = np.random.default_rng([seed, 6])  # its own stream, as stratified_halves'
    return subset(split, np.sort(rng.choice(len(split.labels), size=max_images, replace=False)))


def fixed_batches(split: data_lib.Split, batch_size: int) -> Batches:
    """The split once, in one fixed class-mixed order, as a list: every arc scored on it
    sees the very same batches."""
    return list(data_lib.mixed_eval_batches(split, batch_size))


def as_arc_tensor(arc) -> tf.Tensor:
    """An arc (text, ints or a tensor) as the int32 [L] tensor the compiled steps take."""
    if isinstance(arc, str):
        arc = arc_lib.parse_arc(arc)
    return tf.convert_to_tensor(arc, tf.int32)


def score_arcs(count_correct: CountCorrect, arcs, batches: Batches) -> List[float]:
    """Accuracy of each arc over the same batches, on the current shared weights. The
    counts stay tensors until all arcs are scored: one host read, not one per batch."""
    total = sum(int(labels.shape[0]) for _, labels in batches)
    counts = [tf.add_n([count_correct(images, labels, as_arc_tensor(arc)) for images, labels in batches])
              for arc in arcs]
    return (np.asarray(tf.stack(counts)) / total).tolist() if counts else []


def paired_accuracies(steps, arcs, batches) -> List[float]:
    """Accuracy of arc i on batch i (the controller's rewards, the authors' per-batch
    evaluation). Under a strategy with several replicas, one arc per replica at once
    (the last round padded with the first arc); every worker holds the same arcs and
    batches, and gets every accuracy. steps: SharedChildSteps."""
    arcs = [as_arc_tensor(arc) for arc in arcs]
    sizes = np.array([int(labels.shape[0]) for _, labels in batches])
    replicas = steps.strategy.num_replicas_in_sync
    if replicas == 1:
        counts = tf.stack([steps.count_correct(images, labels, arc)
                           for arc, (images, labels) in zip(arcs, batches)])
        return (np.asarray(counts) / sizes).tolist()
    counts = []
    for start in range(0, len(arcs), replicas):
        round_arcs, round_batches = arcs[start:start + replicas], batches[start:start + replicas]
        padding = replicas - len(round_arcs)
        counts += steps.count_correct_in_parallel(round_batches + [round_batches[0]] * padding,
                                                  round_arcs + [round_arcs[0]] * padding)[:len(round_arcs)]
    return (np.array(counts) / sizes).tolist()


def measure_lift(count_correct: CountCorrect, policy_arcs, uniform_arcs, batches: Batches
                 ) -> Dict:
    """The controller's lift: the mean accuracy of controller-sampled arcs minus that of
    uniformly random arcs, both groups on the same batches and weights, with its
    standard error and 95% interval (Welch), and every arc's score."""
    policy_scores = score_arcs(count_correct, policy_arcs, batches)
    uniform_scores = score_arcs(count_correct, uniform_arcs, batches)
    welch = stats.welch_difference(policy_scores, uniform_scores)
    return {"controller_valid_accuracy": float(np.mean(policy_scores)),
            "random_valid_accuracy": float(np.mean(uniform_scores)),
            "controller_lift": welch["difference"], "controller_lift_se": welch["se"],
            "controller_lift_ci95": welch["ci"],
            "controller_arc_scores": policy_scores, "random_arc_scores": uniform_scores}


def format_lift(lift: Dict, num_arcs: int, images: int) -> str:
    low, high = lift["controller_lift_ci95"]
    return (f"controller_valid_accuracy: {lift['controller_valid_accuracy']:.4f} "
            f"random_valid_accuracy: {lift['random_valid_accuracy']:.4f} "
            f"controller_lift: {lift['controller_lift']:+.4f} "
            f"(se {lift['controller_lift_se']:.4f}, 95% CI [{low:+.4f}, {high:+.4f}]; "
            f"{num_arcs} arcs each, the same {images} selection images)")


def final_candidates(arc_history: Sequence[Dict], fresh_arcs: Sequence[Sequence[int]]
                     ) -> List[str]:
    """The best NUM_TOP_FROM_SEARCH distinct arcs seen during the search (by the score
    each had on its own epoch's weights), then the fresh arcs, without repeats."""
    ranked = sorted(arc_history, key=lambda entry: -entry["selection_accuracy"])
    candidates: List[str] = []
    for text in [entry["arc"] for entry in ranked]:
        if text not in candidates and len(candidates) < NUM_TOP_FROM_SEARCH:
            candidates.append(text)
    for arc in fresh_arcs:
        text = arc_lib.format_arc(arc)
        if text not in candidates:
            candidates.append(text)
    return candidates


def select_final(count_correct: CountCorrect, candidates: Sequence[str],
                 selection_batches: Batches, report_batches: Batches) -> Dict:
    """Scores every candidate on the selection half with the current (final) weights,
    picks the best, and scores the NUM_TOP_REPORTED best on the report half once."""
    arcs = [arc_lib.parse_arc(text) for text in candidates]
    scores = score_arcs(count_correct, arcs, selection_batches)
    order = sorted(range(len(arcs)), key=lambda i: -scores[i])  # stable: ties keep order
    top = order[:NUM_TOP_REPORTED]
    report_scores = score_arcs(count_correct, [arcs[i] for i in top], report_batches)
    top_arcs = [{"arc": candidates[i], "selection_accuracy": scores[i],
                 "report_accuracy": report} for i, report in zip(top, report_scores)]
    report = top_arcs[0]["report_accuracy"]
    report_images = sum(int(labels.shape[0]) for _, labels in report_batches)
    margin = 1.96 * stats.binomial_se(report, report_images)  # normal approximation
    return {"best_arc": top_arcs[0]["arc"],
            "best_arc_selection_accuracy": top_arcs[0]["selection_accuracy"],
            "best_arc_report_accuracy": report,
            "best_arc_report_ci95": [max(0.0, report - margin), min(1.0, report + margin)],
            "final_candidates": len(candidates), "top_arcs": top_arcs,
            "candidates": [{"arc": candidates[i], "selection_accuracy": scores[i]}
                           for i in order]}
