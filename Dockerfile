# COLA fine-tune-and-serve service.
#   docker build -t cola .
#   docker run -p 8080:8080 -v cola-data:/data cola            # PGlite in /data, lavapipe if no GPU
#   docker run -e DATABASE_URL=postgres://... -e COLA_ADMIN_KEY=... cola
# With an NVIDIA GPU: --gpus all (the NVIDIA container toolkit mounts its Vulkan ICD; Dawn picks it).
FROM debian:trixie-slim

ARG BUN_VERSION=1.4.5
ENV DEBIAN_FRONTEND=noninteractive

# Vulkan loader + Mesa (trixie ships Mesa 25: its lavapipe is the CPU fallback Dawn accepts),
# Node/npm only to fetch Bun from the npm registry, then removed.
RUN apt-get update \
 && apt-get install -y --no-install-recommends ca-certificates libvulkan1 mesa-vulkan-drivers nodejs npm \
 && npm install -g --no-fund --no-audit "bun@${BUN_VERSION}" \
 && install -m 0755 "$(readlink -f "$(command -v bun)")" /opt/bun \
 && npm uninstall -g bun \
 && ln -sf /opt/bun /usr/local/bin/bun && ln -sf /opt/bun /usr/local/bin/bunx \
 && apt-get purge -y npm nodejs && apt-get autoremove -y \
 && rm -rf /var/lib/apt/lists/* /root/.npm \
 && bun --version

RUN groupadd --system --gid 10001 cola && useradd --system --uid 10001 --gid cola --home-dir /app --shell /usr/sbin/nologin cola

WORKDIR /app
COPY --chown=cola:cola package.json bun.lock bunfig.toml tsconfig.json ./
RUN bun install --frozen-lockfile --production && chown -R cola:cola /app/node_modules
COPY --chown=cola:cola src ./src
# The dashboard (/ui) serves ui/*.ts and the typed client transpiled at request time.
COPY --chown=cola:cola ui ./ui
COPY --chown=cola:cola client ./client
COPY --chown=cola:cola migrations ./migrations
COPY --chown=cola:cola models ./models

RUN mkdir -p /data && chown cola:cola /data
VOLUME ["/data"]

ENV NODE_ENV=production \
    HOST=0.0.0.0 \
    PORT=8080 \
    COLA_DATA_DIR=/data

USER cola
EXPOSE 8080

HEALTHCHECK --interval=15s --timeout=5s --start-period=30s --retries=3 \
  CMD ["bun", "-e", "fetch('http://127.0.0.1:' + (process.env.PORT || 8080) + '/healthz').then(r => process.exit(r.ok ? 0 : 1), () => process.exit(1))"]

# SIGTERM → graceful shutdown (stop HTTP, release running jobs to the queue, close the database).
STOPSIGNAL SIGTERM
CMD ["bun", "run", "src/main.ts"]
