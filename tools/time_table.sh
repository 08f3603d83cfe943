#!/usr/bin/env bash
# Time of the CPU presets against image size: the README's "Time against data size and image
# size" table. Run from the repository root, alone on the machine, after a full search and
# retrain at 28 px on the bundled data (the reference):
#
#   bash tools/time_table.sh [SEARCH_DIR [FINAL_DIR [WORK_DIR]]]   # output/search output/final output/time_table
#   REPORT_ONLY=1 bash tools/time_table.sh ...                     # reprint from WORK_DIR's runs
#
# For each --img_size in SIZES (default "28 32 64") it runs 3 search epochs of 20 child steps
# (controller trained from epoch 1, one evaluation and lift, 10 fresh final arcs) and one
# retraining epoch of presets/cpu_final.flags, then projects the full runs:
#   search:  each phase of SEARCH_DIR's time split x (that phase at this size / at 28 px);
#   retrain: FINAL_DIR's wall time + its epochs x (one epoch at this size - one at 28 px).
# Short runs at 28 px are made too: the ratios are taken between runs of the same length.
set -euo pipefail
SEARCH_DIR=${1:-output/search}
FINAL_DIR=${2:-output/final}
WORK=${3:-output/time_table}
SIZES=${SIZES:-28 32 64}
PY=${PYTHON:-python}

if [ -z "${REPORT_ONLY:-}" ]; then
  for size in $SIZES; do
    echo "img_size $size: 3 short search epochs, 1 retraining epoch ..." >&2
    rm -rf "$WORK/search$size" "$WORK/final$size"
    "$PY" main_controller_child_trainer.py --flagfile presets/cpu_search.flags --img_size "$size" \
      --num_epochs 3 --child_steps_per_epoch 20 --controller_start_epoch 0 --eval_every_epochs 3 \
      --num_final_arcs 10 --output_dir "$WORK/search$size" > "$WORK.search$size.log" 2>&1
    "$PY" main_child_trainer.py --flagfile presets/cpu_final.flags --from_search "$SEARCH_DIR" \
      --img_size "$size" --num_epochs 1 --child_lr_T_0 1 --output_dir "$WORK/final$size" \
      > "$WORK.final$size.log" 2>&1
  done
fi

"$PY" - "$SEARCH_DIR" "$FINAL_DIR" "$WORK" $SIZES <<'PY'
import json
import sys

search_dir, final_dir, work, sizes = sys.argv[1], sys.argv[2], sys.argv[3], sys.argv[4:]
read = lambda path: json.load(open(path))
full_split = read(f"{search_dir}/results.json")["time_split_s"]
full_final = read(f"{final_dir}/results.json")
short = {s: read(f"{work}/search{s}/results.json")["time_split_s"] for s in sizes}
epoch = {s: read(f"{work}/final{s}/results.json")["wall_time_s"] for s in sizes}
print("| --img_size | search, projected | retrain, projected | short search (s) | one retrain epoch (s) |")
print("|---|---|---|---|---|")
for s in sizes:
    search_s = sum(seconds * short[s].get(phase, 0.0) / short["28"][phase]
                   for phase, seconds in full_split.items() if short["28"].get(phase))
    retrain_s = full_final["wall_time_s"] + full_final["num_epochs"] * (epoch[s] - epoch["28"])
    print(f"| {s} | {search_s / 60:.0f} min | {retrain_s / 60:.0f} min | "
          f"{sum(short[s].values()):.0f} | {epoch[s]:.0f} |")
PY
