"""The micro search space: arc strings, their validation and the layer layout.

Pure Python (no TensorFlow), so it can be imported anywhere, tests included.

An arc is 8 * B integers (B = NUM_CELLS nodes per cell): the normal cell's
4 * B first, then the reduction cell's. Each node is `x_id x_op y_id y_op`;
node k (k = 2 .. B + 1) reads ids 0 .. k - 1, where 0 is the output of the
layer before last, 1 the output of the last layer and 2 .. the nodes before it.
"""
from __future__ import annotations

import random
from typing import List, Sequence, Tuple

NUM_CELLS = 5  # B, nodes per cell
NUM_BRANCHES = 5  # candidate ops
OP_NAMES = ("sep_conv_3x3", "sep_conv_5x5", "avg_pool_3x3", "max_pool_3x3", "identity")
SEP_CONV_KERNELS = {0: 3, 1: 5}
AVG_POOL, MAX_POOL, IDENTITY = 2, 3, 4
ARC_LENGTH = 8 * NUM_CELLS

# The variant's default arc (also the spec's reference arc for parameter counts).
DEFAULT_ARC = (
    "1 2 1 3 0 1 0 4 1 1 1 1 0 1 0 1 1 0 0 1 "
    "0 1 0 4 1 0 2 0 0 3 1 1 0 0 0 0 4 1 1 0")


class ArcError(ValueError):
    """A malformed arc; the message names the problem in one line."""


Cell = Tuple[int, ...]  # 4 * NUM_CELLS ints


def parse_arc(text: str, num_cells: int = NUM_CELLS) -> Tuple[int, ...]:
    """Parses and validates a space-separated arc string; raises ArcError."""
    tokens = text.split()
    try:
        arc = tuple(int(t) for t in tokens)
    except ValueError:
        bad = next(t for t in tokens if not _is_int(t))
        raise ArcError(f"arc has a non-integer entry {bad!r}") from None
    validate_arc(arc, num_cells)
    return arc


def _is_int(token: str) -> bool:
    try:
        int(token)
        return True
    except ValueError:
        return False


def validate_arc(arc: Sequence[int], num_cells: int = NUM_CELLS) -> None:
    """Raises ArcError unless `arc` is 8 * num_cells valid ints."""
    if len(arc) != 8 * num_cells:
        raise ArcError(f"arc has {len(arc)} integers, expected {8 * num_cells} "
                       f"(4 per node, {num_cells} nodes, normal then reduction cell)")
    for cell_name, cell in zip(("normal", "reduction"), split_arc(arc, num_cells)):
        for node in range(num_cells):
            node_id = node + 2
            for role, pos in (("x", 0), ("y", 2)):
                input_id, op = cell[4 * node + pos], cell[4 * node + pos + 1]
                where = f"{cell_name} cell node {node_id} input {role}"
                if not 0 <= input_id < node_id:
                    raise ArcError(f"{where}: input id {input_id} must be in 0..{node_id - 1}")
                if not 0 <= op < NUM_BRANCHES:
                    raise ArcError(f"{where}: op {op} must be in 0..{NUM_BRANCHES - 1}")


def split_arc(arc: Sequence[int], num_cells: int = NUM_CELLS) -> Tuple[Cell, Cell]:
    """(normal cell, reduction cell), 4 * num_cells ints each."""
    half = 4 * num_cells
    return tuple(arc[:half]), tuple(arc[half:])


def cell_nodes(cell: Sequence[int]) -> List[Tuple[int, int, int, int]]:
    """The nodes of one cell as (x_id, x_op, y_id, y_op) tuples."""
    return [tuple(cell[i:i + 4]) for i in range(0, len(cell), 4)]


def unused_ids(cell: Sequence[int]) -> List[int]:
    """Ids (inputs 0 and 1 included) no node of the cell reads: they are concatenated."""
    nodes = cell_nodes(cell)
    used = {x_id for x_id, _, _, _ in nodes} | {y_id for _, _, y_id, _ in nodes}
    return [i for i in range(len(nodes) + 2) if i not in used]


def format_arc(arc: Sequence[int]) -> str:
    return " ".join(str(int(a)) for a in arc)


def random_arc(rng: random.Random, num_cells: int = NUM_CELLS) -> Tuple[int, ...]:
    """A uniformly random valid arc (for tests and benchmarks)."""
    arc = []
    for _ in range(2):
        for node in range(num_cells):
            for _ in range(2):
                arc += [rng.randrange(node + 2), rng.randrange(NUM_BRANCHES)]
    return tuple(arc)


def seeded_random_arc(seed: int, num_cells: int = NUM_CELLS) -> str:
    """The uniformly random arc of `seed` (main_child_trainer.py --child_fixed_arc random,
    tools/rank_fidelity.py's random baselines): the same for the same seed."""
    return format_arc(random_arc(random.Random(f"random-arc/{seed}"), num_cells))


def warm_up_arcs(num_cells: int = NUM_CELLS) -> List[Tuple[int, ...]]:
    """Two arcs that between them run every op on every kind of input in both cells,
    with different numbers of concatenated nodes: enough to trace every compiled
    piece of the shared child before timing or training starts."""
    arcs = []
    for offset in range(2):
        cell = []
        for node in range(num_cells):
            x_op = (2 * node + offset) % NUM_BRANCHES
            y_op = (2 * node + 1 + offset) % NUM_BRANCHES
            # The first arc chains the nodes (one node concatenated), the second
            # feeds every node from the cell inputs (all nodes concatenated).
            x_id = node + 1 if offset == 0 else 0
            cell += [x_id, x_op, 1, y_op]
        arcs.append(tuple(cell * 2))
    return arcs


def reduction_layer_ids(num_layers: int, num_reductions: int) -> List[int]:
    """Ids (out of 0 .. num_layers + 1) of the reduction layers.

    2 = the paper and the authors' code; 3 = the image-folder variant's layout.
    """
    if num_reductions == 2:
        pool_distance = num_layers // 3
        return [pool_distance, 2 * pool_distance + 1]
    if num_reductions == 3:
        pool_distance = num_layers // 4
        return [pool_distance, 2 * pool_distance + 1, num_layers]
    raise ValueError(f"num_reductions must be 2 or 3, got {num_reductions}")


def aux_head_layer_id(num_layers: int, num_reductions: int) -> int:
    """The layer after whose output the auxiliary head sits: the layer after the
    second reduction (for both layouts)."""
    return reduction_layer_ids(num_layers, num_reductions)[1] + 1


def total_layers(num_layers: int) -> int:
    """Layers in the network: num_layers normal ones plus the reduction slots."""
    return num_layers + 2
