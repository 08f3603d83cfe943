"""The search's result: the validation halves, the lift's error bar, the final selection
on the final weights and the time split (tools/rank_fidelity.py: test_study_tools.py)."""
import dataclasses
import json
import os
import random

import numpy as np
import pytest
import tensorflow as tf

from src import arc as arc_lib
from src import data as data_lib
from src import run_dir, search, selection, stats
from src.checkpoints import restore_or_start
from src.data import Split
from tests.test_end_to_end import read, search_config


# ---------------------------------------------------------------------------- statistics


@pytest.mark.parametrize("p, df, expected", [
    (0.975, 1, 12.706205), (0.975, 10, 2.228139), (0.975, 30, 2.042272),
    (0.95, 5, 2.015048), (0.975, 1e7, 1.959964), (0.025, 10, -2.228139)])
def test_t_quantile_matches_the_tables(p, df, expected):
    assert stats.t_quantile(p, df) == pytest.approx(expected, abs=1e-5)


def test_welch_interval_on_known_numbers():
    # var/n: 1.6667/4 and 10/5; se = sqrt(2.41667); Welch df = 5.5208; t(0.975, 5.52) = 2.4995.
    welch = stats.welch_difference([1, 2, 3, 4], [2, 4, 6, 8, 10])
    assert welch["difference"] == pytest.approx(-3.5)
    assert welch["se"] == pytest.approx(1.554563, abs=1e-6)
    assert welch["df"] == pytest.approx(5.520788, abs=1e-5)
    assert welch["ci"] == pytest.approx([-7.385368, 0.385368], abs=1e-4)


def test_welch_interval_of_identical_groups_is_a_point_and_needs_two_values():
    assert stats.welch_difference([0.5, 0.5], [0.5, 0.5])["ci"] == [0.0, 0.0]
    with pytest.raises(ValueError):
        stats.welch_difference([0.5], [0.5, 0.6])


def test_rank_correlations_on_known_numbers():
    # y = 3 4 1 2 5: 6 concordant and 4 discordant pairs of 10.
    assert stats.kendall_tau([1, 2, 3, 4, 5], [3, 4, 1, 2, 5]) == pytest.approx(0.2)
    # Ties share ranks: y ranks 1 2 3.5 5 3.5, rho = 8 / sqrt(10 * 9.5).
    assert stats.spearman_rho([1, 2, 3, 4, 5], [5, 6, 7, 8, 7]) == pytest.approx(8 / np.sqrt(95))
    assert stats.kendall_tau([1, 2, 3], [3, 2, 1]) == pytest.approx(-1.0)
    low, high = stats.bootstrap_interval(stats.spearman_rho, np.arange(8), np.arange(8) ** 2)
    assert low == pytest.approx(1.0) and high == pytest.approx(1.0)


# ---------------------------------------------------------------------------- halves


def labelled_split(counts):
    labels = np.concatenate([np.full(n, label, np.int32) for label, n in enumerate(counts)])
    images = np.arange(len(labels), dtype=np.uint8).reshape(-1, 1, 1, 1)
    return Split(images=images, labels=labels, paths=[f"img{i}" for i in range(len(labels))])


def test_halves_are_stratified_disjoint_seeded_and_cover_the_split():
    split = labelled_split([10, 7, 5])
    chosen, reported = selection.stratified_halves(split, seed=3)
    assert not set(chosen.paths) & set(reported.paths)
    assert sorted(chosen.paths + reported.paths) == sorted(split.paths)
    for label, n in enumerate([10, 7, 5]):
        in_chosen, in_reported = (int(np.sum(s.labels == label)) for s in (chosen, reported))
        assert in_chosen + in_reported == n and abs(in_chosen - in_reported) <= 1
    assert abs(len(chosen.labels) - len(reported.labels)) <= 1  # odd classes alternate
    # The images travel with their labels and paths.
    assert [f"img{int(v)}" for v in chosen.images.ravel()] == chosen.paths
    assert selection.stratified_halves(split, seed=3)[0].paths == chosen.paths
    assert selection.stratified_halves(split, seed=4)[0].paths != chosen.paths


# ---------------------------------------------------------------------------- scoring


class RecordingCounter:
    """A stand-in for the shared child: 'accuracy' is a function of the arc and the batch,
    and every call is recorded."""

    def __init__(self):
        self.calls = []

    def __call__(self, images, labels, arc):
        arc = tuple(np.asarray(arc).tolist())  # the steps receive int32 tensors
        self.calls.append((arc, images.numpy().tobytes()))
        return tf.constant(int(np.sum(arc)) % (int(labels.shape[0]) + 1))


def fake_batches(n, size=4, offset=0):
    return [(tf.fill([size, 2, 2, 1], float(i + offset)), tf.zeros([size], tf.int32))
            for i in range(n)]


def test_both_lift_groups_are_scored_on_identical_batches():
    counter = RecordingCounter()
    policy = [list(arc_lib.random_arc(random.Random(i))) for i in range(3)]
    uniform = [list(arc_lib.random_arc(random.Random(10 + i))) for i in range(3)]
    lift = selection.measure_lift(counter, policy, uniform, fake_batches(3))
    batches_of = {}
    for arc, batch in counter.calls:
        batches_of.setdefault(arc, []).append(batch)
    sequences = list(batches_of.values())
    assert len(sequences) == 6 and all(seq == sequences[0] for seq in sequences)
    assert len(lift["controller_arc_scores"]) == len(lift["random_arc_scores"]) == 3
    assert lift["controller_lift"] == pytest.approx(
        np.mean(lift["controller_arc_scores"]) - np.mean(lift["random_arc_scores"]))


def test_select_final_chooses_on_selection_batches_and_reports_on_the_others():
    arcs = [arc_lib.format_arc(arc_lib.random_arc(random.Random(i)))
            for i in range(6)]
    selection_batches, report_batches = fake_batches(2, offset=0), fake_batches(2, offset=100)

    def count(images, labels, arc):
        # Arc i scores i on selection batches and 5 - i on report batches.
        i = arcs.index(arc_lib.format_arc(arc))
        return tf.constant(i if float(images[0, 0, 0, 0]) < 100 else 5 - i)

    final = selection.select_final(count, arcs, selection_batches, report_batches)
    assert final["best_arc"] == arcs[5] and final["final_candidates"] == 6
    assert final["best_arc_selection_accuracy"] == pytest.approx(5 / 4)
    assert final["best_arc_report_accuracy"] == 0.0
    assert [e["arc"] for e in final["top_arcs"]] == arcs[5:0:-1]
    assert [e["report_accuracy"] for e in final["top_arcs"]] == pytest.approx([0, .25, .5, .75, 1])


def test_final_candidates_are_the_best_seen_then_fresh_without_repeats():
    history = [{"arc": f"a{i % 12}", "selection_accuracy": i % 12} for i in range(24)]
    fresh_arc = arc_lib.random_arc(random.Random(0))
    candidates = selection.final_candidates(history, [fresh_arc, fresh_arc])
    assert candidates[:10] == [f"a{i}" for i in range(11, 1, -1)]
    assert candidates[10:] == [arc_lib.format_arc(fresh_arc)]


# ---------------------------------------------------------------------------- a tiny search


class HalfSpy:
    """Records which validation half every scoring call of a search reads, and whether
    the final selection had begun: images are told apart by their bytes."""

    def __init__(self):
        self.halves = None
        self.in_final = False
        self.reads = []  # (in the final selection, "selection" | "report")

    def which(self, batches):
        keys = {half: {img.tobytes() for images, _ in getattr(self.halves, half + "_batches")
                       for img in np.asarray(images)} for half in ("selection", "report")}
        read = {np.asarray(img).tobytes() for images, _ in batches for img in np.asarray(images)}
        assert read <= keys["selection"] or read <= keys["report"], "a batch mixing the halves"
        return "selection" if read <= keys["selection"] else "report"

    def install(self, monkeypatch):
        def wrap(module, name, batches_of):
            original = getattr(module, name)

            def spied(*args, **kwargs):
                result = original(*args, **kwargs)
                if name == "validation_halves":
                    self.halves = result
                elif name == "_final_selection":
                    self.in_final = False
                else:
                    self.reads.append((self.in_final, self.which(batches_of(args))))
                return result
            monkeypatch.setattr(module, name, spied)

        wrap(search, "validation_halves", None)
        wrap(selection, "score_arcs", lambda args: args[2])
        wrap(selection, "paired_accuracies", lambda args: args[2])
        original_final = search._final_selection

        def final(*args, **kwargs):
            self.in_final = True
            return original_final(*args, **kwargs)
        monkeypatch.setattr(search, "_final_selection", final)


@pytest.fixture(scope="module")
def finished_search(tiny_folders, tmp_path_factory):
    out = tmp_path_factory.mktemp("finished") / "search"
    config = search_config(tiny_folders, out, num_epochs=2)
    config = dataclasses.replace(config, run=dataclasses.replace(config.run, steps_per_epoch=3))
    spy = HalfSpy()
    with pytest.MonkeyPatch.context() as monkeypatch:
        spy.install(monkeypatch)
        results = search.run(config)
    return config, results, spy


def test_the_report_half_is_read_only_at_the_end(finished_search):
    # Rewards, shown arcs, evaluations and the lift read the selection half; the report
    # half is read only inside the final selection (its report and the held-out lift).
    _, results, spy = finished_search
    during = {half for in_final, half in spy.reads if not in_final}
    at_end = {half for in_final, half in spy.reads if in_final}
    assert during == {"selection"}
    assert at_end == {"selection", "report"}
    assert results["held_out_controller_lift"] is not None
    low, high = results["best_arc_report_ci95"]
    assert low < results["best_arc_report_accuracy"] < high


def test_final_selection_uses_the_final_weights_and_the_selection_half(finished_search):
    config, results, _ = finished_search
    out = config.run.output_dir
    assert results["final_selection"] is True
    assert read(os.path.join(out, "best_arc.txt")).strip() == results["best_arc"]
    # A fresh model with the last checkpoint's weights scores the winner as the selection did.
    child = dataclasses.replace(config.child, num_classes=3, channel=1, img_size=16)
    state = search.build_state(dataclasses.replace(config, child=child))
    restore_or_start(state.checkpoint(), out, run_dir.CHECKPOINT_DIR)
    dataset = data_lib.load_dataset(config.data, verbose=False)
    chosen, reported = selection.stratified_halves(dataset.valid, config.run.seed)
    assert not set(chosen.paths) & set(reported.paths)
    batch_size = config.data.eval_batch_size
    best = [arc_lib.parse_arc(results["best_arc"])]
    count = state.child_steps.count_correct
    assert selection.score_arcs(count, best, selection.fixed_batches(chosen, batch_size))[0] == \
        pytest.approx(results["best_arc_selection_accuracy"])
    assert selection.score_arcs(count, best, selection.fixed_batches(reported, batch_size))[0] == \
        pytest.approx(results["best_arc_report_accuracy"])
    top = results["top_arcs"]
    assert top[0]["arc"] == results["best_arc"] and len(top) == min(5, results["final_candidates"])
    assert [e["selection_accuracy"] for e in top] == sorted(
        (e["selection_accuracy"] for e in top), reverse=True)


def test_time_split_adds_up_to_the_wall_time(finished_search):
    _, results, _ = finished_search
    split = results["time_split_s"]
    for part in ("setup", "tracing", "child_steps", "controller", "evaluation", "lift",
                 "final_selection", "checkpoints_and_files"):
        assert split[part] > 0, part
    assert sum(split.values()) == pytest.approx(results["wall_time_s"], rel=0.05)
    assert 0 < results["cpu_share"] <= os.cpu_count() + 0.5


def test_stopped_before_the_final_selection_says_so(tiny_folders, tmp_path):
    config = search_config(tiny_folders, tmp_path / "early", num_epochs=1)
    config = dataclasses.replace(config, controller=dataclasses.replace(
        config.controller, final_selection=False))
    results = search.run(config)
    assert results["final_selection"] is False and "top_arcs" not in results
    scored = json.loads(read(tmp_path / "early" / "arc_history.json"))
    assert results["best_arc"] in [e["arc"] for e in scored]  # the best so far
    assert "progress only" in read(tmp_path / "early" / "stdout")
