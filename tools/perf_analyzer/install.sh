#!/usr/bin/env bash
# Build the perf_analyzer tool environment (default: .venv-perf/ in the repository root).
#
# Why a separate environment: NVIDIA's real perf_analyzer binary ships only inside the
# tritonclient==2.40.0 wheel (newer wheels dropped it; PyPI's `perf-analyzer` is an empty
# placeholder). Installing that old wheel into the project's .venv would pin the project's own
# tritonclient back, so it lives in a venv of its own, installed --no-deps (only the binary is used).
# Its two missing libraries: libcudart.so.12 (PyPI nvidia-cuda-runtime-cu12; needed to load even on
# a CPU-only machine) and libb64.so.0d (Debian libb64-0d: installed with apt when root and not yet
# present, else its .deb is fetched with `apt-get download` and unpacked into the tool folder).
# tools/perf_analyzer/perf_analyzer is the wrapper that sets LD_LIBRARY_PATH and runs it.
set -euo pipefail
PY=${PY:-python3}
DEST=${1:-.venv-perf}
TRITONCLIENT=2.40.0
CUDART=12.9.79

test -x "$DEST/bin/python" || "$PY" -m venv "$DEST"
"$DEST/bin/pip" install -q --no-deps "tritonclient==$TRITONCLIENT" "nvidia-cuda-runtime-cu12==$CUDART"
test -x "$DEST/bin/perf_analyzer" || { echo "perf_analyzer binary missing from tritonclient==$TRITONCLIENT" >&2; exit 1; }

if ! /sbin/ldconfig -p 2>/dev/null | grep -q 'libb64\.so\.0d' && ! ls "$DEST"/libb64/usr/lib/*/libb64.so.0d >/dev/null 2>&1; then
    if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
        apt-get install -y -q libb64-0d >/dev/null || { apt-get update -q >/dev/null && apt-get install -y -q libb64-0d >/dev/null; }
    else
        tmp=$(mktemp -d)
        (cd "$tmp" && apt-get download libb64-0d)
        dpkg-deb -x "$tmp"/libb64-0d_*.deb "$DEST/libb64"
        rm -rf "$tmp"
    fi
fi
PERF_ENV="$(cd "$DEST" && pwd)" "$(dirname "$0")/perf_analyzer" --version
