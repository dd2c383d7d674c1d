"""Interleaved A/B of the whole upscale: two source trees (e.g. the parent commit exported
with `git archive` and this worktree, each with patchscaler/_C.abi3.so), one warm worker
process per tree (models loaded once), rounds alternating old/new/new/old, the median of
the per-round time ratios; then the two outputs are compared.

    python benchmarks/speed/ab.py --old /tmp/old --new $PWD --rounds 5 [--threads 2]
        [--sampler none] [--dtype bf16] [--peer]   # --peer: Real-ESRGAN ncnn as a third worker
"""
import subprocess, sys, json, statistics as st, os, argparse, tempfile
ap = argparse.ArgumentParser()
ap.add_argument("--threads", type=int, default=1); ap.add_argument("--side", type=int, default=256)
ap.add_argument("--sampler", default="pgs"); ap.add_argument("--dtype", default="fp32")
ap.add_argument("--rounds", type=int, default=5); ap.add_argument("--peer", action="store_true"); ap.add_argument("--new-env", default="")
ap.add_argument("--old", required=True); ap.add_argument("--new", required=True)
a = ap.parse_args()
def spawn(tree, sampler=None):
    env = dict(os.environ, PYTHONPATH=tree + ":" + tree + "/benchmarks")
    if tag_env := (a.new_env if tree == a.new else ""):
        env.update(kv.split("=", 1) for kv in tag_env.split(","))
    p = subprocess.Popen([sys.executable, os.path.join(os.path.dirname(os.path.abspath(__file__)), "worker.py"), str(a.threads), str(a.side), sampler or a.sampler, a.dtype, tree + "/benchmarks"],
                         stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, env=env, cwd="/tmp")
    r = json.loads(p.stdout.readline()); assert r["ready"].startswith(tree), r
    return p
def ask(p, cmd):
    p.stdin.write(cmd + "\n"); p.stdin.flush(); return json.loads(p.stdout.readline())
W = {"old": spawn(a.old), "new": spawn(a.new)}
if a.peer: W["realesrgan"] = spawn(a.new, "realesrgan")
ts = {k: [] for k in W}
for r in range(a.rounds):
    for k in (list(W) if r % 2 == 0 else list(W)[::-1]):
        res = ask(W[k], "run"); ts[k].append(res["t"]); ev = res["evals"]
        print(r, k, round(res["t"], 3), ev, flush=True)
tag = f"{a.sampler}-{a.dtype}-{a.side}-t{a.threads}"
for k in ["old", "new"]: ask(W[k], f"dump {tempfile.gettempdir()}/ab-out-{k}-{tag}.pt")
import torch
o, n = torch.load(f"{tempfile.gettempdir()}/ab-out-old-{tag}.pt"), torch.load(f"{tempfile.gettempdir()}/ab-out-new-{tag}.pt")
ratios = [x / y for x, y in zip(ts["old"], ts["new"])]
print(json.dumps({"config": tag, "old_median_s": round(st.median(ts["old"]), 3), "new_median_s": round(st.median(ts["new"]), 3),
                  "ratio_median": round(st.median(ratios), 3), "ratios": [round(x, 3) for x in ratios],
                  "max_abs_diff_hr": (o["hr"] - n["hr"]).abs().max().item(), "steps_equal": bool(torch.equal(o["steps"], n["steps"])),
                  "group_equal": bool(torch.equal(o["group"], n["group"])),
                  **({"realesrgan_median_s": round(st.median(ts["realesrgan"]), 3),
                      "realesrgan_over_new_median": round(st.median([x / y for x, y in zip(ts["realesrgan"], ts["new"])]), 3),
                      "realesrgan_over_old_median": round(st.median([x / y for x, y in zip(ts["realesrgan"], ts["old"])]), 3)} if a.peer else {})}))
for p in W.values(): p.stdin.close(); p.wait()
