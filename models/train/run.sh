#!/bin/sh
# Regenerates the data, trains, exports models/bundles/tiny, evaluates, and writes
# samples/ and models/tests/reference/. Extra arguments go to mmtrain.pipeline
# (e.g. --threads 1 on a busy machine, --reuse-data to skip data generation).
set -eu
here=$(cd "$(dirname "$0")" && pwd)
cd "$here"
exec "$here/../../.venv/bin/python" -m mmtrain.pipeline "$@"
