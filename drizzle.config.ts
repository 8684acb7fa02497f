// drizzle-kit: `bunx drizzle-kit generate` writes forward-only SQL into migrations/.
import { defineConfig } from 'drizzle-kit';

export default defineConfig({
  dialect: 'postgresql',
  schema: './src/db/schema.ts',
  out: './migrations',
});
