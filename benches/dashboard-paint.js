// Times the dashboard in Debian's headless Chromium against a running server
// (scripts/bench.sh --dashboard N runs it). Arguments: base URL, e-mail, password,
// tracking id, rounds. Environment: NPM (scripts/test-deps.sh's packages). Prints one
// JSON object: first contentful paint of the page, and from navigation to every panel
// filled, per round, with a logged-in session and a 30-day range.
const path = require("path");
const { chromium } = require(path.join(process.env.NPM, "playwright-core-1.65.1"));

const [base, email, password, site, rounds] = process.argv.slice(2);

(async () => {
  const browser = await chromium.launch({ executablePath: "/usr/bin/chromium", args: ["--no-sandbox"] });
  const context = await browser.newContext({ viewport: { width: 1200, height: 900 } });
  const page = await context.newPage();
  await page.goto(base + "/");
  await page.waitForSelector("#email");
  await page.fill("#email", email);
  await page.fill("#password", password);
  await page.click('button[type="submit"]');
  await page.waitForSelector('.card[data-metric="visitors"] .value');
  const paint = [];
  const filled = [];
  for (let i = 0; i < Number(rounds); i++) {
    // A fresh page each round: the HTML, script and style, then every query.
    const p = await context.newPage();
    const t0 = Date.now();
    await p.goto(`${base}/#site=${site}&range=30d`);
    await p.waitForFunction(() => document.querySelectorAll(".panel table").length >= 18
      && !document.querySelector('.card[data-metric="visitors"] .value')?.textContent.includes("–"), null, { timeout: 60000 });
    filled.push(Date.now() - t0);
    paint.push(await p.evaluate(() => Math.round(performance.getEntriesByName("first-contentful-paint")[0]?.startTime ?? -1)));
    await p.close();
  }
  const pct = (v, q) => { const s = [...v].sort((a, b) => a - b); return s[Math.round((s.length - 1) * q)]; };
  console.log(JSON.stringify({
    rounds: Number(rounds),
    first_paint_ms: { p50: pct(paint, 0.5), p99: pct(paint, 0.99), all: paint },
    all_panels_ms: { p50: pct(filled, 0.5), p99: pct(filled, 0.99), all: filled },
  }));
  await browser.close();
})().catch((e) => { console.error(e); process.exit(1); });
