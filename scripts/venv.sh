#!/usr/bin/env bash
# Print the path of the project's virtual environment, creating it first if needed.
# One venv per pinned dependency set, shared by every clone and by CI:
#   ~/.cache/covidct/venv-<sha256(requirements.txt)[:16]>
# It is built in a temporary folder and renamed into place only when complete, so an
# interrupted or concurrent build never leaves a half-installed venv that looks usable.
set -euo pipefail
here=$(cd "$(dirname "$0")/.." && pwd)
req="$here/requirements.txt"
hash=$(sha256sum "$req" | cut -c1-16)
root=${COVIDCT_VENV_ROOT:-$HOME/.cache/covidct}
venv="$root/venv-$hash"
if [ -f "$venv/.complete" ]; then echo "$venv"; exit 0; fi
mkdir -p "$root"
tmp=$(mktemp -d "$root/.venv-$hash.XXXXXX")
trap 'rm -rf "$tmp"' EXIT
echo "covidct: creating the virtual environment $venv (about 2-3 minutes, once per dependency set)" >&2
python3 -m venv "$tmp"
# The local wheel store prints a warning per package it does not hold; keep real errors only.
if ! "$tmp/bin/python" -m pip install --quiet --disable-pip-version-check -r "$req" 2>&1 \
    | { grep -v "is neither a file nor a directory" || true; } >&2; then
  echo "covidct: pip install -r $req failed" >&2; exit 1
fi
touch "$tmp/.complete"
# Only python -m is used on the venv (never its bin/ scripts), so renaming it is safe.
if ! mv -T "$tmp" "$venv" 2>/dev/null; then
  [ -f "$venv/.complete" ] || { echo "covidct: could not move venv into $venv" >&2; exit 1; }
  rm -rf "$tmp"  # another build finished first; use that one
fi
trap - EXIT
echo "$venv"
