#!/usr/bin/env bash
# The prepared tumor-training run on a GPU machine lent by the `device` tool:
#   python scripts/gpu_train_tumor.py pack ../shared/data/real .devcache/tumor   # here, once
#   run(command="bash scripts/gpu_train_tumor.sh", carry=[".devcache/tumor"], timeout_s=600)
#   python scripts/gpu_train_tumor.py score FILES_AT ../shared/data/real        # here
# Trains the three members of scripts/gpu_train_tumor.py at once, one process each
# (4 batch workers each: 15 of the machine's 16 cores), MINUTES of wall time apiece
# (default 7: with start-up and saving inside a 600-s call, and no device time for a
# second try), and writes cards, weights and one log (7 files; 8 may come back) to
# $OUT. The GPU machine has torch and Pillow; the slide readers are stubbed
# (training never calls them). Exits non-zero when a member fails.
set -u
OUT="${OUT:-/tmp/out}"; mkdir -p "$OUT"
MINUTES="${MINUTES:-7}"
DEVICE="${DEVICE:-cuda}"  # DEVICE=cpu and TRAIN_ARGS="--batch 2 --patch 64": a dry run here
LOG="$OUT/train.log"
export PYTHONPATH="$PWD" PYTHONUNBUFFERED=1 NAPARI_HISTO_CACHE=/tmp/histo-cache
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv 2>&1 | tee "$LOG"
python3 -c "import torch, PIL; print('torch', torch.__version__, 'cpus', __import__('os').cpu_count()); assert '$DEVICE' != 'cuda' or torch.cuda.is_available(), 'no CUDA'" 2>&1 | tee -a "$LOG"
[ "${PIPESTATUS[0]}" -eq 0 ] || exit 1
[ -f .devcache/tumor/pools.json ] || { echo "no .devcache/tumor: run 'pack' here and carry it" | tee -a "$LOG"; exit 1; }
LIMIT_S=$(awk "BEGIN { print int($MINUTES * 60 + 120) }")  # MINUTES may be fractional
pids=()
for member in 0 1 2; do
  # Each line into the one log as it comes (a call cut at its limit still returns it).
  ( timeout "$LIMIT_S" python3 scripts/gpu_train_tumor.py train .devcache/tumor \
      "$OUT" --member "$member" --minutes "$MINUTES" --workers 4 --device "$DEVICE" ${TRAIN_ARGS:-} 2>&1
    echo "member $member exit $?" ) | sed -u "s/^/m$member /" >> "$LOG" &
  pids+=($!)
done
for pid in "${pids[@]}"; do wait "$pid"; done
tail -n 12 "$LOG"
ls -la "$OUT"
# Every member must have said "exit 0" and saved its card.
[ "$(grep -c ' exit 0$' "$LOG")" -eq 3 ] || { echo "a member failed: see $LOG"; exit 1; }
