#!/bin/sh
# Lists functions over 60 lines, production files over 500 lines and import cycles between the
# files of src/ (the layout targets of ADR 13); exits 1 when one is missed. Part of `make test`.
# See check-structure.py.
set -eu
cd "$(dirname "$0")/.."
exec python3 scripts/check-structure.py "${1:-src}"
