"""Seconds per stage of one warm PGS upscale (median of rounds), by wrapping the stage functions.

    PYTHONPATH=<tree> python benchmarks/speed/stages.py THREADS SIDE ROUNDS
"""
import sys, time, torch, json, statistics as st
threads, side, rounds = int(sys.argv[1]), int(sys.argv[2]), int(sys.argv[3])
torch.set_num_threads(threads)
import patchscaler
tree = patchscaler.__file__.rsplit("/patchscaler/", 1)[0]
sys.path.insert(0, tree + "/benchmarks")
from patchscaler.api import get_pipeline
from test_bench_pipeline import MODEL, _input
import patchscaler.sampling.engine as engine
from patchscaler.sampling.denoiser import DiTDenoiser
lr = _input(side)
pipe = get_pipeline("pgs", 4, "cpu", torch.float32, model=MODEL)
den = pipe.sampler.denoiser
T = {}
def wrap(obj, name, key):
    f = getattr(obj, name)
    def g(*a, **k):
        t0 = time.perf_counter(); r = f(*a, **k); T[key] = T.get(key, 0) + time.perf_counter() - t0; return r
    setattr(obj, name, g)
wrap(pipe, "restore", "1 GRM")
wrap(pipe, "_restore_band", "GRM + 2")  # the GRM runs inside a unit's first band
wrap(den.rtm, "search", "3a retrieval (texture encoder + top-k)")
wrap(den.dit, "encode_prompt", "3b prompt encoder")
if hasattr(den.dit, "embed_y0"): wrap(den.dit, "embed_y0", "3c y0 embedding")
wrap(DiTDenoiser, "__call__", "4 DiT forward")
wrap(engine, "group_denoise_step_trusted", "5 DDIM step")
wrap(engine, "patch_noise", "6 noise")
wrap(pipe, "_sample", "sampler total")
wrap(pipe, "_finish", "7 blend, decode")
pipe.upscale_images([lr], seed=0)
res = {}
for r in range(rounds):
    T.clear(); t0 = time.perf_counter(); pipe.upscale_images([lr], seed=0); T["total"] = time.perf_counter() - t0
    # denoiser.__call__ wrapper runs inside the time of the sampler; condition inside too
    for k, v in T.items(): res.setdefault(k, []).append(v)
out = {k: st.median(v) for k, v in res.items()}
out["2 plan patches, seeds, Qmap"] = out.pop("GRM + 2") - out["1 GRM"]
inner = sum(out.get(k, 0) for k in ["3a retrieval (texture encoder + top-k)", "3b prompt encoder", "3c y0 embedding", "4 DiT forward", "5 DDIM step", "6 noise"])
out["8 sampler rest (gathers, python, shortcut)"] = out["sampler total"] - inner
out["9 pipeline rest"] = out["total"] - out["sampler total"] - out["1 GRM"] - out["2 plan patches, seeds, Qmap"] - out["7 blend, decode"]
print(json.dumps({"tree": tree, **{k: round(v, 3) for k, v in sorted(out.items())}}))
