// Drives Footfall's dashboard in Debian's headless Chromium through playwright-core
// (crates/footfall/tests/dashboard.rs runs it). Arguments: base URL, screenshot dir.
// Environment: NPM (the test packages' directory), A1, A2, B (tracking ids), ANN_PW,
// BOB_PW. Prints one JSON object of what it saw; the Rust side checks it against the API.
const path = require("path");
const fs = require("fs");
const { chromium } = require(path.join(process.env.NPM, "playwright-core-1.65.1"));
const axeSource = fs.readFileSync(path.join(process.env.NPM, "axe-core-4.14.1", "axe.min.js"), "utf8");

const [base, shots] = process.argv.slice(2);
const out = {};
let current = null; // the page a failure is shown from
const consoleLines = [];

async function shot(page, name) {
  await page.screenshot({ path: path.join(shots, `${name}.png`), fullPage: true });
}

async function cards(page) {
  await page.waitForSelector('.card[data-metric="visitors"] .value');
  return page.$eval('.card[data-metric="visitors"] .value', (e) => e.textContent);
}

// Waits until the visitors card shows something other than `before`.
async function cardsChange(page, before) {
  await page.waitForFunction(
    (b) => { const e = document.querySelector('.card[data-metric="visitors"] .value'); return e && e.textContent !== b; },
    before,
  );
  return cards(page);
}

async function login(page, email, password) {
  await page.fill("#email", email);
  await page.fill("#password", password);
  await page.click('button[type="submit"]');
}

(async () => {
  const browser = await chromium.launch({ executablePath: "/usr/bin/chromium", args: ["--no-sandbox"] });
  const context = await browser.newContext({ acceptDownloads: true, viewport: { width: 1200, height: 900 } });
  const page = await context.newPage();
  current = page;
  page.on("console", (m) => consoleLines.push(`${m.type()}: ${m.text()}`));
  page.on("pageerror", (e) => consoleLines.push(`pageerror: ${e.message}`));
  const started = Date.now();
  await page.goto(base + "/");
  await page.waitForSelector("#email");
  out.login_form_ms = Date.now() - started;
  await shot(page, "01-login");

  out.first_paint_ms = await page.evaluate(() => Math.round(performance.getEntriesByName("first-contentful-paint")[0]?.startTime ?? -1));
  const loggingIn = Date.now();
  await login(page, "ann@a.example", process.env.ANN_PW);
  // The switcher lists properties by name: "Shop A1" comes first.
  out.visitors_7d = await cards(page);
  await page.waitForSelector("#panel-event-page tbody button");
  await page.waitForFunction(() => document.querySelectorAll(".panel table").length >= 18);
  out.panels_ms = Date.now() - loggingIn;
  // Exit pages come from the columnar engine (or say why not, without it).
  await page.waitForSelector("#panel-visit-exit_page table, #panel-visit-exit_page p");
  out.exit_pages = await page.$eval("#panel-visit-exit_page", (e) => e.textContent);
  out.site_after_login = await page.$eval("#site", (e) => e.value);
  await page.waitForFunction(() => document.getElementById("realtime")?.textContent.includes("current visitor"));
  out.realtime = await page.$eval("#realtime", (e) => e.textContent);
  await shot(page, "02-dashboard");

  // Through the debugging protocol: the page's CSP (rightly) refuses inline scripts.
  await page.evaluate(axeSource);
  const axe = await page.evaluate(async () => {
    const r = await window.axe.run(document);
    return r.violations.map((v) => ({ id: v.id, impact: v.impact, nodes: v.nodes.length }));
  });
  out.axe_violations = axe;

  // Switch property and back.
  await page.selectOption("#site", process.env.A2);
  out.visitors_a2 = await cardsChange(page, out.visitors_7d);
  out.hash_a2 = await page.evaluate(() => location.hash);
  await shot(page, "03-switched-property");
  await page.selectOption("#site", process.env.A1);
  await page.waitForFunction((v) => document.querySelector('.card[data-metric="visitors"] .value')?.textContent === v, out.visitors_7d);

  // Another date range.
  await page.selectOption("#range", "30d");
  await page.waitForFunction(() => location.hash.includes("range=30d"));
  out.visitors_30d = await cards(page);
  await shot(page, "04-date-range");

  // Compared with the previous 30 days.
  await page.selectOption("#compare", "previous");
  await page.waitForSelector('.card[data-metric="visitors"] .delta');
  out.compare_before = await page.$eval('.card[data-metric="visitors"] .delta', (e) => e.getAttribute("data-before"));
  out.compare_text = await page.$eval('.card[data-metric="visitors"] .delta', (e) => e.textContent);
  out.hash_compare = await page.evaluate(() => location.hash);
  await shot(page, "04b-comparison");
  await page.selectOption("#compare", "");

  // Filter by clicking a row of the pages panel.
  await page.click('#panel-event-page tbody button:text-is("/pricing")');
  out.visitors_filtered = await cardsChange(page, out.visitors_30d);
  out.hash_filtered = await page.evaluate(() => location.hash);
  out.chips = await page.$$eval(".chips button", (bs) => bs.map((b) => b.textContent));
  await page.waitForSelector("#panel-event-page tbody button");
  await shot(page, "05-filtered");

  // The pages panel, filtered, as CSV; a breakdown the engine cannot combine with
  // the filter says so.
  out.sources_filtered = await page.$eval("#panel-visit-source", (e) => e.textContent);
  const [download] = await Promise.all([
    page.waitForEvent("download"),
    page.click('#panel-event-page button[aria-label^="Export"]'),
  ]);
  out.csv_name = download.suggestedFilename();
  out.csv = fs.readFileSync(await download.path(), "utf8");

  // API keys (ann is the account's owner): create a read key, see it listed, revoke it.
  await page.click("#keys summary");
  await page.click('#keys button:text-is("New read key")');
  await page.waitForSelector("#new-key code");
  out.new_key = await page.$eval("#new-key code", (e) => e.textContent);
  await page.waitForSelector("#keys-list li");
  out.keys_listed = await page.$$eval("#keys-list li", (ls) => ls.map((l) => l.textContent));
  await shot(page, "05b-api-keys");
  out.new_key_status = await page.evaluate(async ([site, key]) => (await fetch("/api/v2/query", {
    method: "POST",
    headers: { "content-type": "application/json", authorization: `Bearer ${key}` },
    body: JSON.stringify({ site_id: site, metrics: ["visitors"], date_range: "7d" }),
  })).status, [process.env.A1, out.new_key]);
  const id = out.new_key.slice(0, 10);
  await page.click(`#keys button[aria-label="Revoke key ${id}"]`);
  await page.waitForFunction((i) => !document.querySelector(`#keys button[aria-label="Revoke key ${i}"]`), id);
  out.revoked_key_status = await page.evaluate(async ([site, key]) => (await fetch("/api/v2/query", {
    method: "POST",
    headers: { "content-type": "application/json", authorization: `Bearer ${key}` },
    body: JSON.stringify({ site_id: site, metrics: ["visitors"], date_range: "7d" }),
  })).status, [process.env.A1, out.new_key]);

  // A read-only link to the property.
  await page.click("#shares summary");
  await page.click('#shares button:text-is("New read-only link")');
  await page.waitForSelector("#new-share code");
  out.share_link = await page.$eval("#new-share code", (e) => e.textContent);

  // A bookmarked view opens as it was.
  const bookmarked = page.url();
  const second = await context.newPage();
  await second.goto(bookmarked);
  out.visitors_bookmarked = await cards(second);
  await second.close();

  // The chart: page views, by week (clear the filter first).
  await page.click(".chips button");
  await page.waitForFunction(() => !location.hash.includes("f="));
  await page.click('.card[data-metric="pageviews"] button.label');
  await page.selectOption("#grain", "week");
  await page.waitForFunction(() => document.querySelector("#chart h2")?.textContent === "Page views by week");
  await page.waitForFunction(() => location.hash.includes("grain=week") && location.hash.includes("metric=pageviews"));
  out.chart_title = await page.$eval("#chart h2", (e) => e.textContent);
  out.chart_week = await page.$$eval("#chart rect title", (ts) => ts.map((t) => t.textContent));
  out.hash_chart = await page.evaluate(() => location.hash);
  await shot(page, "05c-chart-by-week");

  // Custom event properties (by key) and revenue.
  await page.fill("#prop-key", "plan");
  await page.click('#panel-props button:text-is("Show")');
  await page.waitForSelector("#panel-props-body tbody button");
  out.props_rows = await page.$$eval("#panel-props-body tbody tr", (rs) => rs.map((r) => [...r.querySelectorAll("td")].map((d) => d.textContent).join("|")));
  await page.waitForSelector("#panel-revenue tbody td");
  await page.waitForSelector("#panel-goals table, #panel-goals p");
  out.goals = await page.$eval("#panel-goals", (e) => e.textContent);
  out.revenue_row = await page.$eval("#panel-revenue tbody tr", (r) => [...r.querySelectorAll("td")].map((d) => d.textContent).join("|"));
  await page.$eval("#panel-revenue", (e) => e.scrollIntoView());
  await shot(page, "05d-properties-and-revenue");

  // An invitation (ann owns Acme): cy is invited as a viewer.
  await page.click("#users summary");
  await page.fill("#invite-email", "cy@a.example");
  await page.selectOption("#invite-role", "viewer");
  await page.click('#users button:text-is("Invite")');
  await page.waitForSelector("#new-invite code");
  out.invite_link = await page.$eval("#new-invite code", (e) => e.textContent);
  await page.waitForSelector("#invites-list li");
  out.invites_listed = await page.$$eval("#invites-list li", (ls) => ls.map((l) => l.textContent));
  // axe-core again, with the chart choices, the property and revenue panels and the
  // users section open.
  const axe2 = await page.evaluate(async () => {
    const r = await window.axe.run(document);
    return r.violations.map((v) => ({ id: v.id, impact: v.impact, nodes: v.nodes.length }));
  });
  out.axe_violations = out.axe_violations.concat(axe2);

  await page.click("#logout");
  await page.waitForSelector("#email");
  out.after_logout_me = await page.evaluate(async () => (await fetch("/api/auth/me")).status);
  await shot(page, "06-logged-out");

  // The shared link, logged out: the property, read-only; nothing else.
  const shared = await context.newPage();
  await shared.goto(out.share_link + "#range=7d");
  out.shared_visitors = await cards(shared);
  out.shared_logout_button = await shared.$("#logout") !== null;
  out.shared_other_status = await shared.evaluate(async ([token, site]) => (await fetch("/api/v2/query", {
    method: "POST",
    headers: { "content-type": "application/json", "x-footfall-share": token },
    body: JSON.stringify({ site_id: site, metrics: ["visitors"], date_range: "7d" }),
  })).status, [out.share_link.split("/share/")[1], process.env.A2]);
  await shot(shared, "06b-shared-link");
  await shared.close();

  // A user of another account: the first account's property is not found, by URL or API.
  await login(page, "bob@b.example", process.env.BOB_PW);
  await cards(page);
  await page.goto(`${base}/#site=${process.env.A1}&range=7d`);
  await page.reload();
  await page.waitForSelector("h1:text-is('Not found')");
  out.bob_api_status = await page.evaluate(async (site) => {
    const me = await (await fetch("/api/auth/me")).json();
    const r = await fetch("/api/v2/query", {
      method: "POST",
      headers: { "content-type": "application/json" },
      body: JSON.stringify({ site_id: site, metrics: ["visitors"], date_range: "7d" }),
    });
    return [me.user.email, r.status];
  }, process.env.A1);
  await shot(page, "07-other-account-not-found");

  // The invitation, opened logged out in a fresh browser: cy chooses a password and
  // lands on Acme's dashboard; the link then opens nothing.
  const cyContext = await browser.newContext({ viewport: { width: 1200, height: 900 } });
  const cy = await cyContext.newPage();
  current = cy;
  await cy.goto(out.invite_link);
  await cy.waitForSelector("#new-password");
  await shot(cy, "08-invitation");
  await cy.evaluate(axeSource);
  out.axe_violations = out.axe_violations.concat(await cy.evaluate(async () => {
    const r = await window.axe.run(document);
    return r.violations.map((v) => ({ id: v.id, impact: v.impact, nodes: v.nodes.length }));
  }));
  await cy.fill("#new-password", "cy's own long passphrase");
  await cy.fill("#new-password-again", "cy's own long passphrase");
  await cy.click('button[type="submit"]');
  await cy.waitForURL((u) => !u.pathname.startsWith("/invite/"));
  await cy.goto(`${base}/#site=${process.env.A1}&range=7d`);
  await cy.reload();
  out.invited_visitors = await cards(cy);
  out.invited_me = await cy.evaluate(async () => {
    const me = await (await fetch("/api/auth/me")).json();
    return [me.user.email, me.accounts.map((a) => a.name).join(","), me.accounts.map((a) => a.role).join(",")];
  });
  out.invite_reused_status = await cy.evaluate(async (link) => (await fetch(`/api/invites/${link.split("/invite/")[1]}`)).status, out.invite_link);
  await shot(cy, "09-invited-user");

  // A phone-sized screen: the page fits its width.
  const phone = await browser.newContext({ viewport: { width: 375, height: 740 }, deviceScaleFactor: 2, isMobile: true, hasTouch: true });
  const p2 = await phone.newPage();
  current = p2;
  await p2.context().addCookies(await cyContext.cookies());
  await p2.goto(`${base}/#site=${process.env.A1}&range=30d`);
  await cards(p2);
  await p2.waitForSelector("#panel-event-page tbody button");
  out.phone_overflow_px = await p2.evaluate(() => document.documentElement.scrollWidth - window.innerWidth);
  await shot(p2, "10-phone");
  await browser.close();
  console.log(JSON.stringify(out));
})().catch(async (e) => {
  console.error(e);
  console.error(consoleLines.join("\n"));
  if (current) await current.screenshot({ path: path.join(shots, "failure.png"), fullPage: true }).catch(() => {});
  process.exit(1);
});
