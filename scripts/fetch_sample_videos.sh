#!/usr/bin/env bash
# Copy real sample videos shipped inside Debian packages into DEST (no root, no install).
#
#   scripts/fetch_sample_videos.sh DEST
#
# `apt-get download` fetches the .deb files into a temp dir, `dpkg -x` unpacks them there, and
# the video files they carry are copied to DEST (flat, by file name). Nothing is installed.
#   opencv-doc       vtest.avi (pedestrians, 795 frames), Megamind.avi, Megamind_bugy.avi
#                    (the same clip with damaged frames), tree.avi (cinepak, variable frame rate)
#   python3-imageio  cockatoo.mp4 (720p, 280 frames), realshort.mp4 (36 frames)
# Needs Debian's package lists; as root it runs `apt-get update` once if they are missing.
set -euo pipefail

dest=${1:?usage: fetch_sample_videos.sh DEST}
packages=(opencv-doc python3-imageio)
pattern='.*\.(avi|mp4|mov|mkv|webm)$'

for tool in apt-get dpkg; do
  command -v "$tool" >/dev/null || { echo "fetch_sample_videos: $tool not found (needs a Debian-based system)" >&2; exit 2; }
done

work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT

download() { (cd "$work" && apt-get download -q "${packages[@]}" >/dev/null 2>"$work/apt.err"); }
if ! download; then
  if [ "$(id -u)" = 0 ]; then
    apt-get update -q >/dev/null 2>&1 || true
    download || { cat "$work/apt.err" >&2; exit 1; }
  else
    echo "fetch_sample_videos: apt-get download failed (package lists missing? run 'apt-get update' as root):" >&2
    cat "$work/apt.err" >&2
    exit 1
  fi
fi

mkdir -p "$work/root" "$dest"
for deb in "$work"/*.deb; do
  dpkg -x "$deb" "$work/root"
done

count=0
while IFS= read -r -d '' f; do
  cp -f "$f" "$dest/$(basename "$f")"
  echo "$dest/$(basename "$f")"
  count=$((count + 1))
done < <(find "$work/root" -type f -regextype posix-extended -iregex "$pattern" -print0 | sort -z)

[ "$count" -gt 0 ] || { echo "fetch_sample_videos: no video files found in ${packages[*]}" >&2; exit 1; }
