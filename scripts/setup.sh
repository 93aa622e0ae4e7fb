#!/usr/bin/env bash
# Installs the Debian packages modlm builds against, only those that are missing; arguments name
# extra packages to install the same way.
set -euo pipefail
PKGS=(build-essential cmake pkg-config libopenblas-openmp-dev libomp-dev nlohmann-json3-dev
      libcli11-dev libsentencepiece-dev zlib1g-dev libgtest-dev libbenchmark-dev
      libcpp-httplib-dev chromium libopenmpi-dev openmpi-bin libpcre2-dev)
# The server's client test runs the official `openai` package on Node (tests/openai_client):
# Debian's nodejs and npm, unless a Node with npm is already on the PATH.
if ! command -v node >/dev/null 2>&1 || ! command -v npm >/dev/null 2>&1; then PKGS+=(nodejs npm); fi
PKGS+=("$@")  # extra packages a caller needs (scripts/fuzz.sh: clang and its runtimes)
missing=()
for p in "${PKGS[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if [ ${#missing[@]} -gt 0 ]; then
  echo "setup: installing ${missing[*]}"
  SUDO=""; [ "$(id -u)" -eq 0 ] || SUDO="sudo"
  export DEBIAN_FRONTEND=noninteractive
  # Another apt (unattended upgrades at boot) may hold the dpkg lock: wait for it, up to 10 min,
  # instead of failing at once.
  APT=(apt-get -o DPkg::Lock::Timeout=600)
  $SUDO "${APT[@]}" update -qq || true
  $SUDO "${APT[@]}" install -y -qq "${missing[@]}"
fi
