#!/usr/bin/env bash
# Wall time of the main job (issue 12: <= 10 min on 2 CPU cores, setup included) as a fresh machine would
# run it: a fresh clone of this commit in a temporary folder, a new .venv (pip installs from the local wheel
# cache, as on a fresh machine of this workplace), an empty feature cache, no models folder; then
# `bash scripts/run-main` under /usr/bin/time. Run it on an otherwise idle machine:
#   bash scripts/bench_main_job.sh results/main_job
# Writes OUT/timing.json (wall seconds of setup and of the job, peak RSS), OUT/run-main.log, OUT/time.txt and
# copies the job's results.md and the model card.
set -euo pipefail
cd "$(dirname "$0")/.."
out="$(realpath -m "${1:-results/main_job}")"
mkdir -p "$out"
data="${HICA_DATA:-$(cd .. && pwd)/shared/data}"
work="$(mktemp -d /tmp/hica-main-job.XXXXXX)"
trap 'rm -rf "$work"' EXIT
git clone -q . "$work/hica"
commit="$(git -C "$work/hica" rev-parse --short HEAD)"
cd "$work/hica"
export HICA_DATA="$data" HICA_CACHE="$work/cache"
start=$(date +%s.%N)
/usr/bin/time -v bash scripts/run-main > "$out/run-main.log" 2> "$out/time.txt"
end=$(date +%s.%N)
cp runs/main/benchmark/results.md "$out/results.md"
cp models/busi-demo/MODEL_CARD.md "$out/MODEL_CARD.md"
python3 - "$out" "$start" "$end" "$commit" "$(nproc)" <<'PY'
import json, re, sys, platform
from pathlib import Path
out, start, end, commit, cores = Path(sys.argv[1]), float(sys.argv[2]), float(sys.argv[3]), sys.argv[4], sys.argv[5]
t = (out / "time.txt").read_text()
rss_kb = int(re.search(r"Maximum resident set size \(kbytes\): (\d+)", t).group(1))
log = (out / "run-main.log").read_text()
steps = {m.group(1): float(m.group(2)) for m in re.finditer(r"^\[run-main\] (\S+) done in ([0-9.]+) s", log, re.M)}
cpu = next((ln.split(":", 1)[1].strip() for ln in Path("/proc/cpuinfo").read_text().splitlines()
            if ln.startswith("model name")), platform.processor())
json.dump({"commit": commit, "wall_seconds": round(end - start, 1), "steps_seconds": steps,
           "peak_rss_mb": round(rss_kb / 1024, 1), "cpu": cpu, "cores": int(cores)},
          open(out / "timing.json", "w"), indent=2)
print(json.dumps(json.load(open(out / "timing.json")), indent=2))
PY
