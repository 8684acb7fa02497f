#!/usr/bin/env bash
# Sets everything up: system packages (Vulkan driver, Bun, PostgreSQL client/server) and the
# project's packages at their pinned versions.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/install-system.sh
bun install --frozen-lockfile
