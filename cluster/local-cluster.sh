#!/usr/bin/env bash
# A Ray cluster on your own machines (no cloud launcher): one head, any number of workers.
#
#   cluster/local-cluster.sh head   [--gpus N] [--port 6379] [--dashboard-port 8265] [--port-base N]
#   cluster/local-cluster.sh worker HEAD_IP[:PORT] [--gpus N] [--port-base N]
#   cluster/local-cluster.sh status
#   cluster/local-cluster.sh stop
#
# Token authentication is on: `head` makes ~/.ray/auth_token if there is none; copy that file
# to every worker machine (same path) before `worker`. S3 credentials are read from the
# environment of the shell that starts each node (AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY,
# AWS_ENDPOINT_URL_S3 ...): Ray's processes inherit it, jobs never carry it.
# --port-base N moves the node's own fixed ports (agents, metrics, node and object managers,
# ray client) to N..N+6, so several nodes (or another Ray) can share one machine.
# See cluster/local.md. Extra `ray start` flags: RAY_START_ARGS="--num-cpus 8".
set -euo pipefail

usage() { sed -n '2,7p' "$0" | sed 's/^# \{0,1\}//'; exit 2; }
[ $# -ge 1 ] || usage
cmd=$1; shift

RAY=${RAY:-ray}
command -v "$RAY" >/dev/null || { echo "error: '$RAY' not found; activate the environment with asaptrain installed (pip install -e .)" >&2; exit 2; }

gpus="" port=6379 dash_port=8265 head="" port_base=""
if [ "$cmd" = worker ]; then
  [ $# -ge 1 ] || { echo "error: worker needs the head's address, e.g. 10.0.0.5 or 10.0.0.5:6379" >&2; exit 2; }
  head=$1; shift
  case "$head" in *:*) ;; *) head="$head:6379" ;; esac
fi
while [ $# -gt 0 ]; do
  case "$1" in
    --gpus) gpus=$2; shift 2 ;;
    --port) port=$2; shift 2 ;;
    --dashboard-port) dash_port=$2; shift 2 ;;
    --port-base) port_base=$2; shift 2 ;;
    *) echo "error: unknown option $1" >&2; usage ;;
  esac
done
extra=()
[ -n "$gpus" ] && extra+=(--num-gpus "$gpus")
if [ -n "$port_base" ]; then
  extra+=(--dashboard-agent-listen-port=$((port_base)) --dashboard-agent-grpc-port=$((port_base + 1))
          --metrics-export-port=$((port_base + 2)) --runtime-env-agent-port=$((port_base + 3))
          --node-manager-port=$((port_base + 4)) --object-manager-port=$((port_base + 5)))
  [ "$cmd" = head ] && extra+=(--ray-client-server-port=$((port_base + 6)))
fi

token_file=${RAY_AUTH_TOKEN_PATH:-$HOME/.ray/auth_token}
export RAY_AUTH_MODE=${RAY_AUTH_MODE:-token}
export RAY_USAGE_STATS_ENABLED=${RAY_USAGE_STATS_ENABLED:-0}

case "$cmd" in
  head)
    if [ "$RAY_AUTH_MODE" = token ] && [ -z "${RAY_AUTH_TOKEN:-}" ] && [ ! -s "$token_file" ]; then
      "$RAY" get-auth-token --generate >/dev/null  # writes ~/.ray/auth_token; never printed here
      echo "made a Ray auth token in $token_file (copy it to each worker machine)"
    fi
    # shellcheck disable=SC2086
    "$RAY" start --head --port="$port" --dashboard-host=0.0.0.0 --dashboard-port="$dash_port" \
      "${extra[@]}" ${RAY_START_ARGS:-}
    ip=$(hostname -I 2>/dev/null | awk '{print $1}'); ip=${ip:-127.0.0.1}
    echo
    echo "head up. Workers:   cluster/local-cluster.sh worker $ip:$port"
    echo "          Jobs:     asaptrain submit train --address http://$ip:$dash_port -- --preset deblurgan-smoke"
    ;;
  worker)
    if [ "$RAY_AUTH_MODE" = token ] && [ -z "${RAY_AUTH_TOKEN:-}" ] && [ ! -s "$token_file" ]; then
      echo "error: no Ray auth token at $token_file; copy the head's ~/.ray/auth_token here first" >&2
      exit 2
    fi
    # shellcheck disable=SC2086
    "$RAY" start --address="$head" "${extra[@]}" ${RAY_START_ARGS:-}
    ;;
  status) "$RAY" status ;;
  stop) "$RAY" stop ;;
  *) usage ;;
esac
