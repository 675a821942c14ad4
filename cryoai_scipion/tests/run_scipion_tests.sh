#!/usr/bin/env bash
# Run the plugin tests the way `scipion3 tests cryoai_scipion.tests` does, headless and offline, in a
# throwaway SCIPION_HOME, and close with a pytest-style "N passed" line for CI.
# Usage: run_scipion_tests.sh [PYTHON]   (default: python3; the environment must hold the plugin)
set -uo pipefail
PY="${1:-python3}"
PY="$(command -v "$PY")"
PY="$(cd "$(dirname "$PY")" && pwd)/$(basename "$PY")"   # absolute, without resolving the venv symlink
WORK="$(mktemp -d)"
trap 'rm -rf "$WORK"' EXIT
mkdir -p "$WORK/home" "$WORK/userdata"
export SCIPION_HOME="$WORK/home" SCIPION_USER_DATA="$WORK/userdata"
export SCIPION_NOTIFY=False SCIPION_TEST_NOSYNC=True
export SCIPION_PYTHON="$PY"             # protocol subprocesses must use this environment's python
export CRYOAI_ENV_ACTIVATION=""         # run `cryoai` from the same environment
export MPLBACKEND=Agg
START=$(date +%s)
"$PY" -m scipion tests cryoai_scipion.tests 2>&1 | tee "$WORK/log"
STATUS=${PIPESTATUS[0]}
CLEAN="$(sed 's/\x1b\[[0-9;]*m//g' "$WORK/log")"
PASSED=$(printf '%s\n' "$CLEAN" | sed -n 's/.*\[  PASSED  \] \([0-9]*\) tests.*/\1/p' | tail -1)
FAILED=$(printf '%s\n' "$CLEAN" | sed -n 's/.*\[  FAILED  \] \([0-9]*\) tests.*/\1/p' | tail -1)
SECONDS_TAKEN=$(( $(date +%s) - START ))
if [ -n "${FAILED:-}" ] && [ "${FAILED}" != "0" ]; then
    echo "${FAILED} failed, ${PASSED:-0} passed in ${SECONDS_TAKEN}s (scipion tests cryoai_scipion.tests)"
else
    echo "${PASSED:-0} passed in ${SECONDS_TAKEN}s (scipion tests cryoai_scipion.tests)"
fi
exit "$STATUS"
