// In-process limiters. The request-rate quota is a token bucket per tenant held in this
// process: with several processes behind one database each enforces it separately (a tenant
// can reach N × its rate across N processes). Job and storage quotas are checked in the database.

export class TokenBuckets {
  private buckets = new Map<string, { tokens: number; at: number }>();
  constructor(private readonly now: () => number = () => Date.now()) {}

  /** Take one token of a bucket refilled at `perMinute`/min with capacity `perMinute`. Returns seconds to wait when empty. */
  take(key: string, perMinute: number): { ok: true } | { ok: false; retryAfterS: number } {
    const t = this.now();
    const rate = perMinute / 60_000;
    let b = this.buckets.get(key);
    if (!b) {
      b = { tokens: perMinute, at: t };
      this.buckets.set(key, b);
      if (this.buckets.size > 100_000) this.buckets.delete(this.buckets.keys().next().value!);
    }
    b.tokens = Math.min(perMinute, b.tokens + (t - b.at) * rate);
    b.at = t;
    if (b.tokens >= 1) {
      b.tokens -= 1;
      return { ok: true };
    }
    return { ok: false, retryAfterS: Math.max(1, Math.ceil((1 - b.tokens) / rate / 1000)) };
  }
}
