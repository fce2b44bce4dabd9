#!/usr/bin/env node
// serve_bench.mjs - throughput and latency of `nomoat serve`.
//
//   node bench/serve_bench.mjs [--bin build/nomoat] [--model ../shared/models/stories260K.gguf]
//        [--parallel 4] [--threads N] [--clients 64] [--seconds 20] [--max-tokens 64] [--json]
//
// Starts the server on a free port and measures, one phase after another:
//   ttft1   time to first token, 1 client, 20 streamed requests one after another
//   ttft8   time to first token, 8 clients at once, 10 streamed requests each
//   load    --clients clients for --seconds: half streamed, half not, chat and
//           completion; requests/s and generated tokens/s (client side),
//           and the server's own decode time from /metrics
// Needs only Node.js (fetch); no npm packages.
import { spawn } from "node:child_process";
import path from "node:path";
import os from "node:os";

const args = process.argv.slice(2);
const opt = (name, def) => {
  const i = args.indexOf("--" + name);
  return i >= 0 ? args[i + 1] : def;
};
const BIN = opt("bin", "build/nomoat");
const MODEL = opt("model", path.resolve(process.env.NOMOAT_SHARED || "../shared", "models/stories260K.gguf"));
const PARALLEL = opt("parallel", "4");
const THREADS = opt("threads", null);
const CLIENTS = Number(opt("clients", "64"));
const SECONDS = Number(opt("seconds", "20"));
const MAX_TOKENS = Number(opt("max-tokens", "64"));
const PROMPTS = ["Once upon a time", "Tom and Lily went to the park.", "The little dog was sad because", "One day, a big bear"];

function start() {
  const a = ["serve", "-m", MODEL, "--port", "0", "--parallel", PARALLEL, "--queue", String(CLIENTS + 16)];
  if (THREADS) a.push("--threads", THREADS);
  const proc = spawn(BIN, a, { stdio: ["ignore", "pipe", "pipe"] });
  let log = "";
  return new Promise((resolve, reject) => {
    const on = (d) => {
      log += d;
      const m = log.match(/listening on (http:\/\/\S+?)\/?\s/);
      if (m) resolve({ url: m[1].replace(/\/$/, ""), proc });
    };
    proc.stdout.on("data", on);
    proc.stderr.on("data", on);
    proc.on("exit", (c) => reject(new Error(`server exited ${c}: ${log}`)));
  });
}

async function streamOnce(url, i, maxTokens) {
  const t0 = performance.now();
  const r = await fetch(url + "/v1/completions", {
    method: "POST",
    headers: { "Content-Type": "application/json" },
    body: JSON.stringify({ prompt: PROMPTS[i % PROMPTS.length], max_tokens: maxTokens, temperature: 0.8, seed: i, stream: true,
      stream_options: { include_usage: true } }),
  });
  const dec = new TextDecoder();
  let buf = "", first = 0, tokens = 0;
  for await (const chunk of r.body) {
    buf += dec.decode(chunk, { stream: true });
    let k;
    while ((k = buf.indexOf("\n\n")) >= 0) {
      const ev = buf.slice(6, k);
      buf = buf.slice(k + 2);
      if (ev === "[DONE]") continue;
      const j = JSON.parse(ev);
      if (!first && j.choices.length && j.choices[0].text) first = performance.now();
      if (j.usage) tokens = j.usage.completion_tokens;
    }
  }
  return { ttft: (first || performance.now()) - t0, total: performance.now() - t0, tokens };
}

async function plainOnce(url, i, maxTokens, chat) {
  const body = { max_tokens: maxTokens, temperature: 0.8, seed: i };
  if (chat) body.messages = [{ role: "user", content: PROMPTS[i % PROMPTS.length] }];
  else body.prompt = PROMPTS[i % PROMPTS.length];
  const r = await fetch(url + (chat ? "/v1/chat/completions" : "/v1/completions"), {
    method: "POST", headers: { "Content-Type": "application/json" }, body: JSON.stringify(body),
  });
  const j = await r.json();
  if (r.status !== 200) throw new Error(JSON.stringify(j));
  return { tokens: j.usage.completion_tokens };
}

const pct = (xs, p) => {
  const s = [...xs].sort((a, b) => a - b);
  return s[Math.min(s.length - 1, Math.floor((p / 100) * s.length))];
};

async function metrics(url) {
  const t = await (await fetch(url + "/metrics")).text();
  const m = {};
  for (const l of t.split("\n")) if (l && !l.startsWith("#")) m[l.slice(0, l.lastIndexOf(" "))] = Number(l.slice(l.lastIndexOf(" ") + 1));
  return m;
}

async function ttftPhase(url, clients, each) {
  const ttfts = [];
  await Promise.all(Array.from({ length: clients }, async (_, c) => {
    for (let i = 0; i < each; i++) ttfts.push((await streamOnce(url, c * 1000 + i, 16)).ttft);
  }));
  return { clients, requests: ttfts.length, ttft_ms_p50: pct(ttfts, 50), ttft_ms_p90: pct(ttfts, 90), ttft_ms_max: Math.max(...ttfts) };
}

async function loadPhase(url) {
  const m0 = await metrics(url);
  const deadline = performance.now() + SECONDS * 1000;
  let requests = 0, tokens = 0;
  const t0 = performance.now();
  await Promise.all(Array.from({ length: CLIENTS }, async (_, c) => {
    for (let i = 0; performance.now() < deadline; i++) {
      const k = c * 100000 + i;
      const r = i % 2 ? await streamOnce(url, k, MAX_TOKENS) : await plainOnce(url, k, MAX_TOKENS, (c + i) % 4 === 0);
      requests++;
      tokens += r.tokens;
    }
  }));
  const secs = (performance.now() - t0) / 1000;
  const m1 = await metrics(url);
  const steps = m1.nomoat_scheduler_steps_total - m0.nomoat_scheduler_steps_total;
  const dec = m1.nomoat_decode_seconds_total - m0.nomoat_decode_seconds_total;
  return {
    clients: CLIENTS, seconds: Number(secs.toFixed(2)), requests, tokens,
    requests_per_s: Number((requests / secs).toFixed(2)), tokens_per_s: Number((tokens / secs).toFixed(1)),
    server_decode_busy: Number((dec / secs).toFixed(3)), ms_per_step: Number(((dec / steps) * 1000).toFixed(3)),
    tokens_per_step: Number(((m1.nomoat_generated_tokens_total - m0.nomoat_generated_tokens_total) / steps).toFixed(2)),
  };
}

const srv = await start();
try {
  const out = {
    model: path.basename(MODEL), parallel: Number(PARALLEL), threads: THREADS ? Number(THREADS) : "default", cpus: os.cpus().length,
    ttft1: await ttftPhase(srv.url, 1, 20),
    ttft8: await ttftPhase(srv.url, 8, 10),
    load: await loadPhase(srv.url),
  };
  if (args.includes("--json")) console.log(JSON.stringify(out));
  else {
    console.log(`nomoat serve bench: ${out.model}, --parallel ${out.parallel}, threads ${out.threads}, ${out.cpus} CPUs`);
    for (const k of ["ttft1", "ttft8"]) {
      const p = out[k];
      console.log(`  time to first token, ${p.clients} client(s): p50 ${p.ttft_ms_p50.toFixed(1)} ms, p90 ${p.ttft_ms_p90.toFixed(1)} ms (${p.requests} requests)`);
    }
    const l = out.load;
    console.log(`  load, ${l.clients} clients, ${l.seconds} s: ${l.requests_per_s} requests/s, ${l.tokens_per_s} tokens/s ` +
      `(${l.requests} requests, ${l.tokens} tokens; server busy ${(l.server_decode_busy * 100).toFixed(0)}%, ` +
      `${l.ms_per_step} ms per step, ${l.tokens_per_step} tokens per step)`);
  }
} finally {
  srv.proc.kill("SIGTERM");
}
