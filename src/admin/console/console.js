// hooktap console: every page of the browser console (docs/console.md).
//
// One file, no build step, no library: pages are hash routes (#/webhooks/<id>), each a function
// that fetches from the admin API with the token and builds DOM nodes (text is always set as
// text, never parsed as markup). Charts are SVG drawn here. The token lives in sessionStorage
// only. Endpoints this hooktap does not serve (read from /openapi.json at sign-in) turn into a
// notice on the page that needs them, not an error.
"use strict";
(() => {
  const TOKEN_KEY = "hooktap-token";
  const SVG_NS = "http://www.w3.org/2000/svg";
  let token = sessionStorage.getItem(TOKEN_KEY) || "";
  /** Which optional endpoints the API serves: filled from its OpenAPI document. */
  let features = {};
  /** The view of the page shown now: each render builds a new one, so a render that a newer
   * one overtook (both wait on the API) fills a view no longer in the document. */
  let currentView = null;
  let focusOnRender = false;

  // ---- DOM helpers -------------------------------------------------------------------------

  /** An element with attributes (`class`, `text`, `onclick`, `dataset`, others as is) and children. */
  function h(tag, props, ...kids) {
    const e = document.createElement(tag);
    setProps(e, props);
    append(e, kids);
    return e;
  }

  function setProps(e, props) {
    for (const [k, v] of Object.entries(props || {})) {
      if (v === undefined || v === null || v === false) continue;
      if (k === "class") e.setAttribute("class", v);
      else if (k === "text") e.textContent = v;
      else if (k.startsWith("on")) e.addEventListener(k.slice(2), v);
      else if (k === "dataset") Object.assign(e.dataset, v);
      else e.setAttribute(k, v === true ? "" : String(v));
    }
  }

  function append(e, kids) {
    for (const kid of kids.flat(Infinity)) {
      if (kid === null || kid === undefined || kid === false) continue;
      e.append(kid instanceof Node ? kid : document.createTextNode(String(kid)));
    }
  }

  /** An SVG element. */
  function s(tag, attrs, ...kids) {
    const e = document.createElementNS(SVG_NS, tag);
    for (const [k, v] of Object.entries(attrs || {})) {
      if (v !== undefined && v !== null) e.setAttribute(k, String(v));
    }
    append(e, kids);
    return e;
  }

  const $ = (sel, root) => (root || document).querySelector(sel);
  let uid = 0;
  const nextId = (p) => `${p}-${++uid}`;

  function when(t) {
    if (!t) return "—";
    const d = new Date(t);
    return isNaN(d) ? String(t) : d.toLocaleString();
  }

  const short = (id) => String(id).slice(0, 8) + "…" + String(id).slice(-4);
  const ms = (v) => (v === null || v === undefined ? "—" : v < 1000 ? `${Math.round(v)} ms` : `${(v / 1000).toFixed(v < 10000 ? 1 : 0)} s`);
  const json = (v) => JSON.stringify(v, null, 2);

  function badge(status) {
    return h("span", { class: `badge st-${status}`, text: String(status).replace("_", " ") });
  }

  function notice(text, bad) {
    return h("p", { class: bad ? "notice bad" : "notice", role: bad ? "alert" : null }, text);
  }

  function flash(text, bad) {
    const box = $("#flash");
    const item = h("div", { class: bad ? "bad" : null, text });
    box.append(item);
    setTimeout(() => item.remove(), bad ? 9000 : 5000);
  }

  function table(headers, rows, cls) {
    return h("div", { class: "table-wrap" },
      h("table", { class: cls },
        h("thead", {}, h("tr", {}, headers.map((x) => h("th", { scope: "col", class: /^(#|Events|Pending|Succeeded|Failed|p99|Attempts|Delivered|Repeats)/.test(x) ? "num" : null }, x)))),
        h("tbody", {}, rows)));
  }

  function kv(pairs) {
    return h("dl", { class: "kv" }, pairs.filter(Boolean).map(([k, v]) => [h("dt", {}, k), h("dd", {}, v)]));
  }

  function card(title, ...kids) {
    const id = nextId("card");
    return h("section", { class: "card", "aria-labelledby": id }, h("h2", { id }, title), kids);
  }

  // ---- the API -----------------------------------------------------------------------------

  class ApiError extends Error {
    constructor(status, body) {
      const b = body && typeof body === "object" ? body : {};
      super(b.message || (typeof body === "string" && body) || `HTTP ${status}`);
      this.status = status;
      this.code = b.code;
      this.field = b.field;
      // axum answers a route it does not have with an empty 404.
      this.missing = status === 404 && !body;
    }
  }

  async function api(method, path, body) {
    let r;
    try {
      r = await fetch(path, {
        method,
        headers: Object.assign({ Authorization: "Bearer " + token },
          body !== undefined ? { "Content-Type": "application/json" } : {}),
        body: body !== undefined ? JSON.stringify(body) : undefined,
      });
    } catch (e) {
      throw new ApiError(0, { code: "network", message: "hooktap did not answer: " + e.message });
    }
    const text = await r.text();
    let data = null;
    if (text) { try { data = JSON.parse(text); } catch { data = text; } }
    if (r.status === 401) {
      signOut("The token was not accepted.");
      throw new ApiError(401, data);
    }
    if (!r.ok) throw new ApiError(r.status, data);
    return { data, total: Number(r.headers.get("x-total-count") || NaN) };
  }

  const get = async (path) => (await api("GET", path)).data;

  /** What the API serves beyond the basics, so pages can say what is missing. */
  async function loadFeatures() {
    try {
      const doc = await get("/openapi.json");
      const paths = doc.paths || {};
      const events = (paths["/events"] || {}).get || {};
      features = {
        overview: !!paths["/overview"],
        stats: !!paths["/webhooks/{id}/stats"],
        eventDeliveries: !!paths["/events/{id}/deliveries"],
        tryRule: !!paths["/rules/try"],
        payloadSearch: (events.parameters || []).some((p) => p.name === "q"),
      };
    } catch {
      features = {};
    }
  }

  function missing(what, endpoint) {
    return notice(`${what} needs ${endpoint}, which this hooktap does not serve (an older version?).`);
  }

  // ---- forms: fields, and API errors beside the field they name ---------------------------

  /** A labelled input: spec {name, label, type, options, hint, value, placeholder, rows}. */
  function field(prefix, spec) {
    const id = `${prefix}-${spec.name.replace(/\W/g, "-")}`;
    const hint = spec.hint ? h("p", { class: "hint", id: id + "-hint" }, spec.hint) : null;
    const error = h("p", { class: "error", id: id + "-error", "aria-live": "polite" });
    const described = [hint && id + "-hint", id + "-error"].filter(Boolean).join(" ");
    const common = { id, name: spec.name, "aria-describedby": described, placeholder: spec.placeholder, autocomplete: spec.autocomplete || "off" };
    let input;
    if (spec.type === "select") {
      input = h("select", common, spec.options.map(([v, label]) => h("option", { value: v, text: label })));
      input.value = spec.value ?? "";
    } else if (spec.type === "textarea") {
      input = h("textarea", Object.assign({ rows: spec.rows || 3, spellcheck: "false" }, common));
      input.value = spec.value ?? "";
    } else if (spec.type === "checkbox") {
      input = h("input", Object.assign({ type: "checkbox" }, common));
      input.checked = !!spec.value;
      return h("div", { class: "field" }, h("span", { class: "check" }, input, h("label", { for: id }, spec.label)), hint, error);
    } else {
      input = h("input", Object.assign({ type: spec.type || "text", inputmode: spec.inputmode }, common));
      input.value = spec.value ?? "";
    }
    return h("div", { class: "field" }, h("label", { for: id }, spec.label), input, hint, error);
  }

  function clearErrors(form) {
    for (const e of form.querySelectorAll(".field .error")) e.textContent = "";
    for (const e of form.querySelectorAll("[aria-invalid]")) e.removeAttribute("aria-invalid");
    const top = $(".form-error", form);
    if (top) top.textContent = "";
  }

  /** Shows `message` beside the input named `name` (or its aliases); else above the buttons. */
  function fieldError(form, names, message) {
    for (const name of [].concat(names)) {
      if (!name) continue;
      const input = form.elements.namedItem(name);
      if (input && input.id) {
        input.setAttribute("aria-invalid", "true");
        const err = document.getElementById(input.id + "-error");
        if (err) err.textContent = message;
        input.focus();
        return;
      }
    }
    const top = $(".form-error", form);
    if (top) top.textContent = message;
  }

  function formFoot(submitLabel, extra) {
    return h("div", { class: "form-foot" },
      h("button", { type: "submit", class: "primary" }, submitLabel), extra,
      h("p", { class: "error form-error", role: "alert" }));
  }

  /** A modal dialog: focus moves in, Escape closes, focus returns to what opened it. */
  function dialog(title, build) {
    const opener = document.activeElement;
    const id = nextId("dialog");
    const d = h("dialog", { "aria-labelledby": id });
    const close = () => d.close();
    d.append(build(h("h2", { id }, title), close));
    d.addEventListener("close", () => {
      d.remove();
      if (opener && document.contains(opener)) opener.focus();
    });
    document.body.append(d);
    d.showModal();
    return d;
  }

  function confirmDialog(title, text, yesLabel) {
    return new Promise((resolve) => {
      let answer = false;
      const d = dialog(title, (heading, close) => h("div", {}, heading, h("p", {}, text),
        h("div", { class: "form-foot" },
          h("button", { type: "button", class: "danger primary", onclick: () => { answer = true; close(); } }, yesLabel),
          h("button", { type: "button", autofocus: true, onclick: close }, "Cancel"))));
      d.addEventListener("close", () => resolve(answer));
    });
  }

  // ---- sign in -----------------------------------------------------------------------------

  function signOut(message) {
    leave(currentView);
    sessionStorage.removeItem(TOKEN_KEY);
    token = "";
    $("#main").hidden = true;
    $("#nav").hidden = true;
    $("#sign-out").hidden = true;
    $("#login").hidden = false;
    $("#login-error").textContent = message || "";
    $("#token").value = "";
  }

  async function start() {
    try {
      await api("GET", "/webhooks/count");
    } catch (e) {
      if (e.status !== 401) $("#login-error").textContent = e.message;
      return;
    }
    sessionStorage.setItem(TOKEN_KEY, token);
    $("#login").hidden = true;
    $("#main").hidden = false;
    $("#nav").hidden = false;
    $("#sign-out").hidden = false;
    $("#who").textContent = location.host;
    await loadFeatures();
    if (!location.hash || location.hash === "#") location.hash = "#/overview";
    else render();
  }

  // ---- routing -----------------------------------------------------------------------------

  const routes = [
    [/^\/overview$/, "overview", overviewPage],
    [/^\/webhooks$/, "webhooks", webhooksPage],
    [/^\/webhooks\/([^/]+)$/, "webhooks", webhookPage],
    [/^\/webhooks\/([^/]+)\/deliveries\/([^/]+)$/, "webhooks", deliveryPage],
    [/^\/events$/, "events", eventsPage],
    [/^\/events\/([^/]+)$/, "events", eventPage],
    [/^\/rules$/, "rules", rulesPage],
    [/^\/live$/, "live", livePage],
  ];

  function parseHash() {
    const raw = location.hash.replace(/^#/, "") || "/overview";
    const [path, query] = raw.split("?");
    return { path, query: new URLSearchParams(query || "") };
  }

  function go(path, query) {
    const q = query ? new URLSearchParams(Object.entries(query).filter(([, v]) => v !== "" && v != null)).toString() : "";
    location.hash = "#" + path + (q ? "?" + q : "");
  }

  /** Stops what a view runs in the background (timers, the live stream). */
  function leave(view) {
    if (!view) return;
    for (const stop of view.stops || []) stop();
    view.stops = [];
  }

  /** Runs `stop` when `view` is left, or now if it already was. */
  function onLeave(view, stop) {
    if (view !== currentView) return stop();
    (view.stops = view.stops || []).push(stop);
  }

  /**
   * Shows the page the hash names. When its first data is drawn, `#main` gets
   * `data-ready` set to the hash it shows (the browser test waits for it; a hash change alone
   * returns before the page's requests do).
   */
  async function render() {
    if (!token && $("#main").hidden) return;
    const shown = location.hash;
    delete $("#main").dataset.ready;
    leave(currentView);
    const { path, query } = parseHash();
    const main = h("div", { class: "view" });
    currentView = main;
    $("#main").replaceChildren(main);
    const route = routes.find(([re]) => re.test(path));
    for (const a of document.querySelectorAll("#nav a")) {
      if (route && a.dataset.page === route[1]) a.setAttribute("aria-current", "page");
      else a.removeAttribute("aria-current");
    }
    if (!route) {
      main.append(h("h1", { tabindex: "-1" }, "Not found"), notice(`No page at #${path}.`));
      $("#main").dataset.ready = shown;
      return;
    }
    const args = path.match(route[0]).slice(1).map(decodeURIComponent);
    try {
      await route[2](main, args, query);
    } catch (e) {
      if (e.status === 401) return;
      main.append(notice(e.missing ? "This hooktap does not serve what this page needs." : e.message, true));
    }
    if (focusOnRender && main === currentView) {
      const heading = $("h1", main);
      if (heading) { heading.setAttribute("tabindex", "-1"); heading.focus(); }
    }
    focusOnRender = false;
    if (main === currentView) $("#main").dataset.ready = shown;
  }

  function pageHead(title, ...rest) {
    document.title = `${title} · hooktap`;
    return h("div", { class: "page-head" }, h("h1", { tabindex: "-1" }, title), rest);
  }

  /** One segment of an API path: ids come from the address bar too, so they are encoded. */
  const seg = (x) => encodeURIComponent(String(x));

  /**
   * Replaces what `el` shows, unless keyboard focus is inside it: a periodic refresh would
   * remove the focused element and throw focus back to the page's start. Such a region is
   * refreshed at the next tick after focus leaves it.
   */
  function swap(el, ...children) {
    if (el.contains(document.activeElement) && document.activeElement !== document.body) return;
    el.replaceChildren(...children);
  }

  /**
   * Runs `f` every `msInterval` while `view` is shown (not while the tab is hidden): the next
   * run is timed from the end of the previous one, so a slow answer never has a second request
   * stacked behind it.
   */
  function every(view, msInterval, f) {
    let t = null, stopped = false;
    const next = () => { if (!stopped) t = setTimeout(tick, msInterval); };
    const tick = async () => {
      if (!document.hidden && view === currentView) { try { await f(); } catch (_) { /* shown by f */ } }
      next();
    };
    onLeave(view, () => { stopped = true; clearTimeout(t); });
    next();
  }

  // ---- charts ------------------------------------------------------------------------------

  const CHART_W = 640, CHART_H = 170, L = 44, R = 8, T = 8, B = 22;

  function axisTimes(buckets) {
    if (!buckets.length) return [];
    const fmt = (t) => new Date(t).toLocaleTimeString([], { hour: "2-digit", minute: "2-digit" });
    const last = buckets.length - 1;
    return [[0, fmt(buckets[0].start)], [Math.floor(last / 2), fmt(buckets[Math.floor(last / 2)].start)], [last, fmt(buckets[last].start)]];
  }

  /** The smallest of 2, 4, 10, 20, 40, ... at or above `n`: a scale whose halves are whole. */
  function niceMax(n) {
    let step = 1;
    for (;;) {
      for (const m of [2, 4, 10]) if (m * step >= n) return m * step;
      step *= 10;
    }
  }

  function frame(svg, max, label, buckets) {
    const plotH = CHART_H - T - B;
    for (const f of [0, 0.5, 1]) {
      const y = T + plotH * (1 - f);
      svg.append(s("line", { class: "grid", x1: L, x2: CHART_W - R, y1: y, y2: y }));
      svg.append(s("text", { class: "axis", x: L - 4, y: y + 4, "text-anchor": "end" }, label(max * f)));
    }
    const bw = (CHART_W - L - R) / Math.max(buckets.length, 1);
    for (const [i, label] of axisTimes(buckets)) {
      const anchor = i === 0 ? "start" : i === buckets.length - 1 ? "end" : "middle";
      svg.append(s("text", { class: "axis", x: L + i * bw + (anchor === "end" ? bw : 0), y: CHART_H - 6, "text-anchor": anchor }, label));
    }
    return { plotH, bw };
  }

  /** Succeeded (bottom) and failed (top) attempts per bucket, one bar each. */
  function deliveriesChart(buckets, label) {
    const max = niceMax(Math.max(1, ...buckets.map((b) => (b.succeeded || 0) + (b.failed || 0))));
    const svg = s("svg", { class: "chart chart-deliveries", viewBox: `0 0 ${CHART_W} ${CHART_H}`, role: "img", "aria-label": label });
    const { plotH, bw } = frame(svg, max, (v) => String(Math.round(v)), buckets);
    buckets.forEach((b, i) => {
      const ok = b.succeeded || 0, fail = b.failed || 0;
      if (!ok && !fail) return;
      const x = L + i * bw, w = Math.max(bw * 0.8, 2);
      const hOk = (ok / max) * plotH, hFail = (fail / max) * plotH;
      const tip = `${when(b.start)}: ${ok} succeeded, ${fail} failed`;
      if (ok) svg.append(s("rect", { class: "bar-ok", x, width: w, y: T + plotH - hOk, height: Math.max(hOk, 1) }, s("title", {}, tip)));
      if (fail) svg.append(s("rect", { class: "bar-fail", x, width: w, y: T + plotH - hOk - hFail, height: Math.max(hFail, 1) }, s("title", {}, tip)));
    });
    return svg;
  }

  /** Two series (p50, p99) of milliseconds per bucket; a gap where a bucket has none. */
  function linesChart(buckets, keys, label, cls) {
    const values = buckets.flatMap((b) => keys.map((k) => b[k])).filter((v) => v !== null && v !== undefined);
    const max = niceMax(Math.max(1, ...values));
    const svg = s("svg", { class: `chart ${cls}`, viewBox: `0 0 ${CHART_W} ${CHART_H}`, role: "img", "aria-label": label });
    const { plotH, bw } = frame(svg, max, ms, buckets);
    // A dot per point while there are few; beyond that a line, and a dot only for a lone minute.
    const dots = values.length <= 240;
    keys.forEach((k, n) => {
      const series = ["p50", "p99"][n];
      let d = "", open = false;
      buckets.forEach((b, i) => {
        const v = b[k];
        if (v === null || v === undefined) { open = false; return; }
        const x = L + i * bw + bw / 2, y = T + plotH * (1 - v / max);
        d += `${open ? "L" : "M"}${x.toFixed(1)},${y.toFixed(1)} `;
        open = true;
        const has = (j) => buckets[j] && buckets[j][k] !== null && buckets[j][k] !== undefined;
        if (dots || (!has(i - 1) && !has(i + 1))) svg.append(s("circle", { class: `dot-${series}`, cx: x, cy: y, r: 3 }, s("title", {}, `${when(b.start)}: ${series} ${ms(v)}`)));
      });
      if (d) svg.prepend(s("path", { class: `line-${series}`, d }));
    });
    if (!values.length) svg.append(s("text", { class: "axis", x: CHART_W / 2, y: CHART_H / 2, "text-anchor": "middle" }, "no attempts in this window"));
    return svg;
  }

  function sparkline(ok, fail, label) {
    const n = Math.max(ok.length, fail.length, 1);
    const max = Math.max(1, ...ok.map((v, i) => v + (fail[i] || 0)));
    const svg = s("svg", { class: "sparkline", viewBox: `0 0 ${n * 2} 28`, preserveAspectRatio: "none", role: "img", "aria-label": label },
      s("line", { class: "grid", x1: 0, x2: n * 2, y1: 27.5, y2: 27.5 }));
    for (let i = 0; i < n; i++) {
      const a = ok[i] || 0, b = fail[i] || 0;
      if (a) svg.append(s("rect", { class: "bar-ok", x: i * 2, width: 1.6, y: 28 - (a / max) * 28, height: (a / max) * 28 }));
      if (b) svg.append(s("rect", { class: "bar-fail", x: i * 2, width: 1.6, y: 28 - ((a + b) / max) * 28, height: (b / max) * 28 }));
    }
    return svg;
  }

  function legend(items) {
    return h("div", { class: "legend" }, items.map(([cls, text]) => h("span", {}, h("span", { class: `sw ${cls}`, "aria-hidden": "true" }), text)));
  }

  // ---- overview ----------------------------------------------------------------------------

  async function overviewPage(main) {
    main.append(pageHead("Overview", h("span", { class: "muted" }, "Last hour, per minute; refreshed every 10 s")));
    const body = h("div", { class: "grid-gap" });
    main.append(body);
    const draw = async () => {
      if (!features.overview) {
        const { data } = await api("GET", "/webhooks?per_page=100");
        swap(body, missing("The health overview (sparklines, backlog)", "GET /overview"),
          card("Webhooks", webhookTable(data)));
        return;
      }
      const o = await get("/overview");
      const store = o.store || {};
      const storePairs = [
        ["Backend", store.backend === "postgres" ? "PostgreSQL (shared)" : store.backend],
        ["Taking events", store.ready === undefined ? "—" : store.ready ? "yes" : "no: waiting in pending/"],
        ["Pending deliveries", String(store.pending ?? "—")],
        store.journal_backlog !== null && store.journal_backlog !== undefined && ["Journal backlog", `${store.journal_backlog} events not yet in PostgreSQL`],
        store.journal_connected !== null && store.journal_connected !== undefined && ["PostgreSQL", store.journal_connected ? "connected" : "not answering"],
        ["Failed appends", String(store.failed_appends ?? "—")],
      ];
      const rows = (o.webhooks || []).map((w) => {
        const spark = w.sparkline || { succeeded: [], failed: [] };
        return h("tr", { dataset: { id: w.id, name: w.name } },
          h("td", {}, h("a", { href: `#/webhooks/${w.id}` }, w.name), h("div", { class: "muted" }, w.url)),
          h("td", {}, badge(w.status)),
          h("td", {}, sparkline(spark.succeeded || [], spark.failed || [], `${w.name}: ${sum(spark.succeeded)} succeeded, ${sum(spark.failed)} failed in the last hour`)),
          h("td", { class: "num ok" }, String(w.succeeded ?? "—")),
          h("td", { class: "num fail" }, String(w.failed ?? "—")),
          h("td", { class: "num" }, ms(w.p99_ms)),
          h("td", { class: "num" }, String(w.pending ?? "—")),
          h("td", {}, w.last_error ? h("span", { class: "fail" }, lastError(w.last_error, w.id)) : "—"));
      });
      swap(body,
        h("div", { class: "grid-3" },
          card("Store", kv(storePairs)),
          card("Pending deliveries", h("p", { class: "stat" }, String(store.pending ?? "—")), h("p", { class: "muted" }, "waiting to be sent, all webhooks")),
          card("Last hour", h("p", { class: "stat" },
            h("span", { class: "ok" }, String(sum((o.webhooks || []).map((w) => w.succeeded || 0)))), " / ",
            h("span", { class: "fail" }, String(sum((o.webhooks || []).map((w) => w.failed || 0))))), h("p", { class: "muted" }, "attempts succeeded / failed"))),
        card("Webhooks' health",
          rows.length ? table(["Webhook", "Status", "Last hour", "Succeeded", "Failed", "p99", "Pending", "Last error"], rows, "overview")
            : h("p", {}, "No webhooks yet. ", h("a", { href: "#/webhooks" }, "Add one"), ".")));
    };
    await draw();
    every(main, 10000, draw);
  }

  const sum = (xs) => (xs || []).reduce((a, b) => a + (b || 0), 0);
  /** The last failed attempt, linked to its delivery. */
  function lastError(e, webhookId) {
    const text = `${e.summary} (${when(e.at)})`;
    return e.delivery_id ? h("a", { href: `#/webhooks/${webhookId}/deliveries/${e.delivery_id}`, class: "fail" }, text) : text;
  }

  // ---- webhooks ----------------------------------------------------------------------------

  function webhookTable(list) {
    return table(["Name", "URL", "Topics", "Status", "Delivered", "Failed", "Last delivery"],
      list.map((w) => h("tr", { dataset: { id: w.id, name: w.name } },
        h("td", {}, h("a", { href: `#/webhooks/${w.id}` }, w.name)),
        h("td", { class: "mono" }, w.url),
        h("td", {}, w.topics.join(", ")),
        h("td", {}, badge(w.status)),
        h("td", { class: "num" }, String(w.counters.delivered)),
        h("td", { class: "num" }, String(w.counters.failed)),
        h("td", {}, when(w.counters.last_delivered_at)))), "webhooks");
  }

  async function webhooksPage(main) {
    const add = h("button", { id: "add-webhook", type: "button", class: "primary", onclick: () => webhookForm(null) }, "Add webhook");
    main.append(pageHead("Webhooks", h("div", { class: "actions" }, add)));
    const { data, total } = await api("GET", "/webhooks?per_page=100");
    main.append(card(`${data.length} webhook${data.length === 1 ? "" : "s"}`,
      data.length ? webhookTable(data) : h("p", {}, "None yet: press Add webhook."),
      total > data.length ? h("p", { class: "muted" }, `Showing the first ${data.length} of ${total}.`) : null));
  }

  const DEFAULT_RETRY = "5s,30s,1m,5m,20m,1h,4h,6h,12h,12h,24h";

  /** Every setting of a webhook input (src/webhook/input.rs), grouped, with its default. */
  function webhookFields(w) {
    const v = (x, d) => (x === null || x === undefined ? d : x);
    const batch = w && w.mode === "batch";
    return [
      ["Basics", [
        { name: "name", label: "Name", hint: "Unique. Default: “Webhook created on <date>”.", value: v(w && w.name, "") },
        { name: "url", label: "URL", inputmode: "url", placeholder: "https://receiver.example/hooks", hint: "http:// or https://; user:password@ is sent as basic auth and masked when shown.", value: v(w && w.url, "") },
        { name: "secret", label: "Secret", type: "password", autocomplete: "off", hint: w ? "Leave empty to keep the current one. Never shown after saving." : "Signs every request (HMAC-SHA256). Never shown after saving.", value: "" },
        { name: "topics", label: "Topics", placeholder: "order.*, download.tickets", hint: "Comma-separated globs over topics, e.g. order.* or *.", value: w ? w.topics.join(", ") : "" },
        { name: "status", label: "Status", type: "select", options: [["active", "active"], ["paused", "paused"], ["disabled", "disabled"]], hint: "Default active: the URL is pinged first and must answer 2xx.", value: v(w && w.status, "active") },
      ]],
      ["Retries and limits", [
        { name: "retry", label: "Retry schedule", hint: `Delays between attempts; bare numbers are minutes; empty for no retries. Default ${DEFAULT_RETRY}.`, value: w ? w.retry.join(",") : DEFAULT_RETRY },
        { name: "failure_threshold", label: "Failure threshold", inputmode: "numeric", hint: "Finally-failed deliveries in a row that disable it; 0 never. Default 5.", value: String(v(w && w.failure_threshold, 5)) },
        { name: "timeout", label: "Timeout", placeholder: "10s", hint: "Per request, e.g. 10s. Default: [delivery] timeout.", value: v(w && w.timeout, "") },
        { name: "concurrency", label: "Concurrency", inputmode: "numeric", hint: "Deliveries in flight at once. Default 8.", value: String(v(w && w.concurrency, 8)) },
        { name: "rate_limit", label: "Rate limit", placeholder: "50/s", hint: "50/s, 600/m or 10/h; empty for none (default).", value: v(w && w.rate_limit, "") },
        { name: "circuit_failures", label: "Circuit failures", inputmode: "numeric", hint: "Failed requests in a row that open the circuit; 0 never. Default 10.", value: String(v(w && w.circuit_failures, 10)) },
        { name: "circuit_cooldown", label: "Circuit cool-down", hint: "How long an open circuit waits for its probe. Default 30s.", value: v(w && w.circuit_cooldown, "30s") },
      ]],
      ["Signing and headers", [
        { name: "signature", label: "Signature profile", type: "select", options: [["hooktap", "hooktap"], ["standard", "standard (Standard Webhooks)"], ["mautic", "mautic"]], hint: "Default hooktap.", value: v(w && w.signature, "hooktap") },
        { name: "header_prefix", label: "Header prefix", hint: "Of the hooktap profile's headers. Default X-Hooktap-Webhook-.", value: v(w && w.header_prefix, "X-Hooktap-Webhook-") },
        { name: "headers", label: "Extra headers", type: "textarea", placeholder: "X-Team: crm", hint: "One “Name: value” a line, sent with every request. Default none.", value: w ? Object.entries(w.headers).map(([k, x]) => `${k}: ${x}`).join("\n") : "" },
        { name: "https_only", label: "HTTPS only", type: "select", options: [["", "as [delivery] https_only (default)"], ["true", "yes: refuse http://"], ["false", "no: allow http://"]], value: w && w.https_only !== null && w.https_only !== undefined ? String(w.https_only) : "" },
      ]],
      ["Mode and ordering", [
        { name: "mode", label: "Mode", type: "select", options: [["realtime", "realtime: one request per event"], ["batch", "batch: many events per request"]], hint: "Default realtime.", value: v(w && w.mode, "realtime") },
        { name: "batch_interval", label: "Batch interval", hint: "Batch mode: how long deliveries gather. Default 1m.", value: batch ? w.batch_interval : "1m" },
        { name: "batch_max", label: "Batch max", inputmode: "numeric", hint: "Batch mode: payloads per request at most. Default 100.", value: String(batch ? w.batch_max : 100) },
        { name: "batch_order", label: "Batch order", type: "select", options: [["chronological", "chronological"], ["reverse", "reverse"]], hint: "Batch mode. Default chronological.", value: batch ? w.batch_order : "chronological" },
        { name: "ordered", label: "Ordered: one delivery in flight, in event order", type: "checkbox", hint: "Default off.", value: !!(w && w.ordered) },
        { name: "ordering_key", label: "Ordering key", placeholder: "$.order_id", hint: "JSONPath: same key, strict order; other keys flow. Empty for none (default).", value: v(w && w.ordering_key, "") },
      ]],
      ["Filter and body", [
        { name: "filter", label: "Filter", type: "textarea", placeholder: '[{"path": "$.total", "gt": 100}]', hint: "JSON list of predicates over the payload (a rule's when). Empty for none (default).", value: w && w.filter.length ? json(w.filter) : "" },
        { name: "transform", label: "Transform", type: "textarea", placeholder: '{"id": "$.event_id", "order": "$.payload"}', hint: "JSON: the body's shape, fields as in a rule's payload. Empty: the payload as it is (default).", value: w && w.transform ? json(w.transform) : "" },
      ]],
    ];
  }

  const NUMBERS = new Set(["failure_threshold", "concurrency", "circuit_failures", "batch_max"]);
  const BATCH = new Set(["batch_interval", "batch_max", "batch_order"]);

  /** The input's value for field `name`, as the API reads it; throws [name, message] when it cannot be read. */
  function readField(form, name) {
    const el = form.elements.namedItem(name);
    if (el.type === "checkbox") return el.checked;
    const raw = el.value;
    if (name === "topics") return raw.split(/[\s,]+/).filter(Boolean);
    if (NUMBERS.has(name)) return /^\s*\d+\s*$/.test(raw) ? Number(raw) : raw;
    if (name === "https_only") return raw === "" ? null : raw === "true";
    if (name === "headers") {
      const out = {};
      for (const line of raw.split("\n").map((l) => l.trim()).filter(Boolean)) {
        const i = line.indexOf(":");
        if (i < 1) throw [name, `“${line}” is not “Name: value”`];
        out[line.slice(0, i).trim()] = line.slice(i + 1).trim();
      }
      return out;
    }
    if (name === "filter" || name === "transform") {
      if (!raw.trim()) return name === "filter" ? [] : {};
      try { return JSON.parse(raw); } catch (e) { throw [name, `not JSON: ${e.message}`]; }
    }
    return raw;
  }

  /** The create/edit form: a new webhook sends what differs from the defaults, an edit what changed. */
  function webhookForm(w, done) {
    const groups = webhookFields(w);
    const initial = {};
    dialog(w ? `Edit ${w.name}` : "Add webhook", (heading, close) => {
      const form = h("form", { class: "stack", novalidate: true, id: "webhook-form" }, heading,
        groups.map(([legend, specs]) => h("fieldset", {}, h("legend", {}, legend),
          h("div", { class: "fields" }, specs.map((spec) => field("wf", spec))))),
        formFoot(w ? "Save" : "Create webhook", h("button", { type: "button", onclick: close }, "Cancel")));
      for (const [, specs] of groups) for (const spec of specs) initial[spec.name] = readFieldSafe(form, spec.name);
      form.addEventListener("submit", async (ev) => {
        ev.preventDefault();
        clearErrors(form);
        const body = {};
        const batch = form.elements.namedItem("mode").value === "batch";
        try {
          for (const name of Object.keys(initial)) {
            const value = readField(form, name);
            const required = !w && ["name", "url", "secret", "topics"].includes(name);
            if (name === "secret" && value === "") continue;
            if (BATCH.has(name) && !batch) continue;
            if (required && (value === "" || (Array.isArray(value) && !value.length))) {
              if (name !== "name") body[name] = name === "topics" ? [] : value;
              continue;
            }
            if (!required && JSON.stringify(value) === JSON.stringify(initial[name])) continue;
            body[name] = value;
          }
        } catch (e) {
          if (Array.isArray(e)) return fieldError(form, e[0], e[1]);
          throw e;
        }
        const submit = $("button[type=submit]", form);
        submit.disabled = true;
        try {
          const saved = w ? (await api("PUT", `/webhooks/${seg(w.id)}`, body)).data : (await api("POST", "/webhooks", body)).data;
          form.elements.namedItem("secret").value = "";
          close();
          flash(w ? `Saved ${saved.name}.` : `Created ${saved.name}.`);
          if (done) done(saved); else go(`/webhooks/${saved.id}`);
        } catch (e) {
          const aliases = { conflict: "name", ping_failed: "url" };
          fieldError(form, [e.field, aliases[e.code]], e.message);
        } finally {
          submit.disabled = false;
        }
      });
      return form;
    });
  }

  function readFieldSafe(form, name) {
    try { return readField(form, name); } catch { return null; }
  }

  /** What a webhook does beyond where and what: circuit, ordering, filter, rate and headers. */
  function settingsSummary(w) {
    const parts = ["circuit " + w.circuit.replace("_", "-") +
      (w.circuit_open_until ? " until " + new Date(w.circuit_open_until).toLocaleTimeString() : "")];
    if (w.ordered) parts.push("ordered");
    if (w.ordering_key) parts.push("ordered per " + w.ordering_key);
    if (w.filter.length) parts.push("filter: " + w.filter.map((p) => p.path).join(", "));
    if (w.rate_limit) parts.push("at most " + w.rate_limit);
    const headers = Object.keys(w.headers);
    if (headers.length) parts.push("headers: " + headers.join(", "));
    if (w.https_only !== null && w.https_only !== undefined) parts.push(w.https_only ? "https only" : "http allowed");
    if (w.mode === "batch") parts.push(`batches of ${w.batch_max} every ${w.batch_interval}`);
    return parts.join(" · ");
  }

  async function webhookAction(label, f, after) {
    try {
      const r = await f();
      flash(label);
      if (after) await after(r);
    } catch (e) {
      if (e.status !== 401) flash(e.message, true);
    }
  }

  function rotateDialog(w, done) {
    dialog(`Rotate the secret of ${w.name}`, (heading, close) => {
      const form = h("form", { class: "stack", novalidate: true }, heading,
        h("p", {}, "Requests are signed with the new secret from now on; the standard profile also signs with the old one for [delivery] secret_rotation_grace. The secret is not shown again after saving."),
        field("rot", { name: "secret", label: "New secret", type: "password", autocomplete: "off" }),
        formFoot("Rotate", [
          h("button", { type: "button", onclick: () => {
            const bytes = crypto.getRandomValues(new Uint8Array(24));
            const input = form.elements.namedItem("secret");
            input.value = Array.from(bytes, (b) => b.toString(16).padStart(2, "0")).join("");
            input.type = "text";
          } }, "Generate"),
          h("button", { type: "button", onclick: close }, "Cancel")]));
      form.addEventListener("submit", async (ev) => {
        ev.preventDefault();
        clearErrors(form);
        try {
          await api("PUT", `/webhooks/${seg(w.id)}`, { secret: form.elements.namedItem("secret").value });
          form.elements.namedItem("secret").value = "";
          close();
          flash("Secret rotated.");
          done();
        } catch (e) {
          fieldError(form, e.field || "secret", e.message);
        }
      });
      return form;
    });
  }

  function toLocalInput(d) {
    const p = (n) => String(n).padStart(2, "0");
    return `${d.getFullYear()}-${p(d.getMonth() + 1)}-${p(d.getDate())}T${p(d.getHours())}:${p(d.getMinutes())}`;
  }

  const fromLocalInput = (v) => (v ? new Date(v).toISOString() : null);

  function recoverDialog(w, done) {
    dialog(`Recover failed deliveries of ${w.name}`, (heading, close) => {
      const now = new Date();
      const form = h("form", { class: "stack", novalidate: true }, heading,
        h("p", {}, "Queues again every failed delivery created in the window."),
        h("div", { class: "fields" },
          field("rec", { name: "since", label: "Since", type: "datetime-local", value: toLocalInput(new Date(now - 3600e3)), hint: "Inclusive, local time." }),
          field("rec", { name: "until", label: "Until", type: "datetime-local", value: toLocalInput(new Date(now.getTime() + 60e3)), hint: "Exclusive; empty for now." })),
        formFoot("Recover", h("button", { type: "button", onclick: close }, "Cancel")));
      form.addEventListener("submit", async (ev) => {
        ev.preventDefault();
        clearErrors(form);
        const since = form.elements.namedItem("since").value;
        if (!since) return fieldError(form, "since", "since is required");
        try {
          const { data } = await api("POST", `/webhooks/${seg(w.id)}/recover`, { since: fromLocalInput(since), until: fromLocalInput(form.elements.namedItem("until").value) });
          close();
          flash(`${data.requeued} deliver${data.requeued === 1 ? "y" : "ies"} queued again.`);
          done();
        } catch (e) {
          fieldError(form, e.field, e.message);
        }
      });
      return form;
    });
  }

  async function webhookPage(main, [id], query) {
    let w = await get(`/webhooks/${seg(id)}`);
    const windowName = query.get("window") === "day" ? "day" : "hour";
    const reload = () => render();
    const statusButton = () => w.status === "active"
      ? h("button", { type: "button", id: "pause", onclick: () => webhookAction("Paused.", () => api("PUT", `/webhooks/${seg(w.id)}`, { status: "paused" }), reload) }, "Pause")
      : h("button", { type: "button", id: "resume", onclick: () => webhookAction("Resumed.", () => api("PUT", `/webhooks/${seg(w.id)}`, { status: "active" }), reload) }, "Resume");
    // The heading's badge and Pause/Resume follow the status as the State card's refreshes
    // read it (another instance, an operator elsewhere or the failure threshold may change it);
    // they are redrawn only when it changed, so a focused button keeps its focus.
    let shownStatus = w.status;
    const headBadge = h("span", { id: "head-status" }, badge(w.status));
    const statusSlot = h("span", { class: "slot" }, statusButton());
    const pingOut = h("div");
    main.append(pageHead(w.name, headBadge,
      h("div", { class: "actions" },
        h("button", { type: "button", id: "edit", onclick: () => webhookForm(w, reload) }, "Edit"),
        statusSlot,
        h("button", { type: "button", id: "ping", onclick: async () => {
          try {
            const { data: p } = await api("POST", `/webhooks/${seg(w.id)}/ping`);
            pingOut.replaceChildren(card("Ping result", h("div", { id: "ping-result" },
              h("p", {}, h("span", { class: p.success ? "ok" : "fail" }, p.success ? "Succeeded: " : "Failed: "), `${p.summary} · ${p.duration_ms} ms`),
              h("div", { class: "sides attempt-sides" },
                h("div", {}, h("h3", {}, "Request"), h("p", { class: "mono" }, `POST ${p.request_url}`), headersTable(p.request_headers), h("h3", {}, "Body"), bodyBlock(p.request_body)),
                h("div", {}, h("h3", {}, "Response"), h("p", { class: "mono" }, p.status ? `HTTP ${p.status}` : "no response"), headersTable(p.response_headers), h("h3", {}, "Body"), bodyBlock(p.response_body))))));
          } catch (e) { flash(e.message, true); }
        } }, "Ping"),
        h("button", { type: "button", id: "duplicate", onclick: () => webhookAction("Duplicated: the copy starts disabled.", () => api("POST", `/webhooks/${seg(w.id)}/duplicate`), (r) => go(`/webhooks/${r.data.id}`)) }, "Duplicate"),
        h("button", { type: "button", id: "rotate", onclick: () => rotateDialog(w, reload) }, "Rotate secret"),
        h("button", { type: "button", id: "reset", onclick: () => webhookAction("Counters reset.", () => api("POST", `/webhooks/${seg(w.id)}/reset`), reload) }, "Reset counters"),
        h("button", { type: "button", id: "recover", onclick: () => recoverDialog(w, reload) }, "Recover…"),
        h("button", { type: "button", id: "delete", class: "danger", onclick: async () => {
          if (!(await confirmDialog(`Delete ${w.name}?`, "Its pending deliveries are dropped unsent. This cannot be undone.", "Delete webhook"))) return;
          webhookAction(`Deleted ${w.name}.`, () => api("DELETE", `/webhooks/${seg(w.id)}`), () => go("/webhooks"));
        } }, "Delete"))));
    main.append(pingOut);

    const stateCard = h("div");
    const chartsCard = h("div");
    const latencyCard = h("div");
    const lagCard = h("div");
    main.append(h("div", { class: "grid-2" }, stateCard, chartsCard), h("div", { class: "grid-2" }, latencyCard, lagCard));
    const deliveries = h("div");
    main.append(deliveries);

    let first = true;
    const drawStats = async () => {
      let stats = null, problem = null;
      if (!first) w = await get(`/webhooks/${seg(id)}`);
      first = false;
      if (w.status !== shownStatus) {
        shownStatus = w.status;
        headBadge.replaceChildren(badge(w.status));
        statusSlot.replaceChildren(statusButton());
      }
      if (!features.stats) problem = missing("Charts", "GET /webhooks/{id}/stats");
      else {
        try { stats = await get(`/webhooks/${seg(w.id)}/stats?window=${windowName}`); } catch (e) { problem = notice(e.message, true); }
      }
      const c = w.counters;
      swap(stateCard, card("State",
        kv([
          ["Status", [badge(w.status), w.disabled_reason ? ` ${w.disabled_reason}` : ""]],
          ["URL", h("span", { class: "mono" }, w.url)],
          ["Topics", w.topics.join(", ")],
          ["Origin", w.origin === "config" ? "hooktap.toml" : "admin API"],
          ["Delivery", h("span", { id: "settings" }, settingsSummary(w))],
          ["Retry", w.retry.length ? w.retry.join(", ") : "none"],
          ["Delivered / failed", `${c.delivered} / ${c.failed} (retries ${c.retries})`],
          ["Last delivered", when(c.last_delivered_at)],
          ["Last failure", when(c.last_failure_at)],
          stats && ["Pending", String(stats.pending)],
          ["Last error", stats && stats.last_error ? h("span", { class: "fail", id: "last-error" }, lastError(stats.last_error, w.id)) : "—"],
        ])));
      const toggle = (name, label) => h("button", { type: "button", "aria-pressed": String(windowName === name), onclick: () => go(`/webhooks/${w.id}`, { window: name === "hour" ? "" : name }) }, label);
      if (!stats) {
        swap(chartsCard, card("Charts", problem));
        swap(latencyCard);
        swap(lagCard);
        return;
      }
      const t = stats.totals || {};
      const span = windowName === "day" ? "last day" : "last hour";
      swap(chartsCard, card("Attempts per minute",
        h("div", { class: "actions", role: "group", "aria-label": "Window" }, toggle("hour", "Last hour"), toggle("day", "Last day")),
        h("p", { class: "muted", id: "totals" }, `${span}: ${t.succeeded ?? 0} succeeded, ${t.failed ?? 0} failed · response p50 ${ms(t.p50_ms)}, p99 ${ms(t.p99_ms)} · lag p50 ${ms(t.lag_p50_ms)}, p99 ${ms(t.lag_p99_ms)}`),
        h("div", { class: "chart-box" }, legend([["sw-ok", "succeeded"], ["sw-fail", "failed"]]),
          deliveriesChart(stats.buckets, `Attempts per minute, ${span}: ${t.succeeded ?? 0} succeeded, ${t.failed ?? 0} failed`))));
      swap(latencyCard, card("Response time",
        h("div", { class: "chart-box" }, legend([["sw-p50", "p50"], ["sw-p99", "p99"]]),
          linesChart(stats.buckets, ["p50_ms", "p99_ms"], `Receiver response time, ${span}: p50 ${ms(t.p50_ms)}, p99 ${ms(t.p99_ms)}`, "chart-latency"))));
      swap(lagCard, card("Lag: event created → attempt",
        h("div", { class: "chart-box" }, legend([["sw-p50", "p50"], ["sw-p99", "p99"]]),
          linesChart(stats.buckets, ["lag_p50_ms", "lag_p99_ms"], `Delivery lag, ${span}: p50 ${ms(t.lag_p50_ms)}, p99 ${ms(t.lag_p99_ms)}`, "chart-lag"))));
    };
    await Promise.all([drawStats(), deliveriesList(deliveries, w, query)]);
    // A day's statistics are per minute too, but cost the store a day of attempts: refreshed
    // once a minute.
    every(main, windowName === "day" ? 60000 : 5000, async () => {
      await drawStats();
      if (!deliveries.contains(document.activeElement)) await deliveriesList(deliveries, w, query);
    });
  }

  async function deliveriesList(box, w, query) {
    const outcome = query.get("outcome") || "";
    const page = Math.max(1, Number(query.get("page")) || 1);
    const params = new URLSearchParams({ page, per_page: 25 });
    if (outcome) params.set("outcome", outcome);
    const { data, total } = await api("GET", `/webhooks/${seg(w.id)}/deliveries?${params}`);
    const filter = field("dl", { name: "outcome", label: "Show", type: "select", value: outcome, options: [["", "all"], ["pending", "pending"], ["delivered", "delivered"], ["failed", "failed"]] });
    $("select", filter).addEventListener("change", (e) => go(`/webhooks/${w.id}`, { window: query.get("window"), outcome: e.target.value }));
    const rows = data.map((d) => h("tr", { dataset: { id: d.id } },
      h("td", {}, h("a", { href: `#/webhooks/${w.id}/deliveries/${d.id}` }, when(d.created_at))),
      h("td", {}, d.topic),
      h("td", {}, badge(d.state)),
      h("td", { class: "num" }, String(d.attempts)),
      h("td", {}, d.last_summary || "—"),
      h("td", {}, h("a", { href: `#/events/${d.event_id}`, class: "mono" }, short(d.event_id)))));
    // Counted up to 10,000: past that the answer leaves the total out.
    box.replaceChildren(card(`Deliveries (${isNaN(total) ? "more than 10,000" : total.toLocaleString("en")})`,
      h("div", { class: "filters" }, filter),
      rows.length ? table(["Created", "Topic", "State", "Attempts", "Last answer", "Event"], rows, "deliveries") : h("p", { class: "muted" }, "No deliveries."),
      pager(page, data.length, 25, total, (p) => go(`/webhooks/${w.id}`, { window: query.get("window"), outcome, page: p }))));
  }

  function pager(page, count, perPage, total, goTo) {
    const more = isNaN(total) ? count === perPage : page * perPage < total;
    if (page === 1 && !more) return null;
    return h("nav", { class: "pager", "aria-label": "Pages" },
      h("button", { type: "button", disabled: page <= 1, onclick: () => goTo(page - 1) }, "Newer"),
      h("span", {}, `Page ${page}`),
      h("button", { type: "button", disabled: !more, onclick: () => goTo(page + 1) }, "Older"));
  }

  // ---- a delivery and its attempts ---------------------------------------------------------

  function headersTable(pairs) {
    if (!pairs || !pairs.length) return h("p", { class: "muted" }, "no headers");
    return h("div", { class: "table-wrap" }, h("table", { class: "headers" }, h("tbody", {},
      pairs.map(([k, v]) => h("tr", {}, h("td", {}, k), h("td", {}, v))))));
  }

  function bodyBlock(text) {
    if (!text) return h("p", { class: "muted" }, "empty body");
    let shown = text;
    try { shown = json(JSON.parse(text)); } catch { /* not JSON: as it is */ }
    return h("pre", {}, shown);
  }

  function attemptView(a, open) {
    const d = h("details", { class: "attempt", dataset: { number: a.number } },
      h("summary", {}, `Attempt ${a.number} · `, h("span", { class: a.success ? "ok" : "fail" }, a.summary), ` · ${a.duration_ms} ms · ${when(a.created_at)}`),
      h("div", { class: "sides" },
        h("div", {}, h("h3", {}, "Request"), h("p", { class: "mono" }, `${a.request_method} ${a.request_url}`),
          headersTable(a.request_headers), h("h3", {}, "Body"), bodyBlock(a.request_body)),
        h("div", {}, h("h3", {}, "Response"), h("p", { class: "mono" }, a.response_code ? `${a.response_code} ${a.response_message}` : `no response: ${a.response_message || a.summary}`),
          headersTable(a.response_headers), h("h3", {}, "Body"), bodyBlock(a.response_body))));
    d.open = open;
    return d;
  }

  function attemptsList(attempts) {
    if (!attempts.length) return h("p", { class: "muted" }, "No attempt yet.");
    const newest = [...attempts].reverse();
    return h("div", { class: "live-list attempts" }, newest.map((a, i) => attemptView(a, i === 0)));
  }

  async function deliveryPage(main, [webhookId, deliveryId]) {
    const [{ delivery: d, attempts }, w] = await Promise.all([
      get(`/webhooks/${seg(webhookId)}/deliveries/${seg(deliveryId)}`),
      get(`/webhooks/${seg(webhookId)}`).catch(() => null),
    ]);
    const redeliver = h("button", { type: "button", id: "redeliver", class: "primary", onclick: async () => {
      redeliver.disabled = true;
      try {
        await api("POST", `/webhooks/${seg(webhookId)}/deliveries/${seg(deliveryId)}/redeliver`);
        flash("Queued again: sending now.");
        // Show the new attempt when it is recorded (or after ten seconds).
        const before = attempts.length;
        for (let i = 0; i < 20 && main === currentView; i++) {
          await new Promise((r) => setTimeout(r, 500));
          const again = await get(`/webhooks/${seg(webhookId)}/deliveries/${seg(deliveryId)}`);
          if (again.attempts.length > before) break;
        }
        // Only if this delivery is still the page shown: the operator may have moved on.
        if (main === currentView) render();
      } catch (e) {
        if (e.status !== 401) flash(e.message, true);
        redeliver.disabled = false;
      }
    } }, "Redeliver");
    main.append(pageHead(`Delivery ${short(d.id)}`, badge(d.state), h("div", { class: "actions" }, redeliver)));
    main.append(card("Delivery", kv([
      ["Id", h("span", { class: "mono" }, d.id)],
      ["Webhook", h("a", { href: `#/webhooks/${webhookId}` }, w ? w.name : webhookId)],
      ["Event", h("a", { href: `#/events/${d.event_id}`, class: "mono", id: "event-link" }, d.event_id)],
      ["Topic", d.topic],
      ["State", badge(d.state)],
      ["Attempts", String(d.attempts)],
      d.state === "pending" && ["Next attempt", when(d.due_ms)],
      d.ordering_key && ["Ordering key", d.ordering_key],
      ["Last answer", d.last_summary || "—"],
      ["Created", when(d.created_at)],
      ["Updated", when(d.updated_at)],
    ])));
    main.append(card(`Attempts (${attempts.length})`, attemptsList(attempts)));
  }

  // ---- events ------------------------------------------------------------------------------

  async function eventsPage(main, _args, query) {
    main.append(pageHead("Events"));
    const q = Object.fromEntries(["id", "topic", "since", "until", "q"].map((k) => [k, query.get(k) || ""]));
    const page = Math.max(1, Number(query.get("page")) || 1);
    const form = h("form", { class: "stack", novalidate: true, id: "event-search", role: "search" },
      h("div", { class: "search" },
        field("es", { name: "id", label: "Event id", value: q.id, placeholder: "0192…" }),
        field("es", { name: "topic", label: "Topic", value: q.topic, placeholder: "order.*" }),
        field("es", { name: "since", label: "Since", type: "datetime-local", value: q.since }),
        field("es", { name: "until", label: "Until", type: "datetime-local", value: q.until }),
        field("es", { name: "q", label: "Payload text", value: q.q, placeholder: "alice@example.com" })),
      formFoot("Search", h("a", { href: "#/events", class: "button" }, "Clear")));
    main.append(card("Search", form));
    form.addEventListener("submit", async (ev) => {
      ev.preventDefault();
      clearErrors(form);
      const id = form.elements.namedItem("id").value.trim();
      if (id) {
        try {
          await get(`/events/${seg(id)}`);
          go(`/events/${id}`);
        } catch (e) {
          fieldError(form, "id", e.status === 404 ? "No event with that id." : e.message);
        }
        return;
      }
      go("/events", Object.fromEntries(["topic", "since", "until", "q"].map((k) => [k, form.elements.namedItem(k).value.trim()])));
    });
    const params = new URLSearchParams({ page, per_page: 50 });
    if (q.topic) params.set("topic", q.topic);
    if (q.since) params.set("since", fromLocalInput(q.since));
    if (q.until) params.set("until", fromLocalInput(q.until));
    const results = h("div");
    main.append(results);
    if (q.q && !features.payloadSearch) {
      results.append(missing("Searching payload text", "GET /events?q="));
      return;
    }
    if (q.q) params.set("q", q.q);
    let data;
    try {
      data = (await api("GET", `/events?${params}`)).data;
    } catch (e) {
      if (e.field) fieldError(form, e.field, e.message);
      else results.append(notice(e.message, true));
      return;
    }
    const rows = data.map((e) => h("tr", { dataset: { id: e.id } },
      h("td", {}, when(e.created_at)),
      h("td", {}, h("a", { href: `#/events/${e.id}`, class: "mono" }, short(e.id))),
      h("td", {}, e.topic),
      h("td", {}, e.rule),
      h("td", {}, h("code", { class: "payload" }, JSON.stringify(e.payload)))));
    results.append(card(`Results${page > 1 ? `, page ${page}` : ""}`,
      rows.length ? table(["Created", "Id", "Topic", "Rule", "Payload"], rows, "events") : h("p", { class: "muted" }, "No event matches."),
      pager(page, data.length, 50, NaN, (p) => go("/events", Object.assign({}, q, { id: "", page: p })))));
  }

  async function eventPage(main, [id]) {
    const e = await get(`/events/${seg(id)}`);
    main.append(pageHead(`Event ${short(e.id)}`, h("span", { class: "badge" }, e.topic)));
    main.append(h("div", { class: "grid-2" },
      card("Event", kv([
        ["Id", h("span", { class: "mono", id: "event-id" }, e.id)],
        ["Topic", e.topic],
        ["Rule", h("a", { href: "#/rules", id: "event-rule" }, e.rule)],
        ["Created", when(e.created_at)],
        e.trace && ["Trace", h("span", { class: "mono" }, `${e.trace.trace_id} (parent ${e.trace.parent_id})`)],
      ])),
      card("Payload", h("pre", { id: "event-payload" }, json(e.payload)))));
    const box = h("div");
    main.append(box);
    let list;
    if (features.eventDeliveries) {
      list = await get(`/events/${seg(e.id)}/deliveries`);
    } else {
      // Without the endpoint: look through each webhook's newest 100 deliveries.
      box.append(missing("Listing every delivery of an event", "GET /events/{id}/deliveries"));
      const webhooks = await get("/webhooks?per_page=100");
      list = [];
      for (const w of webhooks) {
        const ds = await get(`/webhooks/${seg(w.id)}/deliveries?per_page=100`);
        for (const d of ds.filter((x) => x.event_id === e.id)) {
          const detail = await get(`/webhooks/${seg(w.id)}/deliveries/${seg(d.id)}`);
          list.push({ delivery: d, webhook_name: w.name, attempts: detail.attempts });
        }
      }
    }
    box.append(card(`Deliveries (${list.length})`,
      list.length ? list.map(({ delivery: d, webhook_name: name, attempts }) => h("section", { class: "card event-delivery", dataset: { id: d.id } },
        h("h3", {}, h("a", { href: `#/webhooks/${d.webhook_id}` }, name || "(deleted webhook)"), " · ",
          h("a", { href: `#/webhooks/${d.webhook_id}/deliveries/${d.id}` }, `delivery ${short(d.id)}`), " ", badge(d.state)),
        attemptsList(attempts))) : h("p", { class: "muted" }, "No webhook subscribed to this event's topic when it was derived.")));
  }

  // ---- rules -------------------------------------------------------------------------------

  function headerPairs(raw, name) {
    return raw.split("\n").map((l) => l.trim()).filter(Boolean).map((line) => {
      const i = line.indexOf(":");
      if (i < 1) throw [name, `“${line}” is not “Name: value”`];
      return [line.slice(0, i).trim(), line.slice(i + 1).trim()];
    });
  }

  async function rulesPage(main) {
    main.append(pageHead("Rules"));
    const rules = await get("/rules");
    main.append(card(`Loaded rules (${rules.length})`,
      rules.length ? table(["Name", "Topic", "Request", "Events", "Repeats", "Also"],
        rules.map((r) => h("tr", { dataset: { name: r.name } },
          h("td", {}, r.name), h("td", { class: "mono" }, r.topic),
          h("td", { class: "mono" }, `${r.methods.length ? r.methods.join("|") : "any"} ${r.path}`),
          h("td", { class: "num" }, String(r.events)), h("td", { class: "num" }, String(r.deduplicated)),
          h("td", {}, r.features.join("; ")))), "rules") : h("p", { class: "muted" }, "No rules loaded."),
      h("p", { class: "muted" }, "Events: derived since hooktap started (the match count). Repeats: not derived since then because dedupe had seen their key.")));
    if (!features.tryRule) {
      main.append(card("Try a rule", missing("Trying rules on an exchange", "POST /rules/try")));
      return;
    }
    const result = h("div", { id: "try-result", "aria-live": "polite" });
    const form = h("form", { class: "stack", novalidate: true, id: "try-form" },
      h("p", { class: "muted" }, "Paste a request and its response: see which loaded rules match and the payload each would produce. Nothing is derived, stored or delivered."),
      h("div", { class: "grid-2" },
        h("fieldset", {}, h("legend", {}, "Request"), h("div", { class: "fields" },
          field("try", { name: "request.method", label: "Method", value: "GET" }),
          field("try", { name: "request.url", label: "Path and query", value: "/", placeholder: "/orders/7?expand=1" })),
          field("try", { name: "request.headers", label: "Request headers", type: "textarea", placeholder: "Content-Type: application/json", hint: "One “Name: value” a line." }),
          field("try", { name: "request.body", label: "Request body", type: "textarea", rows: 5 })),
        h("fieldset", {}, h("legend", {}, "Response"), h("div", { class: "fields" },
          field("try", { name: "response.status", label: "Status", value: "200", inputmode: "numeric" })),
          field("try", { name: "response.headers", label: "Response headers", type: "textarea", placeholder: "Content-Type: application/json", hint: "One “Name: value” a line." }),
          field("try", { name: "response.body", label: "Response body", type: "textarea", rows: 5 }))),
      formFoot("Try the rules"));
    main.append(card("Try a rule", form, result));
    form.addEventListener("submit", async (ev) => {
      ev.preventDefault();
      clearErrors(form);
      const val = (n) => form.elements.namedItem(n).value;
      let body;
      try {
        const status = val("response.status").trim();
        body = {
          request: { method: val("request.method").trim(), url: val("request.url").trim(), headers: headerPairs(val("request.headers"), "request.headers"), body: val("request.body") },
          response: { status: /^\d+$/.test(status) ? Number(status) : status, headers: headerPairs(val("response.headers"), "response.headers"), body: val("response.body") },
        };
      } catch (e) {
        if (Array.isArray(e)) return fieldError(form, e[0], e[1]);
        throw e;
      }
      try {
        const { data } = await api("POST", "/rules/try", body);
        const matches = data.matches || [], misses = data.misses || [];
        result.replaceChildren();
        append(result, [
          h("h3", {}, matches.length ? `${matches.length} rule${matches.length === 1 ? "" : "s"} match` : "No rule matches"),
          matches.map((m) => h("section", { class: "card try-match", dataset: { rule: m.rule } },
            h("h3", {}, m.rule, " → ", h("span", { class: "mono" }, m.topic)),
            (m.events || []).map((e) => [h("p", { class: "muted" }, `event ${e.topic}`), h("pre", {}, json(e.payload))]),
            (m.notes || []).map((n) => h("p", { class: "muted" }, n)))),
          misses.length ? [h("h3", {}, "Matched the method and path, but derived nothing"),
            table(["Rule", "Why not"], misses.map((m) => h("tr", { dataset: { rule: m.rule } }, h("td", {}, m.rule), h("td", {}, m.reason))), "misses")] : null]);
      } catch (e) {
        const f = e.field || "";
        const guess = f.includes(".") ? f : { method: "request.method", url: "request.url", status: "response.status", path: "request.url" }[f];
        fieldError(form, [f, guess], e.message);
      }
    });
  }

  // ---- live --------------------------------------------------------------------------------

  async function livePage(main, _args, query) {
    const topic = query.get("topic") || "";
    let paused = false;
    // Events that arrived while paused, oldest first; at most HELD_MAX (the oldest go first).
    const HELD_MAX = 200;
    let held = [];
    let dropped = 0;
    const list = h("div", { class: "live-list", id: "live-list" });
    const state = h("span", { class: "muted", id: "live-state", role: "status" }, "connecting…");
    const pauseButton = h("button", { type: "button", id: "live-pause", onclick: () => {
      paused = !paused;
      pauseButton.textContent = paused ? "Resume" : "Pause";
      if (!paused) {
        // Oldest first: each is put on top, so the newest ends on top as it would have live.
        if (dropped) list.prepend(h("p", { class: "notice" }, `${dropped} events arrived while paused and were not kept (at most ${HELD_MAX} are held).`));
        held.forEach(show);
        held = [];
        dropped = 0;
      }
      status();
    } }, "Pause");
    const form = h("form", { class: "search", id: "live-filter", novalidate: true },
      field("live", { name: "topic", label: "Topic filter", value: topic, placeholder: "order.* (empty: all)" }),
      h("div", { class: "form-foot" }, h("button", { type: "submit" }, "Apply"), pauseButton,
        h("button", { type: "button", onclick: () => list.replaceChildren() }, "Clear")),
      h("p", { class: "error form-error", role: "alert" }));
    form.addEventListener("submit", (ev) => {
      ev.preventDefault();
      go("/live", { topic: form.elements.namedItem("topic").value.trim() });
    });
    main.append(pageHead("Live", state), card("Stream", form), card("Events as they are stored", list));
    let connected = false;
    const status = () => {
      state.textContent = (connected ? "connected" : "reconnecting…") + (paused ? ` · paused, ${held.length} held${dropped ? `, ${dropped} dropped` : ""}` : "") + (topic ? ` · topic ${topic}` : "");
    };
    function show(e) {
      list.prepend(h("div", { class: "live-item", dataset: { id: e.id, topic: e.topic } },
        h("span", { class: "muted" }, when(e.created_at)),
        h("span", {}, h("a", { href: `#/events/${e.id}` }, e.topic), h("div", { class: "muted" }, e.rule)),
        h("code", { class: "payload" }, JSON.stringify(e.payload))));
      while (list.children.length > 200) list.lastChild.remove();
    }
    const abort = new AbortController();
    let stopped = false;
    onLeave(main, () => { stopped = true; abort.abort(); });
    const connect = async () => {
      while (!stopped) {
        try {
          const r = await fetch("/events/stream" + (topic ? `?topic=${encodeURIComponent(topic)}` : ""), { headers: { Authorization: "Bearer " + token }, signal: abort.signal });
          if (r.status === 401) { signOut("The token was not accepted."); return; }
          if (!r.ok) {
            const body = await r.json().catch(() => ({}));
            fieldError(form, body.field || "topic", body.message || `HTTP ${r.status}`);
            state.textContent = "not connected";
            return;
          }
          connected = true;
          status();
          const reader = r.body.pipeThrough(new TextDecoderStream()).getReader();
          let buf = "";
          for (;;) {
            const { value, done } = await reader.read();
            if (done) break;
            buf += value;
            let cut;
            while ((cut = buf.indexOf("\n\n")) >= 0) {
              const message = buf.slice(0, cut);
              buf = buf.slice(cut + 2);
              let kind = "message", data = "";
              for (const line of message.split("\n")) {
                if (line.startsWith("event:")) kind = line.slice(6).trim();
                else if (line.startsWith("data:")) data += line.slice(5).trim();
              }
              if (kind === "event" && data) {
                const e = JSON.parse(data);
                if (paused) {
                  held.push(e);
                  if (held.length > HELD_MAX) { held.shift(); dropped++; }
                } else show(e);
                status();
              } else if (kind === "lagged") {
                list.prepend(h("p", { class: "notice" }, `${data} events skipped: this page read too slowly.`));
              }
            }
          }
        } catch (e) {
          if (stopped) return;
        }
        connected = false;
        status();
        await new Promise((r) => setTimeout(r, 2000));
      }
    };
    connect();
    // The stream shows what is stored from now on; start with the newest few.
    const recent = await get("/events?per_page=20" + (topic ? `&topic=${encodeURIComponent(topic)}` : "")).catch(() => []);
    recent.reverse().forEach(show);
  }

  // ---- start -------------------------------------------------------------------------------

  document.addEventListener("DOMContentLoaded", () => {
    $("#login-form").addEventListener("submit", (e) => {
      e.preventDefault();
      token = $("#token").value;
      $("#login-error").textContent = "";
      start();
    });
    $("#sign-out").addEventListener("click", () => signOut("Signed out."));
    // The skip link moves focus to the page without changing the hash (a hash of "#main"
    // would be read as a page); other in-page anchors leave the page shown alone.
    $("a.skip").addEventListener("click", (e) => {
      e.preventDefault();
      const m = $("#main");
      m.setAttribute("tabindex", "-1");
      m.focus();
    });
    window.addEventListener("hashchange", () => {
      if (location.hash && !location.hash.startsWith("#/")) return;
      focusOnRender = true;
      render();
    });
    if (token) start();
    else $("#token").focus();
  });
})();
