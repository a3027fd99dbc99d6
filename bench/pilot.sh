#!/usr/bin/env bash
# The cohort pilot of docs/evidence.md §4a: does a plain baseline, trained from scratch at the study's per-unit
# budget, land in the regime the study needs (GTVn and GTVp lesion precision >= 0.5, small-node sensitivity
# <= 0.85)? Baseline only; no loss is looked at. Resumable: every step is skipped when its output exists.
#
#   bench/pilot.sh OUT_DIR [PROFILE] [COHORT_SEED] [EXTERNAL_SEED]
#
# Defaults are the declared pilot (clinical profile, cohort seed 7001, external set seed 7101). The study's
# seeds are never used here. Run from a clean checkout of one commit; the script records `git describe`.
set -euo pipefail

OUT=${1:?usage: bench/pilot.sh OUT_DIR [PROFILE] [COHORT_SEED] [EXTERNAL_SEED]}
PROFILE=${2:-clinical}
SEED=${3:-7001}
EXT_SEED=${4:-7101}
CASES=50            # the study's cohort size: 5 folds of 10 held-out patients
EXT_CASES=50        # an external set of the same generator, never trained on
ITERATIONS=3300     # the study's per-unit budget (docs/evidence.md §1: 2500 + 800), from scratch
EPOCHS=66           # 50 iterations per epoch, as the studies
DATASET_ID=$((700 + SEED % 100))

ROOT=$(cd "$(dirname "$0")/.." && pwd)
PY=${PY:-$ROOT/.venv/bin/python}  # another checkout's venv works too: this checkout's src/ comes first on the path
vadice() { PYTHONPATH="$ROOT/src${PYTHONPATH:+:$PYTHONPATH}" "$PY" -m vadice "$@"; }
mkdir -p "$OUT"
OUT=$(cd "$OUT" && pwd)
export nnUNet_raw=$OUT/raw nnUNet_preprocessed=$OUT/pre nnUNet_results=$OUT/results
LOG=$OUT/pilot.log
stamp() { echo "$(date -u +%FT%TZ) $*" | tee -a "$LOG"; }

stamp "pilot start: commit $(git -C "$ROOT" describe --always --dirty) profile=$PROFILE seed=$SEED ext_seed=$EXT_SEED"
[ -f "$OUT/cohort/cohort.json" ] || { stamp synth; vadice -q synth "$OUT/cohort" --cases $CASES --seed "$SEED" --size neck --profile "$PROFILE"; }
[ -f "$OUT/external/cohort.json" ] || { stamp synth external; vadice -q synth "$OUT/external" --cases $EXT_CASES --seed "$EXT_SEED" --size neck --profile "$PROFILE"; }
vadice -q stats "$OUT/cohort" --cues --out "$OUT/stats_cohort" > "$OUT/stats_cohort.txt" 2>&1 || true
[ -d "$nnUNet_raw" ] || { stamp convert; vadice -q convert "$OUT/cohort" --task 1 --dataset-id $DATASET_ID; }
[ -d "$nnUNet_preprocessed" ] || { stamp plan; vadice -q plan $DATASET_ID --preset cpu-small; }

MODEL_GLOB="$nnUNet_results/Dataset${DATASET_ID}_*/nnUNetTrainerBudget__vadiceCPUSmallPlans__3d_fullres"
if ! ls $MODEL_GLOB/fold_0/checkpoint_final.pth > /dev/null 2>&1; then
  stamp "train baseline from scratch, $ITERATIONS iterations"
  RESUME=""; ls $MODEL_GLOB/fold_0/checkpoint_latest.pth > /dev/null 2>&1 && RESUME=--resume
  vadice train $DATASET_ID --loss baseline --fold 0 --preset cpu-small --device cpu --iterations $ITERATIONS \
      --epochs $EPOCHS --val-iterations 5 --no-val-mirroring --seed 0 $RESUME
fi
MODEL=$(ls -d $MODEL_GLOB)
RAW=$(ls -d "$nnUNet_raw"/Dataset${DATASET_ID}_*)

# held-out fold 0: nnU-Net's own validation predictions
mkdir -p "$OUT/heldout_labels"
for f in "$MODEL"/fold_0/validation/*.nii.gz; do cp -n "$RAW/labelsTr/$(basename "$f")" "$OUT/heldout_labels/"; done
[ -f "$OUT/eval_heldout/summary.json" ] || { stamp evaluate held-out; vadice -q evaluate --gt "$OUT/heldout_labels" --pred "$MODEL/fold_0/validation" --out "$OUT/eval_heldout" --size-bins 1 --workers 2; }

# external set: convert its pre-RT images to nnU-Net input names, predict once, evaluate
if [ ! -f "$OUT/eval_external/summary.json" ]; then
  stamp "predict external ($EXT_CASES cases)"
  mkdir -p "$OUT/ext_images" "$OUT/ext_labels"
  for d in "$OUT"/external/*/preRT; do id=$(basename "$(dirname "$d")")
    cp -n "$d/${id}_preRT_T2.nii.gz" "$OUT/ext_images/${id}_0000.nii.gz"; cp -n "$d/${id}_preRT_mask.nii.gz" "$OUT/ext_labels/${id}.nii.gz"; done
  vadice predict -i "$OUT/ext_images" -o "$OUT/ext_pred" -m "$MODEL" --device cpu --disable-tta --no-overlays --save-probabilities
  stamp evaluate external
  vadice -q evaluate --gt "$OUT/ext_labels" --pred "$OUT/ext_pred" --out "$OUT/eval_external" --size-bins 1 --workers 2
fi

"$PY" - "$OUT" <<'EOF' | tee "$OUT/regime.txt"
import json, sys
out = sys.argv[1]
for name in ("eval_heldout", "eval_external"):
    s = json.load(open(f"{out}/{name}/summary.json"))["labels"]
    p, n = s["GTVp"], s["GTVn"]
    small = n["size_stratified_sensitivity"][0]  # the < 1 ml bin (--size-bins 1)
    small = f"{small['n_detected'] / small['n_gt']:.3f} ({small['n_detected']}/{small['n_gt']})" if small["n_gt"] else "n/a"
    print(f"{name}: GTVp precision {p['lesion_precision']:.3f} ({p['n_pred_matched']}/{p['n_pred_lesions']}), "
          f"GTVn precision {n['lesion_precision']:.3f} ({n['n_pred_matched']}/{n['n_pred_lesions']}), "
          f"GTVn sensitivity {n['lesion_sensitivity']:.3f} ({n['n_gt_detected']}/{n['n_gt_lesions']}), "
          f"small-node sensitivity {small}, DSCagg GTVp {p['dscagg']:.3f} GTVn {n['dscagg']:.3f}")
EOF
stamp "pilot end"
