#!/usr/bin/env bash
# Prepare llama.cpp for bench/serve.py --peer llamacpp in a venv of its own (.llamacpp-venv). Run by hand,
# never in CI. Idempotent: a prepared venv is left as it is.
#
#   scripts/llamacpp-venv.sh        # about 300 MB from the package registry (the wheel carries CUDA too)
#
# llama-cpp-python is only an sdist on the package registry and builds for over 30 minutes on 2 cores (and
# its GGML_NATIVE build crashed here on Q4_1 and Q8_0 files), so the peer is llama.cpp's own C API from
# llama-cpp-cffi, a binding that ships llama.cpp prebuilt for the CPU. Only its compiled module is used
# (bench/llamacpp_peer.py loads it and calls llama.h directly), so the binding's Python dependencies
# (transformers < 5, an old huggingface-hub) are not installed: cffi is all it needs. 0.4.18 is the newest
# release whose CPU module loads on Debian 12: later ones (manylinux_2_34) need GCC 14's libstdc++
# (undefined symbol __cxa_call_terminate). Its llama.cpp is built for any x86-64 with AVX2 (no AVX-512).
set -euo pipefail
cd "$(dirname "$0")/.."
VENV=${LLAMACPP_VENV:-.llamacpp-venv}
VERSION=${LLAMA_CPP_CFFI_VERSION:-0.4.18}
STAMP="$VENV/.installed-$VERSION"
[ -f "$STAMP" ] && exit 0
PYTHON=${PYTHON:-python3.11}
test -x "$VENV/bin/python" || "$PYTHON" -m venv "$VENV"
# (the find-links and extra indexes of this machine's pip config print a warning per missing folder: hidden)
"$VENV/bin/python" -m pip install -q --no-deps --only-binary=:all: "llama-cpp-cffi==$VERSION" \
    2> >(grep -v "is ignored: it is neither" >&2)
"$VENV/bin/python" -m pip install -q --only-binary=:all: cffi 2> >(grep -v "is ignored: it is neither" >&2)
"$VENV/bin/python" bench/llamacpp_peer.py --check
touch "$STAMP"
