"""Progress inside an image (issue 19 item 2): ``upscale(..., progress=callable)`` is told
``(done, total, stage)`` as GRM tiles ("grm") and Patch-DiT patch-evaluations ("dit")
advance, with the tiny test models; the DiT total is known before the first evaluation."""

from __future__ import annotations

import pytest

import patchscaler
from patchscaler.inference.pipeline import PatchScalerPipeline

from helpers import banded_image, tiny_grm, tiny_sampler


class Recorder:
    """Keeps every report, by stage."""

    def __init__(self):
        self.calls: list[tuple[int, int, str]] = []

    def __call__(self, done: int, total: int, stage: str) -> None:
        assert isinstance(done, int) and isinstance(total, int) and isinstance(stage, str)
        self.calls.append((done, total, stage))

    def stage(self, name: str) -> list[tuple[int, int]]:
        return [(d, t) for d, t, s in self.calls if s == name]


def _monotone_and_finished(counts: list[tuple[int, int]]) -> None:
    dones, totals = [d for d, _ in counts], [t for _, t in counts]
    assert dones == sorted(dones) and totals == sorted(totals)
    assert all(0 <= d <= t for d, t in counts)
    assert counts[-1][0] == counts[-1][1]


def test_dit_progress_counts_every_evaluation_towards_a_total_known_in_advance(fake_models):
    rec = Recorder()
    x = banded_image(40, 44)
    _, gmap = patchscaler.upscale(x, sampler="pgs", progress=rec, return_groups=True)
    dit = rec.stage("dit")
    _monotone_and_finished(dit)
    assert dit[-1][1] == gmap.evaluations > 0
    assert {t for _, t in dit} == {gmap.evaluations}  # the total was there before the first evaluation
    assert dit[0][0] == 0 and len(dit) > 2  # announced, then advanced denoiser call by denoiser call
    grm = rec.stage("grm")
    _monotone_and_finished(grm)
    assert grm[-1] == (1, 1)  # one untiled image
    first_dit = next(i for i, (_, _, s) in enumerate(rec.calls) if s == "dit")
    assert all(s == "grm" for _, _, s in rec.calls[:first_dit])  # the GRM runs before the sampler


def test_a_list_of_images_adds_each_images_work_and_tiles_count_for_the_grm():
    rec = Recorder()
    pipe = PatchScalerPipeline(grm=tiny_grm(), sampler=tiny_sampler("pgs"), grm_tile=40, grm_context=4)
    results = pipe.upscale_images([banded_image(50, 60, 1), banded_image(20, 24, 2)], progress=rec,
                                  max_batch_patches=5)
    dit, grm = rec.stage("dit"), rec.stage("grm")
    _monotone_and_finished(dit)
    _monotone_and_finished(grm)
    assert dit[-1][0] == sum(g.evaluations for _, g in results)
    assert grm[-1][1] > 2  # the 50x60 image runs as several tiles, the small one as one


def test_no_dit_stage_without_a_sampler_and_bad_progress_is_a_type_error(fake_models):
    rec = Recorder()
    patchscaler.upscale(banded_image(10, 12), sampler="none", progress=rec)
    assert rec.stage("dit") == [] and rec.stage("grm")[-1] == (1, 1)
    with pytest.raises(TypeError, match="progress must be a bool or a callable"):
        patchscaler.upscale(banded_image(10, 12), sampler="none", progress="yes")
