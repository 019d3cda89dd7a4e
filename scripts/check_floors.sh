#!/usr/bin/env bash
# Prove the dependency floors in pyproject.toml work: in a scratch venv, install
# exactly the lowest version each runtime dependency allows, install roost itself
# without dependencies, start `roost serve` on a free loopback port and drive it
# (GET /healthz -> 200, create a session -> 201, append a message -> 201).
#
# Usage: bash scripts/check_floors.sh [aiohttp==X pydantic==Y ...]
#   With no arguments the pins are read from pyproject.toml's ">=" floors.
#   With arguments those exact pins are tried instead (to look for a floor).
# Exits 0 when the server worked; non-zero (with the server's log) when not.
# The scratch venv lives in a temporary directory removed on exit.
set -euo pipefail
cd "$(dirname "$0")/.."
PY="${PYTHON:-python3}"
TIMEOUT="${ROOST_TEST_TIMEOUT:-10}"

if [[ $# -gt 0 ]]; then
  PINS=("$@")
else
  # "aiohttp>=3.12,<4" -> "aiohttp==3.12"; a dependency without a floor is an error
  mapfile -t PINS < <("$PY" - <<'EOF'
import re, sys, tomllib
deps = tomllib.load(open("pyproject.toml", "rb"))["project"]["dependencies"]
for dep in deps:
    m = re.match(r"^([A-Za-z0-9_.-]+)\s*>=\s*([0-9][^,;\s]*)", dep)
    if not m:
        sys.exit(f"dependency without a '>=' floor: {dep!r}")
    print(f"{m[1]}=={m[2]}")
EOF
  )
fi

WORK="$(mktemp -d "${TMPDIR:-/tmp}/roost-floors.XXXXXX")"
SERVER_PID=""
cleanup() {
  if [[ -n "$SERVER_PID" ]] && kill -0 "$SERVER_PID" 2>/dev/null; then
    kill -TERM "$SERVER_PID" 2>/dev/null || true
    for _ in $(seq 1 50); do kill -0 "$SERVER_PID" 2>/dev/null || break; sleep 0.1; done
    kill -KILL "$SERVER_PID" 2>/dev/null || true
  fi
  rm -rf "$WORK"
}
trap cleanup EXIT

echo "[floors] pins: ${PINS[*]}" >&2
"$PY" -m venv "$WORK/venv"
VPY="$WORK/venv/bin/python"
"$VPY" -m pip install -q --disable-pip-version-check "${PINS[@]}"
"$VPY" -m pip install -q --disable-pip-version-check --no-deps -e .
"$VPY" -m pip list --disable-pip-version-check 2>/dev/null \
  | grep -Ei '^(aiohttp|pydantic|pydantic.core|orjson|prometheus.client|yarl|multidict) ' >&2 || true

PORT="$("$VPY" -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')"
# run from the work dir so the scratch venv's install (not the checkout on sys.path) is used
(cd "$WORK" && exec "$WORK/venv/bin/roost" serve --host 127.0.0.1 --port "$PORT" \
  --data-dir "$WORK/data") >"$WORK/server.log" 2>&1 &
SERVER_PID=$!

if ! "$VPY" - "$PORT" "$TIMEOUT" "$SERVER_PID" <<'EOF'
import json, os, sys, time, urllib.error, urllib.request

port, timeout, pid = int(sys.argv[1]), float(sys.argv[2]), int(sys.argv[3])
base = f"http://127.0.0.1:{port}"

def call(method, path, body=None):
    data = None if body is None else json.dumps(body).encode()
    req = urllib.request.Request(base + path, data=data, method=method)
    if data is not None:
        req.add_header("Content-Type", "application/json")
    with urllib.request.urlopen(req, timeout=timeout) as r:
        return r.status, json.loads(r.read() or b"null")

deadline = time.monotonic() + timeout
while True:
    try:
        status, _ = call("GET", "/healthz")
        if status == 200:
            break
    except (OSError, urllib.error.URLError):
        pass
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        sys.exit("server exited before /healthz answered")
    if time.monotonic() > deadline:
        sys.exit(f"/healthz did not answer 200 within {timeout}s")
    time.sleep(0.05)
status, sess = call("POST", "/api/sessions", {"id": "floors"})
assert status == 201, (status, sess)
status, msg = call("POST", "/api/sessions/floors/messages", {"role": "user", "content": "hi"})
assert status == 201 and msg["content"] == "hi", (status, msg)
status, page = call("GET", "/api/sessions/floors/messages")
assert status == 200 and [m["content"] for m in page["items"]] == ["hi"], page
print("[floors] healthz, create session, append, list: ok", file=sys.stderr)
EOF
then
  echo "[floors] FAILED with ${PINS[*]}; server log:" >&2
  cat "$WORK/server.log" >&2
  exit 1
fi
echo "[floors] ok: ${PINS[*]}" >&2
