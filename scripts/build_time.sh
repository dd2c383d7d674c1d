#!/usr/bin/env bash
# Times `python setup.py build_ext --inplace` on a fresh clone of each REF, CPU-only and
# with the CUDA kernels (FORCE_CUDA=1, one architecture), back to back, so that the
# before/after numbers share the machine's load. Usage:
#   scripts/build_time.sh PYTHON REPO REF_BEFORE REF_AFTER [MAX_JOBS]
# Prints one line per build: ref, cuda, wall seconds, user+sys CPU seconds.
set -euo pipefail
PY=$1 REPO=$2 BEFORE=$3 AFTER=$4 JOBS=${5:-2}
for cuda in 0 1; do
  for ref in "$BEFORE" "$AFTER"; do
    dir=$(mktemp -d /tmp/build-time.XXXXXX)
    git clone -q "$REPO" "$dir" && git -C "$dir" checkout -q "$ref"
    env=(MAX_JOBS="$JOBS")
    if [ "$cuda" = 1 ]; then
      env+=(FORCE_CUDA=1 CUDA_HOME=/usr/local/cuda TORCH_CUDA_ARCH_LIST=9.0)
    fi
    # GNU time: %e wall seconds, %U user and %S system CPU seconds (all child processes).
    (cd "$dir" && env "${env[@]}" /usr/bin/time -f "%e %U %S" -o "$dir/time.txt" \
        "$PY" setup.py build_ext --inplace > "$dir/build.log" 2>&1) || { echo "build failed: $dir/build.log"; exit 1; }
    read -r wall user sys < "$dir/time.txt"
    printf "%s cuda=%s wall=%ss cpu=%ss log=%s\n" "$(git -C "$dir" rev-parse --short HEAD)" "$cuda" "$wall" \
        "$(echo "$user + $sys" | bc)" "$dir/build.log"
  done
done
