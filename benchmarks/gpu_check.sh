#!/usr/bin/env bash
# The GPU checks, for a machine with an NVIDIA GPU, CUDA's compiler and a CUDA build of PyTorch but no
# network (the workplace's device machine). Two steps:
#
#   bash benchmarks/gpu_check.sh prepare   # here, with network: what the GPU machine cannot download,
#                                          # into .gpu/ (git-ignored): llama-cpp-python's source, trimmed of
#                                          # its test vocabularies to travel light, and the wheels it lacks
#   bash benchmarks/gpu_check.sh run       # there: build llama.cpp with CUDA, install this package, run the
#                                          # tests marked `gpu` and the V-Reason cost benchmark on cuda
#
# Budget: under 8 minutes for `run` on 16 cores (the CUDA build for the local architecture only is most of it).
# Nothing here is part of CI: CI has no GPU, and the `gpu` tests skip there.
set -euo pipefail
cd "$(dirname "$0")/.."
LLAMA_CPP_PYTHON=0.3.36
DIR=.gpu

prepare() {
    rm -rf "$DIR" && mkdir -p "$DIR/src" "$DIR/wheels"
    python3 -m pip download -q --no-deps --no-binary :all: "llama-cpp-python==$LLAMA_CPP_PYTHON" -d "$DIR/src"
    (cd "$DIR/src" && tar xzf "llama_cpp_python-$LLAMA_CPP_PYTHON.tar.gz" && rm "llama_cpp_python-$LLAMA_CPP_PYTHON.tar.gz")
    src="$DIR/src/llama_cpp_python-$LLAMA_CPP_PYTHON"
    # the vocabularies of llama.cpp's own tests and its docs are most of the source's size, and unused here
    rm -rf "$src/vendor/llama.cpp/models" "$src/vendor/llama.cpp/docs" "$src/vendor/llama.cpp/media"
    tar czf "$DIR/llama_cpp_python.tar.gz" -C "$DIR/src" "llama_cpp_python-$LLAMA_CPP_PYTHON" && rm -rf "$DIR/src"
    # pure-Python packages the GPU machine's image does not have (it has torch, numpy, opencv, click, ...)
    python3 -m pip download -q --no-deps --only-binary=:all: -d "$DIR/wheels" gguf diskcache
    du -sh "$DIR"
}

run() {
    start=$SECONDS
    python3 -m pip install -q --no-index --no-deps --target /tmp/site "$DIR"/wheels/*.whl
    export PYTHONPATH=/tmp/site${PYTHONPATH:+:$PYTHONPATH}
    nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader
    python3 -c "import torch; print('torch', torch.__version__, 'cuda', torch.cuda.is_available())"
    CMAKE_ARGS="-DGGML_CUDA=on -DCMAKE_CUDA_ARCHITECTURES=native" CMAKE_BUILD_PARALLEL_LEVEL=$(nproc) \
        python3 -m pip install -q --no-index --no-deps --no-build-isolation --target /tmp/site "$DIR/llama_cpp_python.tar.gz"
    echo "llama.cpp with CUDA built in $((SECONDS - start)) s"
    python3 -m pip install -q --no-index --no-deps --no-build-isolation --target /tmp/site .
    cd /tmp  # import the installed package (with its built hook), not the checkout
    python3 -c "import vreason_local.llama_backend as b; assert b.supports_gpu_offload(), 'llama.cpp has no GPU offload'"
    python3 -m pytest -q -m gpu -p no:cacheprovider -c "$OLDPWD/pyproject.toml" --rootdir "$OLDPWD" "$OLDPWD/tests/test_gpu.py"
    cd "$OLDPWD/benchmarks"
    python3 bench_vreason.py --only B --tokens 24 --rounds 2 --frames 4
    echo "gpu_check: done in $((SECONDS - start)) s"
}

case "${1:-}" in
    prepare) prepare ;;
    run) run ;;
    *) echo "usage: bash benchmarks/gpu_check.sh prepare|run" >&2; exit 2 ;;
esac
