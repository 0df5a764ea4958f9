#!/usr/bin/env bash
# Compile, evaluate and render every bundled example into out/.
source "$(dirname "$0")/_setup.sh" ""
mkdir -p out
for model in examples/*.nn; do
    name=$(basename "$model" .nn)
    echo "== $model"
    nncompile compile "$model" -o "out/$name.py"
    if [ "$(wc -c < "$model")" -lt 2000 ] && grep -q "^input [a-z0-9_]* *=" "$model"; then
        nncompile eval "$model"
    else
        nncompile eval "$model" | head -n 12
    fi
    nncompile render "$model" -o "out/$name.svg"
done
echo "modules and diagrams are in out/ (open out/circuit.svg and out/neuron.svg)"
