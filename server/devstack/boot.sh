#!/usr/bin/env bash
# The first step of `npm start` / `npm test` / `npm run bench:*` on a fresh machine:
# installs the Debian packages the stack runs on (as root; otherwise prints the
# command), installs node_modules when missing or stale, then hands over to the
# TypeScript entry (server/devstack/<entry>.ts) under Node 22 from node_modules.
set -euo pipefail
cd "$(dirname "$0")/../.."
entry="${1:?usage: boot.sh <start|test|bench-...> [args]}"; shift

packages=(postgresql-15 postgresql-15-cron pushpin zurl)
if [ "$entry" = "test" ]; then packages+=(chromium); fi
missing=()
for p in "${packages[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if [ ${#missing[@]} -gt 0 ]; then
  if [ "$(id -u)" = 0 ]; then
    echo "{\"msg\":\"installing Debian packages\",\"packages\":\"${missing[*]}\"}"
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq
    apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
  else
    echo "Missing Debian packages: ${missing[*]}" >&2
    echo "Run: sudo apt-get update && sudo apt-get install -y ${missing[*]}" >&2
    exit 1
  fi
fi
# The Debian pushpin package starts a system-wide instance on port 7999; ours is project-local.
if [ "$(id -u)" = 0 ] && command -v systemctl >/dev/null 2>&1 && systemctl is-active --quiet pushpin 2>/dev/null; then
  systemctl stop pushpin || true
fi
if [ "$(id -u)" = 0 ] && pgrep -x pushpin >/dev/null 2>&1 && [ -f /var/run/pushpin/pushpin.pid ]; then
  kill "$(cat /var/run/pushpin/pushpin.pid)" 2>/dev/null || true
fi

if [ ! -f node_modules/.package-lock.json ] || [ package-lock.json -nt node_modules/.package-lock.json ]; then
  echo '{"msg":"installing node modules (npm ci)"}'
  npm ci --no-audit --no-fund --loglevel=error
fi

# node_modules/.bin holds Node 22 (the `node` package); PostGraphile 5 needs it.
export PATH="$PWD/node_modules/.bin:$PATH"
exec node_modules/.bin/tsx "server/devstack/$entry.ts" "$@"
