#!/usr/bin/env bash
# The measurements behind docs/results.md's "Does the measure mean what it says?" (issue 18), one after
# another: 97 minutes measured on 2 cores shared with other work.
# Then: python tools/validate_measure.py --root=ROOT --out=docs/results/validation.md
#
#   bash tools/validate_measure.sh ROOT
set -euo pipefail
R=${1:?usage: bash tools/validate_measure.sh ROOT}
cd "$(dirname "$0")/.."
mkdir -p "$R"
stamp() { echo "=== $(date +%T) $*"; }

# 1. The demo over seeds 0-2: the converged probe at init and trained, in the run's table.
for s in 0 1 2; do
  stamp demo seed $s
  python -m rlp_jax.main --config=configs/digits.py --workdir="$R/demo_s$s" --config.seed=$s > "$R/demo_s$s.log" 2>&1
done
# 1b. Standardized cross-entropy heads against their budget, on the initial and the final network.
for s in 0 1 2; do for b in 30 100 300; do
  stamp budget seed $s epochs $b
  python -m rlp_jax.offline --workdir="$R/demo_s$s" --steps=660 --output="offline_std_$b.jsonl" \
    --config.offline.standardize=True --config.offline.num_epochs=$b --config.offline.ridge_probe=True \
    > "$R/demo_s${s}_std_$b.log" 2>&1
done; done
# 2. Feldman-Zhang memorization on clean digits (the demo's config, 128 models), and every RLP score against it.
stamp ground truth, clean
python -m rlp_jax.ground_truth --config=configs/digits.py --output="$R/gt_clean.npz" --num_models=128 > "$R/gt_clean.log" 2>&1
for s in 0 1 2; do
  python -m rlp_jax.memorization --workdir="$R/demo_s$s" --probe --offline --ground_truth="$R/gt_clean.npz" --k=0 \
    > "$R/mem_clean_s$s.log" 2>&1
done
# 3. 20% label noise, 40 epochs, 4 heads; the noisy set depends on the seed, so one ground truth per seed.
N=(--config.label_noise=0.2 --config.num_epochs=40 --config.offline.num_epochs=40 --config.rlp.num_heads=4)
for s in 0 1 2; do
  stamp noisy seed $s
  python -m rlp_jax.main --config=configs/digits.py --workdir="$R/noisy_s$s" --config.seed=$s "${N[@]}" > "$R/noisy_s$s.log" 2>&1
  python -m rlp_jax.ground_truth --config=configs/digits.py --output="$R/gt_noisy_s$s.npz" --num_models=64 \
    --config.seed=$s "${N[@]}" > "$R/gt_noisy_s$s.log" 2>&1
  # Epoch 15 (step 330: the noise not yet fitted), then epochs 15 and 40 (fitted).
  python -m rlp_jax.memorization --workdir="$R/noisy_s$s" --steps=330 --probe --offline \
    --ground_truth="$R/gt_noisy_s$s.npz" --k=0 > "$R/mem_noisy15_s$s.log" 2>&1
  cp "$R/noisy_s$s/memorization.json" "$R/noisy_s$s/memorization_epoch15.json"
  python -m rlp_jax.memorization --workdir="$R/noisy_s$s" --steps=330,880 --probe --offline \
    --ground_truth="$R/gt_noisy_s$s.npz" --k=0 > "$R/mem_noisy40_s$s.log" 2>&1
done
# 4. λ under both conventions: per example over n = 200, 1000 and seeds 0-2 (15 epochs); the paper's
#    convention at λ·n on seed 0; the paper's λ values at the paper's n = 100,000.
L=(--config.num_epochs=15 --config.offline.num_epochs=15 --config.offline.at_init=False
  --config.offline.ridge_probe=False --config.checkpoint.snapshot_every_epochs=0)
stamp lambda sweeps
python -m rlp_jax.sweep --config=configs/digits.py --workdir="$R/lam_pe" \
  --sweep='rlp.num_labels=200,1000;rlp.reg_lambda=0,10,30,100,300,1000;seed=0,1,2' "${L[@]}" > "$R/lam_pe.log" 2>&1
python -m rlp_jax.sweep --config=configs/digits.py --workdir="$R/lam_paper200" --sweep='rlp.reg_lambda=2000,6000,20000,60000,200000' \
  --config.rlp.num_labels=200 --config.rlp.reg_normalization=paper "${L[@]}" > "$R/lam_paper200.log" 2>&1
python -m rlp_jax.sweep --config=configs/digits.py --workdir="$R/lam_paper1000" --sweep='rlp.reg_lambda=10000,30000,100000,300000,1000000' \
  --config.rlp.num_labels=1000 --config.rlp.reg_normalization=paper "${L[@]}" > "$R/lam_paper1000.log" 2>&1
python -m rlp_jax.sweep --config=configs/digits.py --workdir="$R/lam_paper_n100k" --sweep='rlp.reg_lambda=0,1e4,1e5' \
  --config.rlp.num_labels=100000 --config.rlp.reg_normalization=paper "${L[@]}" > "$R/lam_paper_n100k.log" 2>&1
stamp "done"
