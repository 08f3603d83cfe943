"""Retrain a fixed arc (found by the search, or given) into a final model.

    python main_child_trainer.py --child_fixed_arc "1 2 1 3 0 1 0 4 ..."
    python main_child_trainer.py --child_fixed_arc_file output/search/best_arc.txt
"""
import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")  # keep the log for the run's own lines

from absl import app, flags  # noqa: E402

import cli_common  # noqa: E402
from src import fixed_train
from src.arc import DEFAULT_ARC, ArcError
from src.configs import FixedTrainConfig

cli_common.define_common_flags(output_dir="output/child", num_epochs=630, num_layers=15,
                               out_filters=16, keep_prob=0.8, l2_reg=2e-4, lr_min=1e-5)
flags.DEFINE_string("child_fixed_arc", None, "The arc: 8*B space-separated integers, normal "
                    "cell then reduction cell, each node 'x_id x_op y_id y_op'. Default: the "
                    "image-folder variant's published arc.")
flags.DEFINE_string("child_fixed_arc_file", None, "A file holding the arc string, e.g. the "
                    "search's best_arc.txt.")
FLAGS = flags.FLAGS


def arc_from_flags() -> str:
    if FLAGS.child_fixed_arc and FLAGS.child_fixed_arc_file:
        raise ArcError("give --child_fixed_arc or --child_fixed_arc_file, not both")
    if FLAGS.child_fixed_arc_file:
        try:
            with open(FLAGS.child_fixed_arc_file) as f:
                return f.read().strip()
        except OSError as error:
            raise ArcError(f"cannot read --child_fixed_arc_file: {error.strerror}: "
                           f"{FLAGS.child_fixed_arc_file}") from None
    return FLAGS.child_fixed_arc or DEFAULT_ARC


def main(argv):
    del argv
    config = FixedTrainConfig(
        arc=arc_from_flags(), data=cli_common.data_config(), child=cli_common.child_config(),
        optim=cli_common.optim_config(), run=cli_common.run_config(),
        flags=cli_common.flag_values())
    fixed_train.run(config)


if __name__ == "__main__":
    app.run(lambda argv: cli_common.run_or_exit(lambda: main(argv)))
