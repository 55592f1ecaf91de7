// Headless Chromium for the Python tests, driven one JSON command per line.
//
//   node browser.mjs '{"executablePath": "/usr/bin/chromium", "ignoreHTTPSErrors": false}'
//
// Each line on stdin is a command; each answer is one JSON line on stdout,
// {"ok": true, "value": ...} or {"ok": false, "error": "..."}:
//
//   {"op": "goto", "url": U}                   -> the response's HTTP status
//   {"op": "eval", "js": EXPR}                 -> EXPR's value (promises awaited)
//   {"op": "wait", "js": EXPR, "timeout": MS}  -> EXPR's first truthy value
//   {"op": "screenshot", "path": P}            -> P, a PNG of the page
//   {"op": "console"}                          -> the console lines so far
//   {"op": "close"}                            -> null, then the process ends
//
// Chromium is Debian's (no browser download), with the flags this machine
// needs: background networking off (the closed network refuses it), no
// sandbox (root), and a fresh profile that Playwright makes and removes.
import { createInterface } from "node:readline";
import { chromium } from "playwright-core";

const options = JSON.parse(process.argv[2] || "{}");
const browser = await chromium.launch({
  executablePath: options.executablePath || "/usr/bin/chromium",
  headless: true,
  args: [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
  ],
});
const context = await browser.newContext({
  ignoreHTTPSErrors: Boolean(options.ignoreHTTPSErrors),
  viewport: options.viewport || { width: 1100, height: 860 },
  deviceScaleFactor: options.deviceScaleFactor || 1,
  colorScheme: options.colorScheme || "light",
});
const page = await context.newPage();
const consoleLines = [];
page.on("console", (message) => consoleLines.push(`${message.type()}: ${message.text()}`));
page.on("pageerror", (error) => consoleLines.push(`pageerror: ${error.message}`));

async function run(command) {
  switch (command.op) {
    case "goto": {
      const response = await page.goto(command.url, { timeout: command.timeout || 15000 });
      return response ? response.status() : null;
    }
    case "eval":
      return await page.evaluate(command.js);
    case "wait": {
      const handle = await page.waitForFunction(command.js, null, {
        timeout: command.timeout || 15000,
        polling: 50,
      });
      return await handle.jsonValue();
    }
    case "screenshot":
      await page.screenshot({ path: command.path, fullPage: Boolean(command.fullPage) });
      return command.path;
    case "console":
      return consoleLines;
    case "close":
      return null;
    default:
      throw new Error(`unknown op ${JSON.stringify(command.op)}`);
  }
}

const answer = (reply) => process.stdout.write(JSON.stringify(reply) + "\n");
answer({ ok: true, value: "ready" });
for await (const line of createInterface({ input: process.stdin })) {
  if (!line.trim()) continue;
  let command;
  try {
    command = JSON.parse(line);
    answer({ ok: true, value: (await run(command)) ?? null });
  } catch (error) {
    answer({ ok: false, error: String(error && error.stack ? error.stack : error) });
  }
  if (command && command.op === "close") break;
}
await browser.close();
// stdin may still hold the event loop open.
process.exit(0);
