# temporary profiling script (to be deleted)
import sys, time, statistics, torch
import torch.nn.functional as F
from torch.profiler import profile, ProfilerActivity
from srr.layers import MSSA
from srr.derive import derive
from srr.objective import CompressedCodingRate
dev = torch.device(sys.argv[1]); sync = torch.cuda.synchronize if dev.type == "cuda" else (lambda: None)
d, K, p = (384, 6, 64) if sys.argv[2] == "tiny" else (768, 12, 64)
B, N = 64, 197
torch.manual_seed(0)
x = torch.randn(B, N, d, device=dev, requires_grad=True)
m = MSSA(d, heads=K, head_dim=p, mode="exact", step_size=0.1).to(dev)
der = derive(CompressedCodingRate(eps=0.5), step_size=0.1, dim=d, heads=K, head_dim=p, U=m.subspaces.detach()).to(dev)
W = m.qkv.weight
beta = p / (N * 0.25)
def lean_inv(x):
    a = F.linear(x, W)
    ah = a.unflatten(-1, (K, p)).transpose(-3, -2)
    G = ah.mT @ ah
    S = torch.eye(p, device=dev) + beta * G
    L = torch.linalg.cholesky_ex(S)[0]
    Sinv = torch.cholesky_inverse(L)
    C = ah @ Sinv
    return x - (0.1 * beta) * (C.transpose(-3, -2).flatten(-2) @ W)
def lean_solve(x):
    a = F.linear(x, W)
    ah = a.unflatten(-1, (K, p)).transpose(-3, -2)
    G = ah.mT @ ah
    S = torch.eye(p, device=dev) + beta * G
    Sinv = torch.linalg.inv_ex(S)[0]
    C = ah @ Sinv
    return x - (0.1 * beta) * (C.transpose(-3, -2).flatten(-2) @ W)
from srr.rates import compressed_coding_rate_grad
old = lambda x: x - 0.1 * compressed_coding_rate_grad(x, m.subspaces, 0.5, check_finite=False)
fns = {"old": old, "exact": m.step, "derived": der, "lean_inv": lean_inv, "lean_solve": lean_solve}
ref = der(x)
for n, f in fns.items():
    print(n, ((f(x) - ref).norm() / ref.norm()).item())
def run(f):
    def r():
        x.grad = None; m.zero_grad(); der.zero_grad()
        f(x).square().mean().backward()
    return r
times = {n: [] for n in fns}
for n, f in fns.items(): run(f)()
for i in range(5):
    for n, f in fns.items():
        sync(); t = time.perf_counter(); run(f)(); sync(); times[n].append(time.perf_counter() - t)
for n in fns: print(n, 1e3 * statistics.median(times[n]))
for n in ("exact",):
    act = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if dev.type == "cuda" else [])
    with profile(activities=act) as prof:
        run(fns[n])(); sync()
    print(n); print(prof.key_averages().table(sort_by=("cuda_time_total" if dev.type == "cuda" else "self_cpu_time_total"), row_limit=14))
