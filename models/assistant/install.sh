#!/bin/sh
# Installs the pretrained assistant-en bundle into mmrt's cache (see README.md here):
#   models/assistant/install.sh [--cache-dir DIR] [--force] [--check] [--keep-failed]
# Needs python3 (3.10 or newer) with the venv module and pip; everything else it needs
# is installed into <cache>/assistant-venv. MMRT_PYTHON picks another interpreter.
set -eu
here=$(CDPATH= cd -- "$(dirname -- "$0")" && pwd)
python=${MMRT_PYTHON:-python3}
if ! command -v "$python" >/dev/null 2>&1; then
    echo "error: $python was not found; install Python 3.10 or newer" \
         "(Debian/Ubuntu: sudo apt-get install python3 python3-venv python3-pip)" >&2
    exit 127
fi
if ! "$python" -c 'import sys; sys.exit(sys.version_info < (3, 10))'; then
    echo "error: $("$python" -V 2>&1) is too old; the installer needs Python 3.10 or newer" >&2
    exit 1
fi
exec "$python" "$here/install.py" "$@"
