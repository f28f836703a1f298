#!/usr/bin/env bash
# Idempotent set-up for a Debian 12 host, as root: system packages, kernel headers,
# tracefs, and a virtualenv that imports Debian's bcc and pip-installs the rest.
set -euo pipefail
cd "$(dirname "$0")/.."

say() { echo "setup: $*" >&2; }

[ "$(id -u)" = 0 ] || { say "must run as root (BPF, apt, mounts)"; exit 3; }

arch=$(dpkg --print-architecture)
release=$(uname -r)
pkgs=(python3-bpfcc python3-venv python3-pip iproute2 openssh-client openssh-server util-linux git procps openssl curl bpftool)
# `make test` also needs a real browser for the timeline page test (GPUGUARD_SETUP_TEST=1)
# and a PostgreSQL server for the store tests (they start throwaway clusters themselves)
[ "${GPUGUARD_SETUP_TEST:-0}" = 1 ] && pkgs+=(chromium postgresql-15)
missing=()
for p in "${pkgs[@]}"; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
# Kernel headers: the running kernel's own if the distro has them, else the generic ones
# (BCC is pointed at them by agent/headers.py; safe because probes use stable ABI only).
if [ ! -d "/lib/modules/$release/build/include" ]; then
    if ! ls -d /usr/src/linux-headers-*-"$arch" >/dev/null 2>&1; then
        missing+=("__headers__")
    fi
fi
if [ ${#missing[@]} -gt 0 ]; then
    say "installing: ${missing[*]}"
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq
    real=()
    for p in "${missing[@]}"; do [ "$p" = "__headers__" ] || real+=("$p"); done
    if printf '%s\n' "${missing[@]}" | grep -q "__headers__"; then
        if apt-cache show "linux-headers-$release" >/dev/null 2>&1; then
            real+=("linux-headers-$release")
        else
            say "no linux-headers-$release in the archive: using generic linux-headers-$arch"
            real+=("linux-headers-$arch")
        fi
    fi
    apt-get install -y -qq --no-install-recommends "${real[@]}" >/dev/null
fi

mountpoint -q /sys/kernel/tracing || mount -t tracefs tracefs /sys/kernel/tracing
mountpoint -q /sys/kernel/debug || mount -t debugfs debugfs /sys/kernel/debug 2>/dev/null || true

if [ ! -x .venv/bin/python ] || ! .venv/bin/python -c 'import bcc' 2>/dev/null; then
    say "creating .venv (with system site-packages for Debian's bcc)"
    rm -rf .venv
    /usr/bin/python3 -m venv --system-site-packages .venv
fi
stamp=.venv/.gpuguard-installed
if [ ! -f "$stamp" ] || [ pyproject.toml -nt "$stamp" ]; then
    say "installing python dependencies into .venv"
    .venv/bin/pip install -q --disable-pip-version-check -e '.[dev]'
    touch "$stamp"
fi
.venv/bin/python -c 'import bcc, grpc, google.protobuf, msgpack, yaml, prometheus_client, psycopg, psycopg_pool, numpy, pynvml, nats' || { say "python deps incomplete"; exit 3; }
# the agent's small plain-C libraries, loaded with ctypes (without them the agent uses its pure-Python paths):
# the ring-buffer callback (agent/ringcb.c) and the events' bytes by the batch (agent/wire.c)
for lib in ringcb wire; do
    if [ ! -f agent/_$lib.so ] || [ agent/$lib.c -nt agent/_$lib.so ]; then
        cc -O2 -shared -fPIC -o agent/_$lib.so agent/$lib.c && say "built agent/_$lib.so (agent/$lib.c)"
    fi
done
# gpuguard on the PATH (systemd units and the README call /usr/local/bin/gpuguard); never replace another program
link=/usr/local/bin/gpuguard
if [ ! -e "$link" ] || [ "$(readlink -f "$link")" = "$(readlink -f .venv/bin/gpuguard)" ] || \
   { [ -L "$link" ] && [ ! -e "$(readlink "$link")" ]; }; then
    ln -sfn "$PWD/.venv/bin/gpuguard" "$link"
else
    say "$link exists and is not this checkout's: left alone"
fi
say "ready ($(uname -r); bcc from Debian; venv .venv)"
