#!/usr/bin/env bash
# Installs the Debian packages the local stack and the image tests need, when run as root
# on Debian/Ubuntu; elsewhere says what is missing.
set -euo pipefail

PACKAGES=(buildah docker-registry busybox-static uidmap)

missing=()
for pkg in "${PACKAGES[@]}"; do
  dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q "install ok installed" || missing+=("$pkg")
done
[[ ${#missing[@]} -eq 0 ]] && exit 0

if [[ $(id -u) -eq 0 ]] && command -v apt-get >/dev/null; then
  echo "installing Debian packages: ${missing[*]}" >&2
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
else
  echo "missing Debian packages: ${missing[*]} (run 'sudo apt-get install ${missing[*]}'); tests that need them are skipped" >&2
fi
