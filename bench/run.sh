#!/usr/bin/env bash
# Verify throughput and latency against the HTTP ceiling (the same server answering /healthz),
# on SQLite and on PostgreSQL, at 16 and 64 connections, with 100,000 tokens picked at random.
# Everything runs on this machine over loopback. Results: bench/out/results.jsonl and a Markdown
# table on stdout (paste it into BENCHMARKS.md).
#
# Each backend runs in each durability mode (`[database] durability`): power-loss (the default:
# flushed to disk before the answer) and process-crash (committed, not flushed), on the same
# store, each beside its own /healthz ceiling.
#
#   bash bench/run.sh                      # defaults: DURATION=15s TOKENS=100000
#   DURATION=30s BACKENDS=sqlite MODES=power-loss bash bench/run.sh
set -euo pipefail
cd "$(dirname "$0")/.."
DURATION=${DURATION:-15s}
TOKENS=${TOKENS:-100000}
BACKENDS=${BACKENDS:-"sqlite postgres"}
MODES=${MODES:-"power-loss process-crash"}
PG_ADMIN=${PG_ADMIN:-postgres://postgres@127.0.0.1:5432}
command -v wrk >/dev/null || { apt-get update -qq && apt-get install -y -qq wrk; }
cargo build --release -q
BIN=target/release/tokenwarden
OUT=bench/out
mkdir -p "$OUT"
RESULTS=$OUT/results.jsonl
: > "$RESULTS"

free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
metric() { curl -s "$1/metrics" | awk -v k="$2" '$1 == k {print $2}'; }
# CPU time the hypervisor gave to others while this VM wanted it (/proc/stat "steal"), and all
# CPU time, in ticks: a run with much steal measured the host, not the daemon.
cpu_ticks() { awk '/^cpu /{print $9, $2+$3+$4+$5+$6+$7+$8+$9}' /proc/stat; }

for backend in $BACKENDS; do
    data=$(mktemp -d)
    port=$(free_port)
    base=http://127.0.0.1:$port
    db=""
    envs=(TOKENWARDEN_TOKENS__MAX_COUNT_PER_REQUEST=1000 TOKENWARDEN_LOG__LEVEL=warn ${EXTRA_ENV:-})
    if [ "$backend" = postgres ]; then
        db=tw_bench_$$
        psql "$PG_ADMIN/postgres" -qc "CREATE DATABASE $db" >/dev/null
        envs+=(TOKENWARDEN_DATABASE__URL="$PG_ADMIN/$db" TOKENWARDEN_DATABASE__MAX_CONNECTIONS=16)
    fi
    serve() {
        env "${envs[@]}" TOKENWARDEN_DATABASE__DURABILITY="$1" "$BIN" serve --data-dir "$data" --listen "127.0.0.1:$port" 2>> "$OUT/daemon-$backend.log" &
        daemon=$!
        for _ in $(seq 1 100); do curl -fs "$base/readyz" >/dev/null 2>&1 && break; sleep 0.1; done
    }
    first=${MODES%% *}
    : > "$OUT/daemon-$backend.log"
    serve "$first"
    op=$(cat "$data/operator.token")
    secret=$(curl -s -X POST "$base/v1/accounts" -H "Authorization: Bearer $op" -H 'Content-Type: application/json' \
        -d "{\"name\":\"bench\",\"max_tokens\":$((TOKENS + 10))}" | jq -r .secret)
    : > "$OUT/tokens.txt"
    for _ in $(seq 1 $((TOKENS / 1000))); do
        curl -s -X POST "$base/v1/tokens" -H "Authorization: Bearer $secret" -H 'Content-Type: application/json' \
            -d '{"name":"bench","usage_limit":999999999,"count":1000}' | jq -r '.tokens[].token' >> "$OUT/tokens.txt"
    done
    echo "$backend: $(wc -l < "$OUT/tokens.txt") tokens" >&2
    for mode in $MODES; do
        # Every mode starts on the stored tokens, as a daemon serving an existing store does
        # (it reads the most recently used ones before serving), not on the start that made them.
        kill "$daemon"; wait "$daemon" || true
        serve "$mode"
        # Warm up both paths (connections, caches, JIT-free but page cache matters).
        wrk -t2 -c16 -d3s -s bench/healthz.lua "$base/healthz" >/dev/null
        TOKENS_FILE=$OUT/tokens.txt wrk -t2 -c16 -d3s -s bench/verify.lua "$base/v1/verify" >/dev/null
        for conns in 16 64; do
            for target in healthz verify; do
                valid_before=$(metric "$base" 'tokenwarden_verifications_total{result="VALID"}')
                read -r steal_before all_before < <(cpu_ticks)
                line=$(TOKENS_FILE=$OUT/tokens.txt wrk -t2 -c"$conns" -d"$DURATION" -s "bench/$target.lua" "$base/$([ $target = verify ] && echo v1/verify || echo healthz)" | grep '^JSON ' | cut -c6-)
                valid_after=$(metric "$base" 'tokenwarden_verifications_total{result="VALID"}')
                read -r steal_after all_after < <(cpu_ticks)
                steal=$(( 100 * (steal_after - steal_before) / (all_after - all_before + 1) ))
                echo "{\"backend\":\"$backend\",\"mode\":\"$mode\",\"target\":\"$target\",\"conns\":$conns,\"valid\":$(( ${valid_after%.*} - ${valid_before%.*} )),\"steal_pct\":$steal,\"wrk\":$line}" | tee -a "$RESULTS" >&2
            done
        done
    done
    kill "$daemon"; wait "$daemon" || true
    rm -rf "$data"
    [ -n "$db" ] && psql "$PG_ADMIN/postgres" -qc "DROP DATABASE $db WITH (FORCE)" >/dev/null
done

python3 - "$RESULTS" <<'PY'
import json, sys
rows = [json.loads(l) for l in open(sys.argv[1])]
ceil = {(r["backend"], r["mode"], r["conns"]): r["wrk"] for r in rows if r["target"] == "healthz"}
ceil_steal = {(r["backend"], r["mode"], r["conns"]): r.get("steal_pct") for r in rows if r["target"] == "healthz"}
print("| backend | durability | conns | /healthz req/s | /healthz p50 / p99 ms | verify req/s | verify p50 / p99 ms | verify / ceiling | p99 / ceiling p99 | VALID answers | errors | steal % (ceiling / verify) |")
print("| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |")
for r in rows:
    if r["target"] != "verify":
        continue
    c, v = ceil[(r["backend"], r["mode"], r["conns"])], r["wrk"]
    print(f"| {r['backend']} | {r['mode']} | {r['conns']} | {c['rps']:.0f} | {c['p50_ms']:.2f} / {c['p99_ms']:.2f} | {v['rps']:.0f} | {v['p50_ms']:.2f} / {v['p99_ms']:.2f} | {v['rps']/c['rps']:.0%} | {v['p99_ms']/c['p99_ms']:.1f}x | {r['valid']} of {v['requests']} | {v['errors']} | {ceil_steal[(r['backend'], r['mode'], r['conns'])]} / {r.get('steal_pct')} |")
PY
