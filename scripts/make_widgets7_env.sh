#!/usr/bin/env bash
# The widgets-7 environment of tests/test_browser_widgets7.py: ipywidgets 7.7.1 (what Colab ships)
# with a front end that speaks the widgets 7 protocol, classic Notebook 6.5 + widgetsnbextension 3.6.
#
# A virtual environment with --system-site-packages: torch, transformers and the rest come from the
# main environment (nothing heavy is downloaded or duplicated); only the widgets-7 stack is installed
# inside it, where it shadows the main environment's ipywidgets 8 / JupyterLab 4. notebook 6.5 needs
# jupyter_client < 8, which ipykernel 7 does not accept, so ipykernel 6 goes in too.
# Built once: a stamp file with the pins makes later calls return at once (a changed pin rebuilds).
#
#   bash scripts/make_widgets7_env.sh [DIR]     (default: $FORGE_WIDGETS7_ENV or ~/.cache/forge-kit-widgets7)
set -euo pipefail
PY=${PYTHON:-python3}
DIR=${1:-${FORGE_WIDGETS7_ENV:-$HOME/.cache/forge-kit-widgets7}}
PINS='ipywidgets==7.7.1
widgetsnbextension==3.6.*
jupyterlab_widgets==1.1.*
ipython_genutils==0.2.*
notebook==6.5.*
ipykernel==6.29.*'
STAMP="$DIR/forge-widgets7.stamp"
if [ -x "$DIR/bin/python" ] && [ -f "$STAMP" ] && [ "$(cat "$STAMP")" = "$PINS" ]; then
    echo "widgets-7 environment ready: $DIR"
    exit 0
fi
rm -rf "$DIR"
mkdir -p "$(dirname "$DIR")"
$PY -m venv --system-site-packages "$DIR"
printf '%s\n' "$PINS" > "$DIR/requirements.txt"
# torch and the ML stack must stay the main environment's: pin what is installed there
$PY -m pip list --format=freeze 2>/dev/null | grep -iE '^(torch|transformers|trl|peft|accelerate|datasets|tokenizers)==' \
    > "$DIR/keep.txt"
"$DIR/bin/python" -m pip install -q --disable-pip-version-check -c "$DIR/keep.txt" -r "$DIR/requirements.txt"
"$DIR/bin/python" - <<'PY'
import ipywidgets, notebook, widgetsnbextension, sys
assert ipywidgets.__version__ == "7.7.1", ipywidgets.__version__
assert notebook.__version__.startswith("6.5"), notebook.__version__
assert sys.prefix != sys.base_prefix
print("widgets-7 environment:", sys.prefix, "ipywidgets", ipywidgets.__version__, "notebook", notebook.__version__)
PY
printf '%s' "$PINS" > "$STAMP"
