"""The controller (sampling, log-prob, shaping) and its REINFORCE step."""
import dataclasses

import numpy as np
import pytest
import tensorflow as tf

from src.arc import ARC_LENGTH, validate_arc
from src.configs import ControllerConfig
from src.controller import Controller
from src.controller_step import ReinforceTrainer, moving_average_baselines, reward_from

NUM_NODES = ARC_LENGTH // 8
NORMAL_IDS = [4 * n + r for n in range(NUM_NODES) for r in (0, 2)]
NORMAL_OPS = [4 * n + r for n in range(NUM_NODES) for r in (1, 3)]
REDUCTION_OPS = [ARC_LENGTH // 2 + p for p in NORMAL_OPS]
# For the tests of mechanics: a smaller graph traces (and differentiates) faster.
SMALL = ControllerConfig(num_cells=2, lstm_size=16)


@pytest.fixture(scope="module")
def controller():
    return Controller(ControllerConfig())


def _samples(controller, n):
    out = [controller.sample() for _ in range(n)]
    return (np.array([a.numpy() for a, _, _ in out], np.int32),
            np.array([lp.numpy() for _, lp, _ in out]),
            np.array([e.numpy() for _, _, e in out]))


def _softmax(logits):
    z = np.exp(logits - logits.max())
    return z / z.sum()


def test_samples_are_valid_arcs_and_sample_is_traced_once(controller):
    arcs, neg_log_probs, entropies = _samples(controller, 1000)
    for arc in arcs:
        validate_arc(arc.tolist())
    batch, batch_nlp, batch_entropy = controller.sample_batch(tf.constant(7))
    assert batch.shape == (7, 40) and batch_nlp.shape == batch_entropy.shape == (7,)
    for arc in batch.numpy():
        validate_arc(arc.tolist())
    # One trace for every batch size, one arc or seven.
    assert controller.sample_batch.experimental_get_tracing_count() == 1
    assert len({tuple(a) for a in arcs}) > 990  # the generator advances
    assert np.all(neg_log_probs > 0) and np.all(entropies > 0)


def test_neg_log_prob_and_entropy_match_teacher_forcing_and_numpy(controller):
    arcs, neg_log_probs, entropies = _samples(controller, 4)
    forced_lp, forced_ent = controller.neg_log_prob_and_entropy(arcs)
    np.testing.assert_allclose(forced_lp, neg_log_probs, rtol=1e-5)
    np.testing.assert_allclose(forced_ent, entropies, rtol=1e-5)
    for arc, lp, ent in zip(arcs, neg_log_probs, entropies):
        probs = [_softmax(l.astype(np.float64)) for l in controller.logits_for(arc)]
        np_lp = -sum(np.log(p[c]) for p, c in zip(probs, arc))
        np_ent = -sum((p * np.log(p)).sum() for p in probs)
        np.testing.assert_allclose(lp, np_lp, rtol=1e-5)
        np.testing.assert_allclose(ent, np_ent, rtol=1e-5)


def test_logits_have_one_entry_per_previous_id_or_op(controller):
    arc = _samples(controller, 1)[0][0]
    sizes = [len(l) for l in controller.logits_for(arc)]
    cell = [n + 2 if r in (0, 2) else 5 for n in range(NUM_NODES) for r in range(4)]
    assert sizes == cell + cell


def test_initial_op_distribution_favours_sep_convs_in_normal_cell(controller):
    arc = _samples(controller, 1)[0][0]
    logits = controller.logits_for(arc)
    # b_soft = 10 saturates the tanh: (1.1 / 2.5) * 1 + 0.25 = 0.69 for the sep convs.
    for p in NORMAL_OPS:
        np.testing.assert_allclose(logits[p], [0.69, 0.69, -0.25, -0.25, -0.25], atol=0.02)
    normal_sep = np.mean([_softmax(logits[p])[:2].sum() for p in NORMAL_OPS])
    reduction_sep = np.mean([_softmax(logits[p])[:2].sum() for p in REDUCTION_OPS])
    assert normal_sep > 0.6 and normal_sep > reduction_sep + 0.1


def test_reduction_cell_starts_from_normal_cell_state(controller):
    arc = np.array(_samples(controller, 1)[0][0])
    other = arc.copy()
    other[1] = (arc[1] + 2) % 5  # another op for the first node of the normal cell
    logits, other_logits = controller.logits_for(arc), controller.logits_for(other)
    first_reduction = ARC_LENGTH // 2
    # From a zero state the reduction cell would repeat the normal cell's first
    # logits bit for bit; the differences are tiny at initialisation.
    assert not np.array_equal(logits[first_reduction], logits[0])
    assert not np.array_equal(logits[first_reduction], other_logits[first_reduction])


def test_temperature_divides_before_the_bias():
    plain = dict(tanh_constant=None, seed=3)
    cold = Controller(ControllerConfig(**plain))
    hot = Controller(ControllerConfig(temperature=2.0, **plain))
    arc = cold.sample()[0].numpy()
    bias = np.array([0.25, 0.25, -0.25, -0.25, -0.25])
    for p, (a, b) in enumerate(zip(cold.logits_for(arc), hot.logits_for(arc))):
        if p in NORMAL_OPS:
            a, b = a - bias, b - bias
        np.testing.assert_allclose(b, a / 2.0, rtol=1e-4, atol=1e-6)


def test_neg_log_prob_is_differentiable_and_entropy_is_not():
    controller = Controller(SMALL)
    arcs = _samples(controller, 3)[0]
    variables = controller.trainable_variables
    assert len(variables) == 8

    def gradients(output_index):
        # (A persistent tape would trace a much slower higher-order forward pass.)
        with tf.GradientTape() as tape:
            total = tf.reduce_sum(controller.neg_log_prob_and_entropy(arcs)[output_index])
        # tf.convert_to_tensor densifies the IndexedSlices of the embedding gathers.
        return [None if g is None else tf.convert_to_tensor(g).numpy()
                for g in tape.gradient(total, variables)]

    assert all(np.any(g != 0) for g in gradients(0))
    assert all(g is None or not np.any(g) for g in gradients(1))


def test_reward_from():
    assert reward_from(0.5, 20.0, 1e-4) == pytest.approx(0.502)


def test_baseline_is_updated_before_each_sample_loss():
    trainer = ReinforceTrainer(Controller(SMALL), SMALL)
    arcs = _samples(trainer.controller, 2)[0]
    stats = trainer.update(arcs[:1], [0.8])
    first = (1 - 0.99) * 0.8
    assert stats["baseline"] == pytest.approx(first)
    assert stats["advantage"] == pytest.approx(0.8 - first)
    second = first - 0.01 * (first - 0.2)
    third = second - 0.01 * (second - 0.6)
    neg_log_prob, _ = trainer.controller.neg_log_prob_and_entropy(arcs)
    stats = trainer.update(arcs, [0.2, 0.6])
    assert stats["baseline"] == pytest.approx(third)
    expected_loss = np.mean(neg_log_prob.numpy() * (np.array([0.2, 0.6]) - [second, third]))
    assert stats["loss"] == pytest.approx(expected_loss, rel=1e-5)
    assert stats["grad_norm"] > 0
    assert trainer.train_step.experimental_get_tracing_count() == 1  # K = 1, then K = 2
    np.testing.assert_allclose(
        moving_average_baselines(tf.constant(0.0), tf.constant([0.8, 0.2]), 0.99),
        [first, first - 0.01 * (first - 0.2)], rtol=1e-6)


def test_reinforce_raises_the_probability_of_a_rewarded_choice():
    # Reward = fraction of the normal cell's input ids that pick id 1. Without the
    # tanh squash the index logits are unbounded, so the target is reachable fast.
    config = ControllerConfig(tanh_constant=None, lr=0.01, bl_dec=0.9, seed=0)
    trainer = ReinforceTrainer(Controller(config), config)

    def reward(arcs):
        return (arcs[:, NORMAL_IDS] == 1).mean(axis=1).astype(np.float32)

    before = reward(_samples(trainer.controller, 400)[0]).mean()
    for _ in range(80):
        arcs = _samples(trainer.controller, 10)[0]
        trainer.update(arcs, reward(arcs))
    after = reward(_samples(trainer.controller, 400)[0]).mean()
    assert before < 0.35 and after > 2 * before


def test_trainer_state_round_trips_through_a_checkpoint(tmp_path):
    config = dataclasses.replace(SMALL, seed=5)
    trainer = ReinforceTrainer(Controller(config), config)
    arcs = _samples(trainer.controller, 4)[0]
    trainer.update(arcs, [0.1, 0.2, 0.3, 0.4])
    checkpoint = tf.train.Checkpoint(trainer=trainer)
    path = checkpoint.save(str(tmp_path / "ckpt"))
    state = trainer.variables + tuple(trainer.optimizer.variables)
    saved = [v.numpy().copy() for v in state]
    next_sample = trainer.controller.sample()[0].numpy()
    rng_state = trainer.controller.rng.state.numpy()

    trainer.update(arcs, [0.9, 0.9, 0.9, 0.9])  # moves weights, Adam slots, baseline
    _samples(trainer.controller, 3)  # moves the generator
    checkpoint.restore(path).assert_consumed()

    # weights, baseline, generator state, Adam slots and step count
    for before, after in zip(saved, state):
        np.testing.assert_array_equal(before, after.numpy())
    np.testing.assert_array_equal(trainer.controller.sample()[0].numpy(), next_sample)
    np.testing.assert_array_equal(trainer.controller.rng.state.numpy(), rng_state)
