"""Retrain a fixed arc (found by the search, or given) into a final model.

    python main_child_trainer.py --from_search output/search
    python main_child_trainer.py --child_fixed_arc_file output/search/best_arc.txt
    python main_child_trainer.py --child_fixed_arc "1 2 1 3 0 1 0 4 ..."
    python main_child_trainer.py --child_fixed_arc random --seed 3
"""
import os
import sys

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")  # keep the log for the run's own lines

from absl import app, flags  # noqa: E402

import cli_common  # noqa: E402
from src import fixed_train
from src.arc import DEFAULT_ARC, ArcError, seeded_random_arc
from src.configs import FixedTrainConfig

cli_common.define_common_flags(output_dir="output/child", num_epochs=630, num_layers=15,
                               out_filters=16, keep_prob=0.8, l2_reg=2e-4, lr_min=1e-5)
cli_common.define_retrain_only_flags()
flags.DEFINE_string("child_fixed_arc", None, "The arc: 8*B space-separated integers, normal "
                    "cell then reduction cell, each node 'x_id x_op y_id y_op'; 'random' = a "
                    "uniformly random arc drawn from --seed (printed; results.json records "
                    "it). Default: the image-folder variant's published arc.")
flags.DEFINE_string("child_fixed_arc_file", None, "A file holding the arc string, e.g. the "
                    "search's best_arc.txt.")
flags.DEFINE_string("from_search", None, "A finished search's --output_dir: retrain its "
                    "best_arc.txt with the search's data flags (data folders or --data_dir and "
                    "its fractions and split lists), --channel, --img_size, "
                    "--child_num_cells and --child_num_reductions, read from its "
                    "results.json, whatever a --flagfile says: only flags typed on the command "
                    "line override them. Its augmentation (--child_random_flip, crop, cutout, "
                    "affine) too, unless the command line or a --flagfile sets it. Not with "
                    "--child_fixed_arc or --child_fixed_arc_file.")
FLAGS = flags.FLAGS
flags.adopt_module_key_flags(cli_common)  # --help lists every flag of the script,
flags.adopt_module_key_flags(flags)  # --flagfile included

RANDOM_ARC = "random"


def arc_from_flags() -> str:
    """--child_fixed_arc_file's arc, --child_fixed_arc's (or a random one), or the
    variant's published arc."""
    if FLAGS.child_fixed_arc_file:
        try:
            with open(FLAGS.child_fixed_arc_file) as f:
                return f.read().strip()
        except OSError as error:
            raise ArcError(f"cannot read --child_fixed_arc_file: {error.strerror}: "
                           f"{FLAGS.child_fixed_arc_file}") from None
    if FLAGS.child_fixed_arc == RANDOM_ARC:
        arc = seeded_random_arc(FLAGS.seed, FLAGS.child_num_cells)
        print(f"Random arc (seed {FLAGS.seed}): {arc}")
        return arc
    return FLAGS.child_fixed_arc or DEFAULT_ARC


def arc_from_search() -> str:
    """--from_search DIR: its best arc; its data, image and cell-shape flags become this
    run's unless typed on the command line (a preset's do not count), its augmentation
    unless the command line or a preset sets it, and its split lists this run's when it
    split the same --data_dir the same way."""
    arc, search_flags = cli_common.read_finished_search(FLAGS.from_search)
    given = cli_common.flags_on_command_line(sys.argv)
    from_preset = {name for name in FLAGS if FLAGS[name].present} - given
    taken = cli_common.from_search_flag_values(FLAGS.from_search, search_flags, given,
                                               cli_common.flag_values(), preset=from_preset)
    for name, value in taken.items():
        FLAGS[name].value = value
    print(f"From the search in {FLAGS.from_search}: its best arc {arc}"
          + "".join(f", --{name}={value}" for name, value in taken.items()))
    return arc


def main(argv):
    del argv
    cli_common.check_one_arc_source(FLAGS.from_search, FLAGS.child_fixed_arc,
                                    FLAGS.child_fixed_arc_file)
    arc = arc_from_search() if FLAGS.from_search else arc_from_flags()
    config = FixedTrainConfig(
        arc=arc, data=cli_common.data_config(), child=cli_common.child_config(),
        optim=cli_common.optim_config(), run=cli_common.run_config(),
        flags=cli_common.flag_values())
    fixed_train.run(config)


if __name__ == "__main__":
    app.run(lambda argv: cli_common.run_or_exit(lambda: main(argv)))
