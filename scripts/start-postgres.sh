#!/usr/bin/env bash
# Starts the local PostgreSQL server (127.0.0.1:5432, trust auth, database `test`) if it is not running.
set -euo pipefail
if pg_isready -h 127.0.0.1 -p 5432 -q 2>/dev/null; then exit 0; fi
ver=$(ls /etc/postgresql 2>/dev/null | sort -V | tail -1)
if [ -z "$ver" ]; then
  ver=$(ls /usr/lib/postgresql | sort -V | tail -1)
  pg_createcluster "$ver" main >/dev/null
fi
hba=/etc/postgresql/$ver/main/pg_hba.conf
if ! grep -q '^host all all 127.0.0.1/32 trust' "$hba"; then
  sed -i '1i host all all 127.0.0.1/32 trust\nhost all all ::1/128 trust\nlocal all all trust' "$hba"
fi
pg_ctlcluster --skip-systemctl-redirect "$ver" main start
for i in $(seq 1 30); do pg_isready -h 127.0.0.1 -p 5432 -q && break; sleep 1; done
psql -h 127.0.0.1 -U postgres -tc "SELECT 1 FROM pg_database WHERE datname='test'" | grep -q 1 \
  || psql -h 127.0.0.1 -U postgres -c 'CREATE DATABASE test' >/dev/null
