#!/usr/bin/env bash
# Throughput and memory of `promptloop pull` on generated production logs.
#
#   bench/pull/bench.sh [RECORDS...]      (default: 100000 300000 1000000)
#
# For each size: writes that many worked-example log records (scripts/demo-logs.py,
# from Banking77, CC-BY-4.0) into one uncompressed JSONL file, pulls it into an
# empty dataset with the support-triage pipeline's cleaning settings, and prints
# records/s, MB/s and peak resident memory (/usr/bin/time). Memory should stay
# flat as the file grows: pull streams, and keeps only each signal's sample.
# Also times `jq -c .` over the same file: the cost of merely parsing it.
set -euo pipefail
cd "$(dirname "$0")/../.."
sizes=("$@")
[ ${#sizes[@]} -eq 0 ] && sizes=(100000 300000 1000000)
cargo build --release --locked --quiet
bin=$PWD/target/release/promptloop
work=${PULL_BENCH_DIR:-/tmp/pull-bench}
mkdir -p "$work"
printf '%-9s %10s %9s %12s %8s %10s\n' records seconds MB records/s MB/s peak_MiB
for n in "${sizes[@]}"; do
  logs=$work/logs-$n.jsonl
  [ -s "$logs" ] || python3 scripts/demo-logs.py --records "$n" --out "$logs" >/dev/null
  repo=$work/repo-$n
  rm -rf "$repo" && mkdir -p "$repo/pipelines" "$repo/datasets/support-triage"
  # The worked example's pipeline, reading this one file.
  python3 - "$repo" "$logs" <<'PY'
import re, sys
repo, logs = sys.argv[1], sys.argv[2]
text = open("pipelines/support-triage.toml").read()
text = re.sub(r'\[source\]\n(.*\n)*?(?=\n\[|\Z)', f'[source]\nkind = "files"\npaths = ["{logs}"]\n', text)
open(f"{repo}/pipelines/support-triage.toml", "w").write(text)
PY
  /usr/bin/time -f '%M' -o "$work/rss-$n" "$bin" --root "$repo" pull support-triage --since all --json >"$work/report-$n.json"
  python3 - "$work/report-$n.json" "$work/rss-$n" "$n" <<'PY'
import json, sys
r = json.load(open(sys.argv[1])); rss = int(open(sys.argv[2]).read().split()[-1]) / 1024
mb = r["bytes"] / 1e6
print(f'{sys.argv[3]:<9} {r["seconds"]:10.2f} {mb:9.1f} {r["records"] / r["seconds"]:12.0f} {mb / r["seconds"]:8.1f} {rss:10.1f}')
PY
done
