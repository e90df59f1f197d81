#!/usr/bin/env bash
# Latency of small requests while a bulk transfer saturates the same tunnel, plus the
# single-stream throughput, for quick A/B runs of scheduler and socket changes.
#
#   bench/latency-under-bulk.sh [rounds] [tcpTls|quic] [wrk connections]
#                                        (from the project root, after npm run build;
#                                         defaults: 2 rounds, tcpTls, 10 connections)
#
# Starts nginx and iperf3 on 127.0.0.1, a CLI hub and an edge on 127.0.0.2, runs iperf3 alone
# (throughput), then iperf3 again with wrk beside it (p99 of 1 KiB requests). Loopback only;
# ends the processes it started, by pid.
set -u
ROUNDS=${1:-2}; TRANSPORT=${2:-tcpTls}; CONNS=${3:-10}
ROOT=$(cd "$(dirname "$0")/.." && pwd)
W=$(mktemp -d); P_IPERF=15501; P_HTTP=18581; P_HUB=18743
PIDS=()
cleanup() { for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null; done; wait 2>/dev/null; rm -rf "$W"; }
trap cleanup EXIT
for tool in nginx iperf3 wrk; do command -v $tool >/dev/null || [ -x /usr/sbin/$tool ] || { echo "needs $tool" >&2; exit 2; }; done
export PATH="$PATH:/usr/sbin"
mkdir -p "$W/www"; head -c 1024 /dev/zero | tr '\0' x > "$W/www/1k.txt"
cat > "$W/nginx.conf" <<NG
worker_processes 1; daemon off; master_process off; pid $W/nginx.pid; error_log $W/err.log;
events { worker_connections 4096; }
http { access_log off; keepalive_requests 10000000; client_body_temp_path $W/b; proxy_temp_path $W/p;
  fastcgi_temp_path $W/f; uwsgi_temp_path $W/u; scgi_temp_path $W/s;
  server { listen 127.0.0.1:$P_HTTP; root $W/www; } }
NG
nginx -c "$W/nginx.conf" & PIDS+=($!)
iperf3 -s -B 127.0.0.1 -p $P_IPERF >/dev/null 2>&1 & PIDS+=($!)
echo "[{\"id\":\"b\",\"secret\":\"bench-secret\",\"listenPorts\":[$P_IPERF,$P_HTTP]}]" > "$W/edges.json"
node "$ROOT/bin/remoteingress.js" hub --edges "$W/edges.json" --tunnel-port $P_HUB --bind 127.0.0.1 --proxy-protocol none 2>"$W/hub.log" & PIDS+=($!)
for _ in $(seq 50); do (exec 3<>/dev/tcp/127.0.0.1/$P_HUB) 2>/dev/null && break; sleep 0.1; done
node "$ROOT/bin/remoteingress.js" edge --hub-host 127.0.0.1 --hub-port $P_HUB --edge-id b --secret bench-secret --transport "$TRANSPORT" --bind 127.0.0.2 --no-stun 2>"$W/edge.log" & PIDS+=($!)
for _ in $(seq 50); do (exec 3<>/dev/tcp/127.0.0.2/$P_HTTP) 2>/dev/null && break; sleep 0.1; done
for _ in $(seq "$ROUNDS"); do
  gbps=$(iperf3 -c 127.0.0.2 -p $P_IPERF -t 5 -J | python3 -c 'import json,sys; print(round(json.load(sys.stdin)["end"]["sum_received"]["bits_per_second"]/1e9,2))')
  iperf3 -c 127.0.0.2 -p $P_IPERF -t 7 >/dev/null 2>&1 & bulk=$!
  sleep 1 # let the bulk transfer reach full speed
  lat=$(wrk -t1 -c"$CONNS" -d5s --latency "http://127.0.0.2:$P_HTTP/1k.txt" | awk '/^ +50%/{p50=$2} /^ +99%/{p99=$2} /^Requests\/sec/{r=$2} END{print "p50 " p50 "  p99 " p99 "  " r " req/s"}')
  wait $bulk
  echo "$TRANSPORT: single stream ${gbps} Gbit/s   small requests under bulk (-c$CONNS): ${lat}"
done
