// The one frozen list of job states. It produces the TypeScript union (`JobStatus`) and the
// database enum (`job_status` in src/db/schema.ts). Transitions live in src/jobs/transitions.ts.
// It sits in src/domain, below db and jobs, so that both use it and imports go one way.
export const JOB_STATES = Object.freeze(['queued', 'running', 'succeeded', 'failed', 'cancelled'] as const);
export type JobStatus = (typeof JOB_STATES)[number];

export const TERMINAL_STATES: ReadonlySet<JobStatus> = new Set<JobStatus>(['succeeded', 'failed', 'cancelled']);
export const ACTIVE_STATES: readonly JobStatus[] = Object.freeze(['queued', 'running'] as const);

export function isTerminal(s: JobStatus): boolean {
  return TERMINAL_STATES.has(s);
}
