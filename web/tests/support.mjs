// What the web tests share: where the server binary and Chromium are, free
// loopback ports, waiting for a condition, and a `kairos-server` of the
// test's own on the embedded default, stopped by pid at the end (and killed
// if the test process goes first). Not a test file: `node --test tests/`
// runs `*.test.mjs` only.

import assert from 'node:assert/strict';
import { spawn } from 'node:child_process';
import { existsSync } from 'node:fs';
import net from 'node:net';
import path from 'node:path';
import { fileURLToPath } from 'node:url';

export const ROOT = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '..', '..');
export const SERVER_BIN = path.resolve(ROOT, process.env.KAIROS_SERVER_BIN || 'target/debug/kairos-server');
export const CHROMIUM = process.env.CHROMIUM_PATH || '/usr/bin/chromium';
export const ARTIFACTS = path.join(ROOT, 'target', 'browser-artifacts');

export const sleep = (ms) => new Promise((resolve) => setTimeout(resolve, ms));

/** Ports the kernel says are free, held until all are chosen so they differ. */
export async function freePorts(n) {
  const servers = await Promise.all(
    Array.from({ length: n }, () => new Promise((resolve, reject) => {
      const s = net.createServer();
      s.once('error', reject);
      s.listen(0, '127.0.0.1', () => resolve(s));
    })),
  );
  const ports = servers.map((s) => s.address().port);
  await Promise.all(servers.map((s) => new Promise((resolve) => s.close(resolve))));
  return ports;
}

/** Calls `fn` until it returns something truthy (returned), or fails after `timeoutMs`. */
export async function waitFor(what, fn, timeoutMs = 10_000, everyMs = 25) {
  const deadline = Date.now() + timeoutMs;
  let last;
  for (;;) {
    try {
      last = await fn();
      if (last) return last;
    } catch (err) {
      last = err;
    }
    if (Date.now() > deadline) throw new Error(`timed out waiting for ${what} (last: ${last})`);
    await sleep(everyMs);
  }
}

/**
 * Starts `kairos-server` on free loopback ports with the embedded default
 * (whatever the caller's environment says about Redis, PostgreSQL, tokens
 * and origins), rate limits off, and `env` on top; resolves once `/ready`
 * answers. Returns `{ baseUrl, log(), stop() }`; `stop` sends SIGTERM and,
 * after 10 s, SIGKILL.
 */
export async function startServer(env = {}) {
  assert.ok(existsSync(SERVER_BIN), `no server binary at ${SERVER_BIN}: run cargo build --bin kairos-server, or set KAIROS_SERVER_BIN`);
  const [port, metricsPort] = await freePorts(2);
  const baseUrl = `http://127.0.0.1:${port}`;
  const full = {
    ...process.env,
    BIND_ADDR: '127.0.0.1',
    PORT: String(port),
    METRICS_PORT: String(metricsPort),
    RATE_LIMITS: 'off',
    SHUTDOWN_DRAIN_SECONDS: '0',
    RUST_LOG: 'warn',
  };
  for (const v of ['REDIS_URL', 'REDIS_MODE', 'DATABASE_URL', 'JWT_SECRET', 'AUTH_MODE', 'ALLOWED_ORIGINS']) delete full[v];
  Object.assign(full, env);
  const server = spawn(SERVER_BIN, [], { env: full, stdio: ['ignore', 'pipe', 'pipe'] });
  let log = '';
  server.stdout.on('data', (d) => {
    log += d;
  });
  server.stderr.on('data', (d) => {
    log += d;
  });
  // If this process is stopped (a timeout of the whole run, Ctrl-C), the
  // server must not outlive it: kill it by pid on the way out.
  const kill = () => {
    if (server.exitCode === null) {
      try {
        process.kill(server.pid, 'SIGKILL');
      } catch {
        // Already gone.
      }
    }
  };
  process.once('exit', kill);
  for (const signal of ['SIGTERM', 'SIGINT']) {
    process.once(signal, () => {
      kill();
      process.exit(128 + (signal === 'SIGTERM' ? 15 : 2));
    });
  }
  const exited = new Promise((resolve) => server.once('exit', (code) => resolve(code)));
  await Promise.race([
    waitFor('the server to be ready', async () => (await fetch(`${baseUrl}/ready`)).ok, 20_000, 50),
    exited.then((code) => {
      throw new Error(`the server exited (${code}) before it was ready:\n${log}`);
    }),
  ]);
  return {
    baseUrl,
    log: () => log,
    async stop() {
      if (server.exitCode !== null) return;
      process.kill(server.pid, 'SIGTERM');
      const stopped = await Promise.race([exited.then(() => true), sleep(10_000).then(() => false)]);
      if (!stopped) {
        kill();
        await exited;
      }
    },
  };
}

/** Debian's Chromium, headless, with a fresh profile and nothing that reaches for the network. */
export async function launchChromium(chromium) {
  assert.ok(existsSync(CHROMIUM), `no Chromium at ${CHROMIUM}: apt-get install chromium, or set CHROMIUM_PATH`);
  return chromium.launch({
    executablePath: CHROMIUM,
    headless: true,
    timeout: 30_000,
    // playwright makes a temporary --user-data-dir for every launch.
    args: [
      '--no-sandbox',
      '--disable-gpu',
      '--disable-quic',
      '--no-first-run',
      '--disable-background-networking',
      '--disable-component-update',
      '--disable-sync',
    ],
  });
}
