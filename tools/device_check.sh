#!/usr/bin/env bash
# One prepared check of speed and memory on this machine's accelerator; prints ONE JSON
# object on stdout, everything else on stderr. At most 8 minutes on a GPU, 11 with --quick
# (each part has a time limit; a part that overruns is reported as timed out, and the
# object is still printed).
#
#   bash tools/device_check.sh                    # on a GPU: the paper's sizes
#   bash tools/device_check.sh --quick            # tiny sizes on the CPU (tests run this)
#   bash tools/device_check.sh --mixed_precision bfloat16   # the "on" precision
#
# Parts: the benchmark (python -m src.benchmark --skip_presets --skip_references) at the
# paper's search and retrain sizes with --mixed_precision off and on (float16 on a GPU,
# bfloat16 with --quick: float16 has no fast CPU kernels); 2 epochs of a paper-size
# search on the bundled data (--child_steps_per_epoch 20, 10 lift and 10 final arcs);
# 1 epoch of a paper-size retrain of the default arc. --quick runs the same parts on a
# 10 / 4 / 4 images-per-class copy of the bundled data, the two benchmarks side by side.
# Exit status 0 when every part finished, 1 otherwise.
set -euo pipefail
cd "$(dirname "$0")/.."

quick=0
mixed=""
while [ $# -gt 0 ]; do
  case "$1" in
    --quick) quick=1 ;;
    --mixed_precision) mixed="${2:?--mixed_precision needs float16 or bfloat16}"; shift ;;
    *) echo "usage: bash tools/device_check.sh [--quick] [--mixed_precision float16|bfloat16]" >&2
       exit 2 ;;
  esac
  shift
done

PY="${PYTHON:-python}"
tmp="$(mktemp -d)"
trap 'rm -rf "$tmp"' EXIT
export TF_CPP_MIN_LOG_LEVEL=2
# Memory grows as needed instead of TensorFlow taking the whole GPU at start, so that
# nvidia-smi's memory.used follows what a run needs.
export TF_FORCE_GPU_ALLOW_GROWTH=true

if [ "$quick" = 1 ]; then
  export CUDA_VISIBLE_DEVICES=""  # the CPU path, even on a GPU machine
  mixed="${mixed:-bfloat16}"
  bench_flags=(--quick)
  tiny=(--img_size 16 --batch_size 12 --child_num_layers 1 --child_out_filters 4)
  search_flags=("${tiny[@]}" --child_steps_per_epoch 2 --num_lift_arcs 2 --num_final_arcs 2
                --controller_train_steps 1)
  retrain_flags=("${tiny[@]}")
  # bench off, bench on, search, retrain (s). Each search process first builds the compiled
  # step's graph (about a minute at tiny sizes on 2 cores, more beside other work), and the
  # two benchmarks run side by side: the limits only catch a hang, they time nothing.
  limits=(300 300 240 120)
  # A tiny copy of the bundled data: 10 / 4 / 4 images per class.
  data="$tmp/data"
  for split_count in train:10 valid:4 test:4; do
    split="${split_count%%:*}"
    for class_dir in data/"$split"/*/; do
      class="$(basename "$class_dir")"
      mkdir -p "$data/$split/$class"
      # sed, not head: head would stop reading and pipefail would see sort's SIGPIPE.
      find "$class_dir" -maxdepth 1 -type f | sort | sed -n "1,${split_count##*:}p" |
        xargs cp -t "$data/$split/$class"
    done
  done
else
  mixed="${mixed:-float16}"
  bench_flags=()
  search_flags=(--child_steps_per_epoch 20 --num_lift_arcs 10 --num_final_arcs 10)
  retrain_flags=()
  limits=(110 110 130 100)  # 450 s in all: under 8 minutes with the start-ups
  data="data"
fi
data_flags=(--train_data_dir "$data/train" --val_data_dir "$data/valid"
            --test_data_dir "$data/test")

# measure.py NAME LIMIT_S COMMAND...: runs COMMAND (its stdout to NAME.out and stderr,
# its stderr to stderr) in its own process group, killed after LIMIT_S; writes NAME.json
# with wall_s, rc, timed_out, the peak RSS of its processes and, where nvidia-smi
# runs, the largest GPU memory.used and mean utilization.gpu sampled every 0.5 s.
cat > "$tmp/measure.py" <<'EOF'
import json, os, resource, shutil, signal, subprocess, sys, threading, time

name, limit, command = sys.argv[1], float(sys.argv[2]), sys.argv[3:]
samples = []
sampler = None
if shutil.which("nvidia-smi") and os.environ.get("CUDA_VISIBLE_DEVICES") != "":
    sampler = subprocess.Popen(
        ["nvidia-smi", "--query-gpu=utilization.gpu,memory.used", "--format=csv,noheader,nounits",
         "-i", "0", "-lms", "500"], stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
    def read_samples():
        for line in sampler.stdout:
            try:
                samples.append([float(v) for v in line.split(",")])
            except ValueError:
                pass
    threading.Thread(target=read_samples, daemon=True).start()
start = time.time()
with open(name + ".out", "w") as out:
    process = subprocess.Popen(command, stdout=subprocess.PIPE, text=True, start_new_session=True)
    def copy():
        for line in process.stdout:
            out.write(line)
            sys.stderr.write(line)
    reader = threading.Thread(target=copy)
    reader.start()
    try:
        rc, timed_out = process.wait(timeout=limit), False
    except subprocess.TimeoutExpired:
        os.killpg(process.pid, signal.SIGKILL)
        rc, timed_out = process.wait(), True
    reader.join()
wall = time.time() - start
if sampler is not None:
    sampler.terminate()
    sampler.wait()
record = {"wall_s": round(wall, 1), "rc": rc, "timed_out": timed_out,
          "peak_rss_mb": round(resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024, 1),
          "gpu_memory_used_max_mb": max((s[1] for s in samples), default=None),
          "gpu_utilization_mean_pct": round(sum(s[0] for s in samples) / len(samples), 1)
          if samples else None}
with open(name + ".json", "w") as f:
    json.dump(record, f)
sys.stderr.write(f"{os.path.basename(name)}: {record}\n")
EOF

started=$(date +%s)
measure() { "$PY" "$tmp/measure.py" "$tmp/$1" "$2" "${@:3}" || true; }

benchmark() {  # NAME LIMIT_S PRECISION
  echo "device_check: benchmark, mixed precision $3 ..." >&2
  measure "$1" "$2" "$PY" -m src.benchmark "${bench_flags[@]}" --skip_presets --skip_references \
    --mixed_precision "$3"
}
if [ "$quick" = 1 ]; then
  # Side by side: a smoke run's timings mean nothing, and it halves the wait on 2 cores.
  benchmark bench_off "${limits[0]}" off &
  benchmark bench_on "${limits[1]}" "$mixed" &
  wait
else  # one at a time: nothing else on the machine while a part is timed
  benchmark bench_off "${limits[0]}" off
  benchmark bench_on "${limits[1]}" "$mixed"
fi
echo "device_check: 2 search epochs (presets/variant_search.flags) ..." >&2
measure search "${limits[2]}" "$PY" main_controller_child_trainer.py --flagfile presets/variant_search.flags \
  --num_epochs 2 "${search_flags[@]}" "${data_flags[@]}" --output_dir "$tmp/search_out" \
  --cache_dir "$tmp/cache"
echo "device_check: 1 retrain epoch (presets/variant_final.flags) ..." >&2
measure retrain "${limits[3]}" "$PY" main_child_trainer.py --flagfile presets/variant_final.flags \
  --num_epochs 1 "${retrain_flags[@]}" "${data_flags[@]}" --output_dir "$tmp/retrain_out" \
  --cache_dir "$tmp/cache"

if [ "$quick" = 0 ] && command -v nvidia-smi > /dev/null; then
  device="$(nvidia-smi --query-gpu=name --format=csv,noheader | sed -n 1p)"
else
  device="$(grep -m 1 'model name' /proc/cpuinfo | cut -d: -f2- | sed 's/^ *//' || true)"
fi

"$PY" - "$tmp" "$device" "$quick" "$mixed" "$(( $(date +%s) - started ))" <<'EOF'
import json, os, sys

tmp, device, quick, mixed, total_s = sys.argv[1], sys.argv[2], sys.argv[3] == "1", sys.argv[4], int(sys.argv[5])
BENCH_KEYS = ("search_step_s", "search_images_per_s", "fixed_step_s", "fixed_images_per_s",
              "peak_device_mb", "fixed_peak_device_mb", "peak_rss_mb", "startup_s",
              "traces_after_warmup", "recompute", "batch_size", "device", "tf_version")


def read_json(path, last_line=False):
    try:
        with open(path) as f:
            text = f.read()
        return json.loads(text.strip().splitlines()[-1] if last_line else text)
    except (OSError, ValueError, IndexError):
        return None


def benchmark(name):
    run = read_json(os.path.join(tmp, name + ".json")) or {}
    figures = read_json(os.path.join(tmp, name + ".out"), last_line=True)
    if not isinstance(figures, dict):
        return {"ok": False, **run}
    part = {"ok": run.get("rc") == 0, **{k: figures.get(k) for k in BENCH_KEYS},
            "search_steps_per_s": round(1 / figures["search_step_s"], 3),
            "fixed_steps_per_s": round(1 / figures["fixed_step_s"], 3)}
    return {**part, "wall_s": run.get("wall_s")}


def script_run(name, results_path, steps_of, batch_size):
    run = read_json(os.path.join(tmp, name + ".json")) or {}
    results = read_json(os.path.join(tmp, results_path)) or {}
    part = {"ok": run.get("rc") == 0, **run}
    steps, seconds = steps_of(results, batch_size)
    if steps and seconds:
        part.update(train_steps=steps, train_steps_per_s=round(steps / seconds, 3),
                    train_images_per_s=round(steps * batch_size / seconds, 1))
    return part


def search_steps(results, batch_size):
    # Child steps over the time spent in them (the tracing is timed apart).
    return results.get("child_steps"), results.get("time_split_s", {}).get("child_steps")


def retrain_steps(results, batch_size):
    # results.json has no per-step time: steps over the whole run's wall time (start-up,
    # tracing, evaluation and export included), a lower bound on the step rate; the
    # benchmark's fixed_steps_per_s times the same model's steps alone.
    images = results.get("num_train_images")
    steps = -(-images // batch_size) if images else None  # the last, smaller batch counts
    return steps, results.get("wall_time_s")


batch = 12 if quick else 128
parts = {"benchmark_off": benchmark("bench_off"), f"benchmark_{mixed}": benchmark("bench_on"),
         "search_2_epochs": script_run("search", "search_out/results.json", search_steps, batch),
         "retrain_1_epoch": script_run("retrain", "retrain_out/results.json", retrain_steps, batch)}
on_gpu = not quick and any(p.get("gpu_memory_used_max_mb") is not None for p in parts.values())
print(json.dumps({
    "device": device, "quick": quick, "mixed_precision_on": mixed, "total_s": total_s,
    "ok": all(p["ok"] for p in parts.values()), **parts,
    "peak_memory_note": "benchmark: peak_device_mb = tf.config.experimental.get_memory_info"
                        "('GPU:0')['peak'] (search worker; fixed_peak_device_mb: the fixed "
                        "child), null without a GPU; peak_rss_mb = peak RSS. Script runs: "
                        "peak_rss_mb of their processes, gpu_memory_used_max_mb = nvidia-smi "
                        "memory.used (TF_FORCE_GPU_ALLOW_GROWTH on).",
    "device_busy_share": None,
    "device_busy_note": "not measured: the busy share of step time needs a profiler trace; "
                        + ("gpu_utilization_mean_pct is nvidia-smi's utilization.gpu averaged "
                           "over each whole run (start-up and tracing included)"
                           if on_gpu else "no GPU")}))
sys.exit(0 if all(p["ok"] for p in parts.values()) else 1)
EOF
