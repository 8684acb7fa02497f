// Chat templates: the Jinja `chat_template` of a Hugging Face tokenizer (tokenizer_config.json, or
// chat_template.jinja / chat_template.json beside it), rendered with @huggingface/jinja as
// transformers' apply_chat_template renders it (messages, add_generation_prompt, the special tokens).
// The rendered text is tokenized with {bos: false} (add_special_tokens=False, as transformers does:
// the template writes BOS itself); special tokens in the text are matched by the HF tokenizer.
//
// Assistant spans for training (loss on assistant turns only) come from rendering prefixes of the
// conversation: for assistant message i, render(messages[:i], add_generation_prompt=true) ends
// where the turn's text starts and render(messages[:i+1]) ends where it stops (the content plus
// whatever the template closes the turn with, e.g. "<|im_end|>\n"). Both must be prefixes of the
// whole conversation's rendering; a template that is not (one that moves the system prompt into the
// last user turn, say) is refused for training. Token boundaries are the longest common prefixes
// of the prefix encodings with the whole encoding, as for prompt/completion (src/cola/data.ts).
import { existsSync } from 'node:fs';
import { join } from 'node:path';
import { Environment, Interpreter, Template } from '@huggingface/jinja';
import { readFileBounded, readJsonBounded } from './hf.ts';
import type { TextTokenizer } from './tokenizer.ts';

export interface ChatMessage {
  role: string;
  content: string;
}

export class ChatTemplateError extends Error {
  constructor(message: string) {
    super(message);
    this.name = 'ChatTemplateError';
  }
}

/** Bounds: a template is data from a model upload. */
export const MAX_TEMPLATE_CHARS = 200_000;
export const MAX_RENDERED_CHARS = 8_000_000;
/** Longest list a template's range() may build (loops over messages do not use it). */
const MAX_RANGE = 100_000;

function boundedRange(start: number, stop?: number, step = 1): number[] {
  if (stop === undefined) [start, stop] = [0, start];
  if (step === 0) throw new Error('range() step must not be zero');
  const n = Math.max(0, Math.ceil((stop - start) / step));
  if (n > MAX_RANGE) throw new Error(`range() of ${n} items is over the limit of ${MAX_RANGE}`);
  return Array.from({ length: n }, (_, i) => start + i * step);
}

const MONTHS = ['January', 'February', 'March', 'April', 'May', 'June', 'July', 'August', 'September', 'October', 'November', 'December'];
const DAYS = ['Sunday', 'Monday', 'Tuesday', 'Wednesday', 'Thursday', 'Friday', 'Saturday'];

/** transformers' strftime_now (local time), for the directives chat templates use (Llama 3.x: "%d %b %Y"). */
function strftimeNow(format: string): string {
  const d = new Date();
  const p2 = (n: number) => String(n).padStart(2, '0');
  const map: Record<string, string> = {
    d: p2(d.getDate()), m: p2(d.getMonth() + 1), Y: String(d.getFullYear()), y: p2(d.getFullYear() % 100),
    b: MONTHS[d.getMonth()]!.slice(0, 3), B: MONTHS[d.getMonth()]!, a: DAYS[d.getDay()]!.slice(0, 3), A: DAYS[d.getDay()]!,
    H: p2(d.getHours()), M: p2(d.getMinutes()), S: p2(d.getSeconds()), '%': '%',
  };
  return String(format).replace(/%(.)/g, (all, c: string) => map[c] ?? all);
}

/** A model's chat template with the special tokens transformers passes to it. */
export class ChatTemplate {
  private readonly tpl: Template;

  constructor(
    readonly source: string,
    /** bos_token, eos_token, unk_token, pad_token as strings (transformers passes these). */
    readonly specials: Record<string, string | null>,
  ) {
    if (source.length > MAX_TEMPLATE_CHARS) throw new ChatTemplateError(`chat_template is ${source.length} characters, over the limit of ${MAX_TEMPLATE_CHARS}`);
    try {
      this.tpl = new Template(source);
    } catch (e) {
      throw new ChatTemplateError(`chat_template does not parse: ${(e as Error).message}`);
    }
  }

  /** The conversation as the template writes it. */
  render(messages: readonly ChatMessage[], o: { addGenerationPrompt: boolean }): string {
    let out: string;
    try {
      // Template.render's globals, with a bounded range() (a template is untrusted input).
      const env = new Environment();
      const globals: Record<string, unknown> = {
        false: false, true: true, none: null, False: false, True: true, None: null,
        raise_exception: (msg: unknown) => {
          throw new Error(String(msg));
        },
        range: boundedRange,
        strftime_now: strftimeNow,
        messages: messages.map((m) => ({ role: m.role, content: m.content })),
        add_generation_prompt: o.addGenerationPrompt,
        ...this.specials,
      };
      for (const [k, v] of Object.entries(globals)) env.set(k, v);
      const v = new Interpreter(env).run(this.tpl.parsed).value;
      if (typeof v !== 'string') throw new Error('the template did not render text');
      out = v;
    } catch (e) {
      // raise_exception(...) in a template (e.g. "Conversation roles must alternate") lands here.
      throw new ChatTemplateError(`the chat template refused the conversation: ${(e as Error).message}`);
    }
    if (out.length > MAX_RENDERED_CHARS) throw new ChatTemplateError(`the chat template rendered ${out.length} characters, over the limit of ${MAX_RENDERED_CHARS}`);
    return out;
  }
}

function tokenString(v: unknown): string | null {
  if (typeof v === 'string') return v;
  if (v && typeof v === 'object' && typeof (v as { content?: unknown }).content === 'string') return (v as { content: string }).content;
  return null;
}

/**
 * The chat template of a tokenizer folder: `chat_template.jinja`, else `chat_template.json`
 * ({"chat_template": ...}), else tokenizer_config.json's `chat_template` (a string, or a list of
 * {name, template} of which "default" is used). null when there is none.
 */
export function chatTemplateFromFiles(files: {
  tokenizerConfig: Record<string, unknown> | null;
  jinja?: string | null;
  json?: Record<string, unknown> | null;
  specialTokensMap?: Record<string, unknown> | null;
}): ChatTemplate | null {
  const cfg = files.tokenizerConfig ?? {};
  let src: unknown = files.jinja ?? files.json?.chat_template ?? cfg.chat_template;
  if (Array.isArray(src)) {
    const named = src.filter((x): x is { name: string; template: string } => !!x && typeof x === 'object' && typeof x.name === 'string' && typeof x.template === 'string');
    src = named.find((x) => x.name === 'default')?.template ?? null;
    if (src === null) return null;
  }
  if (src == null) return null;
  if (typeof src !== 'string') throw new ChatTemplateError('chat_template must be a string or a list of {name, template}');
  const specials: Record<string, string | null> = {};
  for (const k of ['bos_token', 'eos_token', 'unk_token', 'pad_token']) specials[k] = tokenString(cfg[k]) ?? tokenString(files.specialTokensMap?.[k]) ?? null;
  return new ChatTemplate(src, specials);
}

/** The chat template files a tokenizer folder may hold (copied with a model on import). */
export const CHAT_TEMPLATE_FILES = ['chat_template.jinja', 'chat_template.json'] as const;

/** Reads a folder's chat template (see chatTemplateFromFiles), with bounded reads; null without one. */
export function loadChatTemplate(dir: string): ChatTemplate | null {
  const at = (n: string) => join(dir, n);
  const json = (n: string): Record<string, unknown> | null => {
    if (!existsSync(at(n))) return null;
    const v = readJsonBounded(at(n), MAX_JSON_BYTES, n);
    if (typeof v !== 'object' || v === null || Array.isArray(v)) throw new ChatTemplateError(`${n} must hold a JSON object`);
    return v as Record<string, unknown>;
  };
  const jinja = existsSync(at('chat_template.jinja'))
    ? new TextDecoder('utf-8', { fatal: true }).decode(readFileBounded(at('chat_template.jinja'), 4 * MAX_TEMPLATE_CHARS, 'chat_template.jinja'))
    : null;
  return chatTemplateFromFiles({
    tokenizerConfig: json('tokenizer_config.json'),
    jinja,
    json: json('chat_template.json'),
    specialTokensMap: json('special_tokens_map.json'),
  });
}

const MAX_JSON_BYTES = 64 << 20;

/** Token ids of a conversation rendered for generation (ending with the assistant's turn opening). */
export function encodeChatPrompt(tok: TextTokenizer, tpl: ChatTemplate, messages: readonly ChatMessage[]): number[] {
  requireHfTokenizer(tok);
  return tok.encode(tpl.render(messages, { addGenerationPrompt: true }), { bos: false });
}

function requireHfTokenizer(tok: TextTokenizer): void {
  // Only the HF tokenizer matches special tokens written as text ("<|im_start|>", "<s>").
  if (tok.kind !== 'hf') throw new ChatTemplateError('chat templates need the model\'s tokenizer.json (its special tokens); this model has a sentencepiece or llama2.c tokenizer');
}

/**
 * Token ids of a whole conversation and, per token, whether it belongs to an assistant turn (see
 * the header). Throws ChatTemplateError when the template does not render the conversation
 * incrementally or when no assistant turn has a token.
 */
export function encodeChatForTraining(tok: TextTokenizer, tpl: ChatTemplate, messages: readonly ChatMessage[]): { ids: number[]; assistant: boolean[] } {
  requireHfTokenizer(tok);
  const full = tpl.render(messages, { addGenerationPrompt: false });
  const ids = tok.encode(full, { bos: false });
  const assistant = new Array<boolean>(ids.length).fill(false);
  const lcp = (text: string): number => {
    const p = tok.encode(text, { bos: false });
    let k = 0;
    while (k < p.length && k < ids.length && p[k] === ids[k]) k++;
    return k;
  };
  let any = false;
  messages.forEach((m, i) => {
    if (m.role !== 'assistant') return;
    const before = tpl.render(messages.slice(0, i), { addGenerationPrompt: true });
    const through = tpl.render(messages.slice(0, i + 1), { addGenerationPrompt: false });
    if (!through.startsWith(before) || !full.startsWith(through)) {
      throw new ChatTemplateError(
        `the chat template does not render this conversation turn by turn (message ${i}: the rendering of the earlier messages is not a prefix of the later ones), so its assistant turns cannot be located`,
      );
    }
    const a = lcp(before);
    const b = lcp(through);
    for (let t = a; t < b; t++) assistant[t] = true;
    if (b > a) any = true;
  });
  if (!any) throw new ChatTemplateError('the conversation has no assistant turn to train on');
  return { ids, assistant };
}
