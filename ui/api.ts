// The dashboard's fetch layer: the typed client (client/index.ts) with the API key of this browser
// session (sessionStorage: gone when the tab closes, never sent anywhere but this server).
import { ColaError, createClient, type ColaClient } from '../client/index.ts';

export { ColaError } from '../client/index.ts';
export type { Job, JobEvent, Schemas, GenerateEvent, ModelDetail } from '../client/index.ts';

const KEY = 'cola.key';
const ROLE = 'cola.role';
export type Role = 'tenant' | 'admin';

export function session(): { key: string; role: Role } | null {
  const key = sessionStorage.getItem(KEY);
  const role = sessionStorage.getItem(ROLE) as Role | null;
  return key && role ? { key, role } : null;
}

export function signOut() {
  sessionStorage.removeItem(KEY);
  sessionStorage.removeItem(ROLE);
}

/** Checks the key against the server: a tenant key lists models; the admin key lists tenants. */
export async function signIn(key: string): Promise<Role> {
  const c = createClient(location.origin, key);
  const r = await c.api.GET('/models');
  let role: Role;
  if (r.response.ok) role = 'tenant';
  else {
    const a = await c.api.GET('/admin/tenants');
    if (!a.response.ok) throw await c.ok(Promise.resolve(r)).catch((e: unknown) => e);
    role = 'admin';
  }
  sessionStorage.setItem(KEY, key);
  sessionStorage.setItem(ROLE, role);
  return role;
}

export function client(): ColaClient {
  const s = session();
  if (!s) throw new Error('not signed in');
  return createClient(location.origin, s.key);
}

/** A message for an error of any kind (the server's problem detail when there is one). */
export function describe(e: unknown): string {
  if (e instanceof ColaError) return `${e.status} ${e.problem.title}: ${e.problem.detail}${(e.problem.errors ?? []).map((x) => `\n  ${x.path}: ${x.message}`).join('')}`;
  return e instanceof Error ? e.message : String(e);
}

/** Downloads a file the API serves (it needs the key, so not a plain link): fetched, then saved. */
export async function download(path: string, filename: string): Promise<void> {
  const s = session()!;
  const res = await fetch(path, { headers: { authorization: `Bearer ${s.key}` } });
  if (!res.ok) {
    const body = await res.json().catch(() => ({ title: res.statusText, detail: `HTTP ${res.status}` }));
    throw new ColaError(res.status, { type: 'about:blank', status: res.status, title: body.title, detail: body.detail });
  }
  const url = URL.createObjectURL(await res.blob());
  const a = document.createElement('a');
  a.href = url;
  a.download = filename;
  document.body.append(a);
  a.click();
  a.remove();
  setTimeout(() => URL.revokeObjectURL(url), 10_000);
}
