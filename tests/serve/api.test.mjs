// api.test.mjs - `nomoat serve` through the official openai client and raw
// HTTP: generation against llama.cpp's greedy outputs, streaming equal to
// non-streaming, adapter stacks, errors, auth, CORS, queue and disconnects.
import { test, describe, before, after } from "node:test";
import assert from "node:assert/strict";
import fs from "node:fs";
import path from "node:path";
import OpenAI from "openai";
import {
  ADAPTER, PEFT, SHARED, startServer, stopServer, postJSON, assertError, metrics, waitIdle, readSSE,
} from "./lib.mjs";

const GOLDEN = fs
  .readFileSync(path.join(SHARED, "golden/stories260K.jsonl"), "utf8")
  .split("\n")
  .filter(Boolean)
  .map((l) => JSON.parse(l));

const NO_EOS = { 2: -100 }; // stories260K's EOS: banned where a long generation is wanted

async function collectStream(stream) {
  let text = "", finish = null, usage = null, chunks = 0;
  for await (const ch of stream) {
    chunks++;
    if (ch.usage) usage = ch.usage;
    for (const c of ch.choices) {
      text += c.delta ? c.delta.content ?? "" : c.text ?? "";
      if (c.finish_reason) finish = c.finish_reason;
    }
  }
  return { text, finish, usage, chunks };
}

describe("openai client", () => {
  let srv, client;
  before(async () => {
    assert.ok(ADAPTER && PEFT, "NOMOAT_TEST_ADAPTER / NOMOAT_TEST_PEFT are not set");
    srv = await startServer(["--parallel", "3", "--lora", `tone=${ADAPTER}`, "--lora", `facts=${PEFT}`,
      "--stack", "duo=tone:0.5+facts"]);
    client = new OpenAI({ baseURL: srv.url + "/v1", apiKey: "unused", maxRetries: 0 });
  });
  after(async () => {
    if (srv) await stopServer(srv);
  });

  test("greedy completions equal llama.cpp's (golden prompts, token counts)", async () => {
    for (const g of GOLDEN) {
      const r = await client.completions.create({
        model: "stories260K", prompt: g.prompt, max_tokens: g.greedy.length, temperature: 0,
      });
      assert.equal(r.object, "text_completion");
      assert.equal(r.choices[0].text, g.greedy_text, `prompt ${JSON.stringify(g.prompt)}`);
      assert.equal(r.usage.prompt_tokens, g.tokens.length);
      assert.equal(r.usage.completion_tokens, g.greedy.length);
      assert.equal(r.usage.total_tokens, g.tokens.length + g.greedy.length);
      assert.equal(r.choices[0].finish_reason, "length");
    }
  });

  test("streamed greedy completion equals llama.cpp's text", async () => {
    const g = GOLDEN[1];
    const s = await client.completions.create({
      model: "base", prompt: g.prompt, max_tokens: g.greedy.length, temperature: 0, stream: true,
      stream_options: { include_usage: true },
    });
    const out = await collectStream(s);
    assert.equal(out.text, g.greedy_text);
    assert.equal(out.finish, "length");
    assert.equal(out.usage.completion_tokens, g.greedy.length);
    assert.ok(out.chunks > 10, "the answer came in one piece, not streamed");
  });

  test("completion: streamed text equals non-streamed text for the same seed", async () => {
    const req = { model: "stories260K", prompt: "The little dog", max_tokens: 48, temperature: 1.0, seed: 1234 };
    const a = await client.completions.create(req);
    const b = await collectStream(await client.completions.create({ ...req, stream: true }));
    assert.ok(a.choices[0].text.length > 0);
    assert.equal(b.text, a.choices[0].text);
    assert.equal(b.finish, a.choices[0].finish_reason);
    const c = await client.completions.create({ ...req, seed: 4321 });
    assert.notEqual(c.choices[0].text, a.choices[0].text, "the seed made no difference");
  });

  test("chat: streamed text equals non-streamed text for the same seed", async () => {
    const req = {
      model: "stories260K",
      messages: [{ role: "system", content: "You tell stories." }, { role: "user", content: "Tell me a story." }],
      max_tokens: 40, temperature: 0.9, seed: 7,
    };
    const a = await client.chat.completions.create(req);
    assert.equal(a.object, "chat.completion");
    assert.equal(a.choices[0].message.role, "assistant");
    assert.ok(a.choices[0].message.content.length > 0);
    assert.ok(a.usage.prompt_tokens > 0 && a.usage.completion_tokens > 0);
    const s = await client.chat.completions.create({ ...req, stream: true, stream_options: { include_usage: true } });
    const b = await collectStream(s);
    assert.equal(b.text, a.choices[0].message.content);
    assert.equal(b.finish, a.choices[0].finish_reason);
    for (const k of ["prompt_tokens", "completion_tokens", "total_tokens"]) assert.equal(b.usage[k], a.usage[k], k);
  });

  test("concurrent requests give what they give one at a time", async () => {
    const reqs = [1, 2, 3, 4, 5, 6].map((seed) => ({
      model: "stories260K", prompt: ["Once upon a time", "Tom and Lily", "The sun"][seed % 3],
      max_tokens: 24 + seed, temperature: 1.0, seed,
    }));
    const alone = [];
    for (const r of reqs) alone.push((await client.completions.create(r)).choices[0].text);
    const together = await Promise.all(reqs.map((r, i) =>
      i % 2 ? client.completions.create({ ...r, stream: true }).then(collectStream).then((x) => x.text)
        : client.completions.create(r).then((x) => x.choices[0].text)));
    assert.deepEqual(together, alone);
  });

  test("stop strings end the text before them, streamed or not", async () => {
    const g = GOLDEN[0];
    const want = g.greedy_text.slice(0, g.greedy_text.indexOf("Lily"));
    const req = { model: "base", prompt: g.prompt, max_tokens: 64, temperature: 0, stop: ["Lily", "zzz"] };
    const a = await client.completions.create(req);
    assert.equal(a.choices[0].text, want);
    assert.equal(a.choices[0].finish_reason, "stop");
    const b = await collectStream(await client.completions.create({ ...req, stream: true }));
    assert.equal(b.text, want);
    assert.equal(b.finish, "stop");
  });

  test("logprobs: the greedy token is the top one; log-probabilities are <= 0", async () => {
    const r = await client.chat.completions.create({
      model: "base", messages: [{ role: "user", content: "Once upon a time" }], max_tokens: 12, temperature: 0,
      logprobs: true, top_logprobs: 3,
    });
    const content = r.choices[0].logprobs.content;
    assert.equal(content.length, r.usage.completion_tokens);
    let text = "";
    for (const t of content) {
      assert.equal(t.top_logprobs.length, 3);
      assert.equal(t.token, t.top_logprobs[0].token);
      assert.ok(Math.abs(t.logprob - t.top_logprobs[0].logprob) < 1e-6);
      assert.ok(t.top_logprobs[0].logprob >= t.top_logprobs[1].logprob);
      assert.ok(t.top_logprobs[1].logprob >= t.top_logprobs[2].logprob);
      const mass = t.top_logprobs.reduce((s, x) => s + Math.exp(x.logprob), 0);
      assert.ok(t.logprob <= 0 && mass <= 1 + 1e-5);
      assert.deepEqual(Buffer.from(t.bytes).toString(), t.token);
      text += t.token;
    }
    assert.ok(r.choices[0].message.content.length > 0);
    assert.ok(text.endsWith(r.choices[0].message.content) || text.trimStart() === r.choices[0].message.content);
    const c = await client.completions.create({ model: "base", prompt: "Once upon a time", max_tokens: 8, temperature: 0, logprobs: 2 });
    const lp = c.choices[0].logprobs;
    assert.equal(lp.tokens.join(""), c.choices[0].text);
    assert.equal(lp.token_logprobs.length, 8);
    assert.equal(lp.text_offset[0], 0);
  });

  test("models list the base model, the adapters and the named stacks", async () => {
    const ids = [];
    for await (const m of client.models.list()) ids.push(m.id);
    assert.deepEqual(ids, ["stories260K", "base+tone", "base+facts", "duo"]);
    const m = await client.models.retrieve("base+tone:0.5");
    assert.equal(m.id, "base+tone:0.5");
    await assert.rejects(client.models.retrieve("nope"), (e) => e.status === 404);
  });

  test("unknown adapters are 404, malformed stacks 400", async () => {
    const base = { prompt: "Hi", max_tokens: 4 };
    await assert.rejects(client.completions.create({ ...base, model: "base+nope" }),
      (e) => e instanceof OpenAI.NotFoundError && e.code === "model_not_found");
    await assert.rejects(client.completions.create({ ...base, model: "no-such-model" }),
      (e) => e instanceof OpenAI.NotFoundError);
    await assert.rejects(client.chat.completions.create({ model: "duo+nope", messages: [{ role: "user", content: "x" }] }),
      (e) => e instanceof OpenAI.NotFoundError);
    await assert.rejects(client.completions.create({ ...base, model: "base", adapters: [{ name: "nope", scale: 1 }] }),
      (e) => e instanceof OpenAI.NotFoundError && e.param === "adapters");
    await assert.rejects(client.completions.create({ ...base, model: "base+tone:abc" }),
      (e) => e instanceof OpenAI.BadRequestError && e.param === "model");
    await assert.rejects(client.completions.create({ ...base, model: "base++tone" }), (e) => e.status === 400);
    await assert.rejects(client.completions.create({ ...base, adapters: [{ name: 3 }] }), (e) => e.status === 400);
    await assert.rejects(client.completions.create({ ...base, adapters: [{ name: "tone", scale: "big" }] }), (e) => e.status === 400);
    await assert.rejects(client.completions.create({ ...base, adapters: "tone" }), (e) => e.status === 400);
    const nine = "base" + "+tone".repeat(9);
    await assert.rejects(client.completions.create({ ...base, model: nine }), (e) => e.status === 400);
  });

  test("adapter stacks apply per request: scale 0 is the base, each request keeps its own stack in a shared batch", async () => {
    const ask = (model, extra = {}) => client.completions.create({ model, prompt: "Once upon a time", max_tokens: 6,
      temperature: 0, logprobs: 1, logit_bias: NO_EOS, ...extra });
    const lp = (r) => r.choices[0].logprobs.token_logprobs;
    const base = await ask("base");
    assert.deepEqual(lp(await ask("base+tone:0")), lp(base));
    // "base" and the model's own name select no adapters.
    assert.deepEqual(lp(await ask("stories260K", { adapters: [] })), lp(base));
    const models = ["base+tone", "base+facts:0.5+tone", "duo", "tone:0.25", "stories260K+tone"];
    const alone = [];
    for (const model of models) {
      const r = await ask(model);
      assert.notDeepEqual(lp(r), lp(base), model);
      alone.push(lp(r));
    }
    assert.deepEqual(alone[4], alone[0]);
    // the same requests at once: one batched pass per step, a stack per slot
    const together = await Promise.all(models.map((m) => ask(m)));
    together.forEach((r, i) => assert.deepEqual(lp(r), alone[i], models[i]));
    assert.deepEqual(lp(await ask("base", { adapters: [{ name: "tone", scale: 1 }] })), alone[0]);
  });
});

describe("raw HTTP", () => {
  let srv;
  before(async () => {
    srv = await startServer(["--parallel", "2", "--max-body", "65536", "--ctx-size", "256"]);
  });
  after(async () => {
    if (srv) await stopServer(srv);
  });
  const chat = (extra) => ({ model: "base", messages: [{ role: "user", content: "Hi" }], max_tokens: 4, ...extra });
  const cmpl = (extra) => ({ model: "base", prompt: "Hi", max_tokens: 4, ...extra });

  test("malformed JSON is 400 with an OpenAI error object", async () => {
    for (const body of ["{", "", "[]", "null", "42", '{"prompt": "a", "prompt": "b"}', "{\"prompt\": \"\\ud800\"}"]) {
      assertError(await postJSON(srv.url + "/v1/completions", body), 400);
      assertError(await postJSON(srv.url + "/v1/chat/completions", body), 400);
    }
  });

  test("wrong types and out-of-range values are 400 naming the field", async () => {
    const C = srv.url + "/v1/chat/completions", P = srv.url + "/v1/completions";
    const cases = [
      [C, chat({ temperature: "hot" }), "temperature"],
      [C, chat({ temperature: 3 }), "temperature"],
      [C, chat({ max_tokens: 1.5 }), "max_tokens"],
      [C, chat({ max_tokens: 0 }), "max_tokens"],
      [C, chat({ max_tokens: "8" }), "max_tokens"],
      [C, chat({ stream: "yes" }), "stream"],
      [C, chat({ top_p: 2 }), "top_p"],
      [C, chat({ seed: "x" }), "seed"],
      [C, chat({ n: 2 }), "n"],
      [C, chat({ n: "1" }), "n"],
      [C, chat({ stop: 5 }), "stop"],
      [C, chat({ stop: ["a", "b", "c", "d", "e"] }), "stop"],
      [C, chat({ stop: ["a", 1] }), "stop"],
      [C, chat({ logit_bias: { abc: 1 } }), "logit_bias"],
      [C, chat({ logit_bias: { 1: "x" } }), "logit_bias"],
      [C, chat({ logit_bias: { 99999: 1 } }), "logit_bias"],
      [C, chat({ logit_bias: [] }), "logit_bias"],
      [C, chat({ presence_penalty: -3 }), "presence_penalty"],
      [C, chat({ model: 5 }), "model"],
      [C, chat({ stream_options: "x" }), "stream_options"],
      [C, chat({ top_logprobs: 2 }), "top_logprobs"],
      [C, chat({ logprobs: 1 }), "logprobs"],
      [C, chat({ messages: "hi" }), "messages"],
      [C, chat({ messages: [] }), "messages"],
      [C, chat({ messages: [{ role: "user", content: 5 }] }), "messages"],
      [C, chat({ messages: [{ role: "wizard", content: "x" }] }), "messages"],
      [C, chat({ messages: [{ content: "x" }] }), "messages"],
      [C, chat({ messages: [{ role: "user", content: [{ type: "image_url", image_url: { url: "x" } }] }] }), "messages"],
      [C, chat({ messages: [5] }), "messages"],
      [C, chat({ messages: undefined }), "messages"],
      [C, chat({ tools: [{ type: "function" }] }), "tools"],
      [P, cmpl({ prompt: 5 }), "prompt"],
      [P, cmpl({ prompt: ["a", "b"] }), "prompt"],
      [P, cmpl({ prompt: [1, 99999] }), "prompt"],
      [P, cmpl({ prompt: [1, -1] }), "prompt"],
      [P, cmpl({ prompt: undefined }), "prompt"],
      [P, cmpl({ prompt: [] }), "prompt"],
      [P, cmpl({ logprobs: true }), "logprobs"],
      [P, cmpl({ echo: true }), "echo"],
    ];
    for (const [url, body, param] of cases) {
      const e = assertError(await postJSON(url, body), 400, param);
      assert.equal(e.type, "invalid_request_error");
    }
    // null means "not given"
    const ok = await postJSON(C, chat({ temperature: null, stop: null, seed: null, max_tokens: 3 }));
    assert.equal(ok.status, 200, ok.text);
    // content as text parts
    const parts = await postJSON(C, chat({ messages: [{ role: "user", content: [{ type: "text", text: "Hi" }] }] }));
    assert.equal(parts.status, 200, parts.text);
    // a prompt of token ids
    const ids = await postJSON(P, cmpl({ prompt: [1, 403, 407, 261, 378], temperature: 0, max_tokens: 3 }));
    assert.equal(ids.status, 200, ids.text);
    assert.equal(ids.json.choices[0].text, ", there was");
  });

  test("prompts longer than the context and too many tokens are 400", async () => {
    const long = Array.from({ length: 300 }, () => 403);
    let e = assertError(await postJSON(srv.url + "/v1/completions", cmpl({ prompt: long })), 400, "prompt");
    assert.equal(e.code, "context_length_exceeded");
    e = assertError(await postJSON(srv.url + "/v1/completions", cmpl({ max_tokens: 300 })), 400, "max_tokens");
    assert.equal(e.code, "context_length_exceeded");
    const text = "Once upon a time ".repeat(200);
    e = assertError(await postJSON(srv.url + "/v1/chat/completions", chat({ messages: [{ role: "user", content: text }] })), 400, "messages");
    assert.equal(e.code, "context_length_exceeded");
  });

  test("unknown endpoints are 404, wrong methods 405, bodies over --max-body 413", async () => {
    let r = await fetch(srv.url + "/v1/nothing");
    assert.equal(r.status, 404);
    assert.ok((await r.json()).error);
    r = await fetch(srv.url + "/v1/chat/completions");
    assert.equal(r.status, 405);
    r = await fetch(srv.url + "/v1/models", { method: "POST", body: "{}" });
    assert.equal(r.status, 405);
    const big = JSON.stringify(cmpl({ prompt: "x".repeat(100000) }));
    assertError(await postJSON(srv.url + "/v1/completions", big), 413);
    // the same without Content-Length (chunked upload)
    const stream = new ReadableStream({
      start(c) {
        for (let i = 0; i < 10; i++) c.enqueue(new TextEncoder().encode(" ".repeat(10000)));
        c.close();
      },
    });
    r = await fetch(srv.url + "/v1/completions", { method: "POST", body: stream, duplex: "half" });
    assert.equal(r.status, 413);
    // the server is still fine
    const ok = await postJSON(srv.url + "/v1/completions", cmpl());
    assert.equal(ok.status, 200, ok.text);
  });

  test("/health, /metrics, / and CORS off by default", async () => {
    let r = await fetch(srv.url + "/health");
    assert.equal(r.status, 200);
    const h = await r.json();
    assert.equal(h.status, "ok");
    assert.equal(h.slots_total, 2);
    assert.equal(r.headers.get("access-control-allow-origin"), null);
    const m = await metrics(srv.url);
    for (const k of ["nomoat_slots_busy", "nomoat_slots_total", "nomoat_queue_depth", "nomoat_kv_cache_usage_ratio",
      "nomoat_tokens_per_second", "nomoat_generated_tokens_total", 'nomoat_requests_total{endpoint="chat"}'])
      assert.ok(k in m, `/metrics lacks ${k}`);
    assert.equal(m.nomoat_slots_total, 2);
    assert.ok(m.nomoat_generated_tokens_total > 0);
    r = await fetch(srv.url + "/");
    assert.equal(r.status, 200);
    assert.match(r.headers.get("content-type"), /text\/html/);
    assert.match(await r.text(), /<title>nomoat<\/title>/);
  });

  test("streams end with data: [DONE]; chat streams start with the role", async () => {
    const r = await fetch(srv.url + "/v1/chat/completions", {
      method: "POST", headers: { "Content-Type": "application/json" }, body: JSON.stringify(chat({ stream: true, max_tokens: 5, logit_bias: NO_EOS })),
    });
    assert.equal(r.status, 200);
    assert.match(r.headers.get("content-type"), /text\/event-stream/);
    const ev = await readSSE(r);
    assert.equal(ev.at(-1), "[DONE]");
    const first = JSON.parse(ev[0]);
    assert.equal(first.object, "chat.completion.chunk");
    assert.equal(first.choices[0].delta.role, "assistant");
    const last = JSON.parse(ev.at(-2));
    assert.equal(last.choices[0].finish_reason, "length");
  });
});

describe("auth and CORS", () => {
  let srv;
  before(async () => {
    srv = await startServer(["--api-key", "s3cret", "--cors", "--parallel", "1"]);
  });
  after(async () => {
    if (srv) await stopServer(srv);
  });

  test("a missing or wrong API key is 401; the right one works", async () => {
    for (const key of ["wrong", "s3cre", "s3crett"]) {
      const c = new OpenAI({ baseURL: srv.url + "/v1", apiKey: key, maxRetries: 0 });
      await assert.rejects(c.completions.create({ model: "base", prompt: "Hi", max_tokens: 2 }),
        (e) => e instanceof OpenAI.AuthenticationError && e.code === "invalid_api_key");
      await assert.rejects(c.models.list(), (e) => e.status === 401);
    }
    let r = await postJSON(srv.url + "/v1/completions", { prompt: "Hi" });
    assertError(r, 401);
    assert.equal(r.headers.get("www-authenticate"), "Bearer");
    r = await fetch(srv.url + "/metrics");
    assert.equal(r.status, 401);
    const ok = new OpenAI({ baseURL: srv.url + "/v1", apiKey: "s3cret", maxRetries: 0 });
    const out = await ok.completions.create({ model: "base", prompt: "Hi", max_tokens: 2, logit_bias: NO_EOS });
    assert.equal(out.usage.completion_tokens, 2);
    // the page and the health check stay open
    assert.equal((await fetch(srv.url + "/health")).status, 200);
    assert.equal((await fetch(srv.url + "/")).status, 200);
  });

  test("--cors answers preflights and marks responses", async () => {
    let r = await fetch(srv.url + "/v1/chat/completions", {
      method: "OPTIONS", headers: { Origin: "http://example.test", "Access-Control-Request-Method": "POST" },
    });
    assert.equal(r.status, 204);
    assert.equal(r.headers.get("access-control-allow-origin"), "*");
    assert.match(r.headers.get("access-control-allow-headers"), /Authorization/);
    r = await fetch(srv.url + "/health");
    assert.equal(r.headers.get("access-control-allow-origin"), "*");
  });
});

describe("queue and disconnects", () => {
  let srv;
  before(async () => {
    srv = await startServer(["--parallel", "1", "--queue", "1"]);
  });
  after(async () => {
    if (srv) await stopServer(srv);
  });
  const long = (extra) => ({ model: "base", prompt: "Once upon a time", max_tokens: 1500, logit_bias: NO_EOS, ...extra });

  async function waitBusy(n) {
    for (let i = 0; i < 400; i++) {
      const m = await metrics(srv.url);
      if (m.nomoat_slots_busy + m.nomoat_queue_depth >= n) return m;
      await new Promise((r) => setTimeout(r, 20));
    }
    assert.fail("the requests never reached the server");
  }

  test("a client leaving mid-stream frees its slot", async () => {
    const before0 = await metrics(srv.url);
    const ctl = new AbortController();
    const r = await fetch(srv.url + "/v1/completions", {
      method: "POST", headers: { "Content-Type": "application/json" }, body: JSON.stringify(long({ stream: true })), signal: ctl.signal,
    });
    const reader = r.body.getReader();
    await reader.read(); // the first token is there
    ctl.abort();
    const m = await waitIdle(srv.url);
    assert.equal(m['nomoat_generations_total{outcome="cancelled"}'], before0['nomoat_generations_total{outcome="cancelled"}'] + 1);
    assert.ok(m.nomoat_generated_tokens_total - before0.nomoat_generated_tokens_total < 1500);
  });

  test("a client leaving before a non-streamed answer frees its slot", async () => {
    const before0 = await metrics(srv.url);
    const ctl = new AbortController();
    const p = fetch(srv.url + "/v1/completions", {
      method: "POST", headers: { "Content-Type": "application/json" }, body: JSON.stringify(long()), signal: ctl.signal,
    }).catch((e) => e);
    await waitBusy(1);
    ctl.abort();
    assert.equal((await p).name, "AbortError");
    const m = await waitIdle(srv.url);
    assert.equal(m['nomoat_generations_total{outcome="cancelled"}'], before0['nomoat_generations_total{outcome="cancelled"}'] + 1);
    assert.ok(m.nomoat_generated_tokens_total - before0.nomoat_generated_tokens_total < 1500);
  });

  test("beyond the slots and the queue: 503 with Retry-After", async () => {
    const ctls = [new AbortController(), new AbortController()];
    const running = ctls.map((c) => fetch(srv.url + "/v1/completions", {
      method: "POST", headers: { "Content-Type": "application/json" }, body: JSON.stringify(long()), signal: c.signal,
    }).catch((e) => e));
    await waitBusy(2); // one generating, one waiting
    const r = await postJSON(srv.url + "/v1/completions", { model: "base", prompt: "Hi", max_tokens: 2 });
    const e = assertError(r, 503);
    assert.equal(e.code, "overloaded");
    assert.equal(r.headers.get("retry-after"), "1");
    for (const c of ctls) c.abort();
    await Promise.all(running);
    await waitIdle(srv.url);
    const ok = await postJSON(srv.url + "/v1/completions", { model: "base", prompt: "Hi", max_tokens: 2 });
    assert.equal(ok.status, 200, ok.text);
  });
});
