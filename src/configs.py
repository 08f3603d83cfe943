"""Small configuration dataclasses: the entry scripts turn flags into these."""
from __future__ import annotations

import dataclasses
import math
import os
from typing import Any, Dict, List, Mapping, Optional, Tuple


class ConfigError(ValueError):
    """A setting out of its range; the message names it in one line."""


def _require(condition: bool, message: str) -> None:
    if not condition:
        raise ConfigError(message)


@dataclasses.dataclass(frozen=True)
class DataConfig:
    train_dir: str = "data/train"
    valid_dir: str = "data/valid"
    test_dir: str = "data/test"
    channel: int = 1  # 1 = grey, 3 = colour
    img_size: int = 32
    n_aug_img: int = 1  # training set becomes n_aug_img x its size (originals + n_aug_img - 1 augmented copies)
    batch_size: int = 128
    eval_batch_size: int = 128
    random_crop: bool = True  # pad 4 then random crop, on the fly
    random_flip: bool = False  # horizontal flip, on the fly (wrong for digits)
    cutout_size: int = 0  # 0 = off
    # Random rotation, scale and shift of each image, on the fly (off: the authors have
    # none); for digits, symbols and defect photos, where a flip is wrong.
    random_affine: bool = False
    affine_rotate_deg: float = 10.0  # angle in [-deg, deg]
    affine_scale: float = 0.1  # scale factor in [1 - s, 1 + s]
    affine_shift: float = 0.1  # shift in [-f, f] x the image size, on each axis
    seed: int = 0
    # Folder of the decoded-image cache (src/image_cache.py); '' = build it in a temporary
    # file that is not kept. The entry scripts default it to OUTPUT_DIR/cache.
    cache_dir: str = ""
    # A split whose uint8 pixels take at most this many MB is held in memory; a larger
    # one is streamed from its cache file, so memory does not grow with the data set.
    in_memory_max_mb: float = 128.0
    # Retraining only: train on train + valid (the authors' final training); the valid
    # accuracy is then not measured, the test split measures the model.
    train_on_valid: bool = False
    # One folder DIR/<class>/<image> instead of the three: split, stratified by class and
    # seeded, into train, valid and test; the lists of files go to (or, when there, are
    # read from) split_list_dir ('' = not kept). The entry scripts use OUTPUT_DIR/splits.
    data_dir: str = ""
    valid_fraction: float = 0.1
    test_fraction: float = 0.1
    split_list_dir: str = ""

    def __post_init__(self):
        _require(0.0 <= self.affine_rotate_deg <= 180.0,
                 f"--child_affine_rotate_deg must be in [0, 180], got {self.affine_rotate_deg}")
        _require(0.0 <= self.affine_scale < 1.0,
                 f"--child_affine_scale must be in [0, 1), got {self.affine_scale}")
        _require(0.0 <= self.affine_shift < 0.5,
                 f"--child_affine_shift must be in [0, 0.5), got {self.affine_shift}")
        _require(0.0 < self.valid_fraction < 1.0 and 0.0 < self.test_fraction < 1.0,
                 f"--valid_fraction and --test_fraction must be in (0, 1), got "
                 f"{self.valid_fraction} and {self.test_fraction}")
        _require(self.valid_fraction + self.test_fraction < 1.0,
                 f"--valid_fraction + --test_fraction must be < 1 (train needs the rest), got "
                 f"{self.valid_fraction} + {self.test_fraction}")


@dataclasses.dataclass(frozen=True)
class ChildConfig:
    num_classes: int = 10
    channel: int = 1
    img_size: int = 32
    num_layers: int = 15
    num_cells: int = 5
    out_filters: int = 16
    num_reductions: int = 2  # 2 = paper and authors; 3 = the image-folder variant
    use_aux_heads: bool = True
    keep_prob: float = 0.8
    drop_path_keep_prob: float = 0.6
    # Under a multi-replica strategy, BN of the fixed child normalises with the statistics
    # of the whole global batch (all-reduced), not of each replica's slice.
    sync_batch_norm: bool = False
    # Search phase only. "kernel": He fan-in of the real kernel (k*k*C); "stacked": the
    # authors' quirk, fan-in read from the first dimension of the weights stacked per
    # possible input, which makes them 5 to 10 times too large.
    init_fan_in: str = "kernel"
    train_aux_head: bool = True  # False: the variant's quirk, the aux head never updates
    # Search phase only: recompute the separable convs' activations in the backward pass
    # ("on"), keep them ("off"), or recompute when a step's estimated activation memory
    # exceeds memory_budget_mb ("auto"; 0 = half of the available memory).
    recompute: str = "auto"
    memory_budget_mb: int = 0
    # "off": float32. "float16" / "bfloat16": compute in that dtype with float32
    # variables, BN statistics and logits (Keras's mixed policies); float16 adds
    # dynamic loss scaling.
    mixed_precision: str = "off"

    def __post_init__(self):
        _require(self.mixed_precision in ("off", "float16", "bfloat16"),
                 f"--mixed_precision must be 'off', 'float16' or 'bfloat16', got "
                 f"{self.mixed_precision!r}")
        _require(self.recompute in ("auto", "on", "off"),
                 f"--recompute must be 'auto', 'on' or 'off', got {self.recompute!r}")
        _require(self.memory_budget_mb >= 0,
                 f"--memory_budget_mb must be >= 0, got {self.memory_budget_mb}")
        _require(self.init_fan_in in ("kernel", "stacked"),
                 f"--child_init_fan_in must be 'kernel' or 'stacked', got {self.init_fan_in!r}")
        _require(self.num_reductions in (2, 3),
                 f"--child_num_reductions must be 2 or 3, got {self.num_reductions}")
        _require(self.num_layers >= 1, f"--child_num_layers must be >= 1, got {self.num_layers}")
        _require(self.num_cells >= 1, f"--child_num_cells must be >= 1, got {self.num_cells}")
        _require(self.out_filters >= 2 and self.out_filters % 2 == 0,
                 f"--child_out_filters must be even and >= 2, got {self.out_filters}")
        _require(0.0 < self.keep_prob <= 1.0, f"--child_keep_prob must be in (0, 1], got {self.keep_prob}")
        _require(0.0 < self.drop_path_keep_prob <= 1.0,
                 f"--child_drop_path_keep_prob must be in (0, 1], got {self.drop_path_keep_prob}")


@dataclasses.dataclass(frozen=True)
class OptimConfig:
    """SGD with Nesterov momentum, L2, per-tensor clipping, cosine with warm restarts."""
    lr_max: float = 0.05
    lr_min: float = 1e-5
    lr_T_0: int = 10
    lr_T_mul: int = 2
    l2_reg: float = 2e-4
    grad_bound: float = 5.0
    momentum: float = 0.9
    aux_weight: float = 0.4

    def __post_init__(self):
        _require(self.lr_T_0 >= 1, f"--child_lr_T_0 must be >= 1, got {self.lr_T_0}")
        _require(self.lr_T_mul >= 1, f"--child_lr_T_mul must be >= 1, got {self.lr_T_mul}")
        _require(0 <= self.lr_min <= self.lr_max,
                 f"need 0 <= --child_lr_min <= --child_lr_max, got {self.lr_min} and {self.lr_max}")
        _require(self.grad_bound >= 0, f"--child_grad_bound must be >= 0, got {self.grad_bound}")


@dataclasses.dataclass(frozen=True)
class ControllerConfig:
    lstm_size: int = 64
    num_cells: int = 5
    tanh_constant: Optional[float] = 1.10
    op_tanh_reduce: float = 2.5
    temperature: Optional[float] = None
    entropy_weight: float = 1e-4
    bl_dec: float = 0.99
    lr: float = 0.0035
    num_aggregate: int = 10
    train_steps: int = 30
    train_every: int = 1
    # Epochs before this train the shared child on uniformly random arcs, and the
    # controller is not trained (0 = the authors: the controller trains from epoch 1).
    start_epoch: int = 0
    # "controller": ENAS; "random": uniformly random arcs throughout and the controller
    # never trains (random search with weight sharing, Li and Talwalkar 2019).
    policy: str = "controller"
    # Arcs of each kind (the policy's, uniform ones) scored at every evaluation for the
    # controller's lift; the policy's also form the arc history the final selection
    # takes its best 10 from.
    num_lift_arcs: int = 30
    # Fresh arcs of the final policy added to the final selection's candidates.
    num_final_arcs: int = 100
    # False: the authors' behaviour, no final selection (and best_arc.txt only holds the
    # best arc so far, if arcs were scored).
    final_selection: bool = True
    # Images of each validation half that scoring reads (a seeded sample; 0 = all).
    score_images: int = 1000
    # The authors print the shared child's test accuracy at each evaluation; off here.
    search_test_accuracy: bool = False
    seed: int = 0

    def __post_init__(self):
        _require(self.policy in ("controller", "random"),
                 f"--search_policy must be 'controller' or 'random', got {self.policy!r}")
        _require(self.start_epoch >= 0,
                 f"--controller_start_epoch must be >= 0, got {self.start_epoch}")
        _require(self.num_lift_arcs == 0 or self.num_lift_arcs >= 2,
                 f"--num_lift_arcs must be 0 (off) or >= 2 (an error bar needs two), "
                 f"got {self.num_lift_arcs}")
        _require(self.score_images >= 0, f"--score_images must be >= 0, got {self.score_images}")
        _require(self.num_final_arcs >= 0,
                 f"--num_final_arcs must be >= 0, got {self.num_final_arcs}")
        _require(self.num_aggregate >= 1,
                 f"--controller_num_aggregate must be >= 1, got {self.num_aggregate}")
        _require(self.train_steps >= 0, f"--controller_train_steps must be >= 0, got {self.train_steps}")
        _require(self.train_every >= 1, f"--controller_train_every must be >= 1, got {self.train_every}")


# --strategy: tf.distribute's default strategy (one device), MirroredStrategy over local
# devices, MultiWorkerMirroredStrategy over the machines of TF_CONFIG (src/distribute.py).
STRATEGIES = ("default", "mirrored", "multi_worker")


@dataclasses.dataclass(frozen=True)
class RunConfig:
    """Where a run writes and how often it reports."""
    output_dir: str = "output/child"
    reset_output_dir: bool = False
    num_epochs: int = 630
    log_every: int = 50
    eval_every_epochs: int = 1
    # Child steps in one epoch; 0 = one pass over the training set (the authors). The
    # search sets it so that the controller phase comes every this many child steps.
    steps_per_epoch: int = 0
    seed: int = 0
    # tf.config.experimental.enable_op_determinism(); everything is seeded from `seed` anyway.
    deterministic: bool = False
    progress: bool = True
    # tf.distribute: "default" (one device), "mirrored" (local devices), "multi_worker"
    # (the machines of TF_CONFIG); see src/distribute.py.
    strategy: str = "default"
    devices: Tuple[str, ...] = ()  # mirrored only; empty = every local GPU (or the CPU)
    collective_timeout_s: float = 300.0  # multi_worker: a peer silent this long is dead
    # Minutes the whole run may take (0 = off): the loop measures its first steps and
    # plans num_epochs and the cosine's lr_T_0 to end within them (src/budget.py).
    budget_minutes: float = 0.0
    # time.time() the budget counts from: the process's start (the entry scripts); 0 =
    # when the loop's run() is called.
    started_at: float = 0.0

    def __post_init__(self):
        _require(self.strategy in STRATEGIES,
                 f"--strategy must be one of {', '.join(STRATEGIES)}, got {self.strategy!r}")
        _require(not self.devices or self.strategy == "mirrored",
                 "--devices applies to --strategy mirrored only")
        _require(self.collective_timeout_s > 0,
                 f"--collective_timeout_s must be > 0, got {self.collective_timeout_s}")
        _require(self.steps_per_epoch >= 0,
                 f"--child_steps_per_epoch must be >= 0, got {self.steps_per_epoch}")
        _require(self.num_epochs >= 0, f"--num_epochs must be >= 0, got {self.num_epochs}")
        _require(self.log_every >= 1, f"--log_every must be >= 1, got {self.log_every}")
        _require(self.eval_every_epochs >= 1,
                 f"--eval_every_epochs must be >= 1, got {self.eval_every_epochs}")
        _require(math.isfinite(self.budget_minutes) and self.budget_minutes >= 0,
                 f"--budget_minutes must be >= 0 (0 = off), got {self.budget_minutes}")
        # Each worker would measure its own times and plan its own epochs, and the
        # collectives of workers planning differently would wait for each other forever.
        _require(not self.budget_minutes or self.strategy != "multi_worker",
                 "--budget_minutes does not work with --strategy multi_worker yet; give "
                 "--num_epochs")


@dataclasses.dataclass(frozen=True)
class FixedTrainConfig:
    """Everything `main_child_trainer.py` needs."""
    arc: str
    data: DataConfig
    child: ChildConfig
    optim: OptimConfig
    run: RunConfig
    flags: Dict[str, Any] = dataclasses.field(default_factory=dict)  # as given, for the record


@dataclasses.dataclass(frozen=True)
class SearchConfig:
    """Everything `main_controller_child_trainer.py` needs."""
    data: DataConfig
    child: ChildConfig
    optim: OptimConfig
    controller: ControllerConfig
    run: RunConfig
    flags: Dict[str, Any] = dataclasses.field(default_factory=dict)


# ----------------------------------------------------------------------------
# From flag values (absl's, a search's recorded flags, or a tool's own arguments named as
# the flags) to configs. Plain mappings: nothing under src/ reads absl's FLAGS.

CACHE_SUBDIR = "cache"  # the default decoded-image cache folder inside the output folder
SPLIT_LIST_SUBDIR = "splits"  # the default split-list folder inside the output folder

# DataConfig field -> the flag that sets it. cache_dir and split_list_dir are derived
# (see data_config_from_flag_values); eval_batch_size follows --batch_size.
DATA_FIELD_FLAGS = {
    "train_dir": "train_data_dir", "valid_dir": "val_data_dir", "test_dir": "test_data_dir",
    "channel": "channel", "img_size": "img_size", "n_aug_img": "n_aug_img",
    "batch_size": "batch_size", "eval_batch_size": "batch_size",
    "random_crop": "child_random_crop", "random_flip": "child_random_flip",
    "cutout_size": "child_cutout_size", "random_affine": "child_random_affine",
    "affine_rotate_deg": "child_affine_rotate_deg", "affine_scale": "child_affine_scale",
    "affine_shift": "child_affine_shift", "seed": "seed", "train_on_valid": "train_on_valid",
    "data_dir": "data_dir", "valid_fraction": "valid_fraction", "test_fraction": "test_fraction",
}


def data_config_from_flag_values(values: Mapping[str, object]) -> DataConfig:
    """The DataConfig that flag values describe ({flag name: value}); a flag missing from
    `values` keeps DataConfig's default. An empty --cache_dir or --split_dir means
    OUTPUT_DIR/cache or OUTPUT_DIR/splits when values has an output_dir (a search read
    back from another folder: pass {**its_flags, "output_dir": where_it_is_now}), else
    '' (a temporary cache; split lists not kept)."""
    fields = {field: values[flag] for field, flag in DATA_FIELD_FLAGS.items() if flag in values}
    output_dir = str(values.get("output_dir") or "")
    fields["cache_dir"] = str(values.get("cache_dir") or "") or _inside(output_dir, CACHE_SUBDIR)
    fields["split_list_dir"] = (str(values.get("split_dir") or "")
                                or _inside(output_dir, SPLIT_LIST_SUBDIR))
    return DataConfig(**fields)


def _inside(output_dir: str, subdir: str) -> str:
    return os.path.join(output_dir, subdir) if output_dir else ""


# The repository's presets: a search preset NAME_search.flags has its retrain preset
# NAME_final.flags beside it.
SEARCH_PRESET_SUFFIX, FINAL_PRESET_SUFFIX = "_search.flags", "_final.flags"
PHOTO_FINAL_PRESET = "presets/photo_final.flags"
DIGIT_FINAL_PRESET = "presets/cpu_final.flags"


def retrain_preset_for(search_flags: Mapping[str, object]) -> str:
    """The retrain preset that fits a search, from its flag values: the NAME_final.flags
    beside the NAME_search.flags flagfile it was run with (its recorded "flagfile", the
    last such file that exists, as seen from the current folder); else by its colour:
    --channel 3 -> presets/photo_final.flags, grey -> presets/cpu_final.flags."""
    for flagfile in reversed(recorded_flagfiles(search_flags)):
        if flagfile.endswith(SEARCH_PRESET_SUFFIX):
            final = flagfile[:-len(SEARCH_PRESET_SUFFIX)] + FINAL_PRESET_SUFFIX
            if os.path.isfile(final):
                return final
    return PHOTO_FINAL_PRESET if search_flags.get("channel") == 3 else DIGIT_FINAL_PRESET


def recorded_flagfiles(flag_values: Mapping[str, object]) -> List[str]:
    """The --flagfile paths a run recorded under "flagfile" (a list, or one string)."""
    recorded = flag_values.get("flagfile") or []
    return [recorded] if isinstance(recorded, str) else [str(path) for path in recorded]
