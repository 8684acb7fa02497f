CREATE TABLE "version_tensors" (
	"model_id" text NOT NULL,
	"version" integer NOT NULL,
	"digest" text NOT NULL,
	"bytes" bigint NOT NULL,
	CONSTRAINT "version_tensors_model_id_version_digest_pk" PRIMARY KEY("model_id","version","digest")
);
--> statement-breakpoint
ALTER TABLE "model_versions" ADD COLUMN "added_bytes" bigint;--> statement-breakpoint
ALTER TABLE "version_tensors" ADD CONSTRAINT "version_tensors_version_fk" FOREIGN KEY ("model_id","version") REFERENCES "public"."model_versions"("model_id","version") ON DELETE cascade ON UPDATE no action;--> statement-breakpoint
CREATE INDEX "version_tensors_digest_idx" ON "version_tensors" USING btree ("digest");