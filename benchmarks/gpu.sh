#!/usr/bin/env bash
# Every GPU check of the project in one short run (docs/benchmarks.md, "GPU"), for a lent CUDA machine whose
# python3 already has torch, torchvision, scikit-learn, PyYAML and pytest (no kfp, dvc or boto3 needed).
# Fashion-MNIST's IDX files must be in data/raw. Writes everything to one archive, $OUT/gpu.tar.gz:
#   env.txt        the GPU, driver and package versions
#   tests.log      the tests named for CUDA (device choice, bf16, compile, augmentation, streaming, kNN)
#   stream/        benchmarks/stream.py --device cuda: streamed against resident throughput
#   speed/         benchmarks/speed.py on CUDA: seconds per epoch of every training stage, CPU profile
#   web/           benchmarks/web_finetune.py: a 224 px crawl through every stage with web_resnet18,
#                  resident and streamed
#   protocol/      benchmarks/quality.py, smr_cifar10 and dividemix_cifar10 side by side on the GPU, full
#                  Fashion-MNIST at sym50, the published settings with the epochs scaled to PROTOCOL_SSL
#
#   OUT=/tmp/gpu bash benchmarks/gpu.sh            # on the GPU machine, from the repository root
#   SMOKE=1 OUT=/tmp/gpu bash benchmarks/gpu.sh    # on the CPU: tiny sizes, checks that every part runs
#   PARTS="tests protocol" SEED=1 OUT=/tmp/gpu bash benchmarks/gpu.sh   # some parts, another seed
#
# Every part has its own time limit, so one that hangs costs only its share of the lease.
set -u
OUT=${OUT:?set OUT to the folder for gpu.tar.gz}
SMOKE=${SMOKE:-0}
PROTOCOL_SSL=${PROTOCOL_SSL:-12}     # SSL epochs of the protocol runs (published 290), after 1 warm-up epoch
PROTOCOL_LIMIT=${PROTOCOL_LIMIT:-300} # seconds for the two protocol runs together
PARTS=${PARTS:-stream speed web protocol tests}
SEED=${SEED:-0}
export PYTHONPATH=$PWD${PYTHONPATH:+:$PYTHONPATH} PYTHONUNBUFFERED=1
work=$(mktemp -d)
res=$work/gpu
mkdir -p "$res/stream" "$res/speed" "$res/web" "$res/protocol"
if [ "$SMOKE" = 1 ]; then device=cpu; else device=cuda; fi
log() { echo "[gpu.sh $(date +%T)] $*" | tee -a "$res/steps.log"; }
wanted() { [[ " $PARTS " == *" $1 "* ]]; }

{
    nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv 2>&1
    python3 -c 'import torch, torchvision, sklearn, sys; print(sys.version); print("torch", torch.__version__, "torchvision", torchvision.__version__, "sklearn", sklearn.__version__, "cuda", torch.cuda.is_available(), torch.cuda.get_device_name() if torch.cuda.is_available() else "")'
    nproc
} > "$res/env.txt" 2>&1
log "env: $(tail -2 "$res/env.txt" | head -1)"

# 1. Quiet-GPU figures first: the ratios need the GPU to themselves.
smoke_flag=(); [ "$SMOKE" = 1 ] && smoke_flag=(--smoke)
if wanted stream; then
    timeout 75 python3 benchmarks/stream.py --device "$device" --repeats 5 "${smoke_flag[@]}" --out "$res/stream" \
        > "$res/stream/log.txt" 2>&1
    log "stream.py exit $?"
fi
if wanted speed; then
    timeout 120 python3 benchmarks/speed.py --set "runtime.device=$device" --repeats 3 "${smoke_flag[@]}" \
        --out "$res/speed" > "$res/speed/log.txt" 2>&1
    log "speed.py exit $?"
fi
if wanted web; then
    web_size=(); [ "$SMOKE" = 1 ] && web_size=(--smoke)  # 4,000 images at 224 px; smoke: 200 at 32 px
    timeout "${WEB_LIMIT:-240}" python3 benchmarks/web_finetune.py --device "$device" "${web_size[@]}" \
        --out "$res/web" > "$res/web/log.txt" 2>&1
    log "web_finetune.py exit $?: $(grep -m1 'Stream / resident' "$res/web/web_finetune.md" 2>/dev/null)"
fi

# 2. The two protocol runs side by side, and the tests beside them (they time nothing).
protocol=(
    --noise sym50 --seeds "$SEED" --set "runtime.device=$device" --set runtime.threads=4
    --set data.image_size=28 --set data.channels=1 --set ingest.near_duplicate_bits=-1
    --set warmup.epochs=1 --set "ssl_train.epochs=$PROTOCOL_SSL" --set ssl_train.lambda_u_ramp_epochs=1
)
if [ "$SMOKE" = 1 ]; then
    protocol+=(--set ingest.per_class_limit=30 --set ssl_train.batch_size=8 --set model.batch_size=16
        --set model.name=small_cnn)  # PreAct ResNet-18 takes minutes per CPU evaluation pass
else
    protocol+=(--set ingest.per_class_limit=0)
fi
# SMR's recalibration scaled as the CPU profile's smr preset scales it: the published 3.4% of the SSL
# steps in one recalibration, none in the last third (docs/algorithms.md §3.2).
smr_scaled=(--set ssl_train.recalibration_period=6 --set ssl_train.recalibration_until=0.67
    --set ssl_train.recalibration_fraction=0.41)
if wanted protocol; then
    for method in smr_cifar10 dividemix_cifar10; do
        extra=(); [ "$method" = smr_cifar10 ] && extra=("${smr_scaled[@]}")
        timeout "$PROTOCOL_LIMIT" python3 benchmarks/quality.py --methods "$method" "${protocol[@]}" "${extra[@]}" \
            --fresh --out "$res/protocol/$method" --work "$work/run-$method" > "$res/protocol/$method.log" 2>&1 &
    done
fi
if wanted tests; then
    timeout "${TESTS_LIMIT:-120}" python3 -m pytest -q -p no:cacheprovider -rs -k cuda tests/engine/test_device.py \
        tests/engine/test_augment.py tests/engine/test_stream.py tests/maths/test_neighbours.py > "$res/tests.log" 2>&1
    log "tests exit $?: $(tail -1 "$res/tests.log")"
fi
wait
log "protocol runs done: $(ls "$res"/protocol/*/*.json 2>/dev/null | wc -l) result files"
# Every stage's JSON records (histories, timings, summaries), not the networks or the store.
(cd "$work" && find run-* -name '*.json' -size -4M -exec cp --parents {} "$res/protocol/" \; 2>/dev/null)
tar -czf "$OUT/gpu.tar.gz" -C "$work" gpu
cat "$res/steps.log"
rm -rf "$work"
