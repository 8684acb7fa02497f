// What a client may read of an error message: no server paths, no errno text. Problem details and
// job errors go through `publicMessage`; the caller logs the original server-side when it changed.

const ERRNO: Record<string, string> = {
  ENOENT: 'a file was not found',
  EISDIR: 'a folder was found where a file was expected',
  ENOTDIR: 'a file was found where a folder was expected',
  EACCES: 'permission denied on the server',
  EPERM: 'permission denied on the server',
  ENOSPC: 'no space left on the server',
  EEXIST: 'a file already exists',
  EMFILE: 'too many open files on the server',
};

// Node's system errors: "EISDIR: illegal operation on a directory, read" / "ENOENT: no such file or directory, open '/x'".
const ERRNO_RE = /\b(E[A-Z]{2,15}): [^,\n]*?(?:, [a-z]+(?: '[^']*')?(?: -> '[^']*')?)?(?=$|[\n;)]|\. |$)/g;
// An absolute path of two or more segments (a URL path in a detail never comes through here).
const PATH_RE = /(^|[\s'"`(=[,])(\/(?:[^\s'"`(),;:\]/]+\/)+[^\s'"`(),;:\]/]*)/g;

/** The message with errno clauses replaced by plain words and absolute paths by their last segment. */
export function publicMessage(msg: string): string {
  return msg
    .replace(ERRNO_RE, (_m, code: string) => ERRNO[code] ?? 'a file system error on the server')
    .replace(PATH_RE, (_m, pre: string, p: string) => {
      const parts = p.split('/').filter(Boolean);
      const last = parts[parts.length - 1] ?? '';
      return pre + (last ? last.replace(/\.$/, '') : '(server path)');
    });
}

/** A Node system error (fs, net): its message is about the server, not the request. */
export function isSystemError(e: unknown): boolean {
  const code = typeof e === 'object' && e !== null ? (e as { code?: unknown }).code : undefined;
  return typeof code === 'string' && /^E[A-Z]{2,15}$/.test(code);
}
