// /metrics gauges of the models resident for serving: their device weight bytes (16-bit weights at
// 2 bytes a value) and count, rendered when the engine reports them.
import { expect, test } from 'bun:test';
import { Metrics } from '../src/routes/metrics.ts';

test('cola_serving_weight_bytes and cola_serving_models come from the serving stats', () => {
  const scheduler = { busyMs: {}, units: {}, waiting: {}, maxWaitMs: {}, maxTurnMs: {} };
  const m = new Metrics();
  const text = m.render({ jobsByStatus: {}, gpuMemoryBytes: null, load: { serving: { live: 0, queued: 0, weightBytes: 2_357_000_000, models: 2 }, scheduler } });
  expect(text).toContain('cola_serving_weight_bytes 2357000000\n');
  expect(text).toContain('cola_serving_models 2\n');
  expect(text).toContain('# TYPE cola_serving_weight_bytes gauge');
  const none = m.render({ jobsByStatus: {}, gpuMemoryBytes: null, load: null });
  expect(none).not.toContain('cola_serving_weight_bytes');
});
