#!/usr/bin/env bash
# Compiles contracts/*.sol with the npm package solc (solc-js, pinned in package.json) into
# contracts/build/<Name>.abi and .bin. The artifacts are committed; a test recompiles and compares.
set -euo pipefail
cd "$(dirname "$0")/.."
out=${1:-contracts/build}
tmp=$(mktemp -d)
node_modules/.bin/solcjs --bin --abi --optimize -o "$tmp" contracts/*.sol >/dev/null
mkdir -p "$out"
for f in "$tmp"/*; do
  base=$(basename "$f")
  # solcjs names outputs contracts_<File>_sol_<Contract>.<ext>
  name=${base##*_sol_}
  cp "$f" "$out/$name"
done
rm -rf "$tmp"
ls "$out"
