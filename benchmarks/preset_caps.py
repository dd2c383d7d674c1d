"""How often the quality presets' group caps (`patchscaler.sampling.pgs.PRESET_MAX_SHARE`)
bind, and what they do to the work: per preset, the images whose groups the caps change and
the Patch-DiT evaluations per image with the thresholds alone → with the caps. Needs only
the GRM (grouping is decided before any denoising), so it takes a minute on one core.

    python benchmarks/preset_caps.py [--data ../shared/data/benchmark/B100 ...] [--lr-data DIR ...]

``--data``: HR folders, LR made by MATLAB bicubic ×1/4 as in eval; ``--lr-data``: folders
whose files are themselves the LR (RealSRSet).
"""

from __future__ import annotations

import argparse

import torch

from patchscaler.eval import load_pair, find_dataset
from patchscaler.models.grm import load_grm
from patchscaler.inference.patch_plan import plan_patches
from patchscaler.sampling.pgs import PRESET_MAX_SHARE, PGSConfig, assign_groups, patch_qmap

DEFAULT_DATA = [f"../shared/data/benchmark/{name}" for name in ("Set5", "Set14", "B100")]


def dataset_rows(folder: str, degradation: str, grm, cfg: PGSConfig) -> list[str]:
    """One markdown row per preset for the images in ``folder``."""
    ds = find_dataset(folder)
    changed = {name: 0 for name in PRESET_MAX_SHARE}
    evals = {name: [0, 0] for name in PRESET_MAX_SHARE}
    for path in ds.paths:
        _, lr = load_pair(path, 4, degradation)
        with torch.no_grad():
            _, conf = grm(lr)
        qmap = patch_qmap(plan_patches(*lr.shape[-2:], 16, 4).split(conf.float().contiguous()))
        for name in PRESET_MAX_SHARE:
            preset = cfg.preset(name)
            steps = torch.tensor([n for _, n in preset.groups])
            free, capped = assign_groups(qmap, preset.gammas), assign_groups(qmap, preset.gammas, preset.max_share)
            changed[name] += int(not torch.equal(free, capped))
            evals[name][0] += int(steps[free].sum())
            evals[name][1] += int(steps[capped].sum())
    n = len(ds.paths)
    return [f"| {ds.name} | {name} | {changed[name]} of {n} | {evals[name][0] / n:.0f} → {evals[name][1] / n:.0f} |"
            for name in PRESET_MAX_SHARE]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", action="append", help="HR folder (repeatable; default Set5, Set14, B100)")
    parser.add_argument("--lr-data", action="append", default=[], help="folder of LR files (repeatable)")
    args = parser.parse_args()
    torch.set_num_threads(1)
    grm, cfg = load_grm(4, model="bicubic"), PGSConfig.load(model="bicubic")  # the set with a PGS config
    print("| set | preset | images the caps change | DiT evals / image, thresholds → caps |")
    print("|---|---|---|---|")
    for folder in args.data or DEFAULT_DATA:
        print("\n".join(dataset_rows(folder, "bicubic", grm, cfg)))
    for folder in args.lr_data:
        print("\n".join(dataset_rows(folder, "none", grm, cfg)))


if __name__ == "__main__":
    main()
