#!/usr/bin/env bash
# Install the Debian packages of packaging/system-packages.txt that are missing, and only
# those, saying which. The whole list is simulated first (`apt-get install -s`), so a
# conflict with what this machine has fails here on every machine.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
mapfile -t wanted < <(sed -e 's/#.*//' -e 's/[[:space:]]//g' "$here/system-packages.txt" | grep -v '^$')
sudo=$([ "$(id -u)" = 0 ] || echo sudo)

installed() { [ "$(dpkg-query -W -f='${db:Status-Status}' "$1" 2>/dev/null)" = installed ]; }

simulate() { apt-get install -s -qq --no-install-recommends "${wanted[@]}" >/tmp/rustaid-apt-sim.$$ 2>&1; }
if ! simulate; then
  if grep -q 'Unable to locate package\|has no installation candidate' /tmp/rustaid-apt-sim.$$; then
    echo "system-deps: refreshing the package lists (apt-get update)"
    $sudo apt-get update -qq && simulate || true
  fi
fi
if ! simulate; then
  echo "system-deps: a simulated install of the whole list (${wanted[*]}) fails here:" >&2
  tail -n 12 /tmp/rustaid-apt-sim.$$ >&2
  rm -f /tmp/rustaid-apt-sim.$$
  exit 1
fi
rm -f /tmp/rustaid-apt-sim.$$

missing=()
for p in "${wanted[@]}"; do installed "$p" || missing+=("$p"); done
if [ ${#missing[@]} -gt 0 ]; then
  echo "system-deps: installing ${missing[*]}"
  $sudo apt-get install -y -qq --no-install-recommends "${missing[@]}"
fi
# npm: Debian's package only where the Node.js on this machine brings none of its own.
if ! command -v npm >/dev/null; then
  echo "system-deps: installing npm (this Node.js has none)"
  npm_pkg=npm
  $sudo apt-get install -y -qq --no-install-recommends "$npm_pkg"
fi
[ ${#missing[@]} -gt 0 ] || echo "system-deps: every package is present"
