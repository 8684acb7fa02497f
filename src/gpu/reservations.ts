// Device memory reserved ahead of time by long-running work (training jobs), first come first
// served: a job waits here, before it uploads anything, until its estimated peak fits beside the
// jobs already running. Generation keeps its own bounded parts of the budget (KV pools, the model
// cache), so the capacity here is the engine budget's share for training (COLA_TRAIN_MEMORY_BYTES).

export class MemoryReservationError extends Error {
  override name = 'MemoryReservationError';
}

interface Wait {
  bytes: number;
  grant: () => void;
}

export class MemoryReservations {
  private used = 0;
  private readonly queue: Wait[] = [];

  constructor(readonly capacity: number) {
    if (!(capacity > 0)) throw new RangeError(`capacity ${capacity} must be positive`);
  }

  /** Bytes reserved now, and reservations waiting. */
  stats(): { capacity: number; reserved: number; waiting: number } {
    return { capacity: this.capacity, reserved: this.used, waiting: this.queue.length };
  }

  /**
   * Waits until `bytes` fit, then holds them until the returned release is called (idempotent).
   * In arrival order: a large reservation is not overtaken by smaller ones behind it, so it cannot
   * starve. Throws MemoryReservationError at once for more than the capacity; rejects with the
   * signal's reason when aborted while waiting.
   */
  async reserve(bytes: number, signal?: AbortSignal): Promise<() => void> {
    if (!(bytes >= 0) || !Number.isFinite(bytes)) throw new RangeError(`bytes ${bytes}`);
    if (bytes > this.capacity) {
      throw new MemoryReservationError(`needs ${mib(bytes)} of device memory for training; this server allows ${mib(this.capacity)}`);
    }
    signal?.throwIfAborted();
    if (this.queue.length === 0 && this.used + bytes <= this.capacity) this.used += bytes;
    else {
      // grantWaiting() counts the bytes when it grants them.
      await new Promise<void>((resolve, reject) => {
        const w: Wait = { bytes, grant: resolve };
        this.queue.push(w);
        signal?.addEventListener(
          'abort',
          () => {
            const i = this.queue.indexOf(w);
            if (i < 0) return; // already granted: the caller holds the bytes and releases them
            this.queue.splice(i, 1);
            this.grantWaiting(); // the next ones may fit now that the head left
            reject(signal.reason);
          },
          { once: true },
        );
      });
    }
    let held = true;
    return () => {
      if (!held) return;
      held = false;
      this.used -= bytes;
      this.grantWaiting();
    };
  }

  private grantWaiting(): void {
    while (this.queue.length > 0 && this.used + this.queue[0]!.bytes <= this.capacity) {
      const w = this.queue.shift()!;
      this.used += w.bytes;
      w.grant();
    }
  }
}

function mib(b: number): string {
  return `${(b / 2 ** 20).toFixed(1)} MiB`;
}
