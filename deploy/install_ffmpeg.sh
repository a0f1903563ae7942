#!/usr/bin/env bash
# Make sure ffmpeg and ffprobe are on PATH: install Debian's package when root, else explain.
set -euo pipefail
if command -v ffmpeg >/dev/null && command -v ffprobe >/dev/null; then exit 0; fi
if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
  echo "ffmpeg is missing: installing it with apt-get" >&2
  DEBIAN_FRONTEND=noninteractive apt-get install -y ffmpeg >/dev/null 2>&1 \
    || { apt-get update >/dev/null && DEBIAN_FRONTEND=noninteractive apt-get install -y ffmpeg >/dev/null; }
  exit 0
fi
cat >&2 <<'MSG'
ffmpeg and ffprobe are required but not installed, and this user cannot install them.
Install them, then run the command again:
    sudo apt-get install -y ffmpeg        # Debian, Ubuntu
    brew install ffmpeg                   # macOS
MSG
exit 1
