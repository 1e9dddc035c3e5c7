#!/usr/bin/env bash
# Make the venvs of the peer converters that edgecnn is compared against, under .peers/.
#
#   scripts/setup_peers.sh                      # all four
#   scripts/setup_peers.sh onnx2tf litert-torch # some of them
#
#   onnx2tf       python3.12, onnx2tf 2.6.9, no TensorFlow: its default flatbuffer_direct backend
#   onnx2tf-tf    python3.12, onnx2tf[tensorflow] 2.6.9 (TensorFlow 2.21): the tf_converter
#                 backend, the only one of the two whose int8 handles ResNet and MobileNetV3
#   litert-torch  python3.11, litert-torch 0.10.0 on torch 2.13.0+cpu (edgecnn's torch) and
#                 torchvision 0.28.0. Python 3.11 because the CPU torch wheel on this machine's
#                 disk is cp311; on 3.12 pip fetches the 530 MB CUDA build and its CUDA stack
#                 (6.6 GB venv against 2.2 GB), and torch would then differ from edgecnn's.
#   aimet         python3.11, aimet-onnx 2.42.0 (Qualcomm's AIMET; torch 2.13.0+cpu, numpy 1.x):
#                 its post-training recipes on edgecnn's float ONNX (scripts/peer_aimet.py)
#
# Why separate venvs: the peers pin numpy, onnx, protobuf and torch to versions that differ
# from edgecnn's and from each other, and they are never dependencies of edgecnn.
# Every package is pinned (the constraint lists below are `pip freeze` of the venvs that passed
# scripts/peer_onnx2tf.py and scripts/peer_litert_torch.py on resnet18 and mobilenet_v3_small),
# so a rebuild installs what was verified. A venv whose stamp matches its pins is left alone;
# a venv without a matching stamp (half-built, or pins changed) is rebuilt from scratch.
# A failed litert-torch install prints one line and is skipped: it is the optional peer.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
PEERS="$ROOT/.peers"
ALL=(onnx2tf onnx2tf-tf litert-torch aimet)
INSTALL_TIMEOUT_S="${PEERS_INSTALL_TIMEOUT_S:-1200}"  # seconds per venv

# pyenv's shims answer "command not found" for versions that are installed but not selected,
# so look in pyenv's versions folder when the plain name does not run.
find_python() {
    local version="$1" candidate
    if "python$version" -c "" 2>/dev/null; then
        command -v "python$version"
        return
    fi
    for candidate in "$(pyenv root 2>/dev/null || echo "$HOME/.pyenv")"/versions/"$version".*/bin/"python$version"; do
        if [[ -x "$candidate" ]]; then
            echo "$candidate"
            return
        fi
    done
    return 1
}

constraints() {
    case "$1" in
        onnx2tf) cat <<'EOF'
ai-edge-litert==2.1.2
backports.strenum==1.2.8
flatbuffers==25.12.19
h5py==3.14.0
iniconfig==2.3.1
markdown-it-py==4.3.0
mdurl==0.1.2
ml_dtypes==0.5.4
mpmath==1.3.0
numpy==2.2.6
onnx==1.20.1
onnx-ir==1.1.0
onnx2tf==2.6.9
onnxoptimizer==0.4.2
onnxruntime==1.26.0
onnxscript==0.6.2
onnxsim==0.6.5
opencv-python==4.13.0.92
packaging==26.3
pluggy==1.7.0
protobuf==7.35.1
psutil==5.9.5
Pygments==2.21.0
pytest==9.0.2
rich==15.0.0
setuptools==81.0.0
sne4onnx==2.0.1
sng4onnx==2.0.1
sympy==1.14.0
tqdm==4.67.1
typing_extensions==4.16.0
EOF
        ;;
        onnx2tf-tf) cat <<'EOF'
absl-py==2.5.1
ai-edge-litert==2.1.2
astunparse==1.6.3
backports.strenum==1.2.8
certifi==2026.10.19.post1
charset-normalizer==3.5.2
flatbuffers==25.12.19
gast==0.7.0
google-pasta==0.2.0
grpcio==1.85.3
h5py==3.14.0
idna==3.20
iniconfig==2.3.1
keras==3.15.0
libclang==18.1.1
markdown-it-py==4.3.0
mdurl==0.1.2
ml_dtypes==0.5.4
mpmath==1.3.0
namex==0.1.0
numpy==2.2.6
onnx==1.20.1
onnx-ir==1.1.0
onnx2tf==2.6.9
onnxoptimizer==0.4.2
onnxruntime==1.26.0
onnxscript==0.6.2
onnxsim==0.6.5
opencv-python==4.13.0.92
opt_einsum==3.4.0
optree==0.20.0
packaging==26.3
pluggy==1.7.0
protobuf==7.35.1
psutil==5.9.5
Pygments==2.21.0
pytest==9.0.2
requests==2.34.2
rich==15.0.0
setuptools==81.0.0
six==1.17.0
sne4onnx==2.0.1
sng4onnx==2.0.1
sympy==1.14.0
tensorflow==2.21.0
termcolor==3.3.0
tf_keras==2.21.0
tqdm==4.67.1
typing_extensions==4.16.0
urllib3==2.8.0
wheel==0.48.0
wrapt==2.5.2
EOF
        ;;
        aimet) cat <<'EOF'
absl-py==2.5.1
aimet-onnx==2.42.0
attrs==26.1.0
bleach==6.4.0
bokeh==3.6.3
certifi==2026.10.19.post1
cffi==2.1.1
charset-normalizer==3.5.3
clarabel==0.11.1
cloudpickle==3.1.3
colorcet==3.2.1
contourpy==1.3.3
cvxpy==1.7.5
cycler==0.12.1
filelock==4.3.2
flatbuffers==25.12.19
fonttools==4.69.1
fsspec==2026.9.0
grpcio==1.85.4
holoviews==1.23.2
hvplot==0.12.2
idna==3.21
ImageIO==2.38.2
Jinja2==3.1.6
joblib==1.6.0
jsonschema==4.26.0
jsonschema-specifications==2025.9.1
kiwisolver==1.5.1
lazy-loader==0.6
linkify-it-py==2.2.0
Markdown==3.11.3
markdown-it-py==4.3.0
MarkupSafe==3.0.4
matplotlib==3.11.2
mdit-py-plugins==0.7.0
mdurl==0.1.2
ml_dtypes==0.5.4
mpmath==1.3.0
narwhals==2.29.0
networkx==3.6.1
numpy==1.26.4
onnx==1.23.2
onnx-ir==1.1.0
onnx2torch==1.5.15
onnxruntime==1.32.0
onnxscript==0.7.2
osqp==1.1.3
packaging==26.4
pandas==3.0.6
panel==1.7.5
param==2.4.2
pillow==13.0.0
protobuf==7.36.2
psutil==7.2.2
pybind11==3.1.0
pycparser==3.12
pyparsing==3.3.3
python-dateutil==4.0.0
pyviz_comms==3.0.6
PyYAML==6.0.4
referencing==0.37.0
requests==2.34.2
rpds-py==2026.9.1
safetensors==0.8.0
scikit-image==0.26.0
scikit-learn==1.9.1
scipy==1.17.1
scs==3.3.1
sympy==1.14.0
tensorboard==2.21.0
tensorboard-data-server==0.7.2
threadpoolctl==3.8.0
tifffile==2026.3.3
torch==2.13.0
torchvision==0.28.0
tornado==6.6.1
tqdm==4.70.1
typing_extensions==4.16.0
tzdata==2026.6
urllib3==2.8.0
webencodings==0.6.1
Werkzeug==3.1.9
xyzservices==2026.9.1
EOF
        ;;
        litert-torch) cat <<'EOF'
absl-py==2.5.1
ai-edge-litert==2.3.0
ai-edge-quantizer==0.10.0
annotated-doc==0.0.7
annotated-types==0.8.0
anyio==4.14.2
backports.strenum==1.2.8
certifi==2026.10.19.post1
charset-normalizer==3.5.2
click==8.5.1
filelock==4.2.12
fire==0.7.1
flatbuffers==25.12.19
fsspec==2026.9.0
h11==0.16.0
hf-xet==1.8.0
httpcore2==2.16.2
httpx2==2.16.2
huggingface_hub==2.4.0
idna==3.20
immutabledict==4.2.1
jax==0.10.2
jaxlib==0.10.2
jaxtyping==0.3.11
Jinja2==3.1.6
kagglehub==1.0.3
kagglesdk==0.1.38
lark==1.3.1
litert-converter==0.5.0
litert-lm-builder==0.18.1
litert-torch==0.10.0
markdown-it-py==4.3.0
MarkupSafe==3.0.4
mdurl==0.1.2
ml_dtypes==0.6.0
mpmath==1.3.0
multipledispatch==1.0.0
networkx==3.6.1
numpy==2.4.6
opt_einsum==3.4.0
ordered-set==4.1.0
packaging==26.3
pillow==13.0.0
protobuf==7.36.2
pydantic==2.11.10
pydantic_core==2.33.2
Pygments==2.21.0
PyYAML==6.0.4
regex==2026.11.19
requests==2.34.2
rich==15.0.0
safetensors==0.8.0
scipy==1.17.1
sentencepiece==0.2.3
shellingham==1.5.4
sympy==1.14.0
tabulate==0.10.0
termcolor==3.3.0
tokenizers==0.23.3
tomli==2.5.0
torch==2.13.0
torchao==0.18.0
torchvision==0.28.0
tqdm==4.70.1
transformers==5.24.0
truststore==0.10.5
typer==0.29.2
typing-inspection==0.4.2
typing_extensions==4.12.2
urllib3==2.8.0
wadler_lindig==0.1.8
xdsl==0.28.0
EOF
        ;;
    esac
}

python_version() {
    case "$1" in
        onnx2tf | onnx2tf-tf) echo 3.12 ;;
        litert-torch | aimet) echo 3.11 ;;
    esac
}

requirements() {
    case "$1" in
        onnx2tf) echo "onnx2tf==2.6.9" ;;
        onnx2tf-tf) echo "onnx2tf[tensorflow]==2.6.9" ;;
        litert-torch) echo "litert-torch==0.10.0 torch==2.13.0 torchvision==0.28.0" ;;
        aimet) echo "aimet-onnx==2.42.0 torch==2.13.0" ;;
    esac
}

# What must work afterwards: the CLI and the onnxsim it shells out to, the flatbuffer schema
# the peer scripts read .tflite files with, and the backend's own imports.
smoke_test() {
    local venv="$1"
    case "$2" in
        onnx2tf) "$venv/bin/onnx2tf" -V >/dev/null && [[ -x "$venv/bin/onnxsim" ]] &&
            "$venv/bin/python" -c "import ai_edge_litert.schema_py_generated, onnx, numpy" ;;
        onnx2tf-tf) "$venv/bin/onnx2tf" -V >/dev/null && [[ -x "$venv/bin/onnxsim" ]] &&
            "$venv/bin/python" -c "import tensorflow, ai_edge_litert.schema_py_generated" ;;
        litert-torch) "$venv/bin/python" -c \
            "import litert_torch, torchao.quantization.pt2e, ai_edge_litert.schema_py_generated" ;;
        aimet) "$venv/bin/python" -c \
            "from aimet_onnx import QuantizationSimModel, apply_adaround, apply_seq_mse" ;;
    esac
}

setup() {
    local name="$1" venv="$PEERS/$1" python stamp log
    python="$(find_python "$(python_version "$name")")" ||
        { echo "$name: skipped: python$(python_version "$name") not found"; return 1; }
    stamp="$( (echo "$python"; requirements "$name"; constraints "$name") | sha256sum | cut -d' ' -f1)"
    if [[ -f "$venv/.peer-stamp" && "$(cat "$venv/.peer-stamp")" == "$stamp" ]] &&
        smoke_test "$venv" "$name" >/dev/null 2>&1; then
        echo "$name: up to date ($venv)"
        return 0
    fi
    echo "$name: installing into $venv (a few minutes)"
    rm -rf "$venv"
    "$python" -m venv "$venv"
    constraints "$name" >"$venv/constraints.txt"
    log="$PEERS/$name.install.log"
    local status=0 why=""
    # shellcheck disable=SC2046  # the requirement list is meant to split into words
    timeout "$INSTALL_TIMEOUT_S" "$venv/bin/pip" install --disable-pip-version-check \
        -c "$venv/constraints.txt" $(requirements "$name") >"$log" 2>&1 || status=$?
    if [[ $status -eq 124 ]]; then
        why="pip install ran past ${INSTALL_TIMEOUT_S} s"
    elif [[ $status -ne 0 ]]; then
        why="$(grep -E '^(ERROR|[A-Za-z]+Error)' "$log" | tail -1 || true)"
        why="${why:-pip install failed (exit $status)}"
    elif ! smoke_test "$venv" "$name" >>"$log" 2>&1; then
        why="installed, but the import check failed: $(tail -1 "$log")"
    fi
    if [[ -n "$why" ]]; then
        echo "$name: not installable here: $why (log: $log)"
        rm -rf "$venv"
        return 1
    fi
    echo "$stamp" >"$venv/.peer-stamp"
    echo "$name: ok ($("$venv/bin/pip" freeze | grep -iE '^(onnx2tf|litert-torch|aimet-onnx|torch|tensorflow)==' | tr '\n' ' '))"
}

main() {
    local names=("$@") name failed=0
    [[ ${#names[@]} -gt 0 ]] || names=("${ALL[@]}")
    mkdir -p "$PEERS"
    # The venvs are build outputs, gigabytes of them: keep git from listing them whatever the
    # repository's .gitignore says.
    [[ -f "$PEERS/.gitignore" ]] || echo "*" >"$PEERS/.gitignore"
    for name in "${names[@]}"; do
        case "$name" in
            onnx2tf | onnx2tf-tf) setup "$name" || failed=1 ;;
            litert-torch | aimet) setup "$name" || true ;; # optional peers: reported, never fatal
            *) echo "unknown peer: $name (choose from: ${ALL[*]})" >&2; return 2 ;;
        esac
    done
    return "$failed"
}

main "$@"
