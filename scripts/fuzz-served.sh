#!/usr/bin/env bash
# schemathesis, all checks, over both OpenAPI documents (/openapi.json: 3.1, the app;
# /docs.json: 3.0, with BentoML's routes) against a served instance with Redis and both tokens.
# (Redis timeout 2 s: on a loaded machine the default 0.1 s makes policy changes answer 503.)
#   scripts/fuzz-served.sh BUNDLE [MAX_EXAMPLES]     (needs redis-server; uses a free port)
set -euo pipefail
cd "$(dirname "$0")/.."
BUNDLE=$(realpath "$1"); N=${2:-60}
BIN=.venv/bin
PORT=$($BIN/python -c 'from tests.devserver import free_port; print(free_port())')
RPORT=$($BIN/python -c 'from tests.devserver import free_port; print(free_port())')
TMP=$(mktemp -d)
TOKEN=fuzz-$RANDOM$RANDOM
redis-server --port "$RPORT" --bind 127.0.0.1 --save '' --appendonly no >/dev/null & RPID=$!
trap 'kill $SPID $RPID 2>/dev/null; rm -rf "$TMP"' EXIT
RECSAE_BUNDLE=$BUNDLE REDIS_URL=redis://127.0.0.1:$RPORT/0 RECSAE_ADMIN_TOKEN=$TOKEN RECSAE_AUDIT_TOKEN=$TOKEN \
  RECSAE_REDIS_TIMEOUT_S=2 RECSAE_STATE_DIR=$TMP/state BENTOML_HOME=$TMP/bentoml BENTOML_DO_NOT_TRACK=True \
  $BIN/bentoml serve service.service:RecSAEService --host 127.0.0.1 --port "$PORT" >"$TMP/serve.log" 2>&1 & SPID=$!
for _ in $(seq 300); do curl -sf "http://127.0.0.1:$PORT/readyz" >/dev/null && break; sleep 0.2; done
rc=0
for doc in openapi.json docs.json; do
  echo "== $doc"
  $BIN/schemathesis --config-file scripts/schemathesis.toml run "http://127.0.0.1:$PORT/$doc" \
    --checks all --max-examples "$N" -H "Authorization: Bearer $TOKEN" --no-color || rc=1
done
echo "== server tracebacks: $(grep -c Traceback "$TMP/serve.log" || true)"
exit $rc
