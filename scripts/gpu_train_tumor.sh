#!/usr/bin/env bash
# The prepared tumor-training run on a GPU machine lent by the `device` tool:
#   python scripts/gpu_train_tumor.py pack ../shared/data/real .devcache/tumor   # here, once
#   run(command="bash scripts/gpu_train_tumor.sh", carry=[".devcache/tumor"], timeout_s=600)
#   python scripts/gpu_train_tumor.py score FILES_AT ../shared/data/real        # here
# Trains the three members of scripts/gpu_train_tumor.py at once, one process each
# (4 batch workers each: 15 of the machine's 16 cores), MINUTES of wall time apiece
# (default 8, which leaves a 10-minute call time to start, load and save), and writes
# cards, weights and logs to $OUT. The GPU machine has torch and Pillow; the slide
# readers are stubbed (training never calls them).
set -u
OUT="${OUT:-/tmp/out}"; mkdir -p "$OUT"
MINUTES="${MINUTES:-8}"
export PYTHONPATH="$PWD" PYTHONUNBUFFERED=1 NAPARI_HISTO_CACHE=/tmp/histo-cache
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv
python3 -c "import torch, PIL; print('torch', torch.__version__, 'cuda', torch.cuda.is_available(), 'cpus', __import__('os').cpu_count())" || exit 1
test -f .devcache/tumor/pools.json || { echo "no .devcache/tumor: run 'pack' here and carry it"; exit 1; }
LOGS=/tmp/tumor-logs; mkdir -p "$LOGS"
for member in 0 1 2; do
  python3 scripts/gpu_train_tumor.py train .devcache/tumor "$OUT" --member "$member" \
    --minutes "$MINUTES" --workers 4 > "$LOGS/member$member.log" 2>&1 &
done
wait
# At most 8 files come back: three cards, three weights and this one log.
cat "$LOGS"/member*.log > "$OUT/train.log"
tail -n 3 "$LOGS"/member*.log
ls -la "$OUT"
