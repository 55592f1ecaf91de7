// What browser.mjs and tabs.mjs share: Debian's Chromium launched with the
// flags this machine needs (background networking off: the closed network
// refuses it; no sandbox: root), and the loop that reads one JSON command
// per line on stdin and answers one JSON line on stdout,
// {"ok": true, "value": ...} or {"ok": false, "error": "..."}.
import { createInterface } from "node:readline";
import { chromium } from "playwright-core";

/** The driver's options, its first argument (JSON). */
export const options = JSON.parse(process.argv[2] || "{}");

/** Launch Chromium headless, with `args` after the common flags. */
export function launch(args = []) {
  return chromium.launch({
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
      ...args,
    ],
  });
}

/**
 * Answer "ready", then each command with `run(command)`'s value, until
 * {"op": "close"} or the end of stdin; then close `browser` and exit.
 */
export async function serve(browser, run) {
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
}
