#!/usr/bin/env bash
# Make sure the system programs the stack runs are on PATH: ffmpeg and ffprobe (the pipeline),
# bubblewrap (the jail every FFmpeg runs in) and nginx (the buffering proxy in front of
# gunicorn); with --browser also Chromium and its driver (the page tests). Install Debian's
# packages when root, else say how.
set -euo pipefail
missing=()
command -v ffmpeg >/dev/null && command -v ffprobe >/dev/null || missing+=(ffmpeg)
command -v nginx >/dev/null || [ -x /usr/sbin/nginx ] || missing+=(nginx-light)
command -v bwrap >/dev/null || missing+=(bubblewrap)  # every FFmpeg runs in its jail (media/jail.py)
if [ "${1:-}" = --browser ]; then
  command -v chromium >/dev/null || missing+=(chromium)
  command -v chromedriver >/dev/null || missing+=(chromium-driver)
  # Debian 12's own python3.11 (3.11.2) with venv: the instances' Python, that tests/test_bootstrap.py runs.
  /usr/bin/python3.11 -c 'import ensurepip, venv' 2>/dev/null || missing+=(python3.11-venv)
  /usr/bin/python3.11 -c 'import boto3' 2>/dev/null || missing+=(python3-boto3)  # fetches the release
fi
[ ${#missing[@]} -eq 0 ] && exit 0
if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
  echo "installing ${missing[*]} with apt-get" >&2
  export DEBIAN_FRONTEND=noninteractive
  # Don't let the package start a system-wide nginx on port 80: make run starts its own.
  if [ ! -e /usr/sbin/policy-rc.d ]; then
    printf '#!/bin/sh\nexit 101\n' >/usr/sbin/policy-rc.d && chmod +x /usr/sbin/policy-rc.d
    trap 'rm -f /usr/sbin/policy-rc.d' EXIT
  fi
  apt-get install -y "${missing[@]}" >/dev/null 2>&1 \
    || { apt-get update >/dev/null && apt-get install -y "${missing[@]}" >/dev/null; }
  exit 0
fi
cat >&2 <<MSG
These programs are required but not installed, and this user cannot install them: ${missing[*]}
Install them, then run the command again:
    sudo apt-get install -y ${missing[*]}      # Debian, Ubuntu
    brew install ffmpeg nginx chromium         # macOS
MSG
exit 1
