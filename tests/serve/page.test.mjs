// page.test.mjs - the chat page at / in headless Chromium (Debian's
// /usr/bin/chromium driven by playwright-core): it lists the models, sends
// a message, shows the answer as it streams, and compares two stacks.
import { test, describe, before, after } from "node:test";
import assert from "node:assert/strict";
import fs from "node:fs";
import os from "node:os";
import path from "node:path";
import { chromium } from "playwright-core";
import { ADAPTER, startServer, stopServer } from "./lib.mjs";

const CHROMIUM = "/usr/bin/chromium";

describe("chat page", () => {
  let srv, ctx, page, profile;
  before(async () => {
    assert.ok(fs.existsSync(CHROMIUM), `${CHROMIUM} is missing (scripts/setup.sh installs Debian's chromium)`);
    srv = await startServer(["--parallel", "2", "--api-key", "pagekey", "--lora", `tone=${ADAPTER}`]);
    profile = fs.mkdtempSync(path.join(os.tmpdir(), "nomoat-chromium-"));
    ctx = await chromium.launchPersistentContext(profile, {
      executablePath: CHROMIUM,
      headless: true,
      args: ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
        "--disable-background-networking", "--disable-component-update", "--disable-sync"],
    });
    page = ctx.pages()[0] || (await ctx.newPage());
  });
  after(async () => {
    if (ctx) await ctx.close();
    if (profile) fs.rmSync(profile, { recursive: true, force: true });
    if (srv) await stopServer(srv);
  });

  test("without the API key the page says it cannot list models", async () => {
    await page.goto(srv.url + "/");
    await page.waitForFunction(() => /cannot list models/.test(document.getElementById("info").textContent));
  });

  test("lists the models, sends a message, shows the answer while it streams", async () => {
    await page.fill("#apikey", "pagekey");
    await page.dispatchEvent("#apikey", "change");
    await page.waitForFunction(() => /stories260K/.test(document.getElementById("info").textContent));
    const options = await page.$$eval("#models option", (os) => os.map((o) => o.value));
    assert.deepEqual(options, ["stories260K", "base+tone"]);
    await page.fill("#max_tokens", "300");
    await page.fill("#seed", "3");
    // Record every length the answer goes through.
    await page.evaluate(() => {
      window.__lengths = [];
      const log = document.querySelector('.col[data-col="0"] .log');
      new MutationObserver(() => {
        const a = log.querySelector(".msg.assistant .text, .msg.error .text");
        if (a) window.__lengths.push(a.textContent.length);
      }).observe(log, { subtree: true, childList: true, characterData: true });
    });
    const sse = page.waitForResponse((r) => r.url().endsWith("/v1/chat/completions"));
    await page.fill("#prompt", "Tell me a story about a cat.");
    await page.click("#send");
    const resp = await sse;
    assert.equal(resp.status(), 200);
    assert.match(resp.headers()["content-type"], /text\/event-stream/);
    const done = await page.waitForSelector('.col[data-col="0"] .msg[data-done="true"]');
    assert.equal(await done.getAttribute("class"), "msg assistant");
    const text = await done.$eval(".text", (e) => e.textContent);
    assert.ok(text.length > 20, `short answer: ${JSON.stringify(text)}`);
    const meta = await done.$eval(".meta", (e) => e.textContent);
    assert.match(meta, /stories260K · \d+ tokens/);
    const lengths = await page.evaluate(() => window.__lengths);
    const distinct = new Set(lengths.filter((n) => n > 0 && n < text.length));
    assert.ok(distinct.size >= 2, `the answer did not appear piece by piece: ${lengths}`);
    if (process.env.NOMOAT_SCREENSHOT) await page.screenshot({ path: process.env.NOMOAT_SCREENSHOT + "-chat.png" });
  });

  test("compares two stacks side by side on the same prompt", async () => {
    await page.click("#clear");
    await page.check("#compare");
    await page.selectOption("#mode", "complete");
    await page.fill("#temperature", "1");
    await page.fill("#seed", "11");
    await page.fill("#max_tokens", "40");
    const stacks = page.locator(".stack");
    await stacks.nth(0).fill("stories260K");
    await stacks.nth(1).fill("base");
    await page.fill("#prompt", "Once upon a time");
    await page.click("#send");
    await page.waitForSelector('.col[data-col="0"] .msg[data-done="true"]');
    await page.waitForSelector('.col[data-col="1"] .msg[data-done="true"]');
    const answers = await page.$$eval('.msg[data-done="true"] .text', (es) => es.map((e) => e.textContent));
    assert.equal(answers.length, 2);
    assert.ok(answers[0].length > 0);
    // the same stack under two names and the same seed: the same text
    assert.equal(answers[1], answers[0]);
    if (process.env.NOMOAT_SCREENSHOT) await page.screenshot({ path: process.env.NOMOAT_SCREENSHOT + "-compare.png" });
    // an adapter stack: the page shows what the server answers (an error
    // while adapters cannot be applied yet, else a text)
    const direct = await fetch(srv.url + "/v1/completions", {
      method: "POST", headers: { Authorization: "Bearer pagekey", "Content-Type": "application/json" },
      body: JSON.stringify({ model: "base+tone:0.5", prompt: "x", max_tokens: 2 }),
    });
    const directBody = await direct.json();
    await stacks.nth(1).fill("base+tone:0.5");
    await page.fill("#prompt", " The end.");
    await page.click("#send");
    const b = await page.waitForSelector('.col[data-col="1"] .msg:last-child[data-done="true"]');
    const bt = await b.$eval(".text", (e) => e.textContent);
    if (direct.ok) {
      assert.equal(await b.getAttribute("class"), "msg assistant");
    } else {
      assert.equal(await b.getAttribute("class"), "msg error");
      assert.ok(bt.includes(directBody.error.message), bt);
    }
  });
});
