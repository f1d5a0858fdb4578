#!/usr/bin/env bash
# Regenerate the README's figures (docs/img/) from the current code with the CLI.
#   bash scripts/make_figures.sh        (about 5 minutes on 2 cores)
set -euo pipefail
cd "$(dirname "$0")/.."
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
python -m regv1_jax simulate --site Yanhe-basin --start 1995 --end 2015 \
    --out "$tmp/sim.csv" --plot docs/img/simulate_yanhe.png
python -m regv1_jax equilibria --region LoessPlateau --map 400 \
    --params data/parameter_sets/loess_bistable.json --out "$tmp/eq"
cp "$tmp/eq/bifurcation.png" docs/img/bifurcation_loess_bistable.png
python -m regv1_jax equilibria --region ChihuahuanDesert --map 250 --sweep 150:450:31 \
    --params data/parameter_sets/jornada_drought_collapse.json --out "$tmp/eqd"
cp "$tmp/eqd/bifurcation.png" docs/img/bifurcation_jornada.png
python -m regv1_jax calibrate --site Yanhe-basin --out "$tmp/yanhe"
cp "$tmp/yanhe/fit.png" docs/img/calibrate_yanhe_fit.png
python -m regv1_jax profile --site Yanhe-basin --from-calibration "$tmp/yanhe" \
    --out "$tmp/profile"
cp "$tmp/profile/profile.png" docs/img/profile_yanhe.png
python -m regv1_jax calibrate --site Yanhe-basin-synthetic --out "$tmp/twin"
cp "$tmp/twin/fit.png" docs/img/calibrate_twin_fit.png
cp "$tmp/twin/correlation.png" docs/img/calibrate_twin_corr.png
echo "figures written to docs/img/"
