#!/usr/bin/env bash
# Render a covidct report.html to a PNG with headless Chromium (Debian's `chromium` package),
# to look at it as a reader would. Offline: background networking, sync and updates are off.
#
#   scripts/render_report.sh REPORT.html OUT.png [WIDTH] [HEIGHT]
#
# WIDTH defaults to 1280, HEIGHT to 4000 pixels (the screenshot shows the top HEIGHT pixels).
set -euo pipefail

if [[ $# -lt 2 ]]; then
    echo "usage: $0 REPORT.html OUT.png [WIDTH] [HEIGHT]" >&2
    exit 2
fi
report=$1 out=$2 width=${3:-1280} height=${4:-4000}
if [[ ! -f $report ]]; then
    echo "$0: no such report: $report" >&2
    exit 2
fi
browser=$(command -v chromium || command -v chromium-browser || true)
if [[ -z $browser ]]; then
    echo "$0: chromium not found (Debian: apt-get install chromium)" >&2
    exit 3
fi
profile=$(mktemp -d)
trap 'rm -rf "$profile"' EXIT
url="file://$(cd "$(dirname "$report")" && pwd)/$(basename "$report")"
out_abs="$(cd "$(dirname "$out")" && pwd)/$(basename "$out")"
"$browser" --headless --no-sandbox --disable-gpu --disable-quic --no-first-run \
    --disable-background-networking --disable-component-update --disable-sync \
    --hide-scrollbars --user-data-dir="$profile" --screenshot="$out_abs" \
    --window-size="$width,$height" "$url" >/dev/null 2>&1
[[ -s $out_abs ]] || { echo "$0: chromium wrote no picture" >&2; exit 1; }
echo "$out_abs"
