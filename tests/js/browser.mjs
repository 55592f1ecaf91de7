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
// Chromium is Debian's (no browser download), launched by driver.mjs, with
// a fresh profile that Playwright makes and removes.
import { launch, options, serve } from "./driver.mjs";

const browser = await launch();
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

await serve(browser, run);
