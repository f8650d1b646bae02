#!/usr/bin/env bash
# Create bench/.venv-peers: a separate virtual env holding the peer XMC libraries
# we benchmark against (libpecos / XR-Linear, omikuji, napkinxc).
#
# Why a separate venv: libpecos 1.2.8 pins numpy<2 and scipy<1.14, which must not
# leak into the main project env.
#
# torch: libpecos declares torch>=2.0 (plus transformers/peft/datasets, used only by
# its X-Transformer / XMR parts; XR-Linear itself never imports torch). An unpinned
# torch pulls several GB of CUDA wheels, so torch==2.13.0 (a local CPU wheel found via
# pip's find-links /opt/wheels) is installed FIRST and every later pip call gets a
# constraints file holding torch==2.13.0, so the resolver can never swap it.
# torch 2.13.0 coexists with libpecos's requirements (checked: `pip check` is clean,
# numpy 1.26.x / scipy 1.13.x get picked). If that resolution ever fails, the script
# falls back to `libpecos --no-deps` plus the few deps XR-Linear really needs
# (numpy<2, scipy<1.14, scikit-learn); `pip check` will then list the missing
# transformers/peft/datasets, which the benchmark does not use.
#
# Idempotent: if the venv already imports all three peers with torch 2.13.0, it does
# nothing. Use FORCE=1 to rebuild from scratch.
#
# Usage: bash bench/setup_peers.sh        (from anywhere)
set -euo pipefail

BENCH_DIR="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
VENV="${BENCH_DIR}/.venv-peers"
PY="${VENV}/bin/python"
PYTHON="${PYTHON:-python3}"

TORCH_VERSION="2.13.0"
LIBPECOS_VERSION="${LIBPECOS_VERSION:-1.2.8}"
OMIKUJI_VERSION="${OMIKUJI_VERSION:-0.5.2}"
NAPKINXC_VERSION="${NAPKINXC_VERSION:-0.7.2}"

log() { echo "[setup_peers] $*"; }

check_venv() {
    [ -x "${PY}" ] || return 1
    "${PY}" - <<EOF 2>/dev/null
import importlib.metadata as md
import numpy, scipy, torch
assert torch.__version__.split("+")[0] == "${TORCH_VERSION}", torch.__version__
from pecos.xmc.xlinear.model import XLinearModel
from pecos.xmc import Indexer, LabelEmbeddingFactory
import omikuji
from napkinxc.models import PLT
print("[setup_peers] OK: python", __import__("sys").version.split()[0],
      "| numpy", numpy.__version__, "| scipy", scipy.__version__,
      "| torch", torch.__version__,
      "| libpecos", md.version("libpecos"),
      "| omikuji", md.version("omikuji"),
      "| napkinxc", md.version("napkinxc"))
EOF
}

if [ "${FORCE:-0}" = "1" ] && [ -d "${VENV}" ]; then
    log "FORCE=1: removing ${VENV}"
    rm -rf "${VENV}"
fi

if check_venv; then
    log "venv ${VENV} already works; nothing to do (FORCE=1 to rebuild)"
    exit 0
fi

if [ -d "${VENV}" ]; then
    log "venv ${VENV} exists but is incomplete/broken; (re)installing into it"
else
    log "creating venv ${VENV} with $(${PYTHON} --version 2>&1)"
    "${PYTHON}" -m venv "${VENV}"
fi

CONSTRAINTS="${VENV}/peers-constraints.txt"
cat > "${CONSTRAINTS}" <<EOF
# written by bench/setup_peers.sh; passed with -c to every pip call
torch==${TORCH_VERSION}
numpy<2
scipy<1.14
EOF
log "constraints file ${CONSTRAINTS}: $(grep -v '^#' "${CONSTRAINTS}" | tr '\n' ' ')"

PIP=("${PY}" -m pip --disable-pip-version-check)

log "step 1/3: installing torch==${TORCH_VERSION} (local CPU wheel via find-links) first"
"${PIP[@]}" install -c "${CONSTRAINTS}" "torch==${TORCH_VERSION}"

log "step 2/3: installing libpecos==${LIBPECOS_VERSION} with its dependencies (torch held by constraints)"
if ! "${PIP[@]}" install -c "${CONSTRAINTS}" "libpecos==${LIBPECOS_VERSION}"; then
    log "full libpecos install failed; FALLBACK: libpecos --no-deps + numpy<2, scipy<1.14, scikit-learn"
    "${PIP[@]}" install -c "${CONSTRAINTS}" "numpy<2" "scipy<1.14" "scikit-learn"
    "${PIP[@]}" install -c "${CONSTRAINTS}" --no-deps "libpecos==${LIBPECOS_VERSION}"
fi

log "step 3/3: installing omikuji==${OMIKUJI_VERSION} napkinxc==${NAPKINXC_VERSION}"
"${PIP[@]}" install -c "${CONSTRAINTS}" "omikuji==${OMIKUJI_VERSION}" "napkinxc==${NAPKINXC_VERSION}"

log "pip check:"
"${PIP[@]}" check || log "(pip check reported problems; see above)"

if check_venv; then
    log "done: ${VENV}"
else
    log "ERROR: the venv was built but the import check failed:"
    "${PY}" -c "import torch, pecos.xmc.xlinear.model, omikuji, napkinxc.models" || true
    exit 1
fi
