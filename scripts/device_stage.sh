#!/usr/bin/env bash
# Get the checkout ready for the device tool's `run` (a GPU lent to the session), and back.
#
#   bash scripts/device_stage.sh stage [MB]   # then: run(command="bash scripts/device_real_dit.sh 6",
#                                             #            carry=[".devdata", ".whl"], timeout_s=600)
#   bash scripts/device_stage.sh restore      # before committing
#
# Why: a `run` sends the working tree (tracked files and untracked, not-ignored ones)
# plus the carried paths, at most 64 MiB; nothing outside the checkout can be reached
# there. The tracked tree is ~91 MB, over half of it training checkpoints (runs/**/*.pt,
# for --resume here) that the device does not need, so `stage` moves them to
# /tmp/patchscaler-aside. It copies up to MB megabytes (default 22) of training photos
# from ../shared/data/train (t91 first, then bsds) into .devdata/train (git-excluded,
# never committed: the device reads them there) and downloads the pypng wheel the
# device's Python lacks into .whl/. `restore` moves the checkpoints back and deletes
# .devdata.
set -euo pipefail
cd "$(dirname "$0")/.."
ASIDE=/tmp/patchscaler-aside
SRC=../shared/data/train

case "${1:-}" in
stage)
    budget=$(( ${2:-22} * 1000000 ))
    grep -qx '/.devdata/' .git/info/exclude 2>/dev/null || echo '/.devdata/' >> .git/info/exclude
    grep -qx '/.whl/' .git/info/exclude 2>/dev/null || echo '/.whl/' >> .git/info/exclude
    mkdir -p "$ASIDE"
    git ls-files 'runs/*.pt' | while read -r f; do
        if [ -f "$f" ]; then mkdir -p "$ASIDE/$(dirname "$f")"; mv "$f" "$ASIDE/$f"; fi
    done
    rm -rf .devdata && mkdir -p .devdata/train
    used=0
    for sub in t91 bsds photos; do
        [ -d "$SRC/$sub" ] || continue
        while read -r f; do
            size=$(stat -c %s "$f")
            if [ $(( used + size )) -gt "$budget" ]; then break 2; fi
            mkdir -p ".devdata/train/$sub"
            cp "$f" ".devdata/train/$sub/"
            used=$(( used + size ))
        done < <(find "$SRC/$sub" -type f | sort)
    done
    mkdir -p .whl
    ls .whl/pypng-*.whl >/dev/null 2>&1 || python3 -m pip download -q --no-deps --only-binary=:all: -d .whl pypng 2>/dev/null
    # (du fails on the tracked files just moved away: only the total of the others counts)
    tracked=$({ git ls-files -z | xargs -0 du -cb 2>/dev/null || true; } | tail -1 | cut -f1)
    extra=$(du -cb .devdata .whl | tail -1 | cut -f1)
    echo "photos: $(find .devdata -type f | wc -l) files, $(( used / 1000000 )) MB in .devdata/train"
    echo "travels: tracked $(( tracked / 1000000 )) MB + carried $(( extra / 1000000 )) MB (limit 67 MB = 64 MiB)"
    ;;
restore)
    if [ -d "$ASIDE" ]; then
        (cd "$ASIDE" && find . -type f) | while read -r f; do
            mkdir -p "$(dirname "$f")" && mv "$ASIDE/$f" "$f"
        done
        rm -rf "$ASIDE"
    fi
    rm -rf .devdata
    git status --short runs | head
    ;;
*)
    echo "usage: $0 stage [MB] | restore" >&2
    exit 2
    ;;
esac
