#!/usr/bin/env bash
# GPU checks and benchmarks on a lent GPU machine (the workplace's `device` tool), in one run:
# unpack the carried runtime (Bun, dawn.node and the few packages the code imports, the Vulkan
# loader), then the GPU test files, bench/matmul beside PyTorch's f32 matmul on the same GPU,
# bench/attention, bench/generate and bench/train. Results go to $OUT.
# Prepare here: .device/rt.tar.xz (bin/bun + node_modules subset) and .gl/libvulkan1*.deb.
set -u
OUT=${OUT:-/tmp/out}
mkdir -p "$OUT"
for f in .gl/*.deb; do dpkg -x "$f" /; done
ldconfig
export VK_DRIVER_FILES=/usr/local/nvidia/share/vulkan/icd.d/nvidia_icd.json
mkdir -p /tmp/rt && tar -C /tmp/rt -xJf .device/rt.tar.xz
export PATH=/tmp/rt/bin:$PATH
ln -sfn /tmp/rt/node_modules node_modules
{ nvidia-smi -L; bun --version; } > "$OUT/env.txt" 2>&1
bun -e "const {getGpu}=await import('./src/gpu/context.ts'); const c=await getGpu(); console.log(JSON.stringify({info:c.info, features:c.features, maxBinding:c.limits.maxStorageBufferBindingSize})); process.exit(0)" >> "$OUT/env.txt" 2>&1
cat "$OUT/env.txt"
SH=1024x1024x1024,512x768x768,512x768x3072,512x768x8,512x8x768,4096x4096x4096
timeout 240 bun test --timeout 120000 test/gpu.*.test.ts test/model.golden.test.ts test/model.generate.test.ts test/model.half.test.ts test/model.families.test.ts test/cola.trainer.test.ts > "$OUT/tests.log" 2>&1
echo "tests exit $?"; grep -E "^\(fail| pass$| fail$" "$OUT/tests.log"
python3 bench/device/torch_matmul.py "$SH" > "$OUT/torch_matmul.json" 2>&1; cat "$OUT/torch_matmul.json"
BENCH_SHAPES=$SH BENCH_TRIALS=3 BENCH_SECONDS=0.2 timeout 90 bun run bench/matmul.ts > "$OUT/matmul.txt" 2>&1; tail -12 "$OUT/matmul.txt"
timeout 60 bun run bench/attention.ts > "$OUT/attention.txt" 2>&1; tail -8 "$OUT/attention.txt"
timeout 90 bun run bench/generate.ts --tokens 128 --reps 3 > "$OUT/generate.txt" 2>&1; tail -7 "$OUT/generate.txt"
# Issue 11 sizes: 110M, Llama 3.2 1B and Mistral 7B layouts, f32 and bf16 frozen weights, random
# weights (built on the host in ~10-60 s each). Each shape decodes with the fused layer kernels
# (ops/decode-layer.ts) and, interleaved in the same run, with the unfused ops (--compare 1): the
# table has both tokens/s, both dispatch counts and their ratio. Peak memory bandwidth for the
# roofline column: H200 4800 GB/s, H100 SXM 3350 GB/s (spec sheets). 7B f32 needs ~29 GB of GPU
# memory and ~28 GB of host memory. Split in two commands so each stays under the 10-minute limit.
PEAK=$(nvidia-smi --query-gpu=name --format=csv,noheader | grep -q H200 && echo 4800 || echo 3350)
timeout 300 bun run bench/generate.ts --tokens 64 --reps 2 --budget-gb 64 --peak-gbs "$PEAK" --compare 1 --shapes 110M,110M-bf16,1B,1B-bf16 > "$OUT/generate-large.txt" 2>&1; tail -8 "$OUT/generate-large.txt"
timeout 420 bun run bench/generate.ts --tokens 32 --reps 2 --budget-gb 64 --peak-gbs "$PEAK" --compare 1 --shapes 7B-bf16,7B > "$OUT/generate-7b.txt" 2>&1; tail -6 "$OUT/generate-7b.txt"
timeout 60 bun run bench/train.ts --steps 20 > "$OUT/train.txt" 2>&1; tail -6 "$OUT/train.txt"
