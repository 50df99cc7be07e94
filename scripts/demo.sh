#!/usr/bin/env bash
# The main job (README): installs what is missing, then runs the demo.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
exec npx --no-install tsx scripts/demo.ts "$@"
