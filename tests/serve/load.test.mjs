// load.test.mjs - 64 concurrent clients for a bounded time (NOMOAT_LOAD_SECONDS,
// default 20): streaming and not, chat and completion, some leaving early,
// some malformed.  Passes when nothing crashed, every well-formed request
// that stayed got a complete answer, every malformed one its 4xx, and
// afterwards no slot is busy and nothing waits.
import { test } from "node:test";
import assert from "node:assert/strict";
import { startServer, stopServer, metrics, waitIdle, readSSE } from "./lib.mjs";

const SECONDS = Number(process.env.NOMOAT_LOAD_SECONDS || 20);
const CLIENTS = 64;

// A seeded generator (mulberry32): the same mix of requests every run.
function rng(seed) {
  return () => {
    seed = (seed + 0x6d2b79f5) | 0;
    let t = Math.imul(seed ^ (seed >>> 15), 1 | seed);
    t = (t + Math.imul(t ^ (t >>> 7), 61 | t)) ^ t;
    return ((t ^ (t >>> 14)) >>> 0) / 4294967296;
  };
}

const PROMPTS = ["Once upon a time", "Tom and Lily went to the park.", "The little dog was sad because", "One day, a big bear"];
const MALFORMED = [
  ["/v1/chat/completions", "{", 400],
  ["/v1/chat/completions", JSON.stringify({ messages: "hi" }), 400],
  ["/v1/completions", JSON.stringify({ prompt: "x", temperature: "hot" }), 400],
  ["/v1/completions", JSON.stringify({ prompt: "x", max_tokens: 1e6 }), 400],
  ["/v1/completions", JSON.stringify({ prompt: "x", model: "base+nope" }), 404],
  ["/v1/completions", JSON.stringify({ prompt: [1, 99999] }), 400],
  ["/v1/chat/completions", JSON.stringify({ messages: [{ role: "user", content: "x" }], n: 3 }), 400],
];

test(`${CLIENTS} clients for ${SECONDS} s: no crash, no leaked slot, every well-formed request answered`, async (t) => {
  const srv = await startServer(["--parallel", "4", "--queue", "64", "--ctx-size", "512"]);
  const stats = { ok: 0, stream_ok: 0, aborted: 0, malformed: 0, tokens: 0 };
  const failures = [];
  const deadline = Date.now() + SECONDS * 1000;
  const t0 = Date.now();
  const ttfts = [];

  async function generation(r, chat, stream, abort) {
    const body = {
      model: r() < 0.5 ? "base" : "stories260K",
      max_tokens: 8 + Math.floor(r() * 56),
      temperature: r() < 0.3 ? 0 : 0.2 + r(),
      seed: Math.floor(r() * 1e6),
      stream,
    };
    const p = PROMPTS[Math.floor(r() * PROMPTS.length)];
    if (chat) body.messages = [{ role: "user", content: p }];
    else body.prompt = p;
    if (stream) body.stream_options = { include_usage: true };
    const ctl = new AbortController();
    const url = srv.url + (chat ? "/v1/chat/completions" : "/v1/completions");
    const start = Date.now();
    let resp;
    try {
      if (abort === "early") setTimeout(() => ctl.abort(), Math.floor(r() * 30));
      resp = await fetch(url, { method: "POST", headers: { "Content-Type": "application/json" }, body: JSON.stringify(body), signal: ctl.signal });
      if (resp.status !== 200) throw new Error(`status ${resp.status}: ${await resp.text()}`);
      if (!stream) {
        const j = await resp.json();
        const text = chat ? j.choices[0].message.content : j.choices[0].text;
        // (0 tokens is a right answer too: the model may end its text at once)
        if (typeof text !== "string" || !j.choices[0].finish_reason || j.usage.completion_tokens > body.max_tokens)
          throw new Error("bad answer " + JSON.stringify(j));
        stats.ok++;
        stats.tokens += j.usage.completion_tokens;
        return;
      }
      if (abort === "after-first") {
        const reader = resp.body.getReader();
        await reader.read();
        ctl.abort();
        stats.aborted++;
        return;
      }
      const events = await readSSE(resp);
      if (events.at(-1) !== "[DONE]") throw new Error("stream without [DONE]: " + events.slice(-2).join(" | "));
      const chunks = events.slice(0, -1).map((e) => JSON.parse(e));
      const usage = chunks.at(-1).usage;
      if (!usage || usage.completion_tokens > body.max_tokens) throw new Error("stream without usage");
      const finish = chunks.flatMap((c) => c.choices).find((c) => c.finish_reason);
      if (!finish) throw new Error("stream without finish_reason");
      ttfts.push(Date.now() - start);
      stats.stream_ok++;
      stats.tokens += usage.completion_tokens;
    } catch (e) {
      if (abort && (e.name === "AbortError" || ctl.signal.aborted)) {
        stats.aborted++;
        return;
      }
      failures.push(`${chat ? "chat" : "completion"} stream=${stream}: ${e.message}`);
    }
  }

  async function client(id) {
    const r = rng(id + 1);
    while (Date.now() < deadline) {
      const x = r();
      if (x < 0.15) {
        const [p, body, want] = MALFORMED[Math.floor(r() * MALFORMED.length)];
        try {
          const resp = await fetch(srv.url + p, { method: "POST", headers: { "Content-Type": "application/json" }, body });
          const j = await resp.json();
          if (resp.status !== want || !j.error || typeof j.error.message !== "string")
            failures.push(`malformed ${body}: ${resp.status} ${JSON.stringify(j)}`);
          else stats.malformed++;
        } catch (e) {
          failures.push(`malformed ${body}: ${e.message}`);
        }
      } else if (x < 0.40) await generation(r, false, false, null);
      else if (x < 0.60) await generation(r, true, false, null);
      else if (x < 0.80) await generation(r, r() < 0.5, true, null);
      else if (x < 0.92) await generation(r, r() < 0.5, true, "after-first");
      else await generation(r, r() < 0.5, false, "early");
    }
  }

  await Promise.all(Array.from({ length: CLIENTS }, (_, i) => client(i)));
  const secs = (Date.now() - t0) / 1000;
  const m = await waitIdle(srv.url);
  const health = await fetch(srv.url + "/health");
  t.diagnostic(`requests answered: ${stats.ok} plain + ${stats.stream_ok} streamed in ${secs.toFixed(1)} s ` +
    `(${((stats.ok + stats.stream_ok) / secs).toFixed(1)} requests/s, ${(stats.tokens / secs).toFixed(0)} tokens/s); ` +
    `${stats.aborted} left early, ${stats.malformed} malformed rejected`);
  await stopServer(srv);
  assert.deepEqual(failures.slice(0, 10), []);
  assert.equal(health.status, 200);
  assert.equal(m.nomoat_slots_busy, 0);
  assert.equal(m.nomoat_queue_depth, 0);
  assert.ok(stats.ok > 0 && stats.stream_ok > 0 && stats.aborted > 0 && stats.malformed > 0, JSON.stringify(stats));
  // every answer the clients counted was a completed generation on the server
  assert.ok(m['nomoat_generations_total{outcome="completed"}'] >= stats.ok + stats.stream_ok);
  assert.equal(m['nomoat_generations_total{outcome="failed"}'], 0);
  assert.equal(m['nomoat_generations_total{outcome="rejected"}'], 0);
});
