"""Several threads at once: `upscale()` and a shared `PatchScalerPipeline` give the
results of running the same calls one after the other, and the model cache
(`patchscaler.checkpoints.cached`) loads each model once however many threads race for it.

Every test starts its threads at a barrier, so they really overlap."""

from __future__ import annotations

import threading
import time
from concurrent.futures import ThreadPoolExecutor

import torch

import patchscaler
from patchscaler import checkpoints
from patchscaler.inference.pipeline import PatchScalerPipeline

from helpers import banded_image, tiny_grm, tiny_sampler

THREADS = 4


def _race(fn, args):
    """``fn(a)`` for every ``a`` in ``args``, one thread each, all released together."""
    barrier = threading.Barrier(len(args))

    def run(a):
        barrier.wait(timeout=30)
        return fn(a)

    with ThreadPoolExecutor(len(args)) as pool:
        return list(pool.map(run, args))


def test_cache_builds_once_under_a_race():
    checkpoints.clear()
    builds = []

    def build():
        builds.append(threading.get_ident())
        time.sleep(0.05)  # long enough that unguarded threads would all build
        return object()

    got = _race(lambda _: checkpoints.cached(("test-race",), build), range(THREADS))
    checkpoints.clear()
    assert len(builds) == 1
    assert all(g is got[0] for g in got)


def test_cache_builds_other_keys_while_one_is_loading():
    """A slow load (a big DiT) must not hold up a thread that wants another model."""
    checkpoints.clear()
    release = threading.Event()

    def slow():
        release.wait(timeout=10)
        return "slow"

    slow_thread = threading.Thread(target=checkpoints.cached, args=(("test-slow",), slow))
    slow_thread.start()
    try:
        time.sleep(0.05)  # the slow build is under way
        start = time.perf_counter()
        assert checkpoints.cached(("test-fast",), lambda: "fast") == "fast"
        assert time.perf_counter() - start < 5  # did not wait for the slow build
    finally:
        release.set()
        slow_thread.join(timeout=10)
    assert checkpoints.cached(("test-slow",), lambda: "rebuilt") == "slow"
    checkpoints.clear()


def test_clear_during_a_build_does_not_store_the_old_model():
    checkpoints.clear()
    started, release = threading.Event(), threading.Event()

    def old():
        started.set()
        release.wait(timeout=10)
        return "old"

    t = threading.Thread(target=checkpoints.cached, args=(("test-clear",), old))
    t.start()
    started.wait(timeout=10)
    checkpoints.clear()  # e.g. the file was rewritten
    release.set()
    t.join(timeout=10)
    assert checkpoints.cached(("test-clear",), lambda: "new") == "new"
    checkpoints.clear()


def test_upscale_from_threads_equals_one_after_the_other(fake_models):
    fake_models["pgs_available"] = True  # writes the DiT files once, before the race
    images = [banded_image(20 + 4 * i, 28, seed=i) for i in range(THREADS)]
    checkpoints.clear()  # every thread races to load the GRM, the DiT and the pipeline
    loads_before = fake_models["grm_loads"]
    together = _race(lambda i: patchscaler.upscale(images[i], sampler="pgs", seed=i, return_groups=True),
                     range(THREADS))
    assert fake_models["grm_loads"] - loads_before == 1  # one pipeline, loaded once
    for i, (out, gmap) in enumerate(together):
        alone, gmap_alone = patchscaler.upscale(images[i], sampler="pgs", seed=i, return_groups=True)
        assert torch.equal(out, alone), i
        assert torch.equal(gmap.steps, gmap_alone.steps) and gmap.evaluations > 0


def test_one_pipeline_from_several_threads():
    pipe = PatchScalerPipeline(grm=tiny_grm(), sampler=tiny_sampler("pgs"))
    images = [banded_image(36, 20 + 8 * i, seed=i) for i in range(THREADS)]
    sequential = [pipe.upscale_images([im], seed=7, max_batch_patches=5)[0] for im in images]
    together = _race(lambda i: pipe.upscale_images([images[i]], seed=7, max_batch_patches=5)[0], range(THREADS))
    for (hr, gmap), (hr_seq, gmap_seq) in zip(together, sequential):
        assert torch.equal(hr, hr_seq)
        assert torch.equal(gmap.group, gmap_seq.group)
