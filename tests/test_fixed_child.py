import numpy as np
import pytest
import tensorflow as tf

from src import arc as arc_lib
from src.configs import ChildConfig
from src.fixed_child import FixedChild
from src.ops import drop_path_keep_prob
from tests.conftest import tiny_child_config

REFERENCE_ARC = arc_lib.parse_arc(arc_lib.DEFAULT_ARC)


@pytest.mark.parametrize("num_reductions, params", [(2, 982_672), (3, 1_931_536)])
def test_reference_parameter_counts(num_reductions, params):
    config = ChildConfig(num_classes=10, channel=1, img_size=32, num_layers=15, out_filters=16,
                         num_reductions=num_reductions)
    model = FixedChild(config, REFERENCE_ARC)
    assert model.num_params() == params
    assert model.num_aux_params() == 443_648


@pytest.mark.parametrize("num_reductions, expected", [
    # 3 layers + 2 reductions at ids [1, 3]; reference normal cell concatenates 5 nodes,
    # reduction cell 3 nodes.
    (2, [(16, 20), (8, 24), (8, 40), (4, 48), (4, 80)]),
    # reductions at [0, 1, 3] (3 // 4 = 0)
    (3, [(8, 24), (4, 48), (4, 80), (2, 96), (2, 160)]),
])
def test_layer_output_shapes(num_reductions, expected):
    model = FixedChild(tiny_child_config(num_reductions=num_reductions, img_size=16), REFERENCE_ARC)
    assert model.layer_shapes == expected
    x = tf.random.normal([2, 16, 16, 1])
    h = model.stem(x, training=False)
    prev0, prev1 = h, h
    for cell, (hw, c) in zip(model.cells, expected):
        prev0, prev1 = prev1, cell(prev0, prev1, training=True, progress=1.0)
        assert prev1.shape == (2, hw, hw, c)


def test_forward_shapes_and_aux_head_only_in_training(tiny_config):
    model = FixedChild(tiny_config, REFERENCE_ARC)
    logits, aux = model(tf.random.normal([4, 16, 16, 1]), training=True, progress=0.5)
    assert logits.shape == (4, 3) and aux.shape == (4, 3)
    logits, aux = model(tf.random.normal([4, 16, 16, 1]), training=False)
    assert logits.shape == (4, 3) and aux is None


def test_colour_input_and_class_count():
    model = FixedChild(tiny_child_config(channel=3, num_classes=7), REFERENCE_ARC)
    logits, _ = model(tf.random.normal([2, 16, 16, 3]), training=False)
    assert logits.shape == (2, 7)


def test_drop_path_keep_prob_schedule():
    # The last of L + 2 layers at the end of training keeps p; the first layer keeps more.
    assert drop_path_keep_prob(0.6, layer_id=16, num_layers=15, progress=1.0) == pytest.approx(0.6)
    assert drop_path_keep_prob(0.6, layer_id=0, num_layers=15, progress=1.0) == pytest.approx(
        1 - (1 / 17) * 0.4)
    # Halfway through training the drop is half as strong; at the start nothing is dropped.
    assert drop_path_keep_prob(0.6, layer_id=16, num_layers=15, progress=0.5) == pytest.approx(0.8)
    assert drop_path_keep_prob(0.6, layer_id=16, num_layers=15, progress=0.0) == pytest.approx(1.0)


def test_drop_path_is_off_at_inference_and_random_in_training(tiny_config):
    model = FixedChild(tiny_child_config(drop_path_keep_prob=0.5, use_aux_heads=False),
                       REFERENCE_ARC)
    x = tf.random.normal([8, 16, 16, 1])
    a, _ = model(x, training=False)
    b, _ = model(x, training=False)
    np.testing.assert_allclose(a, b)
    tf.random.set_seed(1)
    c, _ = model(x, training=True, progress=1.0)
    d, _ = model(x, training=True, progress=1.0)
    assert not np.allclose(c, d)


def test_batch_norm_moving_statistics_update_in_training_only(tiny_config):
    model = FixedChild(tiny_config, REFERENCE_ARC)
    bn = model.stem.bn
    before = bn.moving_mean.numpy().copy()
    model(tf.random.normal([4, 16, 16, 1]) + 3.0, training=False)
    np.testing.assert_allclose(bn.moving_mean, before)
    model(tf.random.normal([4, 16, 16, 1]) + 3.0, training=True)
    assert not np.allclose(bn.moving_mean, before)


def test_reduction_cell_with_unused_inputs_reduces_them_and_checkpoints(tmp_path):
    # Reduction cell: every node reads node 2 or later except node 2 (reads id 1 only),
    # so id 0 is unused and must be factorized-reduced before the concat.
    reduction = [1, 0, 1, 4] + [2, 4, 2, 2] * 4
    arc = list(REFERENCE_ARC[:20]) + reduction
    model = FixedChild(tiny_child_config(), arc)
    assert arc_lib.unused_ids(reduction) == [0, 3, 4, 5, 6]
    logits, _ = model(tf.random.normal([2, 16, 16, 1]), training=True, progress=1.0)
    assert logits.shape == (2, 3)
    assert model.layer_shapes[1] == (8, 5 * 8)
    path = tf.train.Checkpoint(model=model).save(str(tmp_path / "ckpt"))
    assert tf.train.list_variables(path)


@pytest.mark.parametrize("img_size, num_reductions", [(28, 3), (30, 2), (15, 2)])
def test_odd_feature_map_sizes_round_up(img_size, num_reductions):
    model = FixedChild(tiny_child_config(img_size=img_size, num_reductions=num_reductions),
                       REFERENCE_ARC)
    logits, aux = model(tf.random.normal([2, img_size, img_size, 1]), training=True)
    assert logits.shape == (2, 3) and aux.shape == (2, 3)
    h = model.stem(tf.random.normal([2, img_size, img_size, 1]), training=False)
    prev0, prev1 = h, h
    for cell, (hw, c) in zip(model.cells, model.layer_shapes):
        prev0, prev1 = prev1, cell(prev0, prev1, training=False, progress=1.0)
        assert prev1.shape == (2, hw, hw, c)
