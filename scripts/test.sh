#!/usr/bin/env bash
# Run Roost's whole test suite from a fresh clone: makes .venv, installs the
# project with its test extras, then runs pytest twice: the suite (which excludes
# the `bench` marker by default), then the benchmark smoke run (`-m bench`).
# Extra arguments go to both pytest runs; a selection without bench tests is fine.
set -euo pipefail
cd "$(dirname "$0")/.."
PY="${PYTHON:-python3}"
if [[ ! -x .venv/bin/python ]]; then
  echo "[test] creating .venv" >&2
  "$PY" -m venv .venv
fi
# The browser tests drive Debian's Chromium (never a downloaded browser).
if [[ ! -x /usr/bin/chromium ]] && command -v apt-get >/dev/null; then
  echo "[test] installing chromium with apt-get" >&2
  SUDO=""
  [[ "$(id -u)" != 0 ]] && command -v sudo >/dev/null && SUDO="sudo"
  export DEBIAN_FRONTEND=noninteractive
  { $SUDO apt-get update -qq && $SUDO apt-get install -y -qq chromium; } >/dev/null ||
    echo "[test] could not install chromium: browser tests skip (fail when CI is set)" >&2
fi
echo "[test] installing roost with test, cluster and replica extras" >&2
.venv/bin/python -m pip install -q --disable-pip-version-check -e '.[test,cluster,replica]'
# the AI SDK adapter's tests run the real `ai` package in node (tests/aisdk)
if command -v npm >/dev/null \
  && [[ ! -f tests/aisdk/node_modules/.package-lock.json \
    || tests/aisdk/package-lock.json -nt tests/aisdk/node_modules/.package-lock.json ]]; then
  echo "[test] npm ci in tests/aisdk" >&2
  (cd tests/aisdk && npm ci --no-audit --no-fund --loglevel=error)
fi
echo "[test] ruff" >&2
.venv/bin/ruff check .
.venv/bin/ruff format --check . >/dev/null || { .venv/bin/ruff format --diff . | head -50; exit 1; }
echo "[test] mypy (strict: storage, actors, server)" >&2
.venv/bin/mypy
echo "[test] pytest" >&2
.venv/bin/python -m pytest "$@"
echo "[test] pytest -m bench" >&2
rc=0
.venv/bin/python -m pytest -m bench "$@" || rc=$?
# 5: the arguments selected no bench test (e.g. one test file): nothing to run
if [[ $rc -ne 0 && $rc -ne 5 ]]; then exit "$rc"; fi
