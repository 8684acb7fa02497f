// /v1/chat/completions and token-id prompts on /v1/completions through the real server, with the
// official openai client; fine-tuning on chat examples. The chat model is the tiny random Qwen2 of
// test/golden/tiny-qwen2 (byte-level tokenizer.json, ChatML chat_template), imported as a tenant model.
import fs from 'node:fs';
import path from 'node:path';
import { afterAll, beforeAll, describe, expect, test } from 'bun:test';
import OpenAI from 'openai';
import { cleanupDir, readSSE, startServer, type ServerProc } from './service.fixtures.ts';
import { encodeChatPrompt, loadChatTemplate } from '../src/model/chat.ts';
import { loadHfTokenizer } from '../src/model/tokenizer.ts';

const QWEN = path.join(import.meta.dir, 'golden', 'tiny-qwen2');
const tok = loadHfTokenizer(QWEN);
const tpl = loadChatTemplate(QWEN)!;
const messages = [
  { role: 'system' as const, content: 'Be brief.' },
  { role: 'user' as const, content: 'Hi there' },
];

let s: ServerProc;
let key: string;
let client: OpenAI;
let h: Record<string, string>;

beforeAll(async () => {
  s = await startServer({});
  key = fs.readFileSync(path.join(s.dataDir, 'local.key'), 'utf8').trim();
  h = { authorization: `Bearer ${key}`, 'content-type': 'application/json' };
  const dst = path.join(s.dataDir, 'imports', 'qwen-tiny');
  fs.cpSync(QWEN, dst, { recursive: true });
  const r = await fetch(`${s.url}/models`, { method: 'POST', headers: h, body: JSON.stringify({ name: 'qwen-tiny', source: { path: dst } }) });
  expect(r.status).toBe(201);
  client = new OpenAI({ baseURL: `${s.url}/v1`, apiKey: key, maxRetries: 0 });
}, 60_000);
afterAll(async () => {
  await s?.stop();
  cleanupDir(s.dataDir);
});

async function status(p: Promise<unknown>): Promise<{ status: number; message: string }> {
  try {
    await p;
    return { status: 200, message: '' };
  } catch (e) {
    const err = e as { status?: number; message?: string };
    return { status: err.status ?? 0, message: err.message ?? String(e) };
  }
}

describe('/v1/chat/completions (openai client)', () => {
  test('the model is listed with its family; a chat answer equals /v1/completions on the template-rendered ids', async () => {
    const m = await (await fetch(`${s.url}/models/qwen-tiny`, { headers: h })).json() as { architecture: string };
    expect(m.architecture).toBe('qwen2');
    const r = await client.chat.completions.create({ model: 'qwen-tiny', messages, max_tokens: 12, temperature: 0 });
    expect(r.object).toBe('chat.completion');
    expect(r.id).toMatch(/^chatcmpl-/);
    expect(r.model).toBe('qwen-tiny@0');
    const choice = r.choices[0]!;
    expect(choice.message.role).toBe('assistant');
    expect(['stop', 'length']).toContain(choice.finish_reason);
    // The same ids through the completions route, given as token ids: the same greedy text.
    const ids = encodeChatPrompt(tok, tpl, messages);
    expect(tok.decode(ids)).toBe('system\nBe brief.\nuser\nHi there\nassistant\n');
    expect(r.usage!.prompt_tokens).toBe(ids.length);
    const c = await client.completions.create({ model: 'qwen-tiny', prompt: ids, max_tokens: 12, temperature: 0 });
    expect(choice.message.content).toBe(c.choices[0]!.text);
    expect(r.usage!.completion_tokens).toBe(c.usage!.completion_tokens);
  }, 60_000);

  test('streaming: a role chunk, content deltas that add up to the answer, finish_reason, usage, [DONE]', async () => {
    const full = await client.chat.completions.create({ model: 'qwen-tiny', messages, max_tokens: 12, temperature: 0 });
    const chunks = [];
    for await (const ch of await client.chat.completions.create({ model: 'qwen-tiny', messages, max_tokens: 12, temperature: 0, stream: true, stream_options: { include_usage: true } })) {
      chunks.push(ch);
    }
    expect(chunks[0]!.object).toBe('chat.completion.chunk');
    expect(chunks[0]!.choices[0]!.delta.role).toBe('assistant');
    const text = chunks.map((ch) => ch.choices[0]?.delta.content ?? '').join('');
    expect(text).toBe(full.choices[0]!.message.content!);
    const fin = chunks.find((ch) => ch.choices[0]?.finish_reason);
    expect(fin!.choices[0]!.finish_reason).toBe(full.choices[0]!.finish_reason);
    expect(chunks.at(-1)!.usage).toEqual(full.usage!);
    // Raw SSE ends with [DONE].
    const raw = await fetch(`${s.url}/v1/chat/completions`, { method: 'POST', headers: h, body: JSON.stringify({ model: 'qwen-tiny', messages, max_tokens: 3, stream: true }) });
    expect(raw.headers.get('content-type')).toStartWith('text/event-stream');
    expect((await readSSE(raw)).at(-1)!.data).toBe('[DONE]');
  }, 60_000);

  test('logprobs: one entry per generated token, top_logprobs alternatives, the chosen token among them when greedy', async () => {
    const r = await client.chat.completions.create({ model: 'qwen-tiny', messages, max_tokens: 5, temperature: 0, logprobs: true, top_logprobs: 2 });
    const lp = r.choices[0]!.logprobs!.content!;
    expect(lp.length).toBe(r.usage!.completion_tokens);
    for (const t of lp) {
      expect(t.top_logprobs.length).toBe(2);
      expect(t.logprob).toBeLessThanOrEqual(0);
      expect(t.logprob).toBeCloseTo(t.top_logprobs[0]!.logprob, 6); // greedy picks the most likely
    }
  }, 60_000);

  test('400: a model without a chat template (stream or not), unsupported options; text parts and developer role work', async () => {
    for (const stream of [false, true]) {
      const e = await status(client.chat.completions.create({ model: 'stories260K', messages, max_tokens: 4, stream }));
      expect(e.status).toBe(400);
      expect(e.message).toMatch(/has no chat template/);
    }
    expect((await status(client.chat.completions.create({ model: 'qwen-tiny', messages, n: 2 } as never))).status).toBe(400);
    expect((await status(client.chat.completions.create({ model: 'qwen-tiny', messages, tools: [{ type: 'function', function: { name: 'f' } }] }))).status).toBe(400);
    expect((await status(client.chat.completions.create({ model: 'qwen-tiny', messages: [{ role: 'tool', content: 'x', tool_call_id: '1' }] }))).status).toBe(400);
    expect((await status(client.chat.completions.create({ model: 'qwen-tiny', messages, logprobs: true, stream: true }))).status).toBe(400);
    const parts = await client.chat.completions.create({
      model: 'qwen-tiny', max_tokens: 6, temperature: 0,
      messages: [{ role: 'developer', content: 'Be brief.' }, { role: 'user', content: [{ type: 'text', text: 'Hi ' }, { type: 'text', text: 'there' }] }],
    });
    const plain = await client.chat.completions.create({ model: 'qwen-tiny', messages, max_tokens: 6, temperature: 0 });
    expect(parts.choices[0]!.message.content).toBe(plain.choices[0]!.message.content);
  }, 60_000);
});

describe('/v1/completions with token-id prompts', () => {
  test('a list of id lists gives one choice each, equal to each list alone; a list of strings too', async () => {
    const a = tok.encode('Hello', { bos: false });
    const b = [257, ...tok.encode('user\nyes', { bos: false })];
    const both = await client.completions.create({ model: 'qwen-tiny', prompt: [a, b], max_tokens: 6, temperature: 0 });
    expect(both.choices.map((ch) => ch.index)).toEqual([0, 1]);
    const one = await client.completions.create({ model: 'qwen-tiny', prompt: a, max_tokens: 6, temperature: 0 });
    const two = await client.completions.create({ model: 'qwen-tiny', prompt: b, max_tokens: 6, temperature: 0 });
    expect(both.choices[0]!.text).toBe(one.choices[0]!.text);
    expect(both.choices[1]!.text).toBe(two.choices[0]!.text);
    expect(both.usage!.prompt_tokens).toBe(a.length + b.length);
    // Text prompts are encoded with the tokenizer's BOS rules (Qwen2: none), so a text and its ids agree.
    const texts = await client.completions.create({ model: 'qwen-tiny', prompt: ['Hello', 'Hello'], max_tokens: 6, temperature: 0 });
    expect(texts.choices.map((ch) => ch.text)).toEqual([one.choices[0]!.text, one.choices[0]!.text]);
    // Streaming several: chunks carry their choice's index.
    const byIndex = ['', ''];
    for await (const ch of await client.completions.create({ model: 'qwen-tiny', prompt: [a, b], max_tokens: 6, temperature: 0, stream: true })) {
      for (const c of ch.choices) byIndex[c.index] += c.text;
    }
    expect(byIndex).toEqual([one.choices[0]!.text, two.choices[0]!.text]);
    // echo gives the decoded ids back.
    const echo = await client.completions.create({ model: 'qwen-tiny', prompt: a, max_tokens: 2, temperature: 0, echo: true });
    expect(echo.choices[0]!.text.startsWith('Hello')).toBe(true);
  }, 60_000);

  test('ids are checked against the vocabulary (400 naming the position); a prompt past the context is 400', async () => {
    const bad = await fetch(`${s.url}/v1/completions`, { method: 'POST', headers: h, body: JSON.stringify({ model: 'qwen-tiny', prompt: [[1, 2], [3, 260]], max_tokens: 2 }) });
    expect(bad.status).toBe(400);
    const p = (await bad.json()) as { detail: string; errors: { path: string }[] };
    expect(p.errors[0]!.path).toBe('prompt[1][1]');
    expect(p.detail).toMatch(/outside the model's vocabulary \(0\.\.259\)/);
    // 259 is inside the model's 260 rows but has no token in the 259-token tokenizer.
    const noTok = await fetch(`${s.url}/v1/completions`, { method: 'POST', headers: h, body: JSON.stringify({ model: 'qwen-tiny', prompt: [5, 259], max_tokens: 2 }) });
    expect(noTok.status).toBe(400);
    expect(((await noTok.json()) as { detail: string }).detail).toMatch(/token id 259 at index 1 is outside the vocabulary \(ids 0\.\.258: the tokenizer has 259 tokens\)/);
    for (const prompt of [[-1], [1.5], [], [[]]]) {
      const r = await fetch(`${s.url}/v1/completions`, { method: 'POST', headers: h, body: JSON.stringify({ model: 'qwen-tiny', prompt, max_tokens: 2 }) });
      expect(r.status).toBe(400);
    }
    const long = await fetch(`${s.url}/v1/completions`, { method: 'POST', headers: h, body: JSON.stringify({ model: 'qwen-tiny', prompt: new Array(128).fill(7), max_tokens: 2 }) });
    expect(long.status).toBe(400);
    expect(((await long.json()) as { detail: string }).detail).toMatch(/prompt of 128 tokens leaves no room in the model's context of 128/);
  }, 60_000);
});

describe('evaluation on chat examples', () => {
  test('the loss of {messages} is the loss of its assistant span as a completion of the rendered prefix; 400 without a template', async () => {
    const chat = [{ role: 'user', content: 'Hi' }, { role: 'assistant', content: 'Hello!' }];
    const prefix = tpl.render(chat.slice(0, 1), { addGenerationPrompt: true });
    const evaluate = async (model: string, examples: unknown[]) =>
      fetch(`${s.url}/evaluate`, { method: 'POST', headers: h, body: JSON.stringify({ model, examples }) });
    const a = (await (await evaluate('qwen-tiny', [{ messages: chat }])).json()) as { loss: number; examples: number };
    const b = (await (await evaluate('qwen-tiny', [{ prompt: prefix, completion: 'Hello!<|im_end|>\n' }])).json()) as { loss: number };
    expect(a.examples).toBe(1);
    expect(a.loss).toBeGreaterThan(0);
    expect(Math.abs(a.loss - b.loss)).toBeLessThan(1e-9); // the same tokens scored from the same logits
    const r = await evaluate('stories260K', [{ messages: chat }]);
    expect(r.status).toBe(400);
    expect(((await r.json()) as { detail: string }).detail).toMatch(/has no chat template/);
  }, 60_000);
});

describe('fine-tuning on chat examples', () => {
  const chatTrain = [
    { messages: [{ role: 'user', content: 'Hi' }, { role: 'assistant', content: 'Hello!' }] },
    { messages: [{ role: 'system', content: 'Be brief.' }, { role: 'user', content: 'Color?' }, { role: 'assistant', content: 'Blue.' }] },
  ];

  test('a model without a chat template refuses chat examples with 400 naming the example', async () => {
    const r = await fetch(`${s.url}/finetune`, { method: 'POST', headers: h, body: JSON.stringify({ model: 'stories260K', train: chatTrain, method: 'lora', epochs: 1 }) });
    expect(r.status).toBe(400);
    const p = (await r.json()) as { detail: string; errors: { path: string }[] };
    expect(p.errors[0]!.path).toBe('train[0].messages');
    expect(p.detail).toMatch(/no chat template/);
  });

  test('JSONL files take chat lines (and name a bad one)', async () => {
    const up = (body: string) => fetch(`${s.url}/files`, { method: 'POST', headers: { ...h, 'content-type': 'application/jsonl' }, body });
    const ok = await up(chatTrain.map((x) => JSON.stringify(x)).join('\n'));
    expect(ok.status).toBe(201);
    expect(((await ok.json()) as { examples: number }).examples).toBe(2);
    const bad = await up(JSON.stringify({ messages: [{ role: 'user', content: 'no answer' }] }));
    expect(bad.status).toBe(400);
    expect(JSON.stringify(await bad.json())).toMatch(/line 1.*needs an assistant message/);
  });

  test('a LoRA job on chat examples runs to a knot, which then chats', async () => {
    const r = await fetch(`${s.url}/finetune`, {
      method: 'POST', headers: h,
      body: JSON.stringify({ model: 'qwen-tiny', output_model: 'qwen-chat', train: chatTrain, method: 'lora', epochs: 2, batch_size: 2, max_seq_len: 64, optimizer: { name: 'adamw', lr: 0.01 } }),
    });
    expect(r.status).toBe(202);
    const { id } = (await r.json()) as { id: string };
    const end = Date.now() + 120_000;
    let j: { status: string; losses: unknown[]; error?: unknown } = { status: 'queued', losses: [] };
    while (Date.now() < end && (j.status === 'queued' || j.status === 'running')) {
      await Bun.sleep(250);
      j = (await (await fetch(`${s.url}/finetune/${id}`, { headers: h })).json()) as typeof j;
    }
    expect(j).toMatchObject({ status: 'succeeded' });
    expect(j.losses.length).toBe(2);
    const c = await client.chat.completions.create({ model: 'qwen-chat', messages: [{ role: 'user', content: 'Hi' }], max_tokens: 4, temperature: 0 });
    expect(c.model).toBe('qwen-chat@1');
  }, 150_000);
});
