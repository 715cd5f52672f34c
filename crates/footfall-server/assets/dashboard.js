// Footfall's dashboard: every number comes from /api/v2/query (the same engine and
// answers as API keys), read with the session cookie. No framework and nothing from a
// CDN; text from events is only ever set as text (never as HTML).

const METRICS = [
  ["visitors", "Visitors"],
  ["visits", "Visits"],
  ["pageviews", "Page views"],
  ["views_per_visit", "Views per visit"],
  ["bounce_rate", "Bounce rate"],
  ["visit_duration", "Visit duration"],
];
const PANELS = [
  ["event:page", "Pages"],
  ["visit:entry_page", "Entry pages"],
  ["visit:exit_page", "Exit pages"],
  ["visit:source", "Sources"],
  ["visit:channel", "Channels"],
  ["visit:referrer", "Referrers"],
  ["visit:utm_source", "UTM sources"],
  ["visit:utm_medium", "UTM media"],
  ["visit:utm_campaign", "UTM campaigns"],
  ["visit:utm_content", "UTM content"],
  ["visit:utm_term", "UTM terms"],
  ["visit:country", "Countries"],
  ["visit:region", "Regions"],
  ["visit:city", "Cities"],
  ["visit:device", "Devices"],
  ["visit:browser", "Browsers"],
  ["visit:os", "Operating systems"],
  ["event:name", "Events"],
];
const RANGES = [
  ["day", "Today"],
  ["yesterday", "Yesterday"],
  ["7d", "Last 7 days"],
  ["30d", "Last 30 days"],
  ["month", "Month to date"],
  ["lastmonth", "Last month"],
  ["12mo", "Last 12 months"],
  ["custom", "Custom…"],
];
const GRAINS = [
  ["", "Automatic"],
  ["hour", "By hour"],
  ["day", "By day"],
  ["week", "By week"],
  ["month", "By month"],
];
const ROLES = [
  ["viewer", "Viewer (reads reports)"],
  ["admin", "Admin (also keys and links)"],
  ["owner", "Owner (also users)"],
];
const COMPARE = [
  ["", "No comparison"],
  ["previous", "Previous period"],
  ["year", "Year before"],
];

// A read-only link: /share/<token>, sent with every query.
const shareToken = location.pathname.startsWith("/share/")
  ? decodeURIComponent(location.pathname.slice("/share/".length))
  : null;
// An invitation to an account: /invite/<token>.
const inviteToken = location.pathname.startsWith("/invite/")
  ? decodeURIComponent(location.pathname.slice("/invite/".length))
  : null;

const state = {
  csrf: null, accounts: [], site: null, range: "7d", from: "", to: "", compare: "",
  filters: [], shared: false, metric: "visitors", grain: "", prop: "",
};

// Dates are local to the property ("YYYY-MM-DD"), computed as the query engine does.
function todayIn(tz) {
  return new Intl.DateTimeFormat("en-CA", { timeZone: tz, year: "numeric", month: "2-digit", day: "2-digit" }).format(new Date());
}
const toDate = (s) => new Date(`${s}T00:00:00Z`);
const iso = (d) => d.toISOString().slice(0, 10);
const addDays = (s, n) => { const d = toDate(s); d.setUTCDate(d.getUTCDate() + n); return iso(d); };
const monthStart = (s, back = 0) => { const d = toDate(s); d.setUTCDate(1); d.setUTCMonth(d.getUTCMonth() - back); return iso(d); };
const yearBefore = (s) => { const d = toDate(s); d.setUTCFullYear(d.getUTCFullYear() - 1); return iso(d); };

// The current range as [from, to] local dates.
function resolveRange() {
  const tz = properties().find((p) => p.tracking_id === state.site)?.timezone || "UTC";
  const t = todayIn(tz);
  switch (state.range) {
    case "day": return [t, t];
    case "yesterday": return [addDays(t, -1), addDays(t, -1)];
    case "7d": return [addDays(t, -6), t];
    case "30d": return [addDays(t, -29), t];
    case "month": return [monthStart(t), t];
    case "lastmonth": return [monthStart(t, 1), addDays(monthStart(t), -1)];
    case "12mo": return [monthStart(t, 11), t];
    case "custom": return state.from && state.to && state.from <= state.to ? [state.from, state.to] : [t, t];
    default: return [addDays(t, -6), t];
  }
}

// What a query sends: the engine's own names where it has them (so the page and the
// API agree by construction), else the dates.
function rangeValue() {
  return ["day", "7d", "30d", "month", "12mo"].includes(state.range) ? state.range : resolveRange();
}

function comparedRange() {
  const [from, to] = resolveRange();
  if (state.compare === "year") return [yearBefore(from), yearBefore(to)];
  const days = Math.round((toDate(to) - toDate(from)) / 86400000) + 1;
  return [addDays(from, -days), addDays(from, -1)];
}

function h(tag, attrs = {}, ...children) {
  const el = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs)) {
    if (k.startsWith("on")) el.addEventListener(k.slice(2), v);
    else if (v !== undefined && v !== null && v !== false) el.setAttribute(k, v === true ? "" : v);
  }
  for (const c of children.flat()) {
    if (c !== null && c !== undefined) el.append(c instanceof Node ? c : document.createTextNode(String(c)));
  }
  return el;
}

async function api(method, path, body) {
  const headers = { "content-type": "application/json" };
  if (state.csrf) headers["x-csrf-token"] = state.csrf;
  if (shareToken) headers["x-footfall-share"] = shareToken;
  const r = await fetch(path, {
    method,
    headers,
    credentials: "same-origin",
    body: body === undefined ? undefined : JSON.stringify(body),
  });
  const text = await r.text();
  let json = null;
  try { json = text ? JSON.parse(text) : null; } catch { json = null; }
  return { status: r.status, json };
}

// The view lives in the URL fragment, so it can be bookmarked and shared.
function readHash() {
  const p = new URLSearchParams(location.hash.slice(1));
  state.site = p.get("site") || state.site;
  state.range = p.get("range") || state.range;
  state.from = p.get("from") || "";
  state.to = p.get("to") || "";
  state.compare = p.get("compare") || "";
  state.metric = METRICS.some(([m]) => m === p.get("metric")) ? p.get("metric") : "visitors";
  state.grain = GRAINS.some(([g]) => g === p.get("grain")) ? p.get("grain") : "";
  state.prop = p.get("prop") || "";
  state.filters = p.getAll("f").map((f) => {
    const [dim, ...rest] = f.split("|");
    return [dim, rest.join("|")];
  });
}

function writeHash() {
  const p = new URLSearchParams();
  if (state.site) p.set("site", state.site);
  p.set("range", state.range);
  if (state.range === "custom") { p.set("from", state.from); p.set("to", state.to); }
  if (state.compare) p.set("compare", state.compare);
  if (state.metric !== "visitors") p.set("metric", state.metric);
  if (state.grain) p.set("grain", state.grain);
  if (state.prop) p.set("prop", state.prop);
  for (const [dim, v] of state.filters) p.append("f", `${dim}|${v}`);
  const next = "#" + p.toString();
  if (location.hash !== next) history.replaceState(null, "", next);
}

// The user's properties, by name (then account) for the switcher.
function properties() {
  return state.accounts
    .flatMap((a) => a.properties.map((p) => ({ ...p, account: a.name, role: a.role })))
    .sort((x, y) => x.name.localeCompare(y.name) || x.account.localeCompare(y.account));
}

function currentRole() {
  return properties().find((p) => p.tracking_id === state.site)?.role;
}

function query(extra, range) {
  return api("POST", "/api/v2/query", {
    site_id: state.site,
    date_range: range || rangeValue(),
    filters: state.filters.map(([dim, v]) => ["is", dim, [v]]),
    ...extra,
  });
}

// "visit:utm_source" → "utm_source", "event:props:plan" → "props:plan".
function dimLabel(dim) {
  return dim.replace(/^(visit|event):/, "");
}

// The chart's time dimension: the chosen grain, or one that suits the range.
function timeDimension() {
  if (state.grain) return `time:${state.grain}`;
  return state.range === "day" || state.range === "yesterday" ? "time:hour" : state.range === "12mo" ? "time:month" : "time:day";
}

function fmt(metric, v) {
  if (v === null || v === undefined) return "–";
  if (metric === "bounce_rate") return `${Math.round(v)}%`;
  if (metric === "visit_duration") {
    const s = Math.round(v);
    return s >= 60 ? `${Math.floor(s / 60)}m ${s % 60}s` : `${s}s`;
  }
  if (metric === "views_per_visit") return Number(v).toFixed(2);
  return Number(v).toLocaleString("en");
}

function showLogin(message) {
  const app = document.getElementById("app");
  const email = h("input", { type: "email", name: "email", autocomplete: "username", required: true, id: "email" });
  const password = h("input", { type: "password", name: "password", autocomplete: "current-password", required: true, id: "password" });
  const error = h("p", { class: "error", role: "alert" }, message || "");
  const form = h(
    "form",
    { class: "login", onsubmit: async (e) => {
      e.preventDefault();
      const r = await api("POST", "/api/auth/login", { email: email.value, password: password.value });
      if (r.status === 200) {
        state.csrf = r.json.csrf_token;
        state.accounts = r.json.accounts;
        if (inviteToken) showInvite(); else start();
      } else {
        error.textContent = (r.json && r.json.error && r.json.error.message) || `Login failed (${r.status})`;
      }
    } },
    h("h1", {}, "Footfall"),
    h("label", { for: "email" }, "E-mail address", email),
    h("label", { for: "password" }, "Password", password),
    h("button", { class: "primary", type: "submit" }, "Log in"),
    error,
  );
  app.replaceChildren(form);
  email.focus();
}

// An invitation: what it offers, then joining — by choosing a password (a new
// address), or logged in as the invited address.
async function showInvite() {
  const app = document.getElementById("app");
  const r = await api("GET", `/api/invites/${encodeURIComponent(inviteToken)}`);
  if (r.status !== 200) {
    app.replaceChildren(h("h1", {}, "Invitation not found"), h("p", {}, "This invitation was used, withdrawn or has expired. Ask the account's owner for a new one."));
    return;
  }
  const inv = r.json;
  const me = await api("GET", "/api/auth/me");
  if (me.status === 200) state.csrf = me.json.csrf_token;
  const error = h("p", { class: "error", role: "alert" });
  const joined = (res) => {
    if (res.status === 200) { location.replace("/"); return; }
    error.textContent = res.json?.error?.message || `failed (${res.status})`;
  };
  const intro = h("p", {}, `You are invited to join ${inv.account.name} as ${inv.role}, as ${inv.email}.`);
  if (me.status === 200 && me.json.user.email === inv.email) {
    app.replaceChildren(h("div", { class: "login" }, h("h1", {}, "Join an account"), intro,
      h("button", { class: "primary", id: "accept", onclick: async () => joined(await api("POST", `/api/invites/${encodeURIComponent(inviteToken)}/accept`)) }, `Join ${inv.account.name}`),
      error));
    return;
  }
  if (me.status === 200) {
    app.replaceChildren(h("div", { class: "login" }, h("h1", {}, "Join an account"), intro,
      h("p", {}, `You are logged in as ${me.json.user.email}. Log out, then open this invitation again.`), logoutButton()));
    return;
  }
  if (inv.has_login) return showLogin(`Log in as ${inv.email} to accept the invitation to ${inv.account.name}.`);
  const email = h("input", { type: "email", id: "email", autocomplete: "username", value: inv.email, readonly: true });
  const pw = h("input", { type: "password", id: "new-password", autocomplete: "new-password", required: true, minlength: 10 });
  const again = h("input", { type: "password", id: "new-password-again", autocomplete: "new-password", required: true, minlength: 10 });
  app.replaceChildren(h("form", { class: "login", onsubmit: async (e) => {
    e.preventDefault();
    if (pw.value !== again.value) { error.textContent = "The two passwords differ."; return; }
    joined(await api("POST", `/api/invites/${encodeURIComponent(inviteToken)}/accept`, { password: pw.value }));
  } },
    h("h1", {}, "Join an account"), intro,
    h("label", { for: "email" }, "E-mail address", email),
    h("label", { for: "new-password" }, "Choose a password (at least 10 characters)", pw),
    h("label", { for: "new-password-again" }, "The same password again", again),
    h("button", { class: "primary", type: "submit" }, "Join"),
    error));
  pw.focus();
}

async function boot() {
  if (inviteToken) return showInvite();
  if (shareToken) {
    const r = await api("GET", "/api/share/me");
    if (r.status !== 200) {
      document.getElementById("app").replaceChildren(h("h1", {}, "Not found"), h("p", {}, "This link opens nothing (any more)."));
      return;
    }
    state.shared = true;
    state.accounts = [{ name: "shared", role: "viewer", properties: [r.json.property] }];
    return start();
  }
  const r = await api("GET", "/api/auth/me");
  if (r.status !== 200) return showLogin();
  state.csrf = r.json.csrf_token;
  state.accounts = r.json.accounts;
  start();
}

function start() {
  readHash();
  const props = properties();
  if (!props.some((p) => p.tracking_id === state.site)) {
    if (state.site && location.hash.includes("site=")) return notFound();
    state.site = props.length ? props[0].tracking_id : null;
  }
  writeHash();
  render();
  load();
}

function notFound() {
  const app = document.getElementById("app");
  app.replaceChildren(
    h("h1", {}, "Not found"),
    h("p", {}, "There is no such property among yours."),
    h("button", { onclick: () => { location.hash = ""; state.site = null; start(); } }, "Back to my properties"),
  );
}

function render() {
  const app = document.getElementById("app");
  const props = properties();
  if (!state.site) {
    app.replaceChildren(h("h1", {}, "Footfall"), h("p", {}, "Your accounts have no properties yet."), logoutButton());
    return;
  }
  const siteSel = h(
    "select",
    { id: "site", onchange: (e) => { state.site = e.target.value; state.filters = []; writeHash(); render(); load(); } },
    props.map((p) => h("option", { value: p.tracking_id, selected: p.tracking_id === state.site }, `${p.name} (${p.account})`)),
  );
  const rangeSel = h(
    "select",
    { id: "range", onchange: (e) => { state.range = e.target.value; writeHash(); load(); } },
    RANGES.map(([v, label]) => h("option", { value: v, selected: v === state.range }, label)),
  );
  const chips = h(
    "ul",
    { class: "chips", "aria-label": "Filters" },
    state.filters.map(([dim, v], i) =>
      h("li", {}, h("button", {
        "aria-label": `Remove filter ${dim} is ${v}`,
        onclick: () => { state.filters.splice(i, 1); writeHash(); render(); load(); },
      }, `${dimLabel(dim)} is ${v} ✕`)),
    ),
  );
  const grainSel = h(
    "select",
    { id: "grain", onchange: (e) => { state.grain = e.target.value; writeHash(); load(); } },
    GRAINS.map(([v, label]) => h("option", { value: v, selected: v === state.grain }, label)),
  );
  const compareSel = h(
    "select",
    { id: "compare", onchange: (e) => { state.compare = e.target.value; writeHash(); load(); } },
    COMPARE.map(([v, label]) => h("option", { value: v, selected: v === state.compare }, label)),
  );
  const custom = state.range === "custom"
    ? [
        h("label", { for: "from" }, "From", h("input", { id: "from", type: "date", value: state.from, onchange: (e) => { state.from = e.target.value; writeHash(); load(); } })),
        h("label", { for: "to" }, "To", h("input", { id: "to", type: "date", value: state.to, onchange: (e) => { state.to = e.target.value; writeHash(); load(); } })),
      ]
    : [];
  rangeSel.addEventListener("change", () => {
    if (state.range === "custom" && !state.from) [state.from, state.to] = resolveRange();
    writeHash();
    render();
  });
  app.replaceChildren(
    h("header", {},
      h("h1", {}, "Footfall", state.shared ? h("span", { class: "muted" }, " · shared, read-only") : null),
      h("p", { id: "realtime", class: "muted", "aria-live": "polite" }),
      h("div", { class: "controls" },
        h("label", { for: "site" }, "Property", siteSel),
        h("label", { for: "range" }, "Dates", rangeSel),
        ...custom,
        h("label", { for: "compare" }, "Compare", compareSel),
        h("label", { for: "grain" }, "Chart", grainSel),
        state.shared ? null : logoutButton())),
    chips,
    h("section", { class: "cards", id: "cards", "aria-label": "Totals" }),
    h("section", { class: "chart", id: "chart", "aria-label": "Chart over time" }),
    h("section", { class: "panels", id: "panels" },
      PANELS.map(([dim, title]) => h("div", { class: "panel", id: `panel-${dim.replace(":", "-")}` }, h("h2", {}, title))),
      propsPanel(),
      h("div", { class: "panel", id: "panel-revenue" }, h("h2", {}, "Revenue")),
      h("div", { class: "panel", id: "panel-goals" }, h("h2", {}, "Goals"))),
    ...(!state.shared && ["admin", "owner"].includes(currentRole()) ? [keysSection(), sharesSection()] : []),
    ...(!state.shared && currentRole() === "owner" ? [usersSection()] : []),
  );
}

// API keys of the property, for admins and owners: listed by id, created (shown once),
// revoked.
function keysSection() {
  const list = h("ul", { id: "keys-list" });
  const fresh = h("p", { id: "new-key", role: "status" });
  const url = `/api/ui/properties/${encodeURIComponent(state.site)}/keys`;
  const refresh = async () => {
    const r = await api("GET", url);
    const keys = (r.json && r.json.keys) || [];
    list.replaceChildren(...keys.map((k) => h("li", {},
      `${k.key_id}… (${k.scope}, ${k.created_at}) `,
      h("button", { "aria-label": `Revoke key ${k.key_id}`, onclick: async () => {
        await api("DELETE", `${url}/${encodeURIComponent(k.key_id)}`);
        fresh.textContent = `Key ${k.key_id}… revoked.`;
        refresh();
      } }, "Revoke"))));
  };
  const create = (scope) => async () => {
    const r = await api("POST", url, { scope });
    if (r.status === 201) {
      fresh.replaceChildren(`New ${scope} key (shown once): `, h("code", {}, r.json.key));
      refresh();
    } else {
      fresh.textContent = r.json?.error?.message || `failed (${r.status})`;
    }
  };
  const details = h("details", { class: "panel", id: "keys", ontoggle: (e) => { if (e.target.open) refresh(); } },
    h("summary", {}, "API keys"),
    h("div", { class: "controls" },
      h("button", { onclick: create("read") }, "New read key"),
      h("button", { onclick: create("write") }, "New write key")),
    fresh,
    list);
  return details;
}

function logoutButton() {
  return h("button", { id: "logout", onclick: async () => {
    await api("POST", "/api/auth/logout");
    // Nothing of this user's view stays for the next one.
    Object.assign(state, { csrf: null, accounts: [], site: null, filters: [] });
    history.replaceState(null, "", location.pathname);
    showLogin("Logged out.");
  } }, "Log out");
}

// Visitors of the last five minutes, refreshed every 30 s while the page is open.
async function realtime() {
  const el = document.getElementById("realtime");
  if (!el || !state.site) return;
  const r = await api("GET", `/api/v1/stats/realtime/visitors?site_id=${encodeURIComponent(state.site)}`);
  if (r.status === 200 && typeof r.json === "number") {
    el.textContent = `● ${r.json.toLocaleString("en")} current visitor${r.json === 1 ? "" : "s"}`;
  }
}
setInterval(realtime, 30000);

const topQuery = (dim) => query({ metrics: ["visitors", "pageviews"], dimensions: [dim], order_by: [["visitors", "desc"]], pagination: { limit: 10 } });

async function load() {
  const site = state.site;
  realtime();
  const propDim = state.prop ? `event:props:${state.prop}` : null;
  const [totals, before, series, revenue, goals, props, ...panels] = await Promise.all([
    totalsQuery(),
    state.compare ? totalsQuery(comparedRange()) : Promise.resolve(null),
    query({ metrics: [state.metric], dimensions: [timeDimension()] }),
    query({ metrics: ["total_revenue", "events"], dimensions: ["event:name"], pagination: { limit: 1000 } }),
    query({ metrics: ["visitors", "events", "conversion_rate"], dimensions: ["event:goal"], pagination: { limit: 100 } }),
    propDim ? topQuery(propDim) : Promise.resolve(null),
    ...PANELS.map(([dim]) => topQuery(dim)),
  ]);
  if (site !== state.site) return; // the property changed meanwhile
  if (totals.status === 401) return showLogin("Your session has ended.");
  if (totals.status === 404) return notFound();
  renderTotals(totals, before);
  renderChart(series);
  PANELS.forEach(([dim, title], i) => renderPanel(dim, title, panels[i]));
  if (props) renderPanel(propDim, `Values of ${state.prop}`, props, "panel-props-body");
  renderRevenue(revenue);
  renderGoals(goals);
}

// Goals: visitors who completed each of the property's goals, and the share of all
// visitors they are (under the same filters). Goals are set by admins
// (`footfall goal add`, or PUT /api/ui/properties/{id}/goals).
function renderGoals(r) {
  const panel = document.getElementById("panel-goals");
  if (!panel) return;
  const title = h("h2", {}, "Goals");
  if (r.status !== 200) {
    panel.replaceChildren(title, h("p", { class: "muted" }, r.json?.error?.message || `unavailable (${r.status})`));
    return;
  }
  const rows = r.json.results || [];
  panel.replaceChildren(title, h("table", {},
    h("thead", {}, h("tr", {}, h("th", { scope: "col" }, "Goal"), h("th", { scope: "col", class: "num" }, "Visitors"),
      h("th", { scope: "col", class: "num" }, "Conversions"), h("th", { scope: "col", class: "num", title: "Conversion rate: the share of all visitors" }, "Rate"))),
    h("tbody", {}, rows.length === 0
      ? h("tr", {}, h("td", { colspan: 4, class: "muted" }, "No conversions (or no goals set)"))
      : rows.map((x) => h("tr", {},
          h("td", {}, String(x.dimensions[0])),
          h("td", { class: "num" }, fmt("visitors", x.metrics[0])),
          h("td", { class: "num" }, fmt("events", x.metrics[1])),
          h("td", { class: "num" }, `${Number(x.metrics[2]).toLocaleString("en", { maximumFractionDigits: 2 })}%`))))),
    h("p", { class: "muted" }, "From raw events: the last few minutes may be missing."));
}

// Custom event properties: the values of one property key, chosen by the user.
function propsPanel() {
  const key = h("input", { id: "prop-key", value: state.prop, placeholder: "e.g. plan", size: 12 });
  return h("div", { class: "panel", id: "panel-props" },
    h("div", { class: "head" }, h("h2", {}, "Event properties")),
    h("form", { class: "inline", onsubmit: (e) => {
      e.preventDefault();
      state.prop = key.value.trim();
      writeHash();
      render();
      load();
    } }, h("label", { for: "prop-key" }, "Property key", key), h("button", { type: "submit" }, "Show")),
    h("div", { id: "panel-props-body" }, h("p", { class: "muted" }, "Values of a custom event property, by visitors.")));
}

// Revenue by event name, per currency (amounts are never converted).
function renderRevenue(r) {
  const panel = document.getElementById("panel-revenue");
  if (!panel) return;
  if (r.status !== 200) {
    panel.replaceChildren(h("h2", {}, "Revenue"), h("p", { class: "muted" }, r.json?.error?.message || `unavailable (${r.status})`));
    return;
  }
  const rows = (r.json.results || []).filter((x) => Object.keys(x.metrics[0] || {}).length > 0);
  const total = (x) => Object.values(x.metrics[0]).reduce((a, b) => a + b, 0);
  rows.sort((a, b) => total(b) - total(a));
  const money = (m) => Object.entries(m).map(([c, v]) => `${c} ${Number(v).toLocaleString("en", { minimumFractionDigits: 2, maximumFractionDigits: 2 })}`).join(", ");
  panel.replaceChildren(h("h2", {}, "Revenue"), h("table", {},
    h("thead", {}, h("tr", {}, h("th", { scope: "col" }, "Event"), h("th", { scope: "col", class: "num" }, "Revenue"), h("th", { scope: "col", class: "num" }, "Events"))),
    h("tbody", {}, rows.length === 0
      ? h("tr", {}, h("td", { colspan: 3, class: "muted" }, "No revenue"))
      : rows.slice(0, 10).map((x) => h("tr", {},
          h("td", {}, String(x.dimensions[0])),
          h("td", { class: "num" }, money(x.metrics[0])),
          h("td", { class: "num" }, fmt("events", x.metrics[1])))))));
}

// Every metric; where the engine cannot answer them all under the filters (visit
// metrics under an event filter), the ones it can.
async function totalsQuery(range) {
  const all = await query({ metrics: METRICS.map(([m]) => m) }, range);
  if (all.status !== 400) return { ...all, metrics: METRICS.map(([m]) => m) };
  const some = ["visitors", "pageviews"];
  return { ...(await query({ metrics: some }, range)), metrics: some };
}

function renderTotals(t, before) {
  const row = (t.json && t.json.results && t.json.results[0]) || { metrics: [] };
  const old = before && before.json && before.json.results && before.json.results[0];
  const what = state.compare === "year" ? "the year before" : "the previous period";
  document.getElementById("cards").replaceChildren(
    ...METRICS.map(([m, label]) => {
      const i = t.metrics.indexOf(m);
      const j = before ? before.metrics.indexOf(m) : -1;
      let delta = null;
      if (i >= 0 && j >= 0 && old) {
        const [now, then] = [Number(row.metrics[i]), Number(old.metrics[j])];
        const text = then === 0 ? (now === 0 ? "no change" : "new") : `${now >= then ? "▲" : "▼"} ${Math.abs(Math.round(((now - then) / then) * 100))}%`;
        delta = h("div", { class: "delta", "data-before": String(old.metrics[j]) }, `${text} vs ${what} (${fmt(m, old.metrics[j])})`);
      }
      return h("div", { class: "card", "data-metric": m },
        h("button", {
          class: "label", "aria-pressed": String(state.metric === m), title: `Chart ${label.toLowerCase()}`,
          onclick: () => { state.metric = m; writeHash(); renderTotals(t, before); load(); },
        }, label),
        h("div", { class: "value", title: i < 0 ? "Not available with these filters" : null }, i < 0 ? "–" : fmt(m, row.metrics[i])),
        delta);
    }),
  );
}

function renderChart(r) {
  const label = METRICS.find(([m]) => m === state.metric)[1];
  if (r.status !== 200) {
    document.getElementById("chart").replaceChildren(h("h2", {}, label), h("p", { class: "muted" }, r.json?.error?.message || "unavailable"));
    return;
  }
  const rows = r.json.results || [];
  const max = Math.max(1e-9, ...rows.map((r) => r.metrics[0]));
  const w = 1000, hgt = 180, bw = rows.length ? w / rows.length : w;
  const ns = "http://www.w3.org/2000/svg";
  const svg = document.createElementNS(ns, "svg");
  svg.setAttribute("viewBox", `0 0 ${w} ${hgt}`);
  svg.setAttribute("preserveAspectRatio", "none");
  svg.setAttribute("role", "img");
  svg.setAttribute("aria-label", `${label} per ${timeDimension().slice(5)}: ` + rows.map((r) => `${r.dimensions[0]} ${fmt(state.metric, r.metrics[0])}`).join(", "));
  rows.forEach((r, i) => {
    const rect = document.createElementNS(ns, "rect");
    const bh = (r.metrics[0] / max) * (hgt - 4);
    rect.setAttribute("x", i * bw + bw * 0.1);
    rect.setAttribute("width", bw * 0.8);
    rect.setAttribute("y", hgt - bh);
    rect.setAttribute("height", bh);
    const t = document.createElementNS(ns, "title");
    t.textContent = `${r.dimensions[0]}: ${fmt(state.metric, r.metrics[0])} (${label.toLowerCase()})`;
    rect.append(t);
    svg.append(rect);
  });
  // The first, middle and last periods under the bars, and the scale's top.
  const tick = (r) => {
    const d = String(r.dimensions[0]);
    const grain = timeDimension().slice(5);
    return grain === "hour" ? d.slice(5, 16) : grain === "month" ? d.slice(0, 7) : grain === "week" ? `week of ${d}` : d;
  };
  const picks = rows.length > 2 ? [rows[0], rows[Math.floor(rows.length / 2)], rows[rows.length - 1]] : rows;
  const axis = h("div", { class: "axis", "aria-hidden": "true" }, picks.map((r) => h("span", {}, tick(r))));
  const top = h("div", { class: "muted scale", "aria-hidden": "true" }, rows.length ? `top: ${fmt(state.metric, Math.max(...rows.map((r) => r.metrics[0])))}` : "no data");
  document.getElementById("chart").replaceChildren(h("div", { class: "head" }, h("h2", {}, `${label} by ${timeDimension().slice(5)}`), top), svg, axis);
}

function csv(dim, rows) {
  const q = (s) => `"${String(s).replaceAll('"', '""')}"`;
  const lines = [[dim, "visitors", "pageviews"].map(q).join(",")];
  for (const r of rows) lines.push([q(r.dimensions[0]), r.metrics[0], r.metrics[1]].join(","));
  return lines.join("\r\n") + "\r\n";
}

function renderPanel(dim, title, r, id) {
  const panel = document.getElementById(id || `panel-${dim.replace(":", "-")}`);
  if (!panel) return;
  if (r.status !== 200) {
    // The engine says why (e.g. a breakdown it cannot combine with the filters).
    const why = (r.json && r.json.error && r.json.error.message) || `unavailable (${r.status})`;
    panel.replaceChildren(h("h2", {}, title), h("p", { class: "muted" }, why));
    return;
  }
  const rows = (r.json && r.json.results) || [];
  const download = h("button", {
    "aria-label": `Export ${title} as CSV`,
    onclick: () => {
      const a = h("a", {
        href: URL.createObjectURL(new Blob([csv(dim, rows)], { type: "text/csv" })),
        download: `${state.site}-${dim.replace(":", "-")}-${state.range}.csv`,
      });
      document.body.append(a);
      a.click();
      a.remove();
    },
  }, "CSV");
  const table = h("table", {},
    h("thead", {}, h("tr", {}, h("th", { scope: "col" }, title), h("th", { scope: "col", class: "num" }, "Visitors"))),
    h("tbody", {}, rows.length === 0
      ? h("tr", {}, h("td", { colspan: 2, class: "muted" }, "No data"))
      : rows.map((r) => h("tr", {},
          h("td", {}, h("button", {
            title: `Filter by ${r.dimensions[0] === "" ? "(none)" : r.dimensions[0]}`,
            onclick: () => { state.filters.push([dim, String(r.dimensions[0])]); writeHash(); render(); load(); },
          }, r.dimensions[0] === "" ? "(none)" : String(r.dimensions[0]))),
          h("td", { class: "num" }, fmt("visitors", r.metrics[0]))))),
  );
  // Answers from raw events (what the rollups cannot combine) lag by minutes: say so.
  const lag = r.json?.meta?.engine === "columnar"
    ? h("p", { class: "muted" }, "From raw events: the last few minutes may be missing.")
    : "";
  panel.replaceChildren(h("div", { class: "head" }, h("h2", {}, title), download), table, lag);
}

// Invitations to the account of the current property, for its owners. Footfall sends
// no mail: the link is shown once, for the owner to pass on.
function usersSection() {
  const account = state.accounts.find((a) => a.properties.some((p) => p.tracking_id === state.site));
  const url = `/api/ui/accounts/${encodeURIComponent(account.id)}/invites`;
  const list = h("ul", { id: "invites-list" });
  const fresh = h("p", { id: "new-invite", role: "status" });
  const email = h("input", { type: "email", id: "invite-email", required: true, autocomplete: "off" });
  const role = h("select", { id: "invite-role" }, ROLES.map(([v, label]) => h("option", { value: v }, label)));
  const refresh = async () => {
    const r = await api("GET", url);
    const invites = (r.json && r.json.invites) || [];
    list.replaceChildren(...invites.map((i) => h("li", {},
      `${i.email} as ${i.role} (until ${new Date(i.expires_at).toISOString().slice(0, 10)}) `,
      h("button", { "aria-label": `Withdraw the invitation of ${i.email}`, onclick: async () => {
        await api("DELETE", `${url}/${encodeURIComponent(i.id)}`);
        fresh.textContent = `The invitation of ${i.email} was withdrawn.`;
        refresh();
      } }, "Withdraw"))));
  };
  return h("details", { class: "panel", id: "users", ontoggle: (e) => { if (e.target.open) refresh(); } },
    h("summary", {}, `Users of ${account.name}`),
    h("form", { class: "inline", onsubmit: async (e) => {
      e.preventDefault();
      const r = await api("POST", url, { email: email.value, role: role.value });
      if (r.status === 201) {
        fresh.replaceChildren(`Send this link to ${r.json.invite.email} (shown once, valid 7 days): `, h("code", {}, location.origin + r.json.path));
        email.value = "";
        refresh();
      } else {
        fresh.textContent = r.json?.error?.message || `failed (${r.status})`;
      }
    } },
      h("label", { for: "invite-email" }, "E-mail address", email),
      h("label", { for: "invite-role" }, "Role", role),
      h("button", { type: "submit" }, "Invite")),
    fresh,
    h("h3", {}, "Pending invitations"),
    list);
}

// Read-only links of the property, for admins and owners.
function sharesSection() {
  const list = h("ul", { id: "shares-list" });
  const fresh = h("p", { id: "new-share", role: "status" });
  const url = `/api/ui/properties/${encodeURIComponent(state.site)}/shares`;
  const refresh = async () => {
    const r = await api("GET", url);
    const links = (r.json && r.json.shares) || [];
    list.replaceChildren(...links.map((l) => h("li", {},
      `${l.id} (${l.created_at}) `,
      h("button", { "aria-label": `Revoke link ${l.id}`, onclick: async () => {
        await api("DELETE", `${url}/${encodeURIComponent(l.id)}`);
        fresh.textContent = `Link ${l.id} revoked.`;
        refresh();
      } }, "Revoke"))));
  };
  return h("details", { class: "panel", id: "shares", ontoggle: (e) => { if (e.target.open) refresh(); } },
    h("summary", {}, "Shared links"),
    h("button", { onclick: async () => {
      const r = await api("POST", url);
      if (r.status === 201) {
        const link = location.origin + r.json.path;
        fresh.replaceChildren("Anyone with this link sees this property, read-only (shown once): ", h("code", {}, link));
        refresh();
      } else {
        fresh.textContent = r.json?.error?.message || `failed (${r.status})`;
      }
    } }, "New read-only link"),
    fresh,
    list);
}

window.addEventListener("hashchange", () => { if (state.csrf || state.shared) { readHash(); render(); load(); } });
boot();
