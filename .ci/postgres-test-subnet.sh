#!/usr/bin/env bash
# Lets the multi-instance tests reach the local PostgreSQL from their network namespaces.
#
# The tests put each `callbridge serve` in its own namespace on a bridge in
# 10.213.0.0/16 (tests/testnet.py); PostgreSQL then sees them on the bridge's address, not
# on loopback. This listens on every address and trusts loopback and that subnet only.
# Idempotent: it restarts the server only when it does not listen everywhere yet, and
# reloads it only when the access rule is new. For a test machine, never for production.
set -euo pipefail

SUBNET=10.213.0.0/16
version=$(ls /etc/postgresql | sort -V | tail -1)
conf=/etc/postgresql/$version/main
psql_at() { psql -h 127.0.0.1 -U postgres -d postgres -Atc "$1"; }

listen_conf=$conf/conf.d/91-callbridge-test-subnet.conf
if [ "$(cat "$listen_conf" 2>/dev/null || true)" != "listen_addresses = '*'" ]; then
  echo "listen_addresses = '*'" >"$listen_conf"
fi
hba_line="host all all $SUBNET trust  # callbridge multi-instance tests"
if ! grep -qxF "$hba_line" "$conf/pg_hba.conf"; then
  echo "$hba_line" >>"$conf/pg_hba.conf"
  pg_ctlcluster --skip-systemctl-redirect "$version" main reload
fi
if [ "$(psql_at 'SHOW listen_addresses')" != "*" ]; then
  pg_ctlcluster --skip-systemctl-redirect "$version" main restart
  for _ in $(seq 1 30); do pg_isready -h 127.0.0.1 -p 5432 >/dev/null 2>&1 && break; sleep 1; done
fi
[ "$(psql_at 'SHOW listen_addresses')" = "*" ]
psql_at "SELECT address, netmask FROM pg_hba_file_rules" | grep -qx "10.213.0.0|255.255.0.0"
echo "PostgreSQL accepts the test subnet $SUBNET"
