// The dashboard (/ui): sign-in with an API key, jobs with live loss curves and knots, new
// fine-tunes, the models' lineage, a playground with side-by-side compare, and (admin key) tenants
// and their usage. Hash routes: #/jobs, #/jobs/<id>, #/new, #/models, #/playground, #/admin.
import { client, describe, download, session, signIn, signOut, type Job, type ModelDetail } from './api.ts';
import { LossChart } from './chart.ts';
import { bytesText, renderLineage, type LineageNode } from './lineage.ts';

type Child = Node | string | number | null | undefined | false;

function h<K extends keyof HTMLElementTagNameMap>(tag: K, attrs: Record<string, unknown> = {}, ...children: Child[]): HTMLElementTagNameMap[K] {
  const e = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs)) {
    if (v === undefined || v === null || v === false) continue;
    if (k.startsWith('on') && typeof v === 'function') e.addEventListener(k.slice(2), v as EventListener);
    else if (k === 'testid') e.dataset.testid = String(v);
    else e.setAttribute(k, v === true ? '' : String(v));
  }
  for (const c of children) if (c !== null && c !== undefined && c !== false) e.append(c instanceof Node ? c : String(c));
  return e;
}

const main = document.getElementById('main')!;
let cleanup: (() => void)[] = [];

function show(...nodes: Child[]) {
  main.replaceChildren(...(nodes.filter((n) => n !== null && n !== undefined && n !== false) as (Node | string)[]).map((n) => (typeof n === 'number' ? String(n) : n)));
}

/** Bumped by every route(): page work started for an earlier route then renders nothing. */
let routeGen = 0;

/**
 * A page's own show/onCleanup, bound to the route that started it: call it at the page function's
 * start (before any await). After a navigation the stale page's renders are dropped and what it
 * registers for cleanup runs at once.
 */
function pageView() {
  const gen = routeGen;
  const live = () => gen === routeGen;
  return {
    show: (...nodes: Child[]) => {
      if (live()) show(...nodes);
    },
    onCleanup: (f: () => void) => {
      if (live()) cleanup.push(f);
      else f();
    },
  };
}

function errorBox(e: unknown) {
  return h('div', { class: 'error', testid: 'error' }, describe(e));
}

const statusBadge = (s: string) => h('span', { class: `status ${s}`, testid: 'job-status' }, s);
const fmt = (x: number | null | undefined, d = 4) => (x === null || x === undefined ? '–' : x.toFixed(d));
const progressBar = (frac: number, warn = false) => h('span', { class: `bar${warn ? ' warn' : ''}` }, h('span', { style: `width:${Math.round(Math.min(1, Math.max(0, frac)) * 100)}%` }));

// ---------------------------------------------------------------- sign in

function signInPage() {
  const input = h('input', { type: 'password', placeholder: 'API key (or the admin key)', autocomplete: 'off', testid: 'key' });
  const err = h('div');
  const form = h(
    'form',
    {
      class: 'card signin',
      onsubmit: async (ev: Event) => {
        ev.preventDefault();
        err.replaceChildren();
        try {
          const role = await signIn(input.value.trim());
          location.hash = role === 'admin' ? '#/admin' : '#/jobs';
          route();
        } catch (e) {
          err.replaceChildren(errorBox(e));
        }
      },
    },
    h('h1', {}, 'Sign in'),
    h('p', { class: 'muted' }, 'The key stays in this browser tab (sessionStorage) and goes only to this server.'),
    input,
    h('p', {}, h('button', { class: 'primary', type: 'submit', testid: 'signin' }, 'Sign in')),
    err,
  );
  show(form);
  input.focus();
}

// ---------------------------------------------------------------- jobs

async function jobsPage() {
  const { show, onCleanup } = pageView();
  const c = client();
  const body = h('tbody');
  const err = h('div');
  show(h('h1', {}, 'Jobs ', h('a', { href: '#/new', style: 'font-size:13px;font-weight:400' }, '+ new fine-tune')), err, h('table', { testid: 'jobs' }, h('thead', {}, h('tr', {}, ...['job', 'status', 'model → output', 'progress', 'knots', 'loss', 'created'].map((t) => h('th', {}, t)))), body));
  const load = async () => {
    try {
      const r = await c.ok(c.api.GET('/finetune', { params: { query: { limit: 100 } } }));
      body.replaceChildren(
        ...r.data.map((j) =>
          h(
            'tr',
            { 'data-job': j.id },
            h('td', {}, h('a', { href: `#/jobs/${j.id}` }, j.id)),
            h('td', {}, statusBadge(j.status)),
            h('td', {}, `${j.model}@${j.base_version} → ${j.output_model}`),
            h('td', {}, j.progress ? h('span', {}, progressBar(j.progress.step / Math.max(1, j.progress.total_steps)), ` ${j.progress.step}/${j.progress.total_steps} · link ${j.progress.link + 1}/${j.progress.links}`) : ''),
            h('td', {}, j.knots.map((k) => `v${k.version}`).join(', ')),
            h('td', {}, fmt(j.losses.at(-1)?.loss)),
            h('td', { class: 'muted' }, new Date(j.created_at).toLocaleString()),
          ),
        ),
      );
      if (!r.data.length) body.replaceChildren(h('tr', {}, h('td', { colspan: 7, class: 'muted' }, 'No jobs yet.')));
    } catch (e) {
      err.replaceChildren(errorBox(e));
    }
  };
  await load();
  const t = setInterval(load, 3000);
  onCleanup(() => clearInterval(t));
}

async function jobPage(id: string) {
  const { show, onCleanup } = pageView();
  const c = client();
  let job: Job;
  try {
    job = await c.ok(c.api.GET('/finetune/{id}', { params: { path: { id } } }));
  } catch (e) {
    return show(errorBox(e));
  }
  const badge = h('span', {}, statusBadge(job.status));
  const err = h('div');
  const stat = (label: string, testid: string) => {
    const b = h('b', { testid }, '–');
    return [h('div', {}, b, h('span', { class: 'muted' }, label)), b] as const;
  };
  const [stepBox, stepV] = stat('step', 'stat-step');
  const [lossBox, lossV] = stat('train loss', 'stat-loss');
  const [lrBox, lrV] = stat('learning rate', 'stat-lr');
  const [tpsBox, tpsV] = stat('tokens/s', 'stat-tps');
  const [linkBox, linkV] = stat('link', 'stat-link');
  const cancelBtn = h('button', { class: 'act danger', type: 'button', testid: 'cancel' }, 'Cancel');
  const knotBtn = h('button', { class: 'act', type: 'button', testid: 'tie-knot', title: 'POST /merge {job}: tie a knot at the next step' }, 'Tie a knot now');
  const knotRows = h('tbody');
  const chartBox = h('div', { testid: 'loss-chart' });
  show(
    h('h1', {}, `Job ${job.id} `, badge),
    h('p', { class: 'muted' }, `${job.model}@${job.base_version} → `, h('a', { href: `#/models?select=${encodeURIComponent(job.output_model)}` }, job.output_model), ` · created ${new Date(job.created_at).toLocaleString()}`),
    h('p', {}, cancelBtn, ' ', knotBtn),
    err,
    h('div', { class: 'card' }, h('div', { class: 'stats' }, stepBox, linkBox, lossBox, lrBox, tpsBox), chartBox),
    h('div', { class: 'card' }, h('h2', {}, 'Knots'), h('table', { testid: 'knots' }, h('thead', {}, h('tr', {}, ...['link', 'at step', 'version', 'rank', 'val loss', ''].map((t) => h('th', {}, t)))), knotRows)),
  );
  const chart = new LossChart(chartBox, Math.max(400, chartBox.clientWidth - 4));
  onCleanup(() => chart.destroy());
  const setStatus = (s: string) => {
    badge.replaceChildren(statusBadge(s));
    const active = s === 'queued' || s === 'running';
    cancelBtn.disabled = !active;
    knotBtn.disabled = s !== 'running';
  };
  setStatus(job.status);
  const knotsSeen = new Set<number>();
  const addKnot = (k: { link: number; step: number; version: number; rank: number; val_loss: number | null }) => {
    chart.addKnot(k);
    if (knotsSeen.has(k.version)) return;
    knotsSeen.add(k.version);
    knotRows.append(
      h(
        'tr',
        { 'data-version': k.version },
        h('td', {}, k.link + 1),
        h('td', {}, k.step),
        h('td', {}, h('a', { href: `#/models?select=${encodeURIComponent(`${job.output_model}@${k.version}`)}` }, `${job.output_model}@${k.version}`)),
        h('td', {}, k.rank),
        h('td', {}, fmt(k.val_loss)),
        h('td', {}, h('a', { href: `#/playground?model=${encodeURIComponent(job.output_model)}&version=${k.version}` }, 'try it')),
      ),
    );
  };
  cancelBtn.addEventListener('click', async () => {
    try {
      const j = await c.ok(c.api.POST('/finetune/{id}/cancel', { params: { path: { id } } }));
      setStatus(j.cancel_requested && j.status === 'running' ? 'running' : j.status);
    } catch (e) {
      err.replaceChildren(errorBox(e));
    }
  });
  knotBtn.addEventListener('click', async () => {
    knotBtn.disabled = true;
    try {
      await c.ok(c.api.POST('/merge', { body: { job: id, timeout_s: 120 } }));
    } catch (e) {
      err.replaceChildren(errorBox(e));
    } finally {
      knotBtn.disabled = false;
    }
  });

  // Everything on the chart comes from the job's event stream (replayed from the start, then live).
  const ctl = new AbortController();
  onCleanup(() => ctl.abort());
  let pending = false;
  const redraw = () => {
    if (pending) return;
    pending = true;
    requestAnimationFrame(() => {
      pending = false;
      chart.redraw();
    });
  };
  const recent: { at: number; tokens: number }[] = [];
  let total = job.progress?.total_steps ?? 0;
  let links = job.progress?.links ?? 0;
  try {
    for await (const e of c.jobEvents(id, { signal: ctl.signal })) {
      if (e.event === 'step') {
        chart.addStep(e.data.step, e.data.loss, e.data.lr);
        if (!total) {
          const j = await c.ok(c.api.GET('/finetune/{id}', { params: { path: { id } } }));
          total = j.progress?.total_steps ?? 0;
          links = j.progress?.links ?? 0;
        }
        stepV.textContent = `${e.data.step}/${total || '?'}`;
        linkV.textContent = `${e.data.link + 1}/${links || '?'}`;
        lossV.textContent = fmt(e.data.loss);
        lrV.textContent = e.data.lr === null ? '–' : e.data.lr.toExponential(2);
        if (e.data.tokens !== undefined) {
          recent.push({ at: Date.parse(e.data.at), tokens: e.data.tokens });
          if (recent.length > 20) recent.shift();
          const span = (recent.at(-1)!.at - recent[0]!.at) / 1000;
          // tokens of the steps after the first one in the window, over the time they took
          if (recent.length > 1 && span > 0) tpsV.textContent = (recent.slice(1).reduce((a, r) => a + r.tokens, 0) / span).toFixed(0);
        }
        redraw();
      } else if (e.event === 'knot') {
        addKnot(e.data);
        redraw();
      } else if (e.event === 'eval') {
        // the validation loss of a link's knot (the knot event may carry it already)
        redraw();
      } else if (e.event === 'status') {
        setStatus(e.data.status);
        if (e.data.error) err.replaceChildren(h('div', { class: 'error' }, `${e.data.error.type}: ${e.data.error.detail}`));
      } else if (e.event === 'done') {
        setStatus(e.data.status);
      }
    }
    // the final view (knots with their validation losses)
    const j = await c.ok(c.api.GET('/finetune/{id}', { params: { path: { id } } }));
    for (const k of j.knots) addKnot({ ...k, val_loss: k.val_loss ?? null });
    setStatus(j.status);
    chart.redraw();
    chartBox.dataset.done = 'true';
  } catch (e) {
    if (!ctl.signal.aborted) err.replaceChildren(errorBox(e));
  }
}

// ---------------------------------------------------------------- new fine-tune

async function newJobPage() {
  const { show, onCleanup } = pageView();
  const c = client();
  const models = await c.ok(c.api.GET('/models')).catch(() => ({ data: [] }));
  const model = h('select', { testid: 'ft-model' }, ...models.data.map((m) => h('option', { value: m.name }, `${m.name} (${m.owner})`)));
  const file = h('input', { type: 'file', accept: '.jsonl,application/jsonl,application/x-ndjson,text/plain', testid: 'ft-file' });
  const valFile = h('input', { type: 'file', accept: '.jsonl,application/jsonl,application/x-ndjson,text/plain', testid: 'ft-val-file' });
  const output = h('input', { placeholder: 'output model name (optional)', testid: 'ft-output' });
  const links = h('input', { type: 'number', min: 1, max: 64, value: 3, testid: 'ft-links' });
  const rank = h('input', { type: 'number', min: 1, max: 1024, value: 8, testid: 'ft-rank' });
  const optimizer = h('select', { testid: 'ft-optimizer' }, h('option', { value: 'adamw' }, 'adamw'), h('option', { value: 'sgd' }, 'sgd'), h('option', { value: 'adagrad' }, 'adagrad'));
  const lr = h('input', { type: 'number', step: 'any', value: '0.0005', testid: 'ft-lr' });
  const epochs = h('input', { type: 'number', min: 1, max: 1000, value: 3, testid: 'ft-epochs' });
  const batch = h('input', { type: 'number', min: 1, max: 1024, value: 8, testid: 'ft-batch' });
  const seqLen = h('input', { type: 'number', min: 1, max: 32768, value: 256, testid: 'ft-seqlen' });
  const err = h('div');
  const submit = h('button', { class: 'primary', type: 'submit', testid: 'ft-start' }, 'Start');
  const field = (label: string, input: HTMLElement) => h('div', {}, h('label', {}, label), input);
  show(
    h('h1', {}, 'New fine-tune'),
    h(
      'form',
      {
        class: 'card',
        onsubmit: async (ev: Event) => {
          ev.preventDefault();
          err.replaceChildren();
          const f = file.files?.[0];
          if (!f) return err.replaceChildren(h('div', { class: 'error' }, 'choose a JSONL file of training examples'));
          submit.disabled = true;
          try {
            const upload = async (x: File) => c.ok(c.api.POST('/files', { body: (await x.text()) as never, bodySerializer: (b: unknown) => b as string, headers: { 'content-type': 'application/jsonl' } }));
            const up = await upload(f);
            const vf = valFile.files?.[0];
            const val = vf ? await upload(vf) : null;
            const job = await c.ok(
              c.api.POST('/finetune', {
                body: {
                  model: model.value,
                  training_file: up.id,
                  ...(val ? { validation_file: val.id } : {}),
                  ...(output.value.trim() ? { output_model: output.value.trim() } : {}),
                  chain: { links: Number(links.value) },
                  lora: { rank: Number(rank.value) },
                  optimizer: { name: optimizer.value as 'adamw' | 'sgd' | 'adagrad', lr: Number(lr.value) },
                  epochs: Number(epochs.value),
                  batch_size: Number(batch.value),
                  max_seq_len: Number(seqLen.value),
                },
              }),
            );
            location.hash = `#/jobs/${job.id}`;
          } catch (e) {
            err.replaceChildren(errorBox(e));
          } finally {
            submit.disabled = false;
          }
        },
      },
      h('div', { class: 'row' }, h('div', { class: 'col' }, field('base model', model), field('training examples (JSONL: {"text"}, {"prompt","completion"} or {"messages"} per line)', file), field('validation examples (JSONL, optional: a val loss at each knot)', valFile), field('output model', output)), h('div', { class: 'col' }, field('links (knots)', links), field('LoRA rank', rank), field('optimizer', optimizer), field('learning rate', lr)), h('div', { class: 'col' }, field('epochs', epochs), field('batch size', batch), field('max sequence length', seqLen))),
      h('p', {}, submit),
      err,
    ),
  );
}

// ---------------------------------------------------------------- models and lineage

async function modelsPage(params: URLSearchParams) {
  const { show, onCleanup } = pageView();
  const c = client();
  const err = h('div');
  const graph = h('div', { class: 'card', style: 'overflow:auto' });
  const details = h('div', { class: 'card', testid: 'version-details' }, h('span', { class: 'muted' }, 'Select a version in the graph.'));
  show(h('h1', {}, 'Models and versions'), err, graph, details);
  let list;
  try {
    list = await c.ok(c.api.GET('/models'));
  } catch (e) {
    return err.replaceChildren(errorBox(e));
  }
  const full: ModelDetail[] = [];
  for (const m of list.data) full.push(await c.ok(c.api.GET('/models/{name}', { params: { path: { name: m.name } } })));
  const select = (n: LineageNode) => {
    if (!n.v) return details.replaceChildren(h('b', {}, n.id), h('p', { class: 'muted' }, 'not visible to this key'));
    const v = n.v;
    const dl = (what: 'weights' | 'adapter') =>
      h(
        'button',
        {
          type: 'button',
          class: 'act',
          testid: `download-${what}`,
          onclick: () => download(`/models/${encodeURIComponent(n.model)}/versions/${v.version}/${what}`, `${n.model}-v${v.version}.${what === 'weights' ? 'safetensors' : 'zip'}`).catch((e) => err.replaceChildren(errorBox(e))),
        },
        what === 'weights' ? 'Download weights (safetensors)' : 'Download adapter (PEFT zip)',
      );
    details.replaceChildren(
      h('h2', { testid: 'selected-version' }, n.id),
      h(
        'table',
        {},
        ...(
          [
            ['kind', v.kind],
            ['parent', v.parent ? `${v.parent.model}@${v.parent.version}` : '—'],
            ['job', v.job_id ? h('a', { href: `#/jobs/${v.job_id}` }, v.job_id) : '—'],
            ['link', v.link !== undefined && v.link !== null ? v.link + 1 : '—'],
            ['rank', v.rank ?? '—'],
            ['sha256', h('code', { testid: 'sha256' }, v.sha256)],
            ['size', `${bytesText(v.bytes)} (${v.bytes} bytes)`],
            ['created', new Date(v.created_at).toLocaleString()],
          ] as [string, Child][]
        ).map(([k, val]) => h('tr', {}, h('th', {}, k), h('td', {}, val))),
      ),
      h('p', {}, dl('weights'), ' ', v.kind === 'knot' || v.kind === 'merge' ? dl('adapter') : null, ' ', h('a', { href: `#/playground?model=${encodeURIComponent(n.model)}&version=${v.version}` }, 'try in the playground')),
    );
  };
  const svg = renderLineage(full, select);
  graph.replaceChildren(svg);
  const want = params.get('select');
  if (want) {
    const id = want.includes('@') ? want : (() => {
      const m = full.find((x) => x.name === want);
      return m && m.latest_version !== null ? `${m.name}@${m.latest_version}` : want;
    })();
    svg.querySelector<SVGGElement>(`[data-node="${CSS.escape(id)}"]`)?.dispatchEvent(new Event('click'));
  }
}

// ---------------------------------------------------------------- playground

async function playgroundPage(params: URLSearchParams) {
  const { show, onCleanup } = pageView();
  const c = client();
  const err = h('div');
  let models: ModelDetail[] = [];
  try {
    const list = await c.ok(c.api.GET('/models'));
    for (const m of list.data) models.push(await c.ok(c.api.GET('/models/{name}', { params: { path: { name: m.name } } })));
  } catch (e) {
    return show(errorBox(e));
  }
  models = models.filter((m) => m.versions.length);
  const options = () => models.flatMap((m) => [...m.versions].reverse().map((v) => h('option', { value: `${m.name}@${v.version}` }, `${m.name}@${v.version} (${v.kind})`)));
  const selA = h('select', { testid: 'pg-a' }, ...options());
  const selB = h('select', { testid: 'pg-b' }, ...options());
  const want = params.get('model');
  if (want) selA.value = `${want}@${params.get('version') ?? models.find((m) => m.name === want)?.latest_version}`;
  const prompt = h('textarea', { rows: 3, testid: 'pg-prompt' }, 'Once upon a time');
  const maxTokens = h('input', { type: 'number', min: 1, max: 4096, value: 48, testid: 'pg-max' });
  const temperature = h('input', { type: 'number', step: 'any', min: 0, value: 0.8, testid: 'pg-temp' });
  const seed = h('input', { type: 'number', min: 0, value: 7, testid: 'pg-seed' });
  const outA = h('pre', { class: 'out', testid: 'pg-out-a' });
  const outB = h('pre', { class: 'out', testid: 'pg-out-b' });
  const infoA = h('div', { class: 'muted', testid: 'pg-info-a' });
  const infoB = h('div', { class: 'muted', testid: 'pg-info-b' });
  const compare = h('input', { type: 'checkbox', testid: 'pg-compare' });
  const colB = h('div', { class: 'col', hidden: true }, h('label', {}, 'version B'), selB, outB, infoB);
  compare.addEventListener('change', () => (colB.hidden = !compare.checked));
  const go = h('button', { class: 'primary', type: 'button', testid: 'pg-generate' }, 'Generate');
  const run = async (sel: HTMLSelectElement, out: HTMLElement, info: HTMLElement) => {
    const [model, v] = sel.value.split('@') as [string, string];
    out.textContent = '';
    info.textContent = 'generating…';
    delete out.dataset.done;
    for await (const e of c.generateStream({ model, version: Number(v), prompt: prompt.value, max_tokens: Number(maxTokens.value), temperature: Number(temperature.value), seed: Number(seed.value) })) {
      if (e.event === 'token') out.textContent += e.data.text;
      else if (e.event === 'done') info.textContent = `${e.data.model}@${e.data.version} · ${e.data.usage.completion_tokens} tokens · ${e.data.timing.tokens_per_s.toFixed(1)} tokens/s · ${e.data.finish_reason}`;
      else if (e.event === 'error') throw new Error(e.data.detail);
    }
    out.dataset.done = 'true';
  };
  go.addEventListener('click', async () => {
    err.replaceChildren();
    go.disabled = true;
    try {
      await Promise.all([run(selA, outA, infoA), compare.checked ? run(selB, outB, infoB) : null]);
    } catch (e) {
      err.replaceChildren(errorBox(e));
    } finally {
      go.disabled = false;
    }
  });
  show(
    h('h1', {}, 'Playground'),
    h(
      'div',
      { class: 'card' },
      h('label', {}, 'prompt'),
      prompt,
      h('div', { class: 'row' }, h('div', {}, h('label', {}, 'max tokens'), maxTokens), h('div', {}, h('label', {}, 'temperature'), temperature), h('div', {}, h('label', {}, 'seed (the same for both)'), seed), h('div', {}, h('label', {}, 'compare two versions'), compare)),
      h('p', {}, go),
      err,
    ),
    h('div', { class: 'row' }, h('div', { class: 'col' }, h('label', {}, 'version A'), selA, outA, infoA), colB),
  );
}

// ---------------------------------------------------------------- admin

async function adminPage() {
  const { show, onCleanup } = pageView();
  const c = client();
  const err = h('div');
  const body = h('tbody');
  const name = h('input', { placeholder: 'tenant name', testid: 'tenant-name' });
  const created = h('div');
  show(
    h('h1', {}, 'Tenants'),
    err,
    h('table', { testid: 'tenants' }, h('thead', {}, h('tr', {}, ...['tenant', 'id', 'stored', 'jobs (active / quota)', 'total jobs', 'requests/min', 'max tokens'].map((t) => h('th', {}, t)))), body),
    h(
      'form',
      {
        class: 'card',
        style: 'margin-top:14px',
        onsubmit: async (ev: Event) => {
          ev.preventDefault();
          try {
            const r = await c.ok(c.api.POST('/admin/tenants', { body: { name: name.value.trim() } }));
            created.replaceChildren(h('p', {}, `Created ${name.value}: its API key (shown once) `, h('code', { testid: 'new-key' }, r.api_key)));
            await load();
          } catch (e) {
            err.replaceChildren(errorBox(e));
          }
        },
      },
      h('h2', {}, 'New tenant'),
      name,
      ' ',
      h('button', { class: 'primary', type: 'submit' }, 'Create'),
      created,
    ),
  );
  const load = async () => {
    try {
      const r = await c.ok(c.api.GET('/admin/tenants'));
      body.replaceChildren(
        ...r.data.map((t) => {
          const sf = t.usage.stored_bytes / Math.max(1, t.quotas.stored_bytes);
          return h(
            'tr',
            { 'data-tenant': t.name },
            h('td', {}, t.name),
            h('td', { class: 'muted' }, t.id),
            h('td', {}, progressBar(sf, sf > 0.8), ` ${bytesText(t.usage.stored_bytes)} / ${bytesText(t.quotas.stored_bytes)}`),
            h('td', {}, `${t.usage.active_jobs} / ${t.quotas.concurrent_jobs}`),
            h('td', {}, t.usage.jobs),
            h('td', {}, t.quotas.requests_per_minute),
            h('td', {}, t.quotas.max_tokens_per_request),
          );
        }),
      );
    } catch (e) {
      err.replaceChildren(errorBox(e));
    }
  };
  await load();
}

// ---------------------------------------------------------------- routing

async function route() {
  const gen = ++routeGen;
  for (const f of cleanup) f();
  cleanup = [];
  const s = session();
  const nav = document.getElementById('nav')!;
  nav.hidden = !s;
  if (!s) return signInPage();
  for (const a of nav.querySelectorAll<HTMLAnchorElement>('a[data-nav]')) {
    const admin = a.dataset.nav === 'admin';
    a.hidden = admin !== (s.role === 'admin');
  }
  const [path, query] = (location.hash.slice(1) || (s.role === 'admin' ? '/admin' : '/jobs')).split('?') as [string, string | undefined];
  const params = new URLSearchParams(query ?? '');
  const parts = path.split('/').filter(Boolean);
  for (const a of nav.querySelectorAll<HTMLAnchorElement>('a[data-nav]')) a.classList.toggle('active', a.dataset.nav === parts[0]);
  try {
    if (s.role === 'admin') return await adminPage();
    if (parts[0] === 'jobs' && parts[1]) return await jobPage(decodeURIComponent(parts[1]));
    if (parts[0] === 'new') return await newJobPage();
    if (parts[0] === 'models') return await modelsPage(params);
    if (parts[0] === 'playground') return await playgroundPage(params);
    return await jobsPage();
  } catch (e) {
    if (gen === routeGen) show(errorBox(e));
  }
}

document.getElementById('signout')!.addEventListener('click', () => {
  signOut();
  location.hash = '';
  void route();
});
window.addEventListener('hashchange', () => void route());
void route();
