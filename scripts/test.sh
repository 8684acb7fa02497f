#!/usr/bin/env bash
# `bun run test`: the whole suite, the Postgres tier included. Uses DATABASE_TEST_URL when set;
# otherwise finds the local PostgreSQL (127.0.0.1:5432, database `test`) or starts it the way
# .ci/run does (scripts/start-postgres.sh), and sets DATABASE_TEST_URL. Without a usable server it
# stops with an error instead of skipping that tier. A developer without PostgreSQL may run the rest
# with COLA_TEST_SKIP_POSTGRES=1 (refused when CI is set). Arguments go to `bun test`.
set -euo pipefail
cd "$(dirname "$0")/.."
LOCAL_URL=postgres://postgres@127.0.0.1:5432/test

# Exit status 0 when the server at $1 answers `select 1`.
pg_ok() { bun -e 'const pg = require("pg"); const c = new pg.Client({ connectionString: process.argv[1], connectionTimeoutMillis: 3000 }); c.connect().then(() => c.query("select 1")).then(() => process.exit(0), () => process.exit(1));' "$1" 2>/dev/null; }

if [ -z "${DATABASE_TEST_URL:-}" ] && [ "${COLA_TEST_SKIP_POSTGRES:-0}" = 1 ]; then
  if [ -n "${CI:-}" ]; then
    echo "test: COLA_TEST_SKIP_POSTGRES=1 is not allowed in CI: the Postgres tier must run" >&2
    exit 2
  fi
  echo "test: COLA_TEST_SKIP_POSTGRES=1: the Postgres tier is NOT run" >&2
else
  url=${DATABASE_TEST_URL:-$LOCAL_URL}
  if ! pg_ok "$url" && [ -z "${DATABASE_TEST_URL:-}" ]; then
    echo "test: no PostgreSQL at $url; starting it (scripts/start-postgres.sh)" >&2
    bash scripts/start-postgres.sh >&2 || true
  fi
  if ! pg_ok "$url"; then
    echo "test: PostgreSQL at $url is not usable, so the Postgres tier cannot run." >&2
    echo "      Start it (bash scripts/start-postgres.sh), set DATABASE_TEST_URL, or run without that tier: COLA_TEST_SKIP_POSTGRES=1 bun run test" >&2
    exit 1
  fi
  export DATABASE_TEST_URL=$url
fi
exec bun test --timeout 300000 "$@"
