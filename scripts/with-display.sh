#!/usr/bin/env bash
# Run a command with an X display: the current one if set, else a virtual one (Xvfb).
# Installs Xvfb and the libraries Qt's xcb platform needs when missing and we are root (CI).
set -euo pipefail
if [ -n "${DISPLAY:-}" ] && [ -z "${CI:-}" ]; then
  exec "$@"
fi
need_packages=()
command -v xvfb-run >/dev/null 2>&1 || need_packages+=(xvfb xauth)
ldconfig -p 2>/dev/null | grep -q libxkbcommon-x11 || need_packages+=(libxkbcommon-x11-0)
ldconfig -p 2>/dev/null | grep -q libxcb-cursor || need_packages+=(libxcb-cursor0)
ldconfig -p 2>/dev/null | grep -q libxcb-icccm || need_packages+=(libxcb-icccm4 libxcb-image0 libxcb-keysyms1 \
  libxcb-randr0 libxcb-render-util0 libxcb-xinerama0 libxcb-xfixes0 libxcb-shape0)
ldconfig -p 2>/dev/null | grep -q libGL.so.1 || need_packages+=(libgl1 libgl1-mesa-dri)
ldconfig -p 2>/dev/null | grep -q libdbus-1 || need_packages+=(libdbus-1-3)
if [ ${#need_packages[@]} -gt 0 ]; then
  if [ "$(id -u)" = "0" ]; then
    echo "with-display: installing ${need_packages[*]}" >&2
    apt-get update -qq >/dev/null && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${need_packages[@]}" >/dev/null
  else
    echo "with-display: please install: ${need_packages[*]} (e.g. sudo apt-get install ...)" >&2
  fi
fi
exec xvfb-run -a -s "-screen 0 1600x1000x24" "$@"
