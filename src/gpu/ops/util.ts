import type { Engine } from '../engine.ts';

/**
 * Workgroup grid for `n` invocations of `wg` lanes, folded into y when x would pass the device's
 * per-dimension limit. Kernels index with `gid.x + gid.y * nwg.x * WG`.
 */
export function grid1d(e: Engine, n: number, wg: number): [number, number] {
  const groups = Math.ceil(n / wg);
  const max = e.limits.maxComputeWorkgroupsPerDimension;
  if (groups <= max) return [Math.max(groups, 1), 1];
  const y = Math.ceil(groups / max);
  return [Math.ceil(groups / y), y];
}
