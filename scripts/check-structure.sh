#!/bin/sh
# Lists functions over 60 lines, production files over 500 lines and import cycles between the
# files of src/ (issue 13's structure targets); exits 1 when one is missed. See check-structure.py.
set -eu
cd "$(dirname "$0")/.."
exec python3 scripts/check-structure.py "${1:-src}"
