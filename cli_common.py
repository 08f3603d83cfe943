"""Flags shared by the two entry scripts, and their conversion into configs.

Only the entry scripts import this module: nothing under src/ reads flags.
"""
from __future__ import annotations

import sys
from typing import Callable

from absl import flags, logging

from src import image_cache
from src.arc import ArcError
from src.configs import ChildConfig, ConfigError, DataConfig, OptimConfig, RunConfig
from src.data import DataError
from src.distribute import WorkerLost
from src.run_dir import OutputDirError
from src.checkpoints import CheckpointMismatch
from src.train_steps import NonFiniteLoss, StopRequested

FLAGS = flags.FLAGS

# Errors that stop a run before training with a one-line message and exit 2.
USER_ERRORS = (ArcError, CheckpointMismatch, ConfigError, DataError, OutputDirError)


def define_common_flags(*, output_dir: str, num_epochs: int, num_layers: int, out_filters: int,
                        keep_prob: float, l2_reg: float, lr_min: float) -> None:
    """Data, child, optimizer and run flags; the defaults that differ between search
    and retraining are arguments."""
    flags.DEFINE_string("output_dir", output_dir, "Folder the run writes to (logs, checkpoints, "
                        "results). An existing run there is resumed.")
    flags.DEFINE_boolean("reset_output_dir", False, "Delete --output_dir first. Off by default: "
                         "the original's default of on deleted earlier results.")
    flags.DEFINE_string("train_data_dir", "data/train", "Training images, one subfolder per class.")
    flags.DEFINE_string("val_data_dir", "data/valid", "Validation images, same classes.")
    flags.DEFINE_string("test_data_dir", "data/test", "Test images, same classes.")
    flags.DEFINE_integer("channel", 1, "1 reads images grey (MNIST), 3 in colour (CIFAR-10).")
    flags.DEFINE_integer("img_size", 32, "Every image is resized to img_size x img_size.")
    flags.DEFINE_integer("n_aug_img", 1, "Offline augmentation: the training set becomes "
                         "n_aug_img times its size (1 = originals only).")
    flags.DEFINE_string("cache_dir", "", "Folder of the decoded-image cache: every data folder is "
                        "decoded once (resized, uint8) into a file there that later runs with the "
                        "same images, --img_size and --channel reuse; large sets are streamed "
                        "from it. Empty = OUTPUT_DIR/cache. Safe to delete.")
    flags.DEFINE_integer("batch_size", 128, "Training and evaluation batch size.")
    flags.DEFINE_integer("num_epochs", num_epochs, "Epochs to train (0 = build, count, evaluate).")
    flags.DEFINE_integer("child_num_layers", num_layers, "Layers besides the reduction layers: the paper's layout adds 2 "
                         "reductions (L + 2 layers); the 3-reduction layout puts its third at layer L.")
    flags.DEFINE_integer("child_num_cells", 5, "Nodes per cell (B); arcs have 8*B integers.")
    flags.DEFINE_integer("child_out_filters", out_filters, "Filters of the first cells; doubled "
                         "at each reduction.")
    flags.DEFINE_integer("child_num_reductions", 2, "2 = the paper's layout (reductions at "
                         "L//3 and 2*(L//3)+1); 3 = the image-folder variant's (L//4, 2*(L//4)+1, L).")
    flags.DEFINE_boolean("child_use_aux_heads", True, "Auxiliary head on the layer after the second "
                         "reduction (training only, loss weight 0.4).")
    flags.DEFINE_float("child_keep_prob", keep_prob, "Dropout keep probability before the classifier.")
    flags.DEFINE_float("child_drop_path_keep_prob", 0.6, "Drop-path keep probability of the last "
                       "layer at the end of training (fixed arcs only, as the authors).")
    flags.DEFINE_float("child_l2_reg", l2_reg, "L2 weight decay on every child weight.")
    flags.DEFINE_float("child_lr_max", 0.05, "Cosine schedule: learning rate after each restart.")
    flags.DEFINE_float("child_lr_min", lr_min, "Cosine schedule: learning rate at the end of a period.")
    flags.DEFINE_integer("child_lr_T_0", 10, "Cosine schedule: epochs of the first period.")
    flags.DEFINE_integer("child_lr_T_mul", 2, "Cosine schedule: each period is this much longer.")
    flags.DEFINE_float("child_grad_bound", 5.0, "Clip every gradient tensor to this norm (0 = off).")
    flags.DEFINE_boolean("child_random_crop", True, "On-the-fly augmentation: pad 4 pixels and "
                         "randomly crop back.")
    flags.DEFINE_boolean("child_random_flip", False, "On-the-fly random horizontal flip. Off by "
                         "default: a flipped digit is another symbol. Turn on for natural images.")
    flags.DEFINE_integer("child_cutout_size", 0, "Cutout square size, on the fly (0 = off).")
    flags.DEFINE_enum("recompute", "auto", ["auto", "on", "off"], "Search only: recompute the "
                      "shared child's separable-conv activations in the backward pass instead of "
                      "keeping them (less memory, a slower step). auto: only when a step's "
                      "estimated activation memory exceeds --memory_budget_mb. The log says "
                      "which was chosen and why.")
    flags.DEFINE_integer("memory_budget_mb", 0, "Search only: the memory --recompute=auto may "
                         "give a step's activations, in MB (0 = half of the memory available "
                         "when the run starts).")
    flags.DEFINE_integer("log_every", 50, "Print a training line every this many steps.")
    flags.DEFINE_integer("eval_every_epochs", 1, "Evaluate on valid and test every this many epochs.")
    flags.DEFINE_integer("seed", 0, "Random seed of everything: initialisation, data order, "
                         "augmentation, dropout, the controller's and the random arcs.")
    flags.DEFINE_boolean("deterministic", False, "Make every TensorFlow op deterministic "
                         "(enable_op_determinism), so that two runs with the same --seed write "
                         "identical results. Off by default: see the README for its cost.")
    flags.DEFINE_enum("strategy", "default", ["default", "mirrored", "multi_worker"],
                      "tf.distribute strategy. 'default': one device. 'mirrored': data-parallel "
                      "over this machine's devices (--devices; every GPU by default, the CPU "
                      "without one), --batch_size split over them. 'multi_worker': over the "
                      "machines listed in the TF_CONFIG environment variable, one process each "
                      "with the same flags; only the chief (worker 0) writes --output_dir.")
    flags.DEFINE_list("devices", [], "--strategy mirrored: the devices to use, e.g. "
                      "'/gpu:0,/gpu:1' (empty = every local GPU, or the CPU).")
    flags.DEFINE_boolean("sync_batch_norm", False, "Retraining under a multi-device strategy: "
                         "BN normalises with the statistics of the whole global batch (all-"
                         "reduced over the replicas) instead of each replica's slice.")
    flags.DEFINE_float("collective_timeout_s", 300.0, "--strategy multi_worker: a worker that "
                       "does not answer within this many seconds is taken as dead, and the "
                       "others stop with an error instead of waiting forever.")


def data_config() -> DataConfig:
    return DataConfig(
        train_dir=FLAGS.train_data_dir, valid_dir=FLAGS.val_data_dir, test_dir=FLAGS.test_data_dir,
        channel=FLAGS.channel, img_size=FLAGS.img_size, n_aug_img=FLAGS.n_aug_img,
        batch_size=FLAGS.batch_size, eval_batch_size=FLAGS.batch_size,
        random_crop=FLAGS.child_random_crop, random_flip=FLAGS.child_random_flip,
        cutout_size=FLAGS.child_cutout_size, seed=FLAGS.seed,
        cache_dir=FLAGS.cache_dir or image_cache.default_cache_dir(FLAGS.output_dir))


def child_config() -> ChildConfig:
    """Classes, channel and size are filled in from the data when it is loaded."""
    return ChildConfig(
        channel=FLAGS.channel, img_size=FLAGS.img_size, num_layers=FLAGS.child_num_layers,
        num_cells=FLAGS.child_num_cells, out_filters=FLAGS.child_out_filters,
        num_reductions=FLAGS.child_num_reductions, use_aux_heads=FLAGS.child_use_aux_heads,
        keep_prob=FLAGS.child_keep_prob, drop_path_keep_prob=FLAGS.child_drop_path_keep_prob,
        recompute=FLAGS.recompute, memory_budget_mb=FLAGS.memory_budget_mb,
        sync_batch_norm=FLAGS.sync_batch_norm)


def optim_config() -> OptimConfig:
    return OptimConfig(
        lr_max=FLAGS.child_lr_max, lr_min=FLAGS.child_lr_min, lr_T_0=FLAGS.child_lr_T_0,
        lr_T_mul=FLAGS.child_lr_T_mul, l2_reg=FLAGS.child_l2_reg, grad_bound=FLAGS.child_grad_bound)


def run_config() -> RunConfig:
    return RunConfig(
        output_dir=FLAGS.output_dir, reset_output_dir=FLAGS.reset_output_dir,
        num_epochs=FLAGS.num_epochs, log_every=FLAGS.log_every,
        eval_every_epochs=FLAGS.eval_every_epochs, seed=FLAGS.seed,
        deterministic=FLAGS.deterministic, strategy=FLAGS.strategy,
        devices=tuple(FLAGS.devices), collective_timeout_s=FLAGS.collective_timeout_s)


def flag_values() -> dict:
    """The flags this script defines (not absl's own), for the log and results.json."""
    main_module = sys.argv[0]
    names = [f.name for f in FLAGS.get_flags_for_module(main_module)]
    names += [f.name for f in FLAGS.get_flags_for_module(__name__)]
    return {name: FLAGS[name].value for name in names}


RESUME_HINT = "the last finished epoch is checkpointed; rerun the same command to resume"


def run_or_exit(run: Callable[[], object]) -> None:
    """Runs; every way a run can stop short prints one line and exits with its code:
    2 for a user or storage error (bad arc, data, folder, flag value, a write that
    failed), 3 for a loss that became NaN, 4 for a multi-worker peer lost, 128 + the signal for SIGTERM and SIGINT."""
    logging.set_verbosity(logging.WARNING)  # TensorFlow's checkpoint chatter
    try:
        run()
    except USER_ERRORS as error:
        exit_with(2, f"error: {error}")
    except OSError as error:
        exit_with(2, f"error: {error.strerror or error}: {error.filename or ''}".rstrip(": "))
    except WorkerLost as error:
        exit_with(4, f"error: {error}; {RESUME_HINT}")
    except NonFiniteLoss as error:
        exit_with(3, f"error: {error}")
    except StopRequested as stop:
        exit_with(128 + stop.signum, f"stopped by {stop} after a finished step: {RESUME_HINT}")
    except KeyboardInterrupt:
        exit_with(130, f"\ninterrupted: {RESUME_HINT}")


def exit_with(code: int, line: str) -> None:
    print(line, file=sys.stderr)
    sys.exit(code)
