#!/usr/bin/env bash
# The GPU checks and benchmarks, as run on a lent H100/H200 (BUILD_NOTES.md quotes them).
#
#   experiments/gpu_benchmarks.sh OUT_DIR STAGE...
#
# Stages (each in its own process, time-limited, logged to OUT_DIR/<stage>.log;
# a failing stage does not stop the next one):
#   env        nvidia-smi, versions, the JAX backend
#   kernels    the Pallas kernels' GPU test classes (tests/kernels, the model's decode step)
#   decode     bench_decode: Llama-3.2-1B-shaped model, bf16, batch 64/256, vs transformers on CUDA
#   decode_only the same without transformers
#   decode_xla the same with the XLA attention path (TTC_JAX_KERNELS=xla), ttc_jax only
#   peer       bench_peer_workload: beam search N=256, M=4, 40 forced rounds of 32 tokens
#              (session 9, H100: ~75 s setup + ~100 s compile before the first timed call;
#              run it in a command of its own: its limit is 400 s)
#   peer_xla   the same with TTC_JAX_KERNELS=xla
#   bon_shared bench_search: best-of-256 on one 512-token prompt, shared vs replicated prompt KV
#   profile    profile_decode: where the decode step's time goes (llama_1b, bf16, batch 256;
#              not yet run on a GPU)
# Run from the repository root; uses the machine's python3 and its packages.
set -u
out=${1:?usage: $0 OUT_DIR STAGE...}
shift
mkdir -p "$out"
export PYTHONPATH=${PYTHONPATH:+$PYTHONPATH:}$(pwd) PYTHONUNBUFFERED=1
export XLA_PYTHON_CLIENT_PREALLOCATE=false  # peak memory figures mean what the run used

# Prompts per search call: two fit in an H200's memory (~98 GB peak, both caches
# and the beam reorder's copy), one in an H100's.
mem_gb=$(nvidia-smi --query-gpu=memory.total --format=csv,noheader,nounits 2>/dev/null | head -1)
per_call=$(( ${mem_gb:-0} > 120000 ? 2 : 1 ))

run() {  # run STAGE SECONDS COMMAND...
  local stage=$1 limit=$2
  shift 2
  echo "=== $stage (limit ${limit}s): $*"
  local start=$SECONDS
  timeout "$limit" "$@" >"$out/$stage.log" 2>&1
  local rc=$?
  echo "=== $stage rc=$rc in $((SECONDS - start))s"
  tail -n 5 "$out/$stage.log"
}

for stage in "$@"; do
  case $stage in
    env) run env 60 bash -c 'nvidia-smi; python3 -c "import jax, flax, optax, torch, transformers;
print(jax.__version__, jax.default_backend(), jax.devices(), flax.__version__, torch.__version__,
transformers.__version__)"' ;;
    kernels) run kernels 200 python3 -m pytest -q -rs -k "GPU or gpu" tests/kernels \
        tests/model/test_decode_kernel.py ;;
    decode) run decode 200 python3 -m experiments.bench_decode --config=llama_1b --dtype=bfloat16 \
        --batch_sizes=64,256 --prompt_len=32 --new_tokens=128 --repeats=3 --read_mb=4096 \
        --compare_hf --json_out="$out/decode.jsonl" ;;
    decode_only) run decode_only 100 python3 -m experiments.bench_decode --config=llama_1b \
        --dtype=bfloat16 --batch_sizes=64,256 --prompt_len=32 --new_tokens=128 --repeats=3 \
        --read_mb=4096 --json_out="$out/decode_only.jsonl" ;;
    decode_xla) TTC_JAX_KERNELS=xla run decode_xla 150 python3 -m experiments.bench_decode \
        --config=llama_1b --dtype=bfloat16 --batch_sizes=64,256 --prompt_len=32 \
        --new_tokens=128 --repeats=3 --read_mb=4096 --json_out="$out/decode_xla.jsonl" ;;
    profile) run profile 200 python3 -m experiments.profile_decode --config=llama_1b \
        --dtype=bfloat16 --batch=256 --top=25 --out_dir="$out/profile" \
        --json_out="$out/profile.jsonl" ;;
    peer) run peer 400 python3 -m experiments.bench_peer_workload --config=llama_1b \
        --prompts_per_call="$per_call" --calls="${PEER_CALLS:-2}" --json_out="$out/peer.jsonl" ;;
    peer_xla) TTC_JAX_KERNELS=xla run peer_xla 400 python3 -m experiments.bench_peer_workload \
        --config=llama_1b --prompts_per_call="$per_call" --calls="${PEER_CALLS:-2}" \
        --json_out="$out/peer_xla.jsonl" ;;
    bon_shared) run bon_shared 120 python3 -m experiments.bench_search --config=llama_1b \
        --methods=best_of_n --ns=256 --prompt_len=512 --num_questions=1 --compare_replicated \
        --baselines= --noscoring --repeats=2 --json_out="$out/bon_shared.jsonl" ;;
    *) echo "unknown stage $stage" ;;
  esac
done
