/**
 * The README's five-minute walkthrough, executed as written against a real
 * `npm start` (fresh data folder, free ports), then the live dashboard page in
 * headless Chromium: it must redraw from a view.refreshed delta. A screenshot
 * goes to bench/results/live-dashboard.png.
 */
import test from "ava";
import { spawn } from "node:child_process";
import { readFileSync, mkdtempSync, symlinkSync, existsSync, mkdirSync } from "node:fs";
import { join } from "node:path";
import { ROOT } from "../server/config.ts";
import { devstack, type Devstack } from "./helpers/devstack.ts";
import { eventually } from "./helpers/wait.ts";
import { gql } from "./helpers/stack.ts";

let ds: Devstack;
let run: ReturnType<Devstack["start"]>;
let token = "";

test.before(async () => {
  ds = await devstack("walkthrough-");
  run = ds.start();
  await eventually(async () => (await fetch(ds.url + "/healthz")).status === 200, 90_000, 300);
});
test.after.always(async () => {
  run?.child.kill("SIGINT");
  await run?.exited;
});

function walkthroughScript(): string {
  const readme = readFileSync(join(ROOT, "README.md"), "utf8");
  const m = /<!-- walkthrough:begin -->\s*```sh\n([\s\S]*?)```\s*<!-- walkthrough:end -->/.exec(readme);
  if (!m) throw new Error("README.md has no walkthrough block");
  return m[1];
}

test.serial("the README walkthrough runs as written and shows a live view.refreshed delta", async (t) => {
  const dir = mkdtempSync(join(process.env.TDC_TEST_DATA_DIR!, "walk-cwd-"));
  symlinkSync(join(ROOT, "examples"), join(dir, "examples"));
  // Print TOKEN at the end so the browser test can reuse the account; kill the background curl.
  const script = `set -e\n${walkthroughScript()}\necho "TOKEN=$TOKEN"\n`;
  const child = spawn("bash", ["-c", script], { cwd: dir, env: { ...ds.env, TDC: ds.url }, detached: true, stdio: ["ignore", "pipe", "pipe"] });
  let out = "", err = "";
  child.stdout.on("data", (d) => (out += d));
  child.stderr.on("data", (d) => (err += d));
  const code = await new Promise<number | null>((res) => child.on("exit", res));
  try { process.kill(-child.pid!, "SIGTERM"); } catch { /* already gone */ }
  t.is(code, 0, `stdout:\n${out}\nstderr:\n${err}`);
  t.notRegex(out, /"errors"/, out);
  t.regex(out, /"handle":"ada"/);
  t.regex(out, /"table":"contacts","rows":40/);
  t.regex(out, /"createView":\{"view":\{"name":"pipeline"/);
  t.regex(out, /"schedule":"\*\/5 \* \* \* \*"/);
  t.regex(out, /"status":"succeeded"/);
  // The stream (curl -N) saw the import and the refresh, with the delta of the new lead.
  const events = readFileSync(join(dir, "events.log"), "utf8");
  t.regex(events, /event: import\.finished/);
  t.regex(events, /event: view\.refreshed\ndata: .*"delta":\{"added":\[\{[^\]]*"stage":"lead"/);
  // psql as the user's own role, in their own schema.
  t.regex(out, /stage\s+\|\s+deals\s+\|\s+value/);
  token = /TOKEN=(\S+)/.exec(out)![1];
});

test.serial("the live dashboard redraws from view.refreshed deltas (headless Chromium)", async (t) => {
  const { chromium } = await import("playwright-core");
  const browser = await chromium.launch({
    executablePath: "/usr/bin/chromium", headless: true,
    args: ["--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run", "--disable-background-networking", "--disable-component-update", "--disable-sync"],
  });
  try {
    const page = await browser.newPage();
    // The first stream request gets a 502 (as from a restarting Pushpin): EventSource gives up for
    // good on a non-200 answer, so the page must start a new one by itself.
    let streamRequests = 0;
    await page.route(/\/channels\/[^/]+\/events\?/, (route) => {
      streamRequests++;
      return streamRequests === 1 ? route.fulfill({ status: 502, contentType: "text/plain", body: "Error while proxying to origin.\n" }) : route.continue();
    });
    await page.goto(ds.url + "/examples/live-dashboard");
    await page.fill("#email", "ada@example.com");
    await page.fill("#password", "analytical engine");
    await page.click("button[type=submit]");
    await page.waitForSelector("#status.live", { timeout: 20_000 });
    t.is(streamRequests, 2, "one refused stream, then a new EventSource that went live");
    const wonBefore = await page.locator("td[data-col=stage]", { hasText: "won" }).count();
    // A big new deal is won; refresh the view; the page must show it without reloading.
    const csv = "name,email,company,stage,deal_value,created_at\nBig Deal,big@example.com,Megacorp,won,7777700,2026-12-02T09:00:00Z\n";
    const imp = await fetch(ds.url + "/tables/contacts/import", { method: "POST", headers: { authorization: `Bearer ${token}`, "content-type": "text/csv" }, body: csv });
    t.is(imp.status, 200, await imp.text());
    const r = await gql(ds.url, `mutation{refreshView(input:{name:"pipeline"}){refresh{status}}}`, {}, token);
    t.is(r.data.refreshView.refresh.status, "succeeded");
    await page.waitForFunction(() => document.body.innerText.includes("7777700") || /won: \d{7,}/.test(document.body.innerText), undefined, { timeout: 20_000 });
    const text = await page.innerText("body");
    t.regex(text, /view\.refreshed pipeline/);
    t.true(wonBefore <= 1);
    mkdirSync(join(ROOT, "bench", "results"), { recursive: true });
    await page.screenshot({ path: join(ROOT, "bench", "results", "live-dashboard.png"), fullPage: true });
    t.true(existsSync(join(ROOT, "bench", "results", "live-dashboard.png")));
  } finally {
    await browser.close();
  }
});
