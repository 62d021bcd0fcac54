#!/usr/bin/env bash
# Installs everything wallwatch needs on a fresh Debian machine, as root:
# Debian packages for the lab (iproute2, iptables NFQUEUE, tc), a compiler and
# headers for netfilterqueue, and the project's virtualenv in .venv.
# Idempotent: a second run only checks.
set -euo pipefail
cd "$(dirname "$0")/.."

APT_PACKAGES=(
  iproute2 iptables ipset ethtool tcpdump iputils-ping iperf3 procps
  libnetfilter-queue-dev build-essential python3 python3-venv python3-dev
  ca-certificates openvpn wireguard-tools wireguard-go shadowsocks-libev obfs4proxy tor
  libndpi-bin chromium nodejs
)

missing=()
for pkg in "${APT_PACKAGES[@]}"; do
  dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q "install ok installed" || missing+=("$pkg")
done
if ((${#missing[@]})); then
  echo "wallwatch: installing Debian packages: ${missing[*]}"
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi

# The newest python3 >= 3.11 on PATH (a pyenv build is fine; Debian 12's is 3.11).
PY=""
# (stderr quiet: a pyenv shim for a version not selected prints a complaint and fails, which is fine)
for cand in python3.13 python3.12 python3.11 python3; do
  if command -v "$cand" >/dev/null && "$cand" -c 'import sys; sys.exit(sys.version_info < (3, 11))' 2>/dev/null; then
    PY=$(command -v "$cand"); break
  fi
done
[ -n "$PY" ] || { echo "wallwatch: needs Python >= 3.11" >&2; exit 1; }

stamp=.venv/.wallwatch-installed
want=$(sha256sum pyproject.toml | cut -c1-16)
if [ ! -x .venv/bin/python ] || [ "$(cat "$stamp" 2>/dev/null)" != "$want" ]; then
  echo "wallwatch: building the virtualenv in .venv"
  [ -x .venv/bin/python ] || "$PY" -m venv .venv
  .venv/bin/pip install -q --upgrade pip
  .venv/bin/pip install -q -e '.[test,compile]'
  echo "$want" > "$stamp"
fi

# The ingest's hot path compiled with mypyc (analysis/compiled.py; mypyc comes with the `compile`
# extra's mypy). Skipped when the build matches the source; a failed build says why in one line and
# leaves the pure-Python source in use.
.venv/bin/python scripts/compile.py

# The dashboard's charts: Vega, Vega-Lite and vega-embed from the npm registry at the versions
# package-lock.json pins, copied into the package so pages work offline (nothing from a CDN).
# Debian's nodejs has no npm (NodeSource's does): install it only when missing.
command -v npm >/dev/null || { export DEBIAN_FRONTEND=noninteractive; apt-get install -y -qq --no-install-recommends npm >/dev/null; }
vendor=src/wallwatch/web/dashboard/static/vendor
lockstamp="$vendor/.package-lock.sha256"
want_js=$(sha256sum package-lock.json | cut -c1-16)
if [ "$(cat "$lockstamp" 2>/dev/null)" != "$want_js" ] || [ ! -f "$vendor/vega-embed.min.js" ]; then
  echo "wallwatch: installing the dashboard's chart JavaScript (npm ci)"
  npm ci --ignore-scripts --no-audit --no-fund --loglevel=error >/dev/null
  mkdir -p "$vendor"
  cp node_modules/vega/build/vega.min.js node_modules/vega-lite/build/vega-lite.min.js \
     node_modules/vega-embed/build/vega-embed.min.js "$vendor/"
  for pkg in vega vega-lite vega-embed; do cp "node_modules/$pkg/LICENSE" "$vendor/LICENSE-$pkg.txt"; done
  echo "$want_js" > "$lockstamp"
fi
