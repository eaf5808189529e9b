// Drive tests/browser/index.html in Debian's Chromium (playwright-core, no
// browser download) for tests/browser.py. argv[2]: JSON {url, userDataDir,
// executablePath, args}. stdin: one JSON command a line {id, expr} (a JS
// expression evaluated, and awaited, in the page). stdout: one JSON a line:
// {ready} once the page is up, {id, ok, value|error} per command, {console}
// for every browser console message and page error.
import { createInterface } from "node:readline";
import { chromium } from "playwright-core";

const opts = JSON.parse(process.argv[2]);
const out = (obj) => process.stdout.write(JSON.stringify(obj) + "\n");

const context = await chromium.launchPersistentContext(opts.userDataDir, {
  executablePath: opts.executablePath,
  headless: true,
  args: opts.args,
});
const page = context.pages()[0] || await context.newPage();
page.on("console", (msg) => out({ console: `[${msg.type()}] ${msg.text()}` }));
page.on("pageerror", (err) => out({ console: `[pageerror] ${err}` }));
await page.goto(opts.url);
await page.waitForFunction(() => window.ko && window.ko.ready, null, { timeout: 10000 });
out({ ready: true });

const rl = createInterface({ input: process.stdin });
for await (const line of rl) {
  if (!line.trim()) continue;
  const { id, expr } = JSON.parse(line);
  try {
    const value = await page.evaluate(expr);
    out({ id, ok: true, value });
  } catch (err) {
    out({ id, ok: false, error: String(err) });
  }
}
await context.close();
