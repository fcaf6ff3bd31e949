#!/usr/bin/env bash
# Scale: one account with a million tokens (TOKENS to change it), on SQLite and on PostgreSQL.
# Measures what grows with the number of tokens:
#
# - creation through the API, 1000 tokens a request, two clients: total time, and the latency of
#   the first and the last requests (a constant cost shows as equal latencies);
# - the disk of an empty store and of the full one (SQLite);
# - the tokens read into memory after a start (how many, how long, the RSS they add: bytes a
#   token), the daemon's RSS empty, after random verification across every token (steady), and
#   its peak (VmHWM) over the whole run;
# - verification across all the tokens at random against the first 100,000 (16 connections);
# - the monthly reset of every token (each has a monthly refill due) under verification load:
#   how long it takes, and the verify latency in 3-second windows before, during and after it.
#
# The daemon runs under libfaketime: first on 2026-12-15 to create the tokens, then from
# 2026-12-31 23:58:50 so that the reset starts at midnight, under load. Everything runs on this
# machine over loopback. Results: bench/out/scale/results.jsonl and a summary on stdout.
#
#   bash bench/scale.sh                           # TOKENS=1000000 BACKENDS="sqlite postgres"
#   TOKENS=100000 BACKENDS=sqlite bash bench/scale.sh
set -euo pipefail
cd "$(dirname "$0")/.."
TOKENS=${TOKENS:-1000000}
BACKENDS=${BACKENDS:-"sqlite postgres"}
PG_ADMIN=${PG_ADMIN:-postgres://postgres@127.0.0.1:5432}
command -v wrk >/dev/null || { apt-get update -qq && apt-get install -y -qq wrk; }
FAKETIME_LIB=/usr/lib/x86_64-linux-gnu/faketime/libfaketimeMT.so.1
[ -f "$FAKETIME_LIB" ] || { apt-get update -qq && apt-get install -y -qq libfaketime; }
cargo build --release -q
BIN=$PWD/target/release/tokenwarden
OUT=bench/out/scale
mkdir -p "$OUT"
RESULTS=$OUT/results.jsonl
: > "$RESULTS"

free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
status_kb() { awk -v k="$2:" '$1 == k {print $2}' "/proc/$1/status"; }
record() { echo "$1" | tee -a "$RESULTS" >&2; }
# Seconds of real time until the faked clock (started at $1 fake, at real epoch $2) shows $3.
until_fake() { python3 -c "import datetime as d,sys,time; s=d.datetime.fromisoformat(sys.argv[1]); t=d.datetime.fromisoformat(sys.argv[3]); print(max(0.0,(t-s).total_seconds()-(time.time()-float(sys.argv[2]))))" "$1" "$2" "$3"; }

for backend in $BACKENDS; do
    data=$(mktemp -d)
    port=$(free_port)
    base=http://127.0.0.1:$port
    db=""
    envs=(TOKENWARDEN_TOKENS__MAX_COUNT_PER_REQUEST=1000 TOKENWARDEN_LOG__LEVEL=warn)
    if [ "$backend" = postgres ]; then
        db=tw_scale_$$
        psql "$PG_ADMIN/postgres" -qc "CREATE DATABASE $db" >/dev/null
        envs+=(TOKENWARDEN_DATABASE__URL="$PG_ADMIN/$db" TOKENWARDEN_DATABASE__MAX_CONNECTIONS=16)
    fi
    # serve FAKE_START: the daemon with its clock starting at FAKE_START and running on.
    serve() {
        fake_start=$1
        real_start=$(date +%s.%N)
        env "${envs[@]}" LD_PRELOAD="$FAKETIME_LIB" FAKETIME="@$fake_start" FAKETIME_DONT_FAKE_MONOTONIC=1 \
            "$BIN" serve --data-dir "$data" --listen "127.0.0.1:$port" 2>> "$OUT/daemon-$backend.log" &
        daemon=$!
        for _ in $(seq 1 600); do curl -fs "$base/readyz" >/dev/null 2>&1 && break; sleep 0.1; done
    }
    stop() { kill "$daemon"; wait "$daemon" || true; }

    : > "$OUT/daemon-$backend.log"
    serve "2026-12-15 12:00:00"
    empty_rss=$(status_kb "$daemon" VmRSS)
    empty_disk=$(du -sk "$data" | cut -f1)
    op=$(cat "$data/operator.token")
    secret=$(curl -s -X POST "$base/v1/accounts" -H "Authorization: Bearer $op" -H 'Content-Type: application/json' \
        -d "{\"name\":\"scale\",\"max_tokens\":$((TOKENS + 10))}" | jq -r .secret)

    # Creation: every token with a monthly refill, so the reset has each one to roll.
    create=$(python3 - "$base" "$secret" "$TOKENS" "$OUT/tokens.txt" <<'PY'
import json, sys, threading, time, urllib.request
base, secret, total, path = sys.argv[1], sys.argv[2], int(sys.argv[3]), sys.argv[4]
requests = total // 1000
lat, plains, lock, nxt = [None] * requests, [None] * requests, threading.Lock(), [0]
body = json.dumps({"name": "scale", "usage_limit": 1000000, "refill_monthly": 1000000, "count": 1000}).encode()
def worker():
    while True:
        with lock:
            i = nxt[0]; nxt[0] += 1
        if i >= requests:
            return
        req = urllib.request.Request(base + "/v1/tokens", data=body, method="POST",
            headers={"Authorization": "Bearer " + secret, "Content-Type": "application/json"})
        t = time.monotonic()
        with urllib.request.urlopen(req, timeout=120) as r:
            out = json.load(r)
        lat[i] = time.monotonic() - t
        plains[i] = [x["token"] for x in out["tokens"]]
start = time.monotonic()
threads = [threading.Thread(target=worker) for _ in range(2)]
for t in threads: t.start()
for t in threads: t.join()
took = time.monotonic() - start
with open(path, "w") as f:
    for p in plains:
        f.write("\n".join(p) + "\n")
first, last = sorted(lat[:10]), sorted(lat[-10:])
print(json.dumps({"tokens": requests * 1000, "seconds": round(took, 1),
    "first_10_median_ms": round(first[5] * 1000, 1), "last_10_median_ms": round(last[5] * 1000, 1)}))
PY
)
    full_disk=$(du -sk "$data" | cut -f1)
    record "{\"backend\":\"$backend\",\"what\":\"create\",\"result\":$create,\"empty_rss_kb\":$empty_rss,\"empty_disk_kb\":$empty_disk,\"full_disk_kb\":$full_disk}"
    head -n 100000 "$OUT/tokens.txt" > "$OUT/tokens-100k.txt"
    stop

    # Verification across every token and across the first 100,000, then across midnight.
    fake0="2026-12-31 23:58:50"
    serve "$fake0"
    real0=$real_start
    start_rss=$(status_kb "$daemon" VmRSS)
    # The tokens read ahead after the start: until the cache stops growing.
    warm0=$(date +%s.%N); prev=-1; cached=0
    for _ in $(seq 1 600); do
        cached=$(curl -s "$base/metrics" | awk '$1 == "tokenwarden_cached_tokens" {print int($2)}')
        cached=${cached:-0}
        [ "$cached" != 0 ] && [ "$cached" = "$prev" ] && break
        prev=$cached; sleep 0.5
    done
    warm_s=$(python3 -c "import time; print(round(time.time() - $warm0, 1))")
    warm_rss=$(status_kb "$daemon" VmRSS)
    line=$(TOKENS_FILE=$OUT/tokens.txt wrk -t2 -c16 -d10s -s bench/verify.lua "$base/v1/verify" | grep '^JSON ' | cut -c6-)
    steady_rss=$(status_kb "$daemon" VmRSS)
    record "{\"backend\":\"$backend\",\"what\":\"verify_all\",\"wrk\":$line,\"start_rss_kb\":$start_rss,\"warm_s\":$warm_s,\"cached\":$cached,\"warm_rss_kb\":$warm_rss,\"steady_rss_kb\":$steady_rss}"
    line=$(TOKENS_FILE=$OUT/tokens-100k.txt wrk -t2 -c16 -d8s -s bench/verify.lua "$base/v1/verify" | grep '^JSON ' | cut -c6-)
    record "{\"backend\":\"$backend\",\"what\":\"verify_100k\",\"wrk\":$line}"
    sleep "$(until_fake "$fake0" "$real0" "2026-12-31 23:59:51")"
    for w in $(seq 1 10); do
        line=$(TOKENS_FILE=$OUT/tokens.txt wrk -t2 -c16 -d3s -s bench/verify.lua "$base/v1/verify" | grep '^JSON ' | cut -c6-)
        record "{\"backend\":\"$backend\",\"what\":\"window\",\"n\":$w,\"wrk\":$line}"
    done
    # The reset's run record: start and end on the daemon's clock.
    for _ in $(seq 1 600); do
        run=$(curl -s "$base/v1/jobs" -H "Authorization: Bearer $op" | jq -c '[.jobs[]? | select(.name == "monthly_reset") | .last_run] | first' || true)
        [ "$(echo "$run" | jq -r '.period + " " + .status' 2>/dev/null || true)" = "2027-01 done" ] && break
        sleep 1
    done
    record "{\"backend\":\"$backend\",\"what\":\"reset\",\"run\":$run,\"peak_rss_kb\":$(status_kb "$daemon" VmHWM),\"end_rss_kb\":$(status_kb "$daemon" VmRSS)}"
    stop
    rm -rf "$data"
    [ -n "$db" ] && psql "$PG_ADMIN/postgres" -qc "DROP DATABASE $db WITH (FORCE)" >/dev/null
done

python3 - "$RESULTS" <<'PY'
import json, sys, datetime as d
rows = [json.loads(l) for l in open(sys.argv[1])]
ts = lambda s: d.datetime.fromisoformat(s.replace("Z", "+00:00"))
for b in dict.fromkeys(r["backend"] for r in rows):
    r = {x["what"]: x for x in rows if x["backend"] == b and x["what"] != "window"}
    w = [x["wrk"] for x in rows if x["backend"] == b and x["what"] == "window"]
    c, run = r["create"], r["reset"]["run"]
    took = (ts(run["finished_at"]) - ts(run["started_at"])).total_seconds() if run and run.get("finished_at") else None
    a, h = r["verify_all"]["wrk"], r["verify_100k"]["wrk"]
    print(f"## {b}")
    print(f"- create {c['result']['tokens']} tokens: {c['result']['seconds']} s; a 1000-token request first {c['result']['first_10_median_ms']} ms, last {c['result']['last_10_median_ms']} ms")
    print(f"- disk: empty {c['empty_disk_kb']/1024:.1f} MiB, full {c['full_disk_kb']/1024:.1f} MiB")
    v = r["verify_all"]
    print(f"- read ahead after the start: {v['cached']} tokens in {v['warm_s']} s")
    print(f"- RSS: empty {c['empty_rss_kb']/1024:.0f} MiB, after start {v['start_rss_kb']/1024:.0f} MiB, tokens read ahead {v['warm_rss_kb']/1024:.0f} MiB, after 10 s across all {v['steady_rss_kb']/1024:.0f} MiB, peak {r['reset']['peak_rss_kb']/1024:.0f} MiB; {(v['warm_rss_kb'] - v['start_rss_kb']) * 1024 / max(1, v['cached'] - min(v['cached'], 10000)):.0f} bytes a token read ahead")
    print(f"- verify across all: {a['rps']:.0f} req/s, p99 {a['p99_ms']:.2f} ms; across 100k: {h['rps']:.0f} req/s, p99 {h['p99_ms']:.2f} ms; ratio {a['rps']/h['rps']:.2f}")
    print(f"- reset: {run.get('result') if run else None}, {took} s")
    print("- windows of 3 s from 23:59:51 (req/s, p99 ms, max ms, non-2xx): " + "; ".join(f"{x['rps']:.0f}/{x['p99_ms']:.1f}/{x['max_ms']:.0f}/{x['non2xx']}" for x in w))
PY
