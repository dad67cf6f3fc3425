#!/usr/bin/env bash
# Run a command while a wheelhouse folder is served over HTTP on loopback, with WHEELHOUSE_URL set to it:
#   containers/with-wheel-server.sh DIR COMMAND [ARG...]
# `make build-training WHEELS_OVER_HTTP=1` uses it so the image build installs the wheels straight from the host
# (`docker build --network host`) instead of from a copy in the build context: the GPU flavour's 2.5 GB of wheels
# then cost no context upload and no build-stage layer (about 5 GB less disk at the build's peak).
set -euo pipefail
dir=$1
shift
[ -d "$dir" ] || { echo "with-wheel-server: no folder $dir (run make wheelhouse first)" >&2; exit 2; }
py=${PYTHON:-python3}
port=$("$py" -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
"$py" -m http.server --bind 127.0.0.1 --directory "$dir" "$port" >/dev/null 2>&1 &
server=$!
trap 'kill "$server" 2>/dev/null || true; wait "$server" 2>/dev/null || true' EXIT
for _ in $(seq 1 50); do
    "$py" -c "import urllib.request as u; u.urlopen('http://127.0.0.1:$port/', timeout=1)" 2>/dev/null && break
    kill -0 "$server" 2>/dev/null || { echo "with-wheel-server: the HTTP server did not start" >&2; exit 1; }
    sleep 0.2
done
export WHEELHOUSE_URL="http://127.0.0.1:$port/"
echo "with-wheel-server: $dir at $WHEELHOUSE_URL"
"$@"
