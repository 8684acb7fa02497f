// Chat templates (src/model/chat.ts): rendering as transformers' apply_chat_template does, loading
// from tokenizer folders, assistant spans by prefix rendering, and chat examples in the training data
// (loss on assistant turns only). No GPU.
import { afterAll, describe, expect, test } from 'bun:test';
import { mkdtempSync, rmSync, writeFileSync, mkdirSync, cpSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { ChatTemplate, ChatTemplateError, chatTemplateFromFiles, encodeChatForTraining, encodeChatPrompt, loadChatTemplate } from '../src/model/chat.ts';
import { loadHfTokenizer } from '../src/model/tokenizer.ts';
import { loadModelFromPath } from '../src/model/registry.ts';
import { encodeExample, checkExample } from '../src/cola/data.ts';
import { ColaConfigError } from '../src/cola/errors.ts';

const QWEN = join(import.meta.dir, 'golden', 'tiny-qwen2');
const tmp = mkdtempSync(join(tmpdir(), 'cola-chat-test-'));
afterAll(() => rmSync(tmp, { recursive: true, force: true }));

const convo = [
  { role: 'user', content: 'Hi é' },
  { role: 'assistant', content: 'Hello!' },
  { role: 'user', content: 'More' },
  { role: 'assistant', content: 'Sure.' },
];

// Llama 3 style (written here): BOS, header tokens, <|eot_id|> after each turn.
const LLAMA3 =
  "{{- bos_token }}{%- for m in messages %}{{- '<|start_header_id|>' + m['role'] + '<|end_header_id|>\\n\\n' + m['content'] | trim + '<|eot_id|>' }}{%- endfor %}" +
  "{%- if add_generation_prompt %}{{- '<|start_header_id|>assistant<|end_header_id|>\\n\\n' }}{%- endif %}";
// Mistral v0.3 style (written here): the system prompt goes into the LAST user turn, so a prefix of the
// conversation does not render as a prefix of the whole; and roles must alternate.
const SYSTEM_LAST =
  "{%- if messages[0]['role'] == 'system' %}{%- set system = messages[0]['content'] %}{%- set loop_messages = messages[1:] %}{%- else %}{%- set loop_messages = messages %}{%- endif %}" +
  "{{- bos_token }}{%- for m in loop_messages %}{%- if (m['role'] == 'user') != (loop.index0 % 2 == 0) %}{{- raise_exception('Conversation roles must alternate user/assistant/user/assistant/...') }}{%- endif %}" +
  "{%- if m['role'] == 'user' %}{%- if loop.last and system is defined %}{{- '[INST] ' + system + '\\n\\n' + m['content'] + '[/INST]' }}{%- else %}{{- '[INST] ' + m['content'] + '[/INST]' }}{%- endif %}" +
  "{%- else %}{{- ' ' + m['content'] + eos_token }}{%- endif %}{%- endfor %}";

describe('rendering', () => {
  test("ChatML (tiny Qwen2's tokenizer_config.json): the text apply_chat_template gives, with the default system turn", () => {
    const tpl = loadChatTemplate(QWEN)!;
    expect(tpl).toBeInstanceOf(ChatTemplate);
    expect(tpl.render(convo.slice(0, 1), { addGenerationPrompt: true })).toBe(
      '<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n<|im_start|>user\nHi é<|im_end|>\n<|im_start|>assistant\n',
    );
    expect(tpl.render([{ role: 'system', content: 'Be brief.' }, ...convo.slice(0, 2)], { addGenerationPrompt: false })).toBe(
      '<|im_start|>system\nBe brief.<|im_end|>\n<|im_start|>user\nHi é<|im_end|>\n<|im_start|>assistant\nHello!<|im_end|>\n',
    );
  });

  test('special tokens come from tokenizer_config.json (or special_tokens_map.json); filters and strftime_now work', () => {
    const tpl = chatTemplateFromFiles({ tokenizerConfig: { chat_template: LLAMA3, bos_token: { content: '<|begin_of_text|>' } }, specialTokensMap: { eos_token: '<|eot_id|>' } })!;
    expect(tpl.specials).toMatchObject({ bos_token: '<|begin_of_text|>', eos_token: '<|eot_id|>' });
    expect(tpl.render([{ role: 'user', content: '  hi  ' }], { addGenerationPrompt: true })).toBe(
      '<|begin_of_text|><|start_header_id|>user<|end_header_id|>\n\nhi<|eot_id|><|start_header_id|>assistant<|end_header_id|>\n\n',
    );
    const date = chatTemplateFromFiles({ tokenizerConfig: { chat_template: '{{ strftime_now("%d %b %Y") }}' } })!;
    expect(date.render([], { addGenerationPrompt: false })).toMatch(/^\d\d [A-Z][a-z]{2} \d{4}$/);
  });

  test('a list of named templates uses "default"; chat_template.jinja wins over tokenizer_config.json', () => {
    const t = chatTemplateFromFiles({ tokenizerConfig: { chat_template: [{ name: 'tool_use', template: 'T' }, { name: 'default', template: 'D' }] } })!;
    expect(t.render([], { addGenerationPrompt: false })).toBe('D');
    expect(chatTemplateFromFiles({ tokenizerConfig: { chat_template: [{ name: 'tool_use', template: 'T' }] } })).toBeNull();
    expect(chatTemplateFromFiles({ tokenizerConfig: {} })).toBeNull();
    const d = join(tmp, 'jinja');
    mkdirSync(d);
    writeFileSync(join(d, 'tokenizer_config.json'), JSON.stringify({ chat_template: 'from config' }));
    writeFileSync(join(d, 'chat_template.jinja'), 'from {{ "jinja" }}');
    expect(loadChatTemplate(d)!.render([], { addGenerationPrompt: false })).toBe('from jinja');
  });

  test("raise_exception, parse errors and runaway range() are ChatTemplateErrors", () => {
    const tpl = new ChatTemplate(SYSTEM_LAST, { bos_token: '<s>', eos_token: '</s>' });
    expect(() => tpl.render([{ role: 'user', content: 'a' }, { role: 'user', content: 'b' }], { addGenerationPrompt: true })).toThrow(/roles must alternate/);
    expect(() => new ChatTemplate('{% for %}', {})).toThrow(ChatTemplateError);
    expect(() => new ChatTemplate('{% for i in range(1000000000) %}x{% endfor %}', {}).render([], { addGenerationPrompt: false })).toThrow(/range\(\) of 1000000000 items/);
  });
});

describe('token ids and assistant spans', () => {
  const tok = loadHfTokenizer(QWEN);
  const tpl = loadChatTemplate(QWEN)!;

  test('the prompt is the rendered text encoded without an added BOS; special tokens are single ids', () => {
    const ids = encodeChatPrompt(tok, tpl, convo.slice(0, 1));
    expect(ids[0]).toBe(257); // <|im_start|>
    expect(ids.filter((i) => i === 258).length).toBe(2); // <|im_end|> after system and user
    expect(tok.decode(ids)).toBe('system\nYou are a helpful assistant.\nuser\nHi é\nassistant\n'); // specials skipped
  });

  test('assistant tokens are exactly each assistant turn: its content and the template\'s "<|im_end|>\\n"', () => {
    const { ids, assistant } = encodeChatForTraining(tok, tpl, convo);
    const spans: string[] = [];
    let cur: number[] = [];
    ids.forEach((id, i) => {
      if (assistant[i]) cur.push(id);
      else if (cur.length) {
        spans.push(JSON.stringify(cur.map((x) => (x === 258 ? '<|im_end|>' : tok.decode([x]))).join('')));
        cur = [];
      }
    });
    if (cur.length) spans.push(JSON.stringify(cur.map((x) => (x === 258 ? '<|im_end|>' : tok.decode([x]))).join('')));
    expect(spans).toEqual([JSON.stringify('Hello!<|im_end|>\n'), JSON.stringify('Sure.<|im_end|>\n')]);
    expect(ids).toEqual(tok.encode(tpl.render(convo, { addGenerationPrompt: false }), { bos: false }));
  });

  test('a template that does not render turn by turn is refused for training (but renders for generation)', () => {
    const t = new ChatTemplate(SYSTEM_LAST, { bos_token: '<|endoftext|>', eos_token: '<|im_end|>' });
    const ms = [{ role: 'system', content: 'S' }, ...convo];
    expect(() => encodeChatForTraining(tok, t, ms)).toThrow(/does not render this conversation turn by turn/);
    expect(encodeChatPrompt(tok, t, ms.slice(0, 4)).length).toBeGreaterThan(0);
  });

  test('a tokenizer without tokenizer.json cannot chat', () => {
    const sp = { ...tok, kind: 'sentencepiece' as const };
    expect(() => encodeChatPrompt(sp, tpl, convo)).toThrow(/tokenizer.json/);
  });

  test('the loaded model carries its template: HF folder, and the stored copy of an import (tokenizer path)', () => {
    expect(loadModelFromPath(QWEN).chat).toBeInstanceOf(ChatTemplate);
    const copy = join(tmp, 'tok');
    cpSync(QWEN, copy, { recursive: true });
    writeFileSync(join(copy, 'tokenizer_config.json'), JSON.stringify({ chat_template: '{% if %}' }));
    const broken = loadModelFromPath(copy).chat;
    expect(broken).toBeInstanceOf(ChatTemplateError); // the model still loads and serves completions
    expect(loadModelFromPath(join(import.meta.dir, '..', 'models', 'stories260K')).chat).toBeNull();
  });
});

describe('chat examples in the training data', () => {
  const tok = loadHfTokenizer(QWEN);
  const tpl = loadChatTemplate(QWEN)!;
  const chat = { encode: (m: { role: string; content: string }[]) => encodeChatForTraining(tok, tpl, m) };

  test('targets are the next token only where that token is an assistant token; no BOS/EOS added', () => {
    const ex = checkExample({ messages: convo }, 'train[0]');
    const r = encodeExample(tok, ex, { maxSeqLen: 512, chat }, 'train[0]');
    const { ids, assistant } = encodeChatForTraining(tok, tpl, convo);
    expect(r.ids).toEqual(ids);
    for (let i = 0; i < ids.length - 1; i++) expect(r.targets[i]).toBe(assistant[i + 1] ? ids[i + 1]! : -1);
    expect(r.targets.at(-1)).toBe(-1);
    expect(r.lossTokens).toBe(assistant.filter(Boolean).length - (assistant[0] ? 1 : 0));
    expect(r.lossTokens).toBe('Hello!'.length + 2 + 'Sure.'.length + 2); // bytes + <|im_end|> + \n
  });

  test('truncation keeps the start; a chat whose assistant turns are all cut is refused', () => {
    const full = encodeExample(tok, { messages: convo }, { maxSeqLen: 512, chat }, 'x');
    const cut = encodeExample(tok, { messages: convo }, { maxSeqLen: full.ids.length - 3, chat }, 'x');
    expect(cut.truncated).toBe(true);
    expect(cut.ids).toEqual(full.ids.slice(0, full.ids.length - 3));
    expect(() => encodeExample(tok, { messages: convo }, { maxSeqLen: 20, chat }, 'x')).toThrow(/no assistant token within the first 20 tokens/);
  });

  test('refused: no chat template, no assistant turn, bad roles', () => {
    expect(() => encodeExample(tok, { messages: convo }, { maxSeqLen: 512 }, 'train[3]')).toThrow(ColaConfigError);
    expect(() => encodeExample(tok, { messages: convo }, { maxSeqLen: 512 }, 'train[3]')).toThrow(/no chat template/);
    expect(() => checkExample({ messages: [{ role: 'user', content: 'x' }] }, 'e')).toThrow(/needs an assistant message/);
    expect(() => checkExample({ messages: [{ role: 'User!', content: 'x' }] }, 'e')).toThrow(/role name/);
    expect(() => checkExample({ messages: [], text: 'x' }, 'e')).toThrow(/"messages" and/);
  });
});
