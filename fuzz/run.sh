#!/bin/sh
# Fuzz the parser for SECONDS (default 30).  Exit status non-zero on a crash or a broken
# invariant.  Seeds: every request in tests/http, prefixed with the two selector bytes the
# target reads first (protocol, environ mode).  Needs: pip install atheris.
set -eu
SECONDS_TO_RUN=${1:-30}
HERE=$(cd "$(dirname "$0")" && pwd)
ROOT=$(dirname "$HERE")
WORK=${FUZZ_WORKDIR:-$(mktemp -d)}
mkdir -p "$WORK/corpus"
python3 - "$ROOT/tests/http" "$WORK/corpus" <<'PY'
import codecs, json, pathlib, sys
src, dst = pathlib.Path(sys.argv[1]), pathlib.Path(sys.argv[2])
for path in src.glob("*/*.http"):
    data = codecs.escape_decode(path.read_bytes().replace(b"\n", b""))[0]
    uwsgi = json.loads(path.with_suffix(".json").read_text()).get("protocol") == "uwsgi"
    # FuzzedDataProvider: ConsumeBool x2, ConsumeIntInRange(0, 8) -> 0 cuts, then the data
    (dst / (path.parent.name + "-" + path.stem)).write_bytes(bytes([uwsgi, 0, 0]) + data)
PY
cd "$ROOT"
PYTHONPATH="$ROOT${PYTHONPATH:+:$PYTHONPATH}" exec python3 "$HERE/fuzz_parser.py" \
    -max_total_time="$SECONDS_TO_RUN" -max_len=4096 -timeout=10 \
    -artifact_prefix="$WORK/" "$WORK/corpus"
