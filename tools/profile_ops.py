"""Where a search step and a fixed-child step spend their time, op by op.

    python tools/profile_ops.py            # the benchmark's default sizes (a few minutes)
    python tools/profile_ops.py --quick    # tiny sizes, to see that it works
    python tools/profile_ops.py --recompute off   # the shared child without recomputation

Runs a few steps of each under tf.profiler, reads the trace it writes (the
xplane protobuf) and prints, for each, a table of TensorFlow op time summed
over the profiled steps and divided by their number, grouped into kinds
(depthwise forward, its two gradients, pointwise 1x1 convs, BN and its
gradient, pools, ...). "host, outside ops" is the wall time of a step minus
the time inside ops: Python, eager dispatch, tf.function call overhead and
idle gaps. Op times on 2 cores overlap little (one op at a time mostly), so
the shares are of the summed op time plus that remainder.
"""
from __future__ import annotations

import argparse
import collections
import glob
import os
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import tensorflow as tf  # noqa: E402
from tensorflow.tsl.profiler.protobuf import xplane_pb2  # noqa: E402

from src import benchmark, search  # noqa: E402

# (kind, test on the op type) in the order they are tried; the first that matches wins.
KINDS = [
    ("depthwise forward", lambda t: t == "DepthwiseConv2dNative"),
    ("depthwise grad input", lambda t: t == "DepthwiseConv2dNativeBackpropInput"),
    ("depthwise grad filter", lambda t: t == "DepthwiseConv2dNativeBackpropFilter"),
    ("conv/1x1 forward", lambda t: t in ("Conv2D", "_FusedConv2D", "MatMul", "_MklMatMul",
                                         "BatchMatMulV2", "FusedConv2D", "Einsum")),
    ("conv/1x1 grad input", lambda t: t.startswith("Conv2DBackpropInput")),
    ("conv/1x1 grad filter", lambda t: t.startswith("Conv2DBackpropFilter")),
    ("BN forward", lambda t: t.startswith("FusedBatchNorm") and "Grad" not in t),
    ("BN grad", lambda t: t.startswith("FusedBatchNormGrad")),
    ("pools (+grad)", lambda t: "Pool" in t),
    ("relu (+grad)", lambda t: t.startswith("Relu")),
    ("concat/split/slice", lambda t: t in ("ConcatV2", "Split", "SplitV", "Slice",
                                           "StridedSlice", "StridedSliceGrad", "Pack", "Unpack",
                                           "Pad", "GatherV2", "Reshape", "Transpose")),
    ("elementwise/reduce", lambda t: t in ("AddV2", "Add", "AddN", "Mul", "Sub", "RealDiv",
                                           "Sum", "Mean", "Square", "Sqrt", "Maximum",
                                           "Minimum", "Floor", "Tile", "BroadcastTo",
                                           "SegmentSum", "ZerosLike", "OnesLike", "Fill",
                                           "Cast", "Neg", "Select", "SelectV2")),
    ("optimizer/variables", lambda t: t in ("AssignSubVariableOp", "AssignVariableOp",
                                            "ReadVariableOp", "AssignAddVariableOp",
                                            "ResourceGather")),
]


def kind_of(op_type: str) -> str:
    for kind, test in KINDS:
        if test(op_type):
            return kind
    return "other ops"


def op_events(logdir: str):
    """(op type, duration in seconds) of every TensorFlow op the trace recorded."""
    paths = glob.glob(os.path.join(logdir, "**", "*.xplane.pb"), recursive=True)
    for path in paths:
        space = xplane_pb2.XSpace()
        with open(path, "rb") as f:
            space.ParseFromString(f.read())
        for plane in space.planes:
            if not plane.name.startswith("/host:CPU"):
                continue
            for line in plane.lines:
                for event in line.events:
                    name = plane.event_metadata[event.metadata_id].name
                    # TF op events are named "op_name:OpType"; TraceMe scopes have no colon
                    # or several words. Function calls are containers: skip them so their
                    # contents are not counted twice.
                    if ":" not in name or " " in name or "::" in name:
                        continue
                    op_type = name.rsplit(":", 1)[1]
                    # oneDNN's rewrites (_MklNativeConv2D, _MklFusedBatchNormEx, ...) count
                    # as the op they replace; the prefix is kept in the "top op types" line.
                    base = op_type
                    for prefix in ("_MklNative", "_Mkl", "_"):
                        if base.startswith(prefix):
                            base = base[len(prefix):]
                            break
                    if not base or not base[0].isupper():
                        continue
                    if op_type in ("PartitionedCall", "StatefulPartitionedCall"):
                        continue
                    yield op_type, base, event.duration_ps * 1e-12


def profile(fn, steps: int):
    """Profiles `steps` calls of fn; returns ({op type: seconds per step}, wall s per step)."""
    logdir = tempfile.mkdtemp(prefix="profile_ops_")
    tf.profiler.experimental.start(logdir)
    start = time.perf_counter()
    for _ in range(steps):
        fn()
    wall = (time.perf_counter() - start) / steps
    tf.profiler.experimental.stop()
    per_type, per_kind = collections.Counter(), collections.Counter()
    for op_type, base, seconds in op_events(logdir):
        per_type[op_type] += seconds / steps
        per_kind[kind_of(base)] += seconds / steps
    return per_type, per_kind, wall


def print_table(title: str, per_type, per_kind, wall: float, top_types: int = 12) -> None:
    in_ops = sum(per_kind.values())
    outside = max(0.0, wall - in_ops)
    total = in_ops + outside
    print(f"\n{title}: {wall:.3f} s a step (wall, under the profiler), "
          f"{in_ops:.3f} s inside ops")
    print(f"  {'kind':<26} {'s/step':>8} {'share':>7}")
    rows = sorted(per_kind.items(), key=lambda kv: -kv[1]) + [("host, outside ops", outside)]
    for kind, seconds in rows:
        print(f"  {kind:<26} {seconds:8.3f} {100 * seconds / total:6.1f}%")
    print("  top op types: " + ", ".join(f"{t} {s:.3f}" for t, s in per_type.most_common(top_types)))


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="tiny sizes, to see that it works")
    parser.add_argument("--steps", type=int, default=3, help="profiled steps of each")
    parser.add_argument("--recompute", choices=("auto", "on", "off"), default="auto",
                        help="shared child separable convs recomputed in the backward pass "
                             "or not (default: as the search decides)")
    parser.add_argument("--skip_fixed", action="store_true", help="profile the search step only")
    args = parser.parse_args(argv)
    plan = benchmark.QUICK if args.quick else benchmark.Plan()
    print(f"profile: {plan}")

    config = benchmark.search_config(plan, recompute=args.recompute)
    state = search.build_state(config)
    train, valid = benchmark.synthetic_batches(plan, 0), benchmark.synthetic_batches(plan, 1)
    state.child_steps.warm_up()
    arc = search.controller_sampler(state.controller)(1)[0]

    def child_step():
        images, labels = next(train)
        float(search.child_step(state, images, labels, arc)["loss"])

    images, labels = next(valid)

    def valid_forward():
        float(state.child_steps.count_correct(images, labels, arc))

    for fn in (child_step, child_step, valid_forward):
        fn()
    print_table(f"search step ({plan.search_layers} layers, {plan.search_filters} filters, "
                f"batch {plan.batch_size}, {plan.img_size}px)", *profile(child_step, args.steps))
    print_table("valid forward (controller reward)", *profile(valid_forward, args.steps))
    if args.skip_fixed:
        return
    fixed = benchmark.fixed_steps(plan)
    train_fixed = benchmark.synthetic_batches(plan, 2)

    def fixed_step():
        images, labels = next(train_fixed)
        float(fixed.train_step(images, labels, tf.constant(0.5))["loss"])

    fixed_step()
    fixed_step()
    print_table(f"fixed-child step ({plan.fixed_layers} layers, {plan.fixed_filters} filters)",
                *profile(fixed_step, args.steps))


if __name__ == "__main__":
    main()
