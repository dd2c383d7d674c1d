"""A warm upscale worker for ab.py: loads one tree's pipeline, then times `run` commands from stdin."""
import sys, time, json, torch
threads, side, sampler, dtype = int(sys.argv[1]), int(sys.argv[2]), sys.argv[3], sys.argv[4]
torch.set_num_threads(threads)
sys.path.insert(0, sys.argv[5])  # benchmarks dir for _input
import patchscaler
from patchscaler.api import get_pipeline
from test_bench_pipeline import MODEL, _input
lr = _input(side)
if sampler == "realesrgan":
    from patchscaler.train import teacher as realesrgan_ncnn
    net = realesrgan_ncnn.RealESRGAN(threads=threads, tile=0)
    net(lr[:, :32, :32])
    class G: evaluations = 0; steps = torch.zeros(1); group = torch.zeros(1)
    class P:
        def upscale_images(self, ims, seed=0): return [(net(ims[0]), G())]
    pipe = P(); hr, g = net(lr[:, :32, :32]), G()
else:
    pipe = get_pipeline(sampler, 4, "cpu", torch.bfloat16 if dtype == "bf16" else torch.float32, model=MODEL)
    import os
    if os.environ.get("CPU_CHUNK"): pipe.sampler.denoiser.cpu_chunk = int(os.environ["CPU_CHUNK"])
    (hr, g), = pipe.upscale_images([lr], seed=0)
print(json.dumps({"ready": patchscaler.__file__}), flush=True)
for line in sys.stdin:
    cmd = line.split()
    if cmd[0] == "run":
        t0 = time.perf_counter()
        (hr, g), = pipe.upscale_images([lr], seed=0)
        print(json.dumps({"t": time.perf_counter() - t0, "evals": g.evaluations}), flush=True)
    elif cmd[0] == "dump":
        torch.save({"hr": hr, "steps": g.steps, "group": g.group}, cmd[1])
        print(json.dumps({"saved": cmd[1]}), flush=True)
