// The loss chart of a job page (uPlot): train loss per step, validation loss at the knots, the
// learning rate on its own axis, and every knot drawn on the curve as a dashed line labelled with
// its link, rank and version. The root element's data-knots-drawn counts the knots the last draw painted.
import uPlot from 'uplot';

export interface KnotMark {
  link: number;
  step: number;
  version: number;
  rank: number;
  val_loss: number | null;
}

export class LossChart {
  private steps: number[] = [];
  private loss: (number | null)[] = [];
  private lr: (number | null)[] = [];
  private knots: KnotMark[] = [];
  private plot: uPlot;

  constructor(private readonly el: HTMLElement, width: number) {
    const knots = () => this.knots;
    const opts: uPlot.Options = {
      width,
      height: 320,
      scales: { x: { time: false }, lr: { auto: true } },
      axes: [
        { label: 'step' },
        { label: 'loss', scale: 'y' },
        { label: 'learning rate', scale: 'lr', side: 1, grid: { show: false }, values: (_u, vals) => vals.map((v) => v.toExponential(0)) },
      ],
      series: [
        { label: 'step' },
        { label: 'train loss', stroke: '#2563eb', width: 1.5, scale: 'y', spanGaps: true },
        { label: 'val loss', stroke: '#dc2626', scale: 'y', paths: () => null, points: { show: true, size: 8, fill: '#dc2626' } },
        { label: 'lr', stroke: '#9ca3af', width: 1, dash: [4, 3], scale: 'lr', spanGaps: true },
      ],
      hooks: {
        draw: [
          (u) => {
            const ctx = u.ctx;
            let drawn = 0;
            ctx.save();
            ctx.font = `${Math.round(11 * devicePixelRatio)}px system-ui, sans-serif`;
            for (const k of knots()) {
              const x = u.valToPos(k.step, 'x', true);
              if (!Number.isFinite(x) || x < u.bbox.left - 1 || x > u.bbox.left + u.bbox.width + 1) continue;
              ctx.strokeStyle = '#9333ea';
              ctx.lineWidth = 1.5 * devicePixelRatio;
              ctx.setLineDash([5 * devicePixelRatio, 4 * devicePixelRatio]);
              ctx.beginPath();
              ctx.moveTo(x, u.bbox.top);
              ctx.lineTo(x, u.bbox.top + u.bbox.height);
              ctx.stroke();
              ctx.setLineDash([]);
              ctx.fillStyle = '#6b21a8';
              const label = `link ${k.link + 1} · r${k.rank} · v${k.version}`;
              const w = ctx.measureText(label).width;
              const y = u.bbox.top + (12 + (drawn % 2) * 14) * devicePixelRatio;
              ctx.fillText(label, Math.max(u.bbox.left, x - w - 4 * devicePixelRatio), y);
              drawn++;
            }
            ctx.restore();
            this.el.dataset.knotsDrawn = String(drawn);
          },
        ],
      },
    };
    this.plot = new uPlot(opts, [[], [], [], []], el);
  }

  addStep(step: number, loss: number | null, lr: number | null) {
    const n = this.steps.length;
    if (n && this.steps[n - 1]! >= step) {
      const i = this.steps.indexOf(step);
      if (i >= 0) {
        this.loss[i] = loss;
        this.lr[i] = lr;
        return;
      }
    }
    this.steps.push(step);
    this.loss.push(loss);
    this.lr.push(lr);
  }

  addKnot(k: KnotMark) {
    if (!this.knots.some((x) => x.version === k.version)) this.knots.push(k);
  }

  get knotCount() {
    return this.knots.length;
  }

  redraw() {
    const val = this.steps.map((s) => this.knots.find((k) => k.step === s)?.val_loss ?? null);
    this.plot.setData([this.steps, this.loss, val, this.lr] as uPlot.AlignedData);
  }

  resize(width: number) {
    this.plot.setSize({ width, height: 320 });
  }

  destroy() {
    this.plot.destroy();
  }
}
