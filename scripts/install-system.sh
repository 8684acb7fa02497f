#!/usr/bin/env bash
# Installs the system packages the service and its tests need on Debian 12 (bookworm) or 13:
# a WebGPU-capable Vulkan driver when no GPU driver is present (Mesa >= 25 lavapipe: Debian 12's
# own Mesa 22.3 is refused by Dawn, so it comes from bookworm-backports), Bun, and PostgreSQL.
# Idempotent: does nothing that is already done.
set -euo pipefail
BUN_VERSION=1.4.5
SUDO=""; [ "$(id -u)" = 0 ] || SUDO="sudo"
. /etc/os-release
need_apt=()

have_vulkan_driver() {
  # A GPU vendor ICD or Mesa >= 25 lavapipe.
  ls /usr/share/vulkan/icd.d/nvidia_icd.json /etc/vulkan/icd.d/nvidia_icd.json 2>/dev/null | grep -q . && return 0
  local v; v=$(dpkg-query -W -f='${Version}' mesa-vulkan-drivers 2>/dev/null || true)
  [ -n "$v" ] && dpkg --compare-versions "$v" ge 25 && dpkg -s libvulkan1 >/dev/null 2>&1
}

if ! have_vulkan_driver; then
  if [ "${VERSION_CODENAME:-}" = bookworm ]; then
    if [ ! -f /etc/apt/sources.list.d/bookworm-backports.sources ] && ! grep -rqs bookworm-backports /etc/apt/sources.list /etc/apt/sources.list.d/; then
      uris=$(awk '/^URIs:/{print $2; exit}' /etc/apt/sources.list.d/debian.sources 2>/dev/null || true)
      $SUDO tee /etc/apt/sources.list.d/bookworm-backports.sources >/dev/null <<SRC
Types: deb
URIs: ${uris:-http://deb.debian.org/debian}
Suites: bookworm-backports
Components: main
Signed-By: /usr/share/keyrings/debian-archive-keyring.gpg
SRC
    fi
    $SUDO apt-get update -qq
    DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq -t bookworm-backports mesa-vulkan-drivers libvulkan1 >/dev/null
  else
    $SUDO apt-get update -qq
    DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq mesa-vulkan-drivers libvulkan1 >/dev/null
  fi
fi

command -v pg_ctlcluster >/dev/null || need_apt+=(postgresql)
command -v unzip >/dev/null || need_apt+=(unzip)
# Chromium for the dashboard's browser tests (test/ui.browser.test.ts drives /usr/bin/chromium).
[ -x /usr/bin/chromium ] || need_apt+=(chromium)
if [ ${#need_apt[@]} -gt 0 ]; then
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq "${need_apt[@]}" >/dev/null
fi

# Bun from the npm registry (the package ships the prebuilt binary).
if ! command -v bun >/dev/null || [ "$(bun --version)" != "$BUN_VERSION" ]; then
  if ! command -v npm >/dev/null; then
    DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq nodejs npm >/dev/null
  fi
  $SUDO npm install -g --no-fund --no-audit "bun@$BUN_VERSION" >/dev/null
fi
bun --version
