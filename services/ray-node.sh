#!/bin/sh
# falcon-lite-ray-node COMMAND...: run COMMAND on a zero-CPU Ray node joined to $RAY_ADDRESS.
#
# A Ray driver (the API process) can only connect to a cluster from a machine that runs a
# raylet, so the api container joins the cluster first. With --num-cpus=0 no task or actor
# that asks for CPU is placed here, so `docker compose restart api` never takes run actors
# down. On exit (or SIGTERM from `docker compose stop`) the node leaves the cluster cleanly.
set -eu
: "${RAY_ADDRESS:?RAY_ADDRESS must name the Ray head (host:port), e.g. ray-head:6379}"
[ "$#" -gt 0 ] || { echo "usage: falcon-lite-ray-node COMMAND [ARGS...]" >&2; exit 2; }

# A restarted container keeps /tmp: start from a clean Ray temp dir every time.
rm -rf /tmp/ray
tries=0
until ray start --address="$RAY_ADDRESS" --num-cpus=0 --disable-usage-stats \
    --object-store-memory="${RAY_OBJECT_STORE_MEMORY:-200000000}"; do
  tries=$((tries + 1))
  if [ "$tries" -ge 30 ]; then
    echo "falcon-lite-ray-node: could not join the Ray cluster at $RAY_ADDRESS" >&2
    exit 1
  fi
  sleep 2
done

"$@" &
child=$!
trap 'kill -TERM "$child" 2>/dev/null || true' TERM INT
# `wait` returns early when a trapped signal arrives; wait again for the child to finish.
status=0
wait "$child" || status=$?
if kill -0 "$child" 2>/dev/null; then
  wait "$child" || status=$?
fi
ray stop > /dev/null 2>&1 || true
exit "$status"
