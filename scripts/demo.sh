#!/usr/bin/env bash
# Compile, evaluate and render every bundled example into out/ (diagrams as SVG and as interactive pages).
source "$(dirname "$0")/_setup.sh" ""
mkdir -p out
for model in examples/*.nn; do
    name=$(basename "$model" .nn)
    echo "== $model"
    nncompile compile "$model" -o "out/$name.py"
    nncompile eval "$model" > "out/$name.eval.txt"
    if [ "$(wc -l < "out/$name.eval.txt")" -le 24 ]; then
        cat "out/$name.eval.txt"
    else
        sed -n '1,8p' "out/$name.eval.txt"
        echo "  ... ($(wc -l < "out/$name.eval.txt") lines in out/$name.eval.txt)"
    fi
    nncompile render "$model" -o "out/$name.svg"
    nncompile render "$model" -o "out/$name.html"   # the same diagram as an interactive page
done
echo "modules, evaluations and diagrams are in out/ (open out/circuit.svg and out/neuron.svg, or"
echo "out/two_layer.html in a browser: click a node or wire, search, zoom, collapse a layer)"
