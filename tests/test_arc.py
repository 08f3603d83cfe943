import random

import pytest

from src import arc as arc_lib
from src.arc import ArcError, parse_arc


def test_default_arc_parses_and_splits():
    arc = parse_arc(arc_lib.DEFAULT_ARC)
    assert len(arc) == 40
    normal, reduction = arc_lib.split_arc(arc)
    assert normal[:4] == (1, 2, 1, 3) and reduction[:4] == (0, 1, 0, 4)
    assert arc_lib.unused_ids(normal) == [2, 3, 4, 5, 6]
    assert arc_lib.unused_ids(reduction) == [3, 5, 6]


def test_format_round_trips():
    arc = parse_arc(arc_lib.DEFAULT_ARC)
    assert parse_arc(arc_lib.format_arc(arc)) == arc


@pytest.mark.parametrize("text, message", [
    ("0 0 1 4", "has 4 integers, expected 40"),
    (arc_lib.DEFAULT_ARC + " 0", "has 41 integers"),
    (arc_lib.DEFAULT_ARC.replace("1 2 1 3", "1 x 1 3", 1), "non-integer entry 'x'"),
    (arc_lib.DEFAULT_ARC.replace("1 2 1 3", "2 2 1 3", 1), "normal cell node 2 input x: input id 2"),
    (arc_lib.DEFAULT_ARC.replace("1 2 1 3", "-1 2 1 3", 1), "input id -1"),
    (arc_lib.DEFAULT_ARC.replace("1 2 1 3", "1 5 1 3", 1), "op 5 must be in 0..4"),
    (arc_lib.DEFAULT_ARC.replace("1 2 1 3", "1 2 1 -1", 1), "node 2 input y: op -1"),
    ("1.5 " + arc_lib.DEFAULT_ARC[2:], "non-integer entry '1.5'"),
])
def test_every_validation_error_has_a_one_line_message(text, message):
    with pytest.raises(ArcError) as error:
        parse_arc(text)
    assert message in str(error.value)
    assert "\n" not in str(error.value)


def test_reduction_cell_errors_name_the_cell():
    tokens = arc_lib.DEFAULT_ARC.split()
    tokens[20 + 4 * 4] = "6"  # reduction node 6 may read ids 0..5 only
    with pytest.raises(ArcError, match="reduction cell node 6 input x: input id 6"):
        parse_arc(" ".join(tokens))


def test_random_arcs_are_valid():
    rng = random.Random(0)
    for _ in range(200):
        arc_lib.validate_arc(arc_lib.random_arc(rng))


def test_reduction_layouts():
    assert arc_lib.reduction_layer_ids(15, 2) == [5, 11]
    assert arc_lib.reduction_layer_ids(15, 3) == [3, 7, 15]
    assert arc_lib.reduction_layer_ids(6, 2) == [2, 5]
    assert arc_lib.aux_head_layer_id(15, 2) == 12
    assert arc_lib.aux_head_layer_id(15, 3) == 8
    with pytest.raises(ValueError):
        arc_lib.reduction_layer_ids(15, 4)
