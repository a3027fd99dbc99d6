#!/usr/bin/env bash
# The pilot's declared next try (docs/evidence.md §4a): on the model bench/pilot.sh trained, nothing retrained,
# the regime rule at two more operating points of the baseline on the external set:
#   (a) baseline+pp: the minimum-volume post-processing fitted by `vadice postprocess fit` on the model's own
#       fold-0 validation predictions (the training cohort's held-out patients; never the external set);
#   (b) the FROC of the saved probabilities (`vadice froc`), read at the threshold where small-node
#       sensitivity reaches 0.85.
# Resumable: each step is skipped when its output exists.
#
#   bench/pilot_operating_points.sh PILOT_OUT_DIR
set -euo pipefail
OUT=$(cd "${1:?usage: bench/pilot_operating_points.sh PILOT_OUT_DIR}" && pwd)
ROOT=$(cd "$(dirname "$0")/.." && pwd)
PY=${PY:-$ROOT/.venv/bin/python}
vadice() { PYTHONPATH="$ROOT/src${PYTHONPATH:+:$PYTHONPATH}" "$PY" -m vadice "$@"; }
export nnUNet_raw=$OUT/raw nnUNet_preprocessed=$OUT/pre nnUNet_results=$OUT/results
MODEL=$(ls -d "$nnUNet_results"/Dataset*/nnUNetTrainerBudget__vadiceCPUSmallPlans__3d_fullres)
LOG=$OUT/pilot.log
stamp() { echo "$(date -u +%FT%TZ) $*" | tee -a "$LOG"; }

stamp "operating points start: commit $(git -C "$ROOT" describe --always --dirty)"
[ -f "$OUT/pp.json" ] || { stamp "postprocess fit"; vadice postprocess fit "$MODEL" --out "$OUT/pp.json"; }
[ -d "$OUT/ext_pred_pp" ] || { stamp "postprocess apply"; vadice -q postprocess apply "$OUT/pp.json" -i "$OUT/ext_pred" -o "$OUT/ext_pred_pp"; }
[ -f "$OUT/eval_external_pp/summary.json" ] || { stamp "evaluate external+pp";
  vadice -q evaluate --gt "$OUT/ext_labels" --pred "$OUT/ext_pred_pp" --out "$OUT/eval_external_pp" --size-bins 1 --workers 2; }
[ -f "$OUT/froc_external/summary.json" ] || { stamp "froc external";
  vadice -q froc --gt "$OUT/ext_labels" --prob "$OUT/ext_pred" --label 1 --label 2 --size-bins 1 --out "$OUT/froc_external"; }

"$PY" - "$OUT" <<'PYEOF' | tee "$OUT/regime_operating_points.txt"
import csv, json, sys
out = sys.argv[1]
s = json.load(open(f"{out}/eval_external_pp/summary.json"))["labels"]
p, n = s["GTVp"], s["GTVn"]
small = n["size_stratified_sensitivity"][0]
print(f"(a) baseline+pp {json.load(open(f'{out}/pp.json')).get('min_volume_mm3', '')}: "
      f"GTVp precision {p['lesion_precision']:.3f} ({p['n_pred_matched']}/{p['n_pred_lesions']}), "
      f"GTVn precision {n['lesion_precision']:.3f} ({n['n_pred_matched']}/{n['n_pred_lesions']}), "
      f"GTVn sensitivity {n['lesion_sensitivity']:.3f} ({n['n_gt_detected']}/{n['n_gt_lesions']}), "
      f"small-node sensitivity {small['n_detected'] / small['n_gt']:.3f} ({small['n_detected']}/{small['n_gt']}), "
      f"DSCagg GTVp {p['dscagg']:.3f} GTVn {n['dscagg']:.3f}")
rows = list(csv.DictReader(open(f"{out}/froc_external/froc.csv")))
print("(b) FROC of the external set's probabilities, every threshold:")
for r in rows:
    print("   ", {k: r[k] for k in r})
PYEOF
stamp "operating points end"
