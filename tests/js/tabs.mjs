// Headless Chromium with several tabs, in one or more browser contexts (a
// context is a separate profile: its tabs share storage, locks and
// BroadcastChannels with each other, never with another context's), driven
// one JSON command per line, like browser.mjs.
//
//   node tabs.mjs '{"executablePath": "/usr/bin/chromium"}'
//
// Answers are one JSON line each, {"ok": true, "value": ...} or
// {"ok": false, "error": "..."}:
//
//   {"op": "newpage", "context": C}               -> the new tab's index (contexts
//                                                    are made on first use)
//   {"op": "goto", "page": P, "url": U}           -> the response's HTTP status
//   {"op": "goto", "page": P, "url": U, "html": H} -> 200: U is answered with the
//                                                    page H by the driver (U's
//                                                    origin, no server page needed)
//   {"op": "eval", "page": P, "js": EXPR}         -> EXPR's value (promises awaited)
//   {"op": "wait", "page": P, "js": EXPR, "timeout": MS}
//                                                 -> EXPR's first truthy value
//   {"op": "closepage", "page": P, "crash": B}    -> null once the tab is gone:
//                                                    closed as a user closes it
//                                                    (pagehide runs), or with
//                                                    crash, its renderer killed
//   {"op": "console", "page": P}                  -> that tab's console lines
//   {"op": "close"}                               -> null, then the process ends
//
// Chromium is Debian's, launched by driver.mjs.
import { launch, serve } from "./driver.mjs";

const browser = await launch([
  // Background tabs must keep their timers: followers heartbeat each second.
  "--disable-background-timer-throttling",
  "--disable-renderer-backgrounding",
  "--disable-backgrounding-occluded-windows",
]);

const contexts = [];
const pages = [];

async function context(index) {
  if (!Number.isInteger(index) || index < 0) throw new Error(`bad context ${index}`);
  while (contexts.length <= index) contexts.push(null);
  if (!contexts[index]) {
    contexts[index] = await browser.newContext({ viewport: { width: 900, height: 700 } });
  }
  return contexts[index];
}

function tab(index) {
  const entry = pages[index];
  if (!entry) throw new Error(`no page ${index}`);
  if (entry.closed) throw new Error(`page ${index} is closed`);
  return entry;
}

async function run(command) {
  switch (command.op) {
    case "newpage": {
      const page = await (await context(command.context ?? 0)).newPage();
      const entry = { page, console: [], closed: false };
      page.on("console", (message) => entry.console.push(`${message.type()}: ${message.text()}`));
      page.on("pageerror", (error) => entry.console.push(`pageerror: ${error.message}`));
      pages.push(entry);
      return pages.length - 1;
    }
    case "goto": {
      const { page } = tab(command.page);
      if (typeof command.html === "string") {
        const html = command.html;
        await page.route(command.url, (route) =>
          route.fulfill({ status: 200, contentType: "text/html; charset=utf-8", body: html }),
        );
      }
      const response = await page.goto(command.url, { timeout: command.timeout || 15000 });
      return response ? response.status() : null;
    }
    case "eval":
      return await tab(command.page).page.evaluate(command.js);
    case "wait": {
      const handle = await tab(command.page).page.waitForFunction(command.js, null, {
        timeout: command.timeout || 15000,
        polling: 50,
      });
      return await handle.jsonValue();
    }
    case "closepage": {
      const entry = tab(command.page);
      entry.closed = true;
      if (command.crash) {
        // The renderer dies without running pagehide: what the browser does
        // with the tab's locks is all that happens.
        const crashed = new Promise((resolve) => entry.page.once("crash", resolve));
        const session = await entry.page.context().newCDPSession(entry.page);
        session.send("Page.crash").catch(() => {});
        await Promise.race([crashed, new Promise((resolve) => setTimeout(resolve, 5000))]);
        await entry.page.close().catch(() => {});
      } else {
        await entry.page.close({ runBeforeUnload: true });
        if (!entry.page.isClosed()) await entry.page.waitForEvent("close", { timeout: 15000 });
      }
      return null;
    }
    case "console":
      return pages[command.page] ? pages[command.page].console : [];
    case "close":
      return null;
    default:
      throw new Error(`unknown op ${JSON.stringify(command.op)}`);
  }
}

await serve(browser, run);
