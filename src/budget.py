"""A time budget (--budget_minutes): how many epochs fit, planned from measured costs.

No TensorFlow: a loop measures, this module plans (pure functions, but for
process_started_at), the loop applies the plan. The budget covers the WHOLE run, from the process's start to its exit: start-up,
decoding new folders into the cache and tracing are already spent when the loop plans
(`elapsed_s`); the epochs, their evaluations and checkpoints, and the final work (export,
final selection, reports) are projected from the measured costs (`RunCosts`).

Safety margin: the plan keeps SAFETY_FRACTION (5%) of the budget in reserve, so that
the projected end is at most 95% of it. The measured steps come after tracing and may be
a little faster than the average step (a partial last batch traces again, the machine
may be busier later); 5% covers that on a 45-minute run (2.25 min), and on short runs
the per-epoch costs dominate anyway.

How a loop uses it (src/fixed_train.py and src/search.py do this):

1. Fresh start, RunConfig.budget_minutes > 0, nothing restored: measure, without moving
   the weights (harness.weights_kept restores them) or with real steps whose outcome
   does not depend on the plan:
   - `epoch_s`: one epoch's training. Retrain: seconds per step, timed over ~20 steps
     after the first (the first traces), x the steps of an epoch. Search: child steps
     per epoch x the child step, + the shown arcs' forward passes.
   - `controller_s` (search): the controller's training, in the epochs that run it
     (`controller_from`, `controller_every`): its updates per epoch x the update.
   - `eval_s`: one evaluation. Retrain: valid + test forward passes, from the timed
     forward of a few batches. Search: the lift's and the evaluation's arcs x the
     batches each reads x the forward time of one batch (search._measured_plan lists
     every count). harness.time_each times compiled calls, the first (which traces or
     instantiates) apart; the search measures after tracing, inside weights_kept.
   - `eval_every`: RunConfig.eval_every_epochs (an evaluation also follows the last).
   - `per_epoch_s`: the checkpoint (timed by writing one) + the files written after it.
   - `tail_s`: once at the end: retrain, the export (timed on the untrained model) and
     reports; search, the final selection (its candidates x batches x forward time,
     the held-out lift included) and its files.
2. `plan = chosen_plan(run_config, optim_config, saved, epochs_done, measure)` returns
   the checkpoint's plan, or None without a budget, or measure()'s, which ends with
   `plan_run(budget_minutes, elapsed_s, costs, measurements={...})`, where
   elapsed_s = time.time() - RunConfig.started_at (the process's start, set by the entry
   scripts from process_started_at(); in-process, when harness.open_run began). BudgetTooSmall
   (a ConfigError: one line, exit 2) if not even one epoch fits.
   `max_epochs` caps the plan if the loop has a reason to (none in either loop).
3. Apply it: `apply_plan(run_config, optim_config, plan)` sets num_epochs and the
   cosine's lr_T_0 (one period spanning the planned epochs); also set the harness Run's
   config (its evaluates_after reads num_epochs). print(plan.log_line()).
4. Store `plan.to_json()` in the checkpoint's JSON records ("budget_plan"); a resumed
   run reads `BudgetPlan.from_json(...)` back and applies it, without measuring again.
   (harness.follow_budget does 3 and 4.)
5. results.json: `results_fields(plan, actual_wall_s)` gives "budget" (planned and
   actual) and "reproduce_flags" (the flags that rerun it exactly without a budget).
"""
from __future__ import annotations

import dataclasses
import datetime
import math
import os
import time
from typing import Callable, Dict, List, Optional, Tuple

from src.configs import ConfigError, OptimConfig, RunConfig

SAFETY_FRACTION = 0.05  # of the budget kept in reserve: the projected end is at most 95%


class BudgetTooSmall(ConfigError):
    """Not even one epoch fits in the budget; the message says what one needs."""


@dataclasses.dataclass(frozen=True)
class RunCosts:
    """Seconds of a run's parts still to come, as measured (see the module's docstring)."""
    epoch_s: float  # training of one epoch
    eval_s: float = 0.0  # one evaluation
    eval_every: int = 1  # an evaluation after every eval_every epochs, and after the last
    per_epoch_s: float = 0.0  # after every epoch: checkpoint and files
    tail_s: float = 0.0  # once at the end: export, final selection, reports
    # The search's controller training: controller_s after the 0-based epochs e >=
    # controller_from with (e + 1) % controller_every == 0 (search.trains_controller).
    controller_s: float = 0.0
    controller_every: int = 1
    controller_from: int = 0

    def __post_init__(self):
        if not self.epoch_s > 0 or not all(math.isfinite(s) and s >= 0 for s in (
                self.epoch_s, self.eval_s, self.per_epoch_s, self.tail_s, self.controller_s)):
            raise ValueError(f"costs must be finite and >= 0, epoch_s > 0: {self}")
        if self.eval_every < 1 or self.controller_every < 1 or self.controller_from < 0:
            raise ValueError(f"eval_every and controller_every must be >= 1, "
                             f"controller_from >= 0: {self}")


def num_evaluations(num_epochs: int, eval_every: int) -> int:
    """Evaluations in num_epochs epochs: after every eval_every-th, and after the last."""
    if num_epochs <= 0:
        return 0
    return num_epochs // eval_every + (1 if num_epochs % eval_every else 0)


def num_controller_phases(num_epochs: int, every: int, first: int) -> int:
    """The 0-based epochs e < num_epochs with e >= first and (e + 1) % every == 0."""
    return max(0, num_epochs // every - first // every)


def projected_s(num_epochs: int, costs: RunCosts) -> float:
    """Seconds from now to exit for num_epochs epochs and the final work."""
    return (num_epochs * (costs.epoch_s + costs.per_epoch_s)
            + num_evaluations(num_epochs, costs.eval_every) * costs.eval_s + costs.tail_s
            + num_controller_phases(num_epochs, costs.controller_every, costs.controller_from)
            * costs.controller_s)


def usable_s(budget_s: float, safety_fraction: float = SAFETY_FRACTION) -> float:
    """The part of the budget a plan may fill: all but the safety margin."""
    return budget_s * (1.0 - safety_fraction)


def plan_epochs(budget_s: float, elapsed_s: float, costs: RunCosts,
                safety_fraction: float = SAFETY_FRACTION,
                max_epochs: Optional[int] = None) -> int:
    """The most epochs N (at most max_epochs) such that elapsed_s + projected_s(N, costs)
    <= the budget less its safety margin; 0 if not even one fits."""
    left = usable_s(budget_s, safety_fraction) - elapsed_s
    mean_epoch_s = costs.epoch_s + costs.per_epoch_s + costs.eval_s / costs.eval_every
    epochs = max(0, int((left - costs.tail_s) // mean_epoch_s))
    if max_epochs is not None:
        epochs = min(epochs, max_epochs)
    # The mean above spreads evaluations evenly and leaves the controller out; the exact
    # count is found from there.
    while epochs > 0 and projected_s(epochs, costs) > left:
        epochs -= 1
    while (max_epochs is None or epochs < max_epochs) and projected_s(epochs + 1, costs) <= left:
        epochs += 1
    return epochs


@dataclasses.dataclass(frozen=True)
class BudgetPlan:
    """What a budgeted run planned, kept in its checkpoint and results.json (JSON)."""
    budget_minutes: float
    num_epochs: int  # planned
    lr_T_0: int  # planned: the cosine's first period spans the planned epochs
    epoch_s: float  # measured seconds per epoch of training
    costs: Dict[str, float]  # RunCosts as a dict
    elapsed_s: float  # seconds since the start when planned (start-up, data, measuring)
    planned_s: float  # projected whole run: elapsed_s + projected_s(num_epochs)
    measured_at: str  # local time of the plan, ISO 8601
    measurements: Dict[str, float] = dataclasses.field(default_factory=dict)  # raw figures
    safety_fraction: float = SAFETY_FRACTION

    def to_json(self) -> Dict:
        return dataclasses.asdict(self)

    @classmethod
    def from_json(cls, values: Dict) -> "BudgetPlan":
        names = {field.name for field in dataclasses.fields(cls)}
        return cls(**{name: value for name, value in values.items() if name in names})

    def reproduce_flags(self) -> List[str]:
        """The flags that rerun this plan exactly without a budget (the measuring does not
        move the weights, so nothing else differs)."""
        return ["--budget_minutes=0", f"--num_epochs={self.num_epochs}",
                f"--child_lr_T_0={self.lr_T_0}"]

    def log_line(self) -> str:
        """One line for the log: what was measured, what was planned, when it should end."""
        step = self.measurements.get("step_s")
        measured = f"{step:.3f} s/step, " if step is not None else ""
        end = (datetime.datetime.fromisoformat(self.measured_at)
               + datetime.timedelta(seconds=self.planned_s - self.elapsed_s))
        controller_s = self.costs.get("controller_s", 0.0)
        controller = f" (+{controller_s:.1f} s training the controller)" if controller_s else ""
        return (f"Budget {self.budget_minutes:g} min: measured {measured}{self.epoch_s:.1f} s "
                f"per epoch{controller}, {self.costs['eval_s']:.1f} s per evaluation, "
                f"{self.costs['tail_s']:.1f} s at the end; {self.elapsed_s / 60:.1f} min gone "
                f"-> {self.num_epochs} epochs (cosine T_0 {self.lr_T_0}), projected end at "
                f"{self.planned_s / 60:.1f} min ({end:%H:%M:%S}). Without a budget: "
                f"{' '.join(self.reproduce_flags())}")


def plan_run(budget_minutes: float, elapsed_s: float, costs: RunCosts,
             measurements: Optional[Dict[str, float]] = None,
             safety_fraction: float = SAFETY_FRACTION, max_epochs: Optional[int] = None,
             now: Optional[datetime.datetime] = None) -> BudgetPlan:
    """The plan for the rest of the run; BudgetTooSmall if not one epoch fits."""
    budget_s = budget_minutes * 60.0
    epochs = plan_epochs(budget_s, elapsed_s, costs, safety_fraction, max_epochs)
    if epochs < 1:
        raise BudgetTooSmall(
            f"--budget_minutes {budget_minutes:g} is too small: {elapsed_s:.0f} s went to "
            f"start-up, data and measuring, and one epoch with its evaluation, checkpoint "
            f"and the final work needs about {projected_s(1, costs):.0f} s more (with "
            f"{safety_fraction:.0%} kept in reserve, at least "
            f"{(elapsed_s + projected_s(1, costs)) / (1 - safety_fraction) / 60:.2f} min)")
    now = now or datetime.datetime.now()
    return BudgetPlan(
        budget_minutes=budget_minutes, num_epochs=epochs, lr_T_0=epochs,
        epoch_s=costs.epoch_s, costs=dataclasses.asdict(costs), elapsed_s=elapsed_s,
        planned_s=elapsed_s + projected_s(epochs, costs),
        measured_at=now.isoformat(timespec="seconds"), measurements=dict(measurements or {}),
        safety_fraction=safety_fraction)


def chosen_plan(run: RunConfig, optim: OptimConfig, saved: Optional[Dict], epochs_done: int,
                measure: Callable[[], BudgetPlan]) -> Optional[BudgetPlan]:
    """The plan a run follows: the checkpoint's (`saved`), never measured again; measure()
    at a fresh start with a budget; None without a budget (the flags' epochs)."""
    minutes = run.budget_minutes
    if not minutes:
        if saved:
            print(f"notice: the checkpoint was planned by --budget_minutes "
                  f"{saved['budget_minutes']:g}; without a budget this run trains --num_epochs "
                  f"{run.num_epochs} with --child_lr_T_0 {optim.lr_T_0}")
        return None
    if saved:
        plan = BudgetPlan.from_json(saved)
        print(f"Budget: the checkpoint's plan is kept, not measured again: {plan.num_epochs} "
              f"epochs, cosine T_0 {plan.lr_T_0}, planned at {plan.measured_at} for "
              f"--budget_minutes {plan.budget_minutes:g} (this command's: {minutes:g})")
        return plan
    if epochs_done:
        print(f"--budget_minutes ignored: the checkpoint (epoch {epochs_done}) was made "
              f"without a budget; the run keeps --num_epochs {run.num_epochs}")
        return None
    return measure()


def process_started_at() -> float:
    """time.time() at this process's start (Linux: from /proc/self/stat, so Python's and
    TensorFlow's start-up count); elsewhere, the time of this call."""
    try:
        with open("/proc/self/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()  # the name may hold spaces
        start_s = int(fields[19]) / os.sysconf("SC_CLK_TCK")  # since boot
        age_s = time.clock_gettime(time.CLOCK_BOOTTIME) - start_s
    except (OSError, ValueError, IndexError, AttributeError):
        return time.time()
    return time.time() - max(0.0, age_s)


def apply_plan(run: RunConfig, optim: OptimConfig, plan: BudgetPlan
               ) -> Tuple[RunConfig, OptimConfig]:
    """The configs with the plan's epochs and the cosine's first period."""
    return (dataclasses.replace(run, num_epochs=plan.num_epochs),
            dataclasses.replace(optim, lr_T_0=plan.lr_T_0))


def results_fields(plan: Optional[BudgetPlan], actual_wall_s: float) -> Dict:
    """results.json's "budget" (planned and actual; None without a budget) and
    "reproduce_flags" (None without a budget)."""
    if plan is None:
        return {"budget": None, "reproduce_flags": None}
    return {"budget": {"budget_minutes": plan.budget_minutes,
                       "planned_num_epochs": plan.num_epochs, "planned_lr_T_0": plan.lr_T_0,
                       "planned_minutes": round(plan.planned_s / 60, 2),
                       "actual_minutes": round(actual_wall_s / 60, 2),
                       "measured_at": plan.measured_at, "plan": plan.to_json()},
            "reproduce_flags": plan.reproduce_flags()}
