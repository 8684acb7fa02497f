#!/usr/bin/env bun
// `bun run cola …` (also the package's bin `cola`): the command-line client of the service, built on
// the typed client (client/index.ts). Server and key from --url/--key or COLA_URL/COLA_API_KEY.
// Exit status: 0 done, 1 the server refused (its problem detail on stderr) or a watched job did not
// succeed, 2 bad usage.
import fs from 'node:fs';
import path from 'node:path';
import { parseArgs } from 'node:util';
import { ColaError, createClient, type ColaClient, type Job } from '../client/index.ts';

const USAGE = `usage: cola [--url URL] [--key KEY] [--json] <command>

  models                                   models you can use (yours and shared)
  versions <model>                         a model's versions: kind, parent, link (1-based), rank, sha256, size
  finetune <train.jsonl> --model M [--output NAME] [--links N] [--rank R] [--method cola|lora]
           [--epochs N] [--batch-size N] [--max-seq-len N] [--max-steps N] [--lr X]
           [--optimizer adamw|sgd|adagrad] [--validation val.jsonl] [--seed N] [--watch]
  jobs [id]                                your jobs, or one job
  watch <id>                               follow a job: a progress bar per link, the loss, knots
  cancel <id>                              cancel a job
  knot <id>                                tie a knot now in a running job
  generate <model[@version]> <prompt> [--max-tokens N] [--temperature X] [--top-p X] [--top-k N] [--seed N]
                                           streams the text to stdout
  export <model[@version]> [--adapter] [-o FILE]   download merged weights (safetensors) or the PEFT adapter (zip)
  import <name> <file>... | import <name> --server-path PATH    upload a model (HF folder files or llama2.c .bin + tokenizer)
  adapters upload <dir | adapter_config.json adapter_model.safetensors>

environment: COLA_URL (default http://127.0.0.1:8080), COLA_API_KEY`;

class UsageError extends Error {}

const OPTIONS = {
  url: { type: 'string' },
  key: { type: 'string' },
  json: { type: 'boolean', default: false },
  help: { type: 'boolean', short: 'h', default: false },
  model: { type: 'string' },
  output: { type: 'string', short: 'o' },
  links: { type: 'string' },
  rank: { type: 'string' },
  method: { type: 'string' },
  epochs: { type: 'string' },
  'batch-size': { type: 'string' },
  'max-seq-len': { type: 'string' },
  'max-steps': { type: 'string' },
  lr: { type: 'string' },
  optimizer: { type: 'string' },
  validation: { type: 'string' },
  seed: { type: 'string' },
  watch: { type: 'boolean', default: false },
  'max-tokens': { type: 'string' },
  temperature: { type: 'string' },
  'top-p': { type: 'string' },
  'top-k': { type: 'string' },
  adapter: { type: 'boolean', default: false },
  'server-path': { type: 'string' },
} as const;

type Flags = { [K in keyof typeof OPTIONS]?: (typeof OPTIONS)[K]['type'] extends 'boolean' ? boolean : string };

function num(flags: Flags, name: keyof Flags, int = true): number | undefined {
  const v = flags[name];
  if (v === undefined) return undefined;
  const n = Number(v);
  if (typeof v !== 'string' || v.trim() === '' || !Number.isFinite(n) || (int && !Number.isInteger(n))) throw new UsageError(`--${name} must be ${int ? 'an integer' : 'a number'}, got "${v}"`);
  return n;
}

/** "name@3" → {model: "name", version: 3}; "name" → latest. */
function modelRef(s: string | undefined): { model: string; version?: number } {
  if (!s) throw new UsageError('a model name is required');
  const m = /^(.+?)(?:@(\d+))?$/.exec(s)!;
  return m[2] !== undefined ? { model: m[1]!, version: Number(m[2]) } : { model: m[1]! };
}

const out = (s: string) => process.stdout.write(s + '\n');
const err = (s: string) => process.stderr.write(s + '\n');
const mib = (b: number) => (b >= 1 << 20 ? `${(b / (1 << 20)).toFixed(1)} MiB` : b >= 1024 ? `${(b / 1024).toFixed(1)} KiB` : `${b} B`);

function table(rows: (string | number | null | undefined)[][]) {
  const w = rows[0]!.map((_, i) => Math.max(...rows.map((r) => String(r[i] ?? '').length)));
  for (const r of rows) out(r.map((c, i) => String(c ?? '').padEnd(w[i]!)).join('  ').trimEnd());
}

function bar(frac: number, width = 24): string {
  const n = Math.max(0, Math.min(width, Math.round(frac * width)));
  return '█'.repeat(n) + '░'.repeat(width - n);
}

/** Follows a job's events: one progress line per link (redrawn in place on a terminal), the loss, each knot. Returns the final status. */
async function watch(cola: ColaClient, id: string, json: boolean): Promise<string> {
  const tty = process.stderr.isTTY === true;
  const job = await cola.ok(cola.api.GET('/finetune/{id}', { params: { path: { id } } }));
  let total = job.progress?.total_steps ?? 0;
  let links = job.progress?.links ?? 0;
  let link = 0;
  let linkStart = 0;
  let lastStep = 0;
  let loss: number | null = null;
  let final = job.status;
  const line = (done: boolean, tail = '') => {
    const end = links ? Math.round((total * (link + 1)) / links) : total;
    const frac = done ? 1 : end > linkStart ? (lastStep - linkStart) / (end - linkStart) : 0;
    const s = `link ${link + 1}/${links || '?'} ${bar(frac)} step ${lastStep}/${total || '?'}  loss ${loss === null ? '–' : loss.toFixed(4)}${tail}`;
    if (tty) process.stderr.write(`\r\x1b[2K${s}${done ? '\n' : ''}`);
    else if (done) err(s);
  };
  for await (const e of cola.jobEvents(id)) {
    if (json) out(JSON.stringify(e));
    switch (e.event) {
      case 'status':
        final = e.data.status;
        if (e.data.status === 'running' && !total) {
          const j = await cola.ok(cola.api.GET('/finetune/{id}', { params: { path: { id } } }));
          total = j.progress?.total_steps ?? 0;
          links = j.progress?.links ?? 0;
        }
        if (!tty || e.data.status !== 'running') err(`status: ${e.data.status}${e.data.error ? ` (${e.data.error.detail})` : ''}`);
        break;
      case 'link_started':
        link = e.data.link;
        linkStart = lastStep;
        break;
      case 'step':
        if (!total) {
          const j = await cola.ok(cola.api.GET('/finetune/{id}', { params: { path: { id } } }));
          total = j.progress?.total_steps ?? 0;
          links = j.progress?.links ?? 0;
        }
        link = e.data.link;
        lastStep = e.data.step;
        loss = e.data.loss;
        line(false);
        break;
      case 'knot':
        line(true, `  → knot: ${job.output_model}@${e.data.version} (rank ${e.data.rank}${e.data.val_loss !== null ? `, val loss ${e.data.val_loss.toFixed(4)}` : ''})`);
        linkStart = e.data.step;
        break;
      case 'eval':
        break;
      case 'done':
        final = e.data.status;
        break;
    }
  }
  return final;
}

async function upload(cola: ColaClient, file: string): Promise<string> {
  if (!fs.existsSync(file)) throw new UsageError(`no such file: ${file}`);
  const f = await cola.ok(
    cola.api.POST('/files', {
      body: fs.readFileSync(file, 'utf8') as never,
      bodySerializer: (b: unknown) => b as string,
      headers: { 'content-type': 'application/jsonl' },
    }),
  );
  err(`uploaded ${file}: ${f.id} (${f.examples} examples, ${mib(f.bytes)})`);
  return f.id;
}

async function run(argv: string[]): Promise<number> {
  const { values, positionals } = parseArgs({ args: argv, options: OPTIONS, allowPositionals: true, strict: true });
  const flags = values as Flags;
  const [cmd, ...args] = positionals;
  if (flags.help || !cmd) {
    out(USAGE);
    return cmd || flags.help ? 0 : 2;
  }
  const url = flags.url ?? process.env.COLA_URL ?? 'http://127.0.0.1:8080';
  const key = flags.key ?? process.env.COLA_API_KEY;
  if (!key) throw new UsageError('no API key: pass --key or set COLA_API_KEY');
  const cola = createClient(url, key);
  const json = flags.json === true;

  switch (cmd) {
    case 'models': {
      const r = await cola.ok(cola.api.GET('/models'));
      if (json) return out(JSON.stringify(r.data, null, 2)), 0;
      table([['NAME', 'OWNER', 'ARCH', 'PARAMS', 'LATEST'], ...r.data.map((m) => [m.name, m.owner, m.architecture, m.params, m.latest_version])]);
      return 0;
    }
    case 'versions': {
      const m = await cola.ok(cola.api.GET('/models/{name}', { params: { path: { name: modelRef(args[0]).model } } }));
      if (json) return out(JSON.stringify(m.versions, null, 2)), 0;
      table([
        ['VERSION', 'KIND', 'PARENT', 'JOB', 'LINK', 'RANK', 'SIZE', 'SHA256'],
        ...m.versions.map((v) => [v.version, v.kind, v.parent ? `${v.parent.model}@${v.parent.version}` : '', v.job_id ?? '', v.link !== undefined && v.link !== null ? v.link + 1 : '', v.rank ?? '', mib(v.bytes), v.sha256.slice(0, 16)]),
      ]);
      return 0;
    }
    case 'finetune': {
      if (!args[0]) throw new UsageError('finetune needs a JSONL file of training examples');
      if (!flags.model) throw new UsageError('finetune needs --model');
      const method = flags.method as 'cola' | 'lora' | undefined;
      if (method && method !== 'cola' && method !== 'lora') throw new UsageError('--method is cola or lora');
      const opt = flags.optimizer as 'adamw' | 'sgd' | 'adagrad' | undefined;
      if (opt && !['adamw', 'sgd', 'adagrad'].includes(opt)) throw new UsageError('--optimizer is adamw, sgd or adagrad');
      const training_file = await upload(cola, args[0]);
      const validation_file = flags.validation ? await upload(cola, flags.validation) : undefined;
      const ref = modelRef(flags.model);
      const links = num(flags, 'links');
      const rank = num(flags, 'rank');
      const lr = num(flags, 'lr', false);
      const job = await cola.ok(
        cola.api.POST('/finetune', {
          body: {
            ...ref,
            training_file,
            ...(validation_file ? { validation_file } : {}),
            ...(flags.output ? { output_model: flags.output } : {}),
            ...(method ? { method } : {}),
            ...(links !== undefined ? { chain: { links } } : {}),
            ...(rank !== undefined ? { lora: { rank } } : {}),
            ...(opt || lr !== undefined ? { optimizer: { ...(opt ? { name: opt } : {}), ...(lr !== undefined ? { lr } : {}) } } : {}),
            ...(num(flags, 'epochs') !== undefined ? { epochs: num(flags, 'epochs') } : {}),
            ...(num(flags, 'batch-size') !== undefined ? { batch_size: num(flags, 'batch-size') } : {}),
            ...(num(flags, 'max-seq-len') !== undefined ? { max_seq_len: num(flags, 'max-seq-len') } : {}),
            ...(num(flags, 'max-steps') !== undefined ? { max_steps: num(flags, 'max-steps') } : {}),
            ...(num(flags, 'seed') !== undefined ? { seed: num(flags, 'seed') } : {}),
          } as never,
        }),
      );
      out(json ? JSON.stringify(job) : `job ${job.id} queued → model ${job.output_model}`);
      if (!flags.watch) return 0;
      const status = await watch(cola, job.id, json);
      return status === 'succeeded' ? 0 : 1;
    }
    case 'jobs': {
      if (args[0]) {
        const j = await cola.ok(cola.api.GET('/finetune/{id}', { params: { path: { id: args[0] } } }));
        if (json) return out(JSON.stringify(j, null, 2)), 0;
        printJob(j);
        return 0;
      }
      const r = await cola.ok(cola.api.GET('/finetune', { params: { query: { limit: 100 } } }));
      if (json) return out(JSON.stringify(r.data, null, 2)), 0;
      table([
        ['ID', 'STATUS', 'MODEL', 'OUTPUT', 'PROGRESS', 'KNOTS', 'LAST LOSS', 'CREATED'],
        ...r.data.map((j) => [
          j.id,
          j.status,
          `${j.model}@${j.base_version}`,
          j.output_model,
          j.progress ? `${j.progress.step}/${j.progress.total_steps}` : '',
          j.knots.map((k) => `v${k.version}`).join(',') || '',
          j.losses.at(-1)?.loss?.toFixed(4) ?? '',
          j.created_at,
        ]),
      ]);
      return 0;
    }
    case 'watch': {
      if (!args[0]) throw new UsageError('watch needs a job id');
      return (await watch(cola, args[0], json)) === 'succeeded' ? 0 : 1;
    }
    case 'cancel': {
      if (!args[0]) throw new UsageError('cancel needs a job id');
      const j = await cola.ok(cola.api.POST('/finetune/{id}/cancel', { params: { path: { id: args[0] } } }));
      out(json ? JSON.stringify(j) : `job ${j.id}: ${j.status}${j.cancel_requested ? ' (cancel requested)' : ''}`);
      return 0;
    }
    case 'knot': {
      if (!args[0]) throw new UsageError('knot needs a job id');
      const r = await cola.ok(cola.api.POST('/merge', { body: { job: args[0] } as never }));
      out(JSON.stringify(r));
      return 0;
    }
    case 'generate': {
      const ref = modelRef(args[0]);
      if (args[1] === undefined) throw new UsageError('generate needs a prompt');
      const body = {
        ...ref,
        prompt: args[1],
        ...(num(flags, 'max-tokens') !== undefined ? { max_tokens: num(flags, 'max-tokens') } : {}),
        ...(num(flags, 'temperature', false) !== undefined ? { temperature: num(flags, 'temperature', false) } : {}),
        ...(num(flags, 'top-p', false) !== undefined ? { top_p: num(flags, 'top-p', false) } : {}),
        ...(num(flags, 'top-k') !== undefined ? { top_k: num(flags, 'top-k') } : {}),
        ...(num(flags, 'seed') !== undefined ? { seed: num(flags, 'seed') } : {}),
      };
      for await (const e of cola.generateStream(body)) {
        if (e.event === 'token') process.stdout.write(e.data.text);
        else if (e.event === 'done') {
          process.stdout.write('\n');
          err(`${e.data.model}@${e.data.version}: ${e.data.usage.completion_tokens} tokens, ${e.data.timing.tokens_per_s.toFixed(1)} tokens/s, ${e.data.finish_reason}`);
        } else if (e.event === 'error') throw new ColaError(500, { type: 'about:blank', title: 'generation failed', status: 500, detail: e.data.detail });
      }
      return 0;
    }
    case 'export': {
      const ref = modelRef(args[0]);
      const version = ref.version ?? (await cola.ok(cola.api.GET('/models/{name}', { params: { path: { name: ref.model } } }))).latest_version;
      if (version === null || version === undefined) throw new UsageError(`model ${ref.model} has no versions`);
      const params = { path: { name: ref.model, v: String(version) } };
      const r = flags.adapter
        ? await cola.api.GET('/models/{name}/versions/{v}/adapter', { params, parseAs: 'stream' })
        : await cola.api.GET('/models/{name}/versions/{v}/weights', { params, parseAs: 'stream' });
      if (!r.response.ok) await cola.ok(Promise.resolve(r));
      const file = flags.output ?? `${ref.model}-v${version}.${flags.adapter ? 'zip' : 'safetensors'}`;
      const bytes = await Bun.write(file, r.response);
      err(`wrote ${file} (${mib(bytes)})`);
      return 0;
    }
    case 'import': {
      const name = args[0];
      if (!name) throw new UsageError('import needs a model name');
      let r: { name: string; version: 0 };
      if (flags['server-path']) {
        r = await cola.ok(cola.api.POST('/models', { body: { name, source: { path: flags['server-path'] } } }));
      } else {
        const files = args.slice(1).flatMap((p) => (fs.existsSync(p) && fs.statSync(p).isDirectory() ? fs.readdirSync(p).map((f) => path.join(p, f)).filter((f) => fs.statSync(f).isFile()) : [p]));
        if (files.length === 0) throw new UsageError('import needs files (or a folder) to upload, or --server-path');
        const form = new FormData();
        form.append('name', name);
        for (const f of files) {
          if (!fs.existsSync(f)) throw new UsageError(`no such file: ${f}`);
          form.append('files', Bun.file(f), path.basename(f));
        }
        r = await cola.ok(cola.api.POST('/models', { body: {} as never, bodySerializer: () => form }));
      }
      out(json ? JSON.stringify(r) : `imported ${r.name}@${r.version}`);
      return 0;
    }
    case 'adapters': {
      if (args[0] !== 'upload') throw new UsageError('adapters: the subcommand is "upload"');
      const given = args.slice(1);
      const files = given.length === 1 && fs.existsSync(given[0]!) && fs.statSync(given[0]!).isDirectory()
        ? ['adapter_config.json', 'adapter_model.safetensors'].map((f) => path.join(given[0]!, f))
        : given;
      const form = new FormData();
      for (const f of files) {
        if (!fs.existsSync(f)) throw new UsageError(`no such file: ${f}`);
        form.append(path.basename(f), Bun.file(f), path.basename(f));
      }
      const a = await cola.ok(cola.api.POST('/adapters', { body: {} as never, bodySerializer: () => form }));
      out(json ? JSON.stringify(a) : `adapter ${a.id}`);
      return 0;
    }
    default:
      throw new UsageError(`unknown command "${cmd}"`);
  }
}

function printJob(j: Job) {
  out(`${j.id}  ${j.status}${j.cancel_requested ? ' (cancel requested)' : ''}`);
  out(`  ${j.model}@${j.base_version} → ${j.output_model}`);
  if (j.progress) out(`  step ${j.progress.step}/${j.progress.total_steps}, link ${j.progress.link + 1}/${j.progress.links}, epoch ${j.progress.epoch}`);
  for (const k of j.knots) out(`  knot link ${k.link + 1} at step ${k.step}: ${j.output_model}@${k.version} (rank ${k.rank}${k.val_loss !== undefined ? `, val loss ${k.val_loss.toFixed(4)}` : ''})`);
  const last = j.losses.at(-1);
  if (last) out(`  loss ${last.loss?.toFixed(4) ?? '–'} at step ${last.step}`);
  if (j.error) out(`  error: ${j.error.type}: ${j.error.detail}`);
}

if (import.meta.main) {
  try {
    process.exitCode = await run(process.argv.slice(2));
  } catch (e) {
    if (e instanceof ColaError) {
      err(`error: ${e.status} ${e.problem.title}: ${e.problem.detail}`);
      for (const x of e.problem.errors ?? []) err(`  ${x.path}: ${x.message}`);
      process.exitCode = 1;
    } else if (e instanceof UsageError || (e as { code?: string }).code?.startsWith('ERR_PARSE_ARGS')) {
      err(`error: ${(e as Error).message}\n\n${USAGE}`);
      process.exitCode = 2;
    } else if ((e as { code?: string }).code === 'ConnectionRefused' || /ECONNREFUSED|Unable to connect/.test(String(e))) {
      err(`error: cannot reach the server: ${(e as Error).message}`);
      process.exitCode = 1;
    } else {
      throw e;
    }
  }
}

export { run };
