"""Search for a cell with ENAS: a controller samples arcs, a weight-shared child
trains on them, REINFORCE rewards the arcs that classify the validation set well.

    python main_controller_child_trainer.py --flagfile presets/cpu_search.flags
    python main_child_trainer.py --flagfile presets/cpu_final.flags --from_search output/search

Retrain with the final preset that fits the search preset (NAME_search.flags ->
NAME_final.flags: cpu_, photo_, paper_cifar10_, variant_) and --from_search, which takes
the search's data, image size, --channel and cell shape; summary.md names the command.
"""
import dataclasses
import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")  # keep the log for the run's own lines

from absl import app, flags  # noqa: E402

import cli_common  # noqa: E402
from src import search
from src.configs import ControllerConfig, SearchConfig

cli_common.define_common_flags(output_dir="output/search", num_epochs=150, num_layers=6,
                               out_filters=20, keep_prob=0.9, l2_reg=1e-4, lr_min=0.0005)
cli_common.define_search_only_flags()
flags.DEFINE_float("controller_lr", 0.0035, "Adam learning rate of the controller.")
flags.DEFINE_float("controller_tanh_constant", 1.10, "Logits are squashed to c * tanh(l).")
flags.DEFINE_float("controller_op_tanh_reduce", 2.5, "Op logits use c / op_tanh_reduce instead.")
flags.DEFINE_float("controller_temperature", None, "Divide logits by this before tanh (unset = off).")
flags.DEFINE_float("controller_entropy_weight", 1e-4, "Reward += weight * entropy of the sample.")
flags.DEFINE_float("controller_bl_dec", 0.99, "Decay of the moving-average reward baseline.")
flags.DEFINE_integer("controller_num_aggregate", 10, "Sampled arcs whose gradients are averaged "
                     "per controller update.")
flags.DEFINE_integer("controller_train_steps", 30, "Controller updates per controller phase.")
flags.DEFINE_integer("controller_train_every", 1, "Run the controller phase every this many epochs.")
flags.DEFINE_integer("controller_start_epoch", 0, "Warm-up: epochs before this one train the "
                     "shared child on uniformly random arcs and do not train the controller "
                     "(0 = the authors: the controller trains from the first epoch).")
flags.DEFINE_enum("search_policy", "controller", ["controller", "random"], "'controller': ENAS. "
                  "'random': random search with weight sharing (Li and Talwalkar, 2019), the "
                  "baseline: uniformly random arcs throughout, the controller never trains; "
                  "the same loop and output files.")
flags.DEFINE_integer("child_steps_per_epoch", 0, "Child steps in one search epoch, after which "
                     "the controller phase runs (0 = one pass over the training set, as the "
                     "authors). Sets the controller's cadence in child steps on any data size.")
flags.DEFINE_integer("num_lift_arcs", 30, "At every evaluation, this many arcs of the policy and "
                     "(under the controller) this many uniformly random arcs are scored on the "
                     "validation split's selection half, on the same batches: the controller's "
                     "lift is the difference of their means, with its standard error and 95% "
                     "interval (Welch). The policy's arcs form the arc history (0 = off).")
flags.DEFINE_integer("num_final_arcs", 100, "Final selection: fresh arcs drawn from the final "
                     "policy, scored with the best 10 arcs of the arc history on the final "
                     "shared weights; the best on the selection half is best_arc.txt.")
flags.DEFINE_integer("score_images", 1000, "Scoring reads a seeded sample of at most this many "
                     "images of each validation half: the selection half's for the rewards, the "
                     "lift, the evaluation and the final selection, the report half's for the "
                     "final report and the held-out lift. Keeps scoring's cost independent of "
                     "the data's size (0 = the whole halves).")
flags.DEFINE_boolean("search_test_accuracy", False, "Also print the shared child's accuracy on "
                     "the test split at every evaluation, as the authors do. Off by default: "
                     "the search never needs the test split, and reading it invites choosing "
                     "on it.")
flags.DEFINE_boolean("final_selection", True, "Choose best_arc.txt at the end of the search on "
                     "the final weights (see --num_final_arcs). Off = the authors: no best arc "
                     "is chosen (best_arc.txt, if written, is only the best so far).")
flags.DEFINE_enum("child_init_fan_in", "kernel", ["kernel", "stacked"], "He-normal fan-in of the "
                  "search-phase weights: 'kernel' = the real kernel's (k*k*C); 'stacked' = the "
                  "authors' quirk (the first dimension of the weights stacked per input).")
flags.DEFINE_boolean("child_train_aux_head", True, "Train the aux head's own weights in search. "
                     "Off = the image-folder variant's quirk: its aux loss reached the body but "
                     "its head was never updated.")
FLAGS = flags.FLAGS
flags.adopt_module_key_flags(cli_common)  # --help lists every flag of the script,
flags.adopt_module_key_flags(flags)  # --flagfile included


def controller_config() -> ControllerConfig:
    return ControllerConfig(
        num_cells=FLAGS.child_num_cells, tanh_constant=FLAGS.controller_tanh_constant,
        op_tanh_reduce=FLAGS.controller_op_tanh_reduce, temperature=FLAGS.controller_temperature,
        entropy_weight=FLAGS.controller_entropy_weight, bl_dec=FLAGS.controller_bl_dec,
        lr=FLAGS.controller_lr, num_aggregate=FLAGS.controller_num_aggregate,
        train_steps=FLAGS.controller_train_steps, train_every=FLAGS.controller_train_every,
        start_epoch=FLAGS.controller_start_epoch, policy=FLAGS.search_policy,
        num_lift_arcs=FLAGS.num_lift_arcs, num_final_arcs=FLAGS.num_final_arcs,
        final_selection=FLAGS.final_selection, score_images=FLAGS.score_images,
        search_test_accuracy=FLAGS.search_test_accuracy, seed=FLAGS.seed)


def main(argv):
    del argv
    child = dataclasses.replace(cli_common.child_config(), init_fan_in=FLAGS.child_init_fan_in,
                                train_aux_head=FLAGS.child_train_aux_head)
    run = dataclasses.replace(cli_common.run_config(), steps_per_epoch=FLAGS.child_steps_per_epoch)
    config = SearchConfig(
        data=cli_common.data_config(), child=child, optim=cli_common.optim_config(),
        controller=controller_config(), run=run, flags=cli_common.flag_values())
    search.run(config)


if __name__ == "__main__":
    app.run(lambda argv: cli_common.run_or_exit(lambda: main(argv)))
