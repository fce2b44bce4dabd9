// lib.mjs - what the serve tests share: starting and stopping `nomoat serve`,
// raw HTTP helpers, reading /metrics.
//
// Environment (set by tests/test_serve.c): NOMOAT_BIN (the tool), NOMOAT_SHARED
// (fixtures), NOMOAT_TEST_ADAPTER (a LoRA adapter GGUF the C side wrote).
import { spawn } from "node:child_process";
import assert from "node:assert/strict";
import path from "node:path";

export const BIN = process.env.NOMOAT_BIN || path.resolve("build/nomoat");
export const SHARED = process.env.NOMOAT_SHARED || path.resolve("../shared");
export const MODEL = path.join(SHARED, "models/stories260K.gguf");
export const ADAPTER = process.env.NOMOAT_TEST_ADAPTER || "";
export const PEFT = process.env.NOMOAT_TEST_PEFT || "";

// Servers still running when this process ends (a test that threw before
// its after() hook, a timeout) are killed with it, not left behind.
const children = new Set();
process.on("exit", () => {
  for (const p of children) if (p.exitCode === null && p.signalCode === null) p.kill("SIGKILL");
});
for (const sig of ["SIGTERM", "SIGINT", "SIGHUP"]) process.on(sig, () => process.exit(128 + 15));

// Starts the server on a free port; resolves when it listens.  stop() sends
// SIGTERM and resolves with the exit code (a crash or a sanitizer report
// makes it non-zero).
export function startServer(extraArgs = [], { model = MODEL } = {}) {
  const args = ["serve", "-m", model, "--port", "0", ...extraArgs];
  const proc = spawn(BIN, args, { stdio: ["ignore", "pipe", "pipe"] });
  children.add(proc);
  let log = "";
  const exited = new Promise((resolve) =>
    proc.on("exit", (code, signal) => {
      children.delete(proc);
      resolve({ code, signal });
    }));
  return new Promise((resolve, reject) => {
    const onData = (d) => {
      log += d.toString();
      const m = log.match(/listening on (http:\/\/[^\s]+?)\/?\s/);
      if (m && !resolved) {
        resolved = true;
        const url = m[1].replace(/\/$/, "");
        resolve({
          url,
          proc,
          log: () => log,
          async stop() {
            if (proc.exitCode === null && proc.signalCode === null) proc.kill("SIGTERM");
            return exited;
          },
        });
      }
    };
    let resolved = false;
    proc.stdout.on("data", onData);
    proc.stderr.on("data", onData);
    exited.then(({ code, signal }) => {
      if (!resolved) reject(new Error(`nomoat serve exited (${code ?? signal}) before listening:\n${log}`));
    });
  });
}

export async function stopServer(srv) {
  const { code, signal } = await srv.stop();
  assert.equal(signal, null, `server died of ${signal}:\n${srv.log()}`);
  assert.equal(code, 0, `server exited with ${code}:\n${srv.log()}`);
}

export async function postJSON(url, body, headers = {}) {
  const r = await fetch(url, {
    method: "POST",
    headers: { "Content-Type": "application/json", ...headers },
    body: typeof body === "string" ? body : JSON.stringify(body),
  });
  const text = await r.text();
  let json = null;
  try {
    json = JSON.parse(text);
  } catch {
    /* not JSON: json stays null */
  }
  return { status: r.status, headers: r.headers, text, json };
}

// Checks the OpenAI error shape and returns the error object.
export function assertError(res, status, param) {
  assert.equal(res.status, status, `expected ${status}, got ${res.status}: ${res.text}`);
  assert.ok(res.json && res.json.error, `no error object in: ${res.text}`);
  const e = res.json.error;
  assert.equal(typeof e.message, "string");
  assert.ok(e.message.length > 0);
  assert.equal(typeof e.type, "string");
  assert.ok("param" in e && "code" in e, "error object lacks param or code");
  if (param !== undefined) assert.equal(e.param, param, `param: ${JSON.stringify(e)}`);
  return e;
}

// /metrics as { name or name{labels}: number }.
export async function metrics(url, headers = {}) {
  const r = await fetch(url + "/metrics", { headers });
  assert.equal(r.status, 200);
  const out = {};
  for (const line of (await r.text()).split("\n")) {
    if (!line || line.startsWith("#")) continue;
    const k = line.lastIndexOf(" ");
    out[line.slice(0, k)] = Number(line.slice(k + 1));
  }
  return out;
}

// Waits until no slot is busy and nothing waits (bounded number of polls:
// the scheduler notices a departed client at its next step).
export async function waitIdle(url, headers = {}) {
  let m;
  for (let i = 0; i < 400; i++) {
    m = await metrics(url, headers);
    if (m.nomoat_slots_busy === 0 && m.nomoat_queue_depth === 0) return m;
    await new Promise((r) => setTimeout(r, 50));
  }
  assert.fail(`server not idle: slots_busy=${m.nomoat_slots_busy} queue=${m.nomoat_queue_depth}`);
}

// Reads an SSE response body into its data payloads (strings), stopping at
// [DONE] (included) or the end of the body.
export async function readSSE(resp) {
  const dec = new TextDecoder();
  let buf = "";
  const events = [];
  for await (const chunk of resp.body) {
    buf += dec.decode(chunk, { stream: true });
    let k;
    while ((k = buf.indexOf("\n\n")) >= 0) {
      const ev = buf.slice(0, k);
      buf = buf.slice(k + 2);
      for (const line of ev.split("\n")) if (line.startsWith("data: ")) events.push(line.slice(6));
    }
  }
  return events;
}
