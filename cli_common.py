"""Flags shared by the two entry scripts, and their conversion into configs.

Only the entry scripts import this module: nothing under src/ reads flags.
"""
from __future__ import annotations

import json
import os
import sys
from typing import Callable, Container, Dict, List, Sequence, Set, Tuple

from absl import app, flags, logging

from src import budget, data
from src.arc import ArcError
from src.configs import (STRATEGIES, ChildConfig, ConfigError, DataConfig, OptimConfig,
                         RunConfig, data_config_from_flag_values)
from src.data import DataError
from src.distribute import WorkerLost
from src.run_dir import OutputDirError
from src.checkpoints import CheckpointMismatch
from src.epoch_loop import NonFiniteLoss, StopRequested

FLAGS = flags.FLAGS

# Errors that stop a run before training with a one-line message and exit 2.
USER_ERRORS = (ArcError, CheckpointMismatch, ConfigError, DataError, OutputDirError)


def define_common_flags(*, output_dir: str, num_epochs: int, num_layers: int, out_filters: int,
                        keep_prob: float, l2_reg: float, lr_min: float) -> None:
    """Data, child, optimizer and run flags, and --help; the defaults that differ between
    search and retraining are arguments."""
    define_help_flags()
    flags.DEFINE_string("output_dir", output_dir, "Folder the run writes to (logs, checkpoints, "
                        "results). An existing run there is resumed.")
    flags.DEFINE_boolean("reset_output_dir", False, "Delete --output_dir first. Off by default: "
                         "the original's default of on deleted earlier results.")
    flags.DEFINE_string("train_data_dir", "data/train", "Training images, one subfolder per class.")
    flags.DEFINE_string("val_data_dir", "data/valid", "Validation images, same classes.")
    flags.DEFINE_string("test_data_dir", "data/test", "Test images, same classes.")
    flags.DEFINE_string("data_dir", "", "One folder of images, one subfolder per class, instead "
                        "of the three above: split here into train, valid and test, stratified "
                        "by class and seeded by --seed (--valid_fraction, --test_fraction). The "
                        "lists of files go to --split_dir; a resume reuses them.")
    flags.DEFINE_float("valid_fraction", 0.1, "--data_dir: the fraction of each class that "
                       "goes to the validation split (at least one image).")
    flags.DEFINE_float("test_fraction", 0.1, "--data_dir: the fraction of each class that goes "
                       "to the test split (at least one image); train gets the rest.")
    flags.DEFINE_string("split_dir", "", "--data_dir: the folder of the split's lists "
                        "(train.txt, valid.txt, test.txt: one image a line, relative to "
                        "--data_dir). Lists already there are used as they are, e.g. give the "
                        "search's OUTPUT_DIR/splits to retrain on its split. Empty = "
                        "OUTPUT_DIR/splits.")
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
    flags.DEFINE_float("budget_minutes", 0.0, "Minutes the whole run may take, from start "
                       "to exit (data decoding, tracing, evaluations, export included); 0 = "
                       "off. The run times its first steps and plans --num_epochs and "
                       "--child_lr_T_0 (one cosine period over the planned epochs) to end "
                       "within it; the log, the checkpoint and results.json keep the plan, "
                       "results.json also the flags that rerun it without a budget. A "
                       "--num_epochs given on the command line wins over it.")
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
    flags.DEFINE_boolean("child_random_affine", False, "On-the-fly random affine transform of "
                         "each image: a small rotation, scale and shift (bilinear, the border "
                         "filled black). For digits, symbols and defect photos, where a flip is "
                         "wrong. Off by default, as the authors have none.")
    flags.DEFINE_float("child_affine_rotate_deg", 10.0, "--child_random_affine: the largest "
                       "rotation, in degrees either way (0 to 180).")
    flags.DEFINE_float("child_affine_scale", 0.1, "--child_random_affine: the scale factor is "
                       "drawn from [1 - s, 1 + s] (0 <= s < 1).")
    flags.DEFINE_float("child_affine_shift", 0.1, "--child_random_affine: the largest shift on "
                       "each axis, as a fraction of the image size (0 <= f < 0.5).")
    flags.DEFINE_integer("log_every", 50, "Print a training line every this many steps.")
    flags.DEFINE_integer("eval_every_epochs", 1, "Evaluate on valid and test every this many epochs.")
    flags.DEFINE_integer("seed", 0, "Random seed of everything: initialisation, data order, "
                         "augmentation, dropout, the controller's and the random arcs.")
    flags.DEFINE_boolean("deterministic", False, "Make every TensorFlow op deterministic "
                         "(enable_op_determinism), so that two runs with the same --seed write "
                         "identical results. Off by default: see the README for its cost.")
    flags.DEFINE_enum("strategy", "default", list(STRATEGIES),
                      "tf.distribute strategy. 'default': one device. 'mirrored': data-parallel "
                      "over this machine's devices (--devices; every GPU by default, the CPU "
                      "without one), --batch_size split over them. 'multi_worker': over the "
                      "machines listed in the TF_CONFIG environment variable, one process each "
                      "with the same flags; only the chief (worker 0) writes --output_dir.")
    flags.DEFINE_list("devices", [], "--strategy mirrored: the devices to use, e.g. "
                      "'/gpu:0,/gpu:1' (empty = every local GPU, or the CPU).")
    flags.DEFINE_float("collective_timeout_s", 300.0, "--strategy multi_worker: a worker that "
                       "does not answer within this many seconds is taken as dead, and the "
                       "others stop with an error instead of waiting forever.")
    flags.DEFINE_string("mixed_precision", "off", "off, float16 or bfloat16: compute the "
                        "child in that dtype, with float32 variables, BN statistics and logits "
                        "(Keras's mixed policies); float16 adds dynamic loss scaling. For GPUs; "
                        "on a CPU it is slower.")


def define_search_only_flags() -> None:
    """The search's memory flags (the shared child only)."""
    flags.DEFINE_enum("recompute", "auto", ["auto", "on", "off"], "Recompute the shared "
                      "child's separable-conv activations in the backward pass instead of "
                      "keeping them (less memory, a slower step). auto: only when a step's "
                      "estimated activation memory exceeds --memory_budget_mb. The log says "
                      "which was chosen and why.")
    flags.DEFINE_integer("memory_budget_mb", 0, "The memory --recompute=auto may give a "
                         "step's activations, in MB (0 = half of the memory available when "
                         "the run starts).")


def define_retrain_only_flags() -> None:
    """Drop path, sync BN and training on train + valid (the fixed child only)."""
    flags.DEFINE_boolean("train_on_valid", False, "Train the final model on train + valid, as "
                         "the authors' final training does. The validation accuracy is then "
                         "not available (reported as n/a / null); the test split measures the "
                         "model.")
    flags.DEFINE_float("child_drop_path_keep_prob", 0.6, "Drop-path keep probability of the last "
                       "layer at the end of training (fixed arcs only, as the authors).")
    flags.DEFINE_boolean("sync_batch_norm", False, "Under a multi-device strategy, BN "
                         "normalises with the statistics of the whole global batch (all-"
                         "reduced over the replicas) instead of each replica's slice.")


class HelpFlag(flags.BooleanFlag):
    """absl's --help exits 1 and lists only the main module's flags; this one exits 0
    (the scripts adopt cli_common's flags as key flags, so that list is complete)."""

    def __init__(self, name: str, short_name: str = None, full: bool = False):
        super().__init__(name, False, "Show every flag of absl and TensorFlow too, and exit."
                         if full else "Show every flag this script takes, and exit.",
                         short_name=short_name, allow_hide_cpp=True)
        self.full = full

    def parse(self, argument) -> None:
        super().parse(argument)
        if self.value:
            app.usage(shorthelp=not self.full, writeto_stdout=True, exitcode=0)


def define_help_flags() -> None:
    """--help / -? / --helpshort and --helpfull that exit 0 in place of absl's (app.run
    defines its own only once: after this, never)."""
    app.define_help_flags()
    for name in ("help", "?", "helpshort", "helpfull"):
        delattr(FLAGS, name)
    flags.DEFINE_flag(HelpFlag("help", short_name="?"))
    flags.DEFINE_flag(HelpFlag("helpshort"))
    flags.DEFINE_flag(HelpFlag("helpfull", full=True))


FOLDER_FLAGS = ("train_data_dir", "val_data_dir", "test_data_dir")


def data_config() -> DataConfig:
    if FLAGS.data_dir and any(FLAGS[name].present for name in FOLDER_FLAGS):
        raise ConfigError("give --data_dir (one folder, split for you) or --train_data_dir, "
                          "--val_data_dir and --test_data_dir, not both")
    # --train_on_valid is the retraining script's only: the search's stays DataConfig's default.
    return data_config_from_flag_values(flag_values())


# ChildConfig fields set by flags that only one of the scripts defines.
ONE_SCRIPT_CHILD_FLAGS = {"drop_path_keep_prob": "child_drop_path_keep_prob",
                          "sync_batch_norm": "sync_batch_norm", "recompute": "recompute",
                          "memory_budget_mb": "memory_budget_mb"}


def child_config() -> ChildConfig:
    """Classes, channel and size are filled in from the data when it is loaded; a field
    whose flag this script does not define keeps ChildConfig's default."""
    one_script = {field: FLAGS[name].value for field, name in ONE_SCRIPT_CHILD_FLAGS.items()
                  if name in FLAGS}
    return ChildConfig(
        channel=FLAGS.channel, img_size=FLAGS.img_size, num_layers=FLAGS.child_num_layers,
        num_cells=FLAGS.child_num_cells, out_filters=FLAGS.child_out_filters,
        num_reductions=FLAGS.child_num_reductions, use_aux_heads=FLAGS.child_use_aux_heads,
        keep_prob=FLAGS.child_keep_prob, mixed_precision=FLAGS.mixed_precision, **one_script)


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
        devices=tuple(FLAGS.devices), collective_timeout_s=FLAGS.collective_timeout_s,
        budget_minutes=budget_minutes(flags_on_command_line(sys.argv)),
        started_at=budget.process_started_at())


def flags_on_command_line(argv: Sequence[str]) -> Set[str]:
    """Names of the flags given on the real command line argv[1:], not those read from a
    --flagfile (absl counts both as present). '--noNAME' adds NAME too (a boolean's
    negation); a value after its flag ('--num_epochs 5') is not a name; '--' ends them."""
    names = set()
    for arg in argv[1:]:
        if arg == "--":
            break
        if not arg.startswith("-") or arg == "-":
            continue
        name = arg.lstrip("-").split("=", 1)[0]
        names.add(name)
        if name.startswith("no"):
            names.add(name[2:])
    return names


def budget_minutes(on_command_line: Container[str], values: flags.FlagValues = FLAGS) -> float:
    """--budget_minutes, or 0 (one line says so) when --num_epochs is given on the command
    line: that wins over a budget, e.g. a preset flagfile's."""
    if values.budget_minutes and "num_epochs" in on_command_line:
        print(f"--budget_minutes {values.budget_minutes:g} ignored: --num_epochs "
              f"{values.num_epochs} is given on the command line")
        return 0.0
    return values.budget_minutes


def flag_values() -> dict:
    """The flags this script defines (not absl's own), for the log and results.json."""
    main_module = sys.argv[0]
    names = [f.name for f in FLAGS.get_flags_for_module(main_module)]
    names += [f.name for f in FLAGS.get_flags_for_module(__name__)]
    values = {name: FLAGS[name].value for name in names}
    # Which preset the run was given: configs.retrain_preset_for reads it back from a search.
    values["flagfile"] = command_line_flagfiles(sys.argv)
    return values


def command_line_flagfiles(argv: Sequence[str]) -> List[str]:
    """The --flagfile paths on the command line argv[1:], in order ('--flagfile=F' or
    '--flagfile F'; those a flagfile names itself are not listed)."""
    found, args = [], list(argv[1:])
    while args:
        arg = args.pop(0)
        if arg == "--":
            break
        name, equals, value = arg.lstrip("-").partition("=")
        if arg.startswith("-") and name == "flagfile":
            found.append(value if equals else (args.pop(0) if args else ""))
    return [path for path in found if path]


# ----------------------------------------------------------------------------
# Retraining: --from_search (pure: main_child_trainer.py
# reads and sets the flags)

# The search's flags a retrain --from_search takes unless the command line gives them (a
# preset flagfile's values do not count): its data, the image size and colour, and the
# nodes per cell and reductions the arc was drawn with.
DATA_SOURCE_FLAGS = ("train_data_dir", "val_data_dir", "test_data_dir", "data_dir",
                     "valid_fraction", "test_fraction")
FROM_SEARCH_FLAGS = DATA_SOURCE_FLAGS + ("channel", "img_size", "child_num_cells",
                                         "child_num_reductions")
# The search's on-the-fly augmentation, taken unless the command line or a preset sets it:
# a retrain preset may choose its own for the longer training (cpu_final.flags adds the
# affine), but one that is silent keeps what the search trained with (flips on photos).
AUGMENTATION_FLAGS = ("child_random_crop", "child_random_flip", "child_cutout_size",
                      "child_random_affine", "child_affine_rotate_deg", "child_affine_scale",
                      "child_affine_shift")
# Given any of these, the data source is the command line's: none of DATA_SOURCE_FLAGS is taken.
DATA_FOLDER_FLAGS = ("train_data_dir", "val_data_dir", "test_data_dir", "data_dir")


def check_one_arc_source(from_search: str, arc: str, arc_file: str) -> None:
    """ArcError if more than one of --from_search, --child_fixed_arc and
    --child_fixed_arc_file is given."""
    given = [f"--{name}" for name, value in (("from_search", from_search),
             ("child_fixed_arc", arc), ("child_fixed_arc_file", arc_file)) if value]
    if len(given) > 1:
        raise ArcError(f"give one of --from_search, --child_fixed_arc and "
                       f"--child_fixed_arc_file, not {' and '.join(given)}")


def read_finished_search(directory: str) -> Tuple[str, Dict]:
    """(best arc, the flags the search was given) of a search's output folder; ConfigError
    unless the search finished, i.e. made its final selection."""
    def not_finished(why: str) -> ConfigError:
        return ConfigError(f"{directory} is not a finished search: {why}")

    if not os.path.isdir(directory):
        raise not_finished("no such folder")
    try:
        with open(os.path.join(directory, "results.json")) as f:
            results = json.load(f)
    except FileNotFoundError:
        raise not_finished("no results.json") from None
    except (OSError, ValueError) as error:
        raise not_finished(f"cannot read results.json ({error})") from None
    if not isinstance(results, dict) or results.get("final_selection") is not True:
        raise not_finished('its results.json has no "final_selection": true (stopped or '
                           "resumable before its final selection, or run with "
                           "--nofinal_selection)")
    try:
        with open(os.path.join(directory, "best_arc.txt")) as f:
            arc = f.read().strip()
    except OSError:
        raise not_finished("no best_arc.txt") from None
    search_flags = results.get("flags")
    return arc, search_flags if isinstance(search_flags, dict) else {}


def search_flags_to_take(search_flags: Dict, given: Container[str], defined: Container[str],
                         preset: Container[str] = ()) -> Dict:
    """{flag: the search's value} for FROM_SEARCH_FLAGS and AUGMENTATION_FLAGS the search
    recorded and this script defines, except those `given` on the command line and the
    augmentation a `preset` sets; given a data folder, no data-source flag is taken."""
    names = FROM_SEARCH_FLAGS + tuple(name for name in AUGMENTATION_FLAGS if name not in preset)
    if any(name in given for name in DATA_FOLDER_FLAGS):
        names = tuple(name for name in names if name not in DATA_SOURCE_FLAGS)
    return {name: search_flags[name] for name in names
            if name in search_flags and name in defined and name not in given}


def from_search_flag_values(directory: str, search_flags: Dict, given: Container[str],
                            values: Dict, preset: Container[str] = ()) -> Dict:
    """{flag: value} that a retrain --from_search directory sets, given the search's flags,
    the flags given on the retrain's command line, those its --flagfile sets, and its flag
    values now: search_flags_to_take, and --split_dir = the search's split lists if the
    retrain splits the same folder the same way."""
    taken = search_flags_to_take(search_flags, given, defined=values, preset=preset)
    if "split_dir" in values and "split_dir" not in given:
        split_dir = search_split_dir(directory, search_flags, {**values, **taken})
        if split_dir:
            taken["split_dir"] = split_dir
    return taken


def search_split_dir(directory: str, search_flags: Dict, current: Dict) -> str:
    """The folder of the search's split lists if the retrain splits the same --data_dir
    with the same fractions and the three lists are there, else ''."""
    same = ("data_dir", "valid_fraction", "test_fraction")
    if not current.get("data_dir") or any(current.get(n) != search_flags.get(n) for n in same):
        return ""
    list_dir = search_flags.get("split_dir") or os.path.join(directory, data.SPLIT_LIST_SUBDIR)
    have_all = all(os.path.isfile(data.split_list_path(list_dir, name))
                   for name in data.SPLIT_NAMES)
    return list_dir if have_all else ""


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
