#!/usr/bin/env bash
# Render the product's logo and bumper cards with FFmpeg (run by `make assets`).
set -euo pipefail
cd "$(dirname "$0")"
font=/usr/share/fonts/truetype/dejavu/DejaVuSans-Bold.ttf
[ -f "$font" ] || { echo "needs fonts-dejavu-core for $font" >&2; exit 1; }
brand=0xE0245E

ffmpeg -hide_banner -loglevel error -y -f lavfi -i "color=c=${brand}:s=440x120" -frames:v 1 \
  -vf "drawbox=x=22:y=30:w=60:h=60:color=white:t=fill,drawbox=x=38:y=44:w=30:h=32:color=${brand}:t=fill,drawtext=fontfile=${font}:text='VIDEOPROC':fontcolor=white:fontsize=50:x=100:y=(h-th)/2,format=rgba,colorchannelmixer=aa=0.85" \
  logo.png

card() {  # card <file> <title> <subtitle>
  ffmpeg -hide_banner -loglevel error -y -f lavfi -i "color=c=0x14161F:s=1920x1080" -i logo.png -frames:v 1 \
    -filter_complex "[0]drawbox=x=0:y=ih-24:w=iw:h=24:color=${brand}:t=fill,drawtext=fontfile=${font}:text='$2':fontcolor=white:fontsize=96:x=(w-tw)/2:y=h/2+60,drawtext=fontfile=${font}:text='$3':fontcolor=0xB8BCC8:fontsize=44:x=(w-tw)/2:y=h/2+200[bg];[1]scale=800:-1[logo];[bg][logo]overlay=x=(W-w)/2:y=H/2-300" \
    "$1"
}
card intro.png "Presented with" "processed by videoproc"
card outro.png "Thanks for watching" "made with videoproc"
