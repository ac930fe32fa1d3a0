#!/usr/bin/env bash
# The prepared GPU block (generation/gpu_block.py): run from the repository root on a lent NVIDIA machine,
#     bash plans/gpu-block.sh [hwgpt-bench gpu-block options]
# with $OUT set (the device tool sets it). It needs only the image's python3 with torch, numpy, pyarrow, psutil, tqdm
# and nvidia-ml-py, and no network:
#   1. installs this working tree's package without dependencies into $GPU_BLOCK_SITE (pip; a plain copy of the
#      package folders if pip cannot build it there);
#   2. runs `hwgpt-bench gpu-block` into the run directory $GPU_BLOCK_RUN (default runs/gpu-block; a rerun resumes from
#      its parts) with --budget-s $GPU_BLOCK_BUDGET_S (default 330) and a hard kill 45 s after that;
#   3. always exports the run, whatever step 2 ended with, into $OUT/<device_id>/ (one parquet part per table and
#      the block's report: a run directory), with this script's log as $OUT/gpu-block.log: at most 8 files.
# The dry run in the tests runs this same script with `--device cpu` and a tiny workload.
set -uo pipefail
: "${OUT:?set OUT to the folder the results go to}"
run=${GPU_BLOCK_RUN:-runs/gpu-block}
budget=${GPU_BLOCK_BUDGET_S:-330}
site=${GPU_BLOCK_SITE:-/tmp/hwgpt-bench-site}
python=${PYTHON:-python3}
mkdir -p "$OUT"
log="$OUT/gpu-block.log"
echo "gpu-block.sh $(date -u +%Y-%m-%dT%H:%M:%SZ): run $run, budget $budget s, args: $*" >>"$log"

rm -rf "$site"
if ! "$python" -m pip install -q --no-deps --no-build-isolation --no-index --target "$site" . >>"$log" 2>&1; then
    echo "pip could not install the package; copying its folders instead" | tee -a "$log"
    rm -rf "$site" && mkdir -p "$site" && cp -r hwgpt_bench "$site/hwgpt_bench" \
        && cp -r generation "$site/hwgpt_bench/generation" && cp -r loaders "$site/hwgpt_bench/loaders" || exit 1
fi
export PYTHONPATH="$site${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1

timeout -s KILL $((${budget%.*} + 45)) "$python" -P -m hwgpt_bench gpu-block --run "$run" --budget-s "$budget" "$@" \
    2>&1 | tee -a "$log"
block=${PIPESTATUS[0]}
"$python" -P -m hwgpt_bench gpu-block-export --run "$run" --out "$OUT" 2>&1 | tee -a "$log"
export_status=${PIPESTATUS[0]}
echo "gpu-block exit $block, export exit $export_status" | tee -a "$log"
[ "$block" -eq 0 ] && exit "$export_status"
exit "$block"
