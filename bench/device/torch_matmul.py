# PyTorch f32 matmul GFLOP/s on the GPU (TF32 off: a true f32 reference), for the shapes of bench/matmul.ts.
# Usage: python3 bench/device/torch_matmul.py "1024x1024x1024,512x768x768,..."
import json, sys, time
import torch

torch.backends.cuda.matmul.allow_tf32 = False
torch.backends.cudnn.allow_tf32 = False
shapes = [tuple(int(x) for x in s.split('x')) for s in sys.argv[1].split(',')]
out = {}
for (M, K, N) in shapes:
    a = torch.randn(M, K, device='cuda', dtype=torch.float32)
    b = torch.randn(K, N, device='cuda', dtype=torch.float32)
    for _ in range(3):
        a @ b
    torch.cuda.synchronize()
    reps = 50
    best = []
    for _ in range(5):
        s, e = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        s.record()
        for _ in range(reps):
            a @ b
        e.record()
        torch.cuda.synchronize()
        best.append(s.elapsed_time(e) / 1000 / reps)
    best.sort()
    t = best[len(best) // 2]
    out[f'{M}x{K}x{N}'] = 2 * M * K * N / t / 1e9
print(json.dumps({'torch': torch.__version__, 'device': torch.cuda.get_device_name(0), 'gflops': out}))
