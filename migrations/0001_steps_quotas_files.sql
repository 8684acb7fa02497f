CREATE TABLE "job_steps" (
	"job_id" text NOT NULL,
	"step" integer NOT NULL,
	"link" integer NOT NULL,
	"loss" double precision NOT NULL,
	"lr" double precision,
	"epoch" integer,
	"created_at" timestamp with time zone DEFAULT now() NOT NULL,
	CONSTRAINT "job_steps_job_id_step_pk" PRIMARY KEY("job_id","step")
);
--> statement-breakpoint
ALTER TABLE "files" ALTER COLUMN "content" DROP NOT NULL;--> statement-breakpoint
ALTER TABLE "files" ADD COLUMN "path" text;--> statement-breakpoint
ALTER TABLE "model_versions" ADD COLUMN "adapter_bytes" bigint DEFAULT 0 NOT NULL;--> statement-breakpoint
ALTER TABLE "models" ADD COLUMN "max_version" integer DEFAULT 0 NOT NULL;--> statement-breakpoint
ALTER TABLE "job_steps" ADD CONSTRAINT "job_steps_job_id_jobs_id_fk" FOREIGN KEY ("job_id") REFERENCES "public"."jobs"("id") ON DELETE cascade ON UPDATE no action;--> statement-breakpoint
-- Backfill (hand-written): the loss curve moves from jobs.losses into job_steps, one row per step;
-- where a resume recorded a step twice, the later entry wins.
INSERT INTO "job_steps" ("job_id", "step", "link", "loss")
SELECT DISTINCT ON (j."id", (e.v->>'step')::int) j."id", (e.v->>'step')::int, (e.v->>'link')::int, (e.v->>'loss')::double precision
FROM "jobs" j, jsonb_array_elements(j."losses") WITH ORDINALITY AS e(v, n)
WHERE jsonb_typeof(e.v->'loss') = 'number'
ORDER BY j."id", (e.v->>'step')::int, e.n DESC;--> statement-breakpoint
UPDATE "models" SET "max_version" = coalesce((SELECT max(v."version") FROM "model_versions" v WHERE v."model_id" = "models"."id"), 0);--> statement-breakpoint
ALTER TABLE "jobs" DROP COLUMN "losses";