#!/usr/bin/env bash
# The prepared GPU block (generation/gpu_block.py): run from the repository root on a lent NVIDIA machine,
#     bash plans/gpu-block.sh [hwgpt-bench gpu-block options]
# with $OUT set (the device tool sets it). It needs only the image's python3 with torch, numpy, pyarrow, psutil, tqdm
# and nvidia-ml-py, and no network:
#   1. installs this working tree's package without dependencies into $GPU_BLOCK_SITE (pip with the image's
#      setuptools; a plain copy of the package folders if pip cannot build it there, or with GPU_BLOCK_INSTALL=copy);
#   2. runs `hwgpt-bench gpu-block` from that copy (`python3 -P`: not from this checkout) into the run directory
#      $GPU_BLOCK_RUN (default runs/gpu-block, git-ignored, so a rerun on the same warm machine resumes from its parts)
#      with a budget that ends $GPU_BLOCK_DEADLINE_S (default 390) seconds after this script started, less 30 s for
#      a hard kill and 15 s for the export (at most $GPU_BLOCK_BUDGET_S if set); a --check-archs file that cannot be
#      read is left out (logged) rather than costing the lease;
#   3. exports the run, whatever step 2 ended with, into $OUT/<device_id>/ (one parquet part per table and the
#      block's report: a run directory), the cross-check as $OUT/cross-check.json, with this script's log as
#      $OUT/gpu-block.log: at most 8 files.
# Call it with timeout_s=420 (the deadline + 30 s). The working tree travels to the machine (64 MiB at most): set the
# two supernet weights aside first (README, "The GPU block"). The tests dry-run this same script with `--device cpu`.
set -uo pipefail
: "${OUT:?set OUT to the folder the results go to}"
run=${GPU_BLOCK_RUN:-runs/gpu-block}
deadline=${GPU_BLOCK_DEADLINE_S:-390}
kill_grace=30
export_margin=15
site=${GPU_BLOCK_SITE:-/tmp/hwgpt-bench-site}
python=${PYTHON:-python3}
mkdir -p "$OUT"
log="$OUT/gpu-block.log"
echo "gpu-block.sh $(date -u +%Y-%m-%dT%H:%M:%SZ): run $run, deadline $deadline s, args: $*" >>"$log"

rm -rf "$site"
"$python" -c "import setuptools; print('setuptools', setuptools.__version__)" >>"$log" 2>&1
if [ "${GPU_BLOCK_INSTALL:-pip}" = copy ] \
    || ! "$python" -m pip install -q --no-deps --no-build-isolation --no-index --target "$site" . >>"$log" 2>&1; then
    echo "installing by copying the package folders (GPU_BLOCK_INSTALL=${GPU_BLOCK_INSTALL:-pip})" | tee -a "$log"
    rm -rf "$site" && mkdir -p "$site" && cp -r hwgpt_bench "$site/hwgpt_bench" \
        && cp -r generation "$site/hwgpt_bench/generation" && cp -r loaders "$site/hwgpt_bench/loaders" || exit 1
fi
export PYTHONPATH="$site${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1 TQDM_MININTERVAL=10

args=("$@")  # a cross-check file that cannot be used is dropped: the release rows must not depend on it
for i in "${!args[@]}"; do
    if [ "${args[$i]:-}" = --check-archs ]; then
        file=${args[$((i + 1))]:-}
        if ! "$python" -P -c "import sys; from hwgpt_bench.generation.gpu_block import load_check_archs as load
load(sys.argv[1])" "$file" >>"$log" 2>&1; then
            echo "cross-check file '$file' cannot be used (above); measuring without it" | tee -a "$log"
            unset "args[$i]" "args[$((i + 1))]"
        fi
    fi
done

budget=$((${deadline%.*} - SECONDS - kill_grace - export_margin))
if [ -n "${GPU_BLOCK_BUDGET_S:-}" ] && [ "${GPU_BLOCK_BUDGET_S%.*}" -lt "$budget" ]; then budget=${GPU_BLOCK_BUDGET_S%.*}; fi
[ "$budget" -lt 0 ] && budget=0
echo "budget $budget s ($SECONDS s spent installing)" | tee -a "$log"
timeout -s KILL $((budget + kill_grace)) "$python" -P -m hwgpt_bench gpu-block --run "$run" --budget-s "$budget" \
    "${args[@]}" 2>&1 | tee -a "$log"
block=${PIPESTATUS[0]}
if [ "$block" -eq 137 ]; then
    echo "gpu-block got SIGKILL (the hard stop at $((budget + kill_grace)) s, or the OOM killer)" | tee -a "$log"
    block=3
fi
"$python" -P -m hwgpt_bench gpu-block-export --run "$run" --out "$OUT" 2>&1 | tee -a "$log"
export_status=${PIPESTATUS[0]}
echo "gpu-block exit $block, export exit $export_status" | tee -a "$log"
[ "$block" -eq 0 ] && exit "$export_status"
exit "$block"
