#!/usr/bin/env bash
# Makes sure a Redis server, a three-node Redis Cluster and a PostgreSQL server answer on
# 127.0.0.1 for the store tests.
# Uses running servers when present; otherwise starts (and if needed installs) Debian's.
# Prints the URLs to use as shell assignments, e.g. eval "$(scripts/ensure-services.sh)".
set -euo pipefail

sudo=()
[ "$(id -u)" -ne 0 ] && sudo=(sudo -n)
apt_updated=0
apt_install() {
  export DEBIAN_FRONTEND=noninteractive
  if [ "$apt_updated" = 0 ]; then "${sudo[@]}" apt-get update -qq >/dev/null; apt_updated=1; fi
  "${sudo[@]}" apt-get install -y -qq "$@" >/dev/null
}

wait_for() { # command, what
  for _ in $(seq 1 50); do
    if eval "$1" >/dev/null 2>&1; then return 0; fi
    sleep 0.2
  done
  echo "ensure-services: $2 did not come up" >&2
  return 1
}

# Redis
if ! (exec 3<>/dev/tcp/127.0.0.1/6379) 2>/dev/null; then
  command -v redis-server >/dev/null || apt_install redis-server
  mkdir -p /tmp/portcullis-redis
  redis-server --daemonize yes --bind 127.0.0.1 --port 6379 --save "" --appendonly no \
    --dir /tmp/portcullis-redis --logfile /tmp/portcullis-redis/redis.log >/dev/null
  wait_for "redis-cli -h 127.0.0.1 ping | grep -q PONG" "redis"
fi

# Redis Cluster: three primaries on 7000-7002 (override with PORTCULLIS_CLUSTER_PORTS),
# cluster mode, in a temp dir, daemonized; reused when already formed.
cluster_ports=(${PORTCULLIS_CLUSTER_PORTS:-7000 7001 7002})
cluster_ok() { redis-cli -h 127.0.0.1 -p "${cluster_ports[0]}" cluster info 2>/dev/null | grep -q '^cluster_state:ok'; }
if ! cluster_ok; then
  for port in "${cluster_ports[@]}"; do
    if ! (exec 3<>"/dev/tcp/127.0.0.1/$port") 2>/dev/null; then
      dir="/tmp/portcullis-redis-cluster/$port"
      rm -rf "$dir" && mkdir -p "$dir"
      redis-server --daemonize yes --bind 127.0.0.1 --port "$port" --cluster-enabled yes \
        --cluster-config-file "$dir/nodes.conf" --cluster-node-timeout 5000 \
        --save "" --appendonly no --dir "$dir" --logfile "$dir/redis.log" >/dev/null
    fi
  done
  for port in "${cluster_ports[@]}"; do
    wait_for "redis-cli -h 127.0.0.1 -p $port ping | grep -q PONG" "redis cluster node $port"
  done
  if ! cluster_ok; then
    nodes=()
    for port in "${cluster_ports[@]}"; do nodes+=("127.0.0.1:$port"); done
    redis-cli --cluster create "${nodes[@]}" --cluster-replicas 0 --cluster-yes >/dev/null
  fi
  wait_for cluster_ok "redis cluster (cluster_state:ok)"
fi
cluster_url="redis+cluster://$(printf '127.0.0.1:%s,' "${cluster_ports[@]}")"
cluster_url="${cluster_url%,}"

# PostgreSQL
pg_up() { (exec 3<>/dev/tcp/127.0.0.1/5432) 2>/dev/null; }
if ! pg_up; then
  if ! ls /etc/postgresql/*/main >/dev/null 2>&1; then
    apt_install postgresql
  fi
  ver=$(ls /etc/postgresql | sort -V | tail -n1)
  "${sudo[@]}" pg_ctlcluster --skip-systemctl-redirect "$ver" main start || true
  wait_for pg_up "postgresql"
fi
# A database and a password login that work both with trust and with scram auth.
if command -v psql >/dev/null; then
  as_pg=(psql -h 127.0.0.1 -U postgres -d postgres -tAc)
  if ! PGPASSWORD=postgres "${as_pg[@]}" "select 1" >/dev/null 2>&1; then
    "${sudo[@]}" su postgres -c "psql -tAc \"ALTER USER postgres PASSWORD 'postgres'\"" >/dev/null
  fi
  if ! PGPASSWORD=postgres "${as_pg[@]}" "select 1 from pg_database where datname='test'" | grep -q 1; then
    PGPASSWORD=postgres "${as_pg[@]}" "create database test" >/dev/null
  fi
fi

echo "export PORTCULLIS_TEST_POSTGRES_URL=${PORTCULLIS_TEST_POSTGRES_URL:-postgres://postgres:postgres@127.0.0.1:5432/test}"
echo "export PORTCULLIS_TEST_REDIS_URL=${PORTCULLIS_TEST_REDIS_URL:-redis://127.0.0.1:6379}"
echo "export PORTCULLIS_TEST_REDIS_CLUSTER_URL=${PORTCULLIS_TEST_REDIS_CLUSTER_URL:-$cluster_url}"
