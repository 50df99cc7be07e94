#!/usr/bin/env bash
# The project's one test command (README, CI): installs what is missing, type-checks, lints, runs vitest,
# and ends with a plain "N passed, N failed" line.
set -uo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh || exit 1
mkdir -p .cache
echo "test: type-checking" >&2
npx --no-install tsc -p tsconfig.json --noEmit || exit 1
echo "test: linting" >&2
npx --no-install eslint --max-warnings 0 . || exit 1
rm -f .cache/vitest.json
npx --no-install vitest run --reporter=default --reporter=json --outputFile.json=.cache/vitest.json "$@"
rc=$?
if [[ -f .cache/vitest.json ]]; then
  node -e '
    const r = JSON.parse(require("fs").readFileSync(".cache/vitest.json", "utf8"));
    const skipped = (r.numPendingTests ?? 0) + (r.numTodoTests ?? 0);
    console.log(`tests: ${r.numPassedTests} passed, ${r.numFailedTests} failed` + (skipped ? `, ${skipped} skipped` : ""));
    if (r.numTotalTests === 0) process.exitCode = 1;
  ' || rc=1
fi
# vitest also fails a run whose tests all passed when something threw outside a test (an
# unhandled error): say so, so the last line never reads as green while the exit status is red.
if [[ $rc -ne 0 ]]; then echo "tests: vitest exited $rc (failed tests, or unhandled errors reported above)"; fi
exit $rc
