// The nudge operator dashboard: reads the tenant's JSON routes with its key and draws them, every few seconds.
// Every figure is set as text (never as HTML): tenant-chosen names such as variants cannot become markup.
(() => {
  "use strict";

  const KEY_ITEM = "nudge.dashboard.key";
  const REFRESH_MS = 5000;
  const SVG_NS = "http://www.w3.org/2000/svg";
  const PALETTE = ["#2f6fdf", "#e07b24", "#1f8a4c", "#9b59b6", "#c0392b", "#16a2b8", "#7f8c8d", "#d4a017"];
  const ROUTES = {
    model: "/v1/model",
    history: "/v1/model/history",
    activity: "/v1/activity",
    histogram: "/v1/scores/histogram?bins=20",
    stats: "/v1/stats",
    bandits: "/v1/bandits",
    weights: "/v1/weights",
  };

  let key = null;
  let timer = null;
  let generation = 0; // answers to a key no longer in use are dropped

  class AuthError extends Error {}

  // ---- DOM helpers ------------------------------------------------------------------------------------------

  function el(tag, attrs, ...children) {
    const node = document.createElement(tag);
    for (const [name, value] of Object.entries(attrs || {})) {
      if (value !== null && value !== undefined) node.setAttribute(name, value);
    }
    for (const child of children.flat()) {
      if (child !== null && child !== undefined) node.append(child instanceof Node ? child : String(child));
    }
    return node;
  }

  function svg(tag, attrs, ...children) {
    const node = document.createElementNS(SVG_NS, tag);
    for (const [name, value] of Object.entries(attrs || {})) node.setAttribute(name, String(value));
    for (const child of children.flat()) {
      if (child !== null && child !== undefined) node.append(child instanceof Node ? child : String(child));
    }
    return node;
  }

  function num(x, digits = 3) {
    if (x === null || x === undefined || Number.isNaN(x)) return "–";
    return Number(x).toLocaleString("en-US", { maximumFractionDigits: digits, minimumFractionDigits: 0 });
  }

  function pct(x, digits = 1) {
    return x === null || x === undefined ? "–" : `${(100 * x).toFixed(digits)} %`;
  }

  function points(x) {
    if (x === null || x === undefined) return "–";
    const sign = x > 0 ? "+" : x < 0 ? "−" : "";
    return `${sign}${Math.abs(100 * x).toFixed(1)} pts`;
  }

  function when(epochS) {
    return epochS ? new Date(epochS * 1000).toLocaleString() : "–";
  }

  function table(headers, rows) {
    return el("div", { class: "scroll" }, el("table", {},
      el("thead", {}, el("tr", {}, headers.map((h) => el("th", {}, h)))),
      el("tbody", {}, rows.map((cells) => el("tr", {}, cells.map((c) => (c instanceof Node && c.tagName === "TD") ? c : el("td", {}, c)))))));
  }

  function kv(pairs) {
    return el("dl", { class: "kv" }, pairs.flatMap(([k, v]) => [el("dt", {}, k), el("dd", {}, v)]));
  }

  // Scalars of a nested report (model metrics, gate figures) as "a.b.c" -> value, at most `limit` of them.
  function flatten(value, prefix = "", out = [], limit = 40) {
    if (out.length >= limit || value === null || value === undefined) return out;
    if (typeof value === "object" && !Array.isArray(value)) {
      for (const [k, v] of Object.entries(value)) flatten(v, prefix ? `${prefix}.${k}` : k, out, limit);
    } else if (Array.isArray(value)) {
      if (value.length <= 4 && value.every((v) => typeof v !== "object")) out.push([prefix, value.map((v) => typeof v === "number" ? num(v, 4) : String(v)).join(", ")]);
    } else {
      out.push([prefix, typeof value === "number" ? num(value, 4) : String(value)]);
    }
    return out;
  }

  // A horizontal 95 % interval on [0, 1] (or [lo, hi]) with its mean, for a table cell.
  function intervalBar(mean, lo, hi, min = 0, max = 1) {
    const w = 120, h = 14;
    const x = (v) => Math.max(0, Math.min(w, ((v - min) / (max - min)) * w));
    const parts = [svg("line", { class: "axis", x1: 0, x2: w, y1: h / 2, y2: h / 2 })];
    if (lo !== null && hi !== null && lo !== undefined && hi !== undefined) {
      parts.push(svg("line", { class: "ci", x1: x(lo), x2: x(hi), y1: h / 2, y2: h / 2 }));
    }
    if (mean !== null && mean !== undefined) parts.push(svg("circle", { class: "mean", cx: x(mean), cy: h / 2, r: 3 }));
    return el("td", { class: "interval" }, svg("svg", { width: w, height: h, viewBox: `0 0 ${w} ${h}` }, parts));
  }

  function panelBody(name) {
    return document.querySelector(`#panel-${name} .body`);
  }

  function fill(name, ...children) {
    panelBody(name).replaceChildren(...children.flat().filter((c) => c !== null && c !== undefined));
  }

  function legend(names) {
    return el("div", { class: "legend" }, names.map((name, i) => {
      const swatch = el("span", { class: "swatch" });
      swatch.style.background = PALETTE[i % PALETTE.length];
      return el("span", {}, swatch, name);
    }));
  }

  // ---- panels -----------------------------------------------------------------------------------------------

  function renderModel(model, history) {
    const predictor = model.predictor;
    const parts = [el("p", { class: "big", "data-predictor": predictor }, predictor)];
    if (model.model) {
      parts.push(kv([["file", model.model.file], ["loaded", when(model.model.loaded_at)],
        ["training", model.model.training_seconds ? `${num(model.model.training_seconds, 1)} s` : "–"]]));
      const metrics = flatten(model.model.validation_metrics);
      if (metrics.length) parts.push(el("h3", {}, "Validation metrics"), kv(metrics));
      const calibration = flatten(model.model.calibration);
      if (calibration.length) parts.push(el("h3", {}, "Online calibration"), kv(calibration));
    } else {
      parts.push(el("p", { class: "note" }, "The Markov chain predicts: no Transformer checkpoint serves this tenant."));
    }
    if (model.gate) {
      parts.push(el("h3", {}, "Last gate decision"), kv(flatten(model.gate, "", [], 16)));
    }
    if (model.last_error) {
      parts.push(el("p", { class: "error" }, `Last load error (${model.last_error.code}): ${model.last_error.message}`));
    }
    parts.push(el("p", { class: "note" }, `A rollback would serve: ${model.rollback_to || "nothing"}`));
    const entries = (history.history || []).slice(0, 8);
    parts.push(el("h3", {}, "History"));
    parts.push(entries.length
      ? table(["when", "event", "serving", "message"], entries.map((e) => [when(e.at), e.event, e.predictor, e.message || ""]))
      : el("p", { class: "note" }, "No promotion, refusal or rollback yet."));
    fill("model", parts);
  }

  function sparkline(series, label) {
    const w = 220, h = 36;
    const max = Math.max(1, ...series);
    const step = series.length > 1 ? w / (series.length - 1) : w;
    const pts = series.map((v, i) => `${(i * step).toFixed(1)},${(h - 2 - (v / max) * (h - 4)).toFixed(1)}`).join(" ");
    return svg("svg", { width: w, height: h, viewBox: `0 0 ${w} ${h}`, role: "img", "aria-label": label },
      svg("title", {}, label),
      svg("line", { class: "axis", x1: 0, x2: w, y1: h - 1, y2: h - 1 }),
      svg("polyline", { class: "spark", points: pts }));
  }

  function latency(l) {
    return `p50 ${num(l.p50, 2)} · p95 ${num(l.p95, 2)} · p99 ${num(l.p99, 2)} ms`;
  }

  function renderActivity(a) {
    const ingest = a.ingest, score = a.score;
    fill("activity",
      el("div", { class: "cards" },
        el("div", { class: "card", id: "activity-ingest" },
          el("div", { class: "label" }, "Events accepted"),
          el("div", { class: "big" }, `${num(ingest.events_per_s, 1)} /s`),
          el("div", {}, `${num(ingest.requests_per_s, 2)} requests/s · ${num(ingest.events, 0)} events`),
          el("div", {}, latency(ingest.latency_ms)),
          sparkline(ingest.events_per_second, "events accepted per second, last minute")),
        el("div", { class: "card", id: "activity-score" },
          el("div", { class: "label" }, "Scoring requests"),
          el("div", { class: "big" }, `${num(score.requests_per_s, 2)} /s`),
          el("div", {}, `${num(score.users_per_s, 1)} users/s · ${num(score.requests, 0)} requests`),
          el("div", {}, latency(score.latency_ms)),
          sparkline(score.users_per_second, "users scored per second, last minute"))),
      el("p", { class: "note" }, `Over the last ${a.window_s} s, answered requests only; latency from the handler's start to its answer.`));
  }

  function renderHistogram(hg) {
    const w = 420, h = 150, left = 30, right = 8, bottom = 20, top = 6;
    const max = Math.max(1, ...hg.counts);
    const bw = (w - left - right) / hg.counts.length;
    const y = (c) => top + (h - top - bottom) * (1 - c / max);
    const parts = [svg("line", { class: "axis", x1: left, x2: w - right, y1: h - bottom, y2: h - bottom })];
    hg.counts.forEach((c, i) => {
      const bar = svg("rect", { class: "bar", x: (left + i * bw + 1).toFixed(1), y: y(c).toFixed(1),
        width: Math.max(1, bw - 2).toFixed(1), height: (h - bottom - y(c)).toFixed(1), "data-count": c },
        svg("title", {}, `${num(hg.edges[i], 2)}–${num(hg.edges[i + 1], 2)}: ${c} users`));
      parts.push(bar);
    });
    for (const tick of [0, 0.25, 0.5, 0.75, 1]) {
      parts.push(svg("text", { x: left + tick * (w - left - right), y: h - 5, "text-anchor": "middle" }, String(tick)));
    }
    parts.push(svg("text", { x: left - 4, y: top + 8, "text-anchor": "end" }, String(max)));
    parts.push(svg("text", { x: left - 4, y: h - bottom, "text-anchor": "end" }, "0"));
    fill("histogram",
      svg("svg", { id: "histogram-chart", width: w, height: h, viewBox: `0 0 ${w} ${h}`, role: "img",
        "aria-label": "histogram of users' scores" }, parts),
      el("p", { class: "note" }, hg.scored
        ? `${num(hg.scored, 0)} users scored of ${num(hg.users, 0)} known · mean ${num(hg.mean, 3)} · median ${num(hg.median, 3)} (posterior-mean score: P(conversion within the horizon))`
        : "No users yet: ingest events first."));
  }

  function renderUplift(stats) {
    const c = stats.conversion;
    const s = c.signalled, ho = c.holdout;
    const parts = [];
    if (c.difference === null || c.difference === undefined) {
      parts.push(el("p", { class: "big", id: "uplift-figure" }, "not enough closed decisions yet"),
        el("p", { class: "note" }, `A decision counts once its ${num(c.horizon_s / 60, 0)}-minute horizon has passed, ` +
          "and both the signalled and the holdout group need one."));
    } else {
      const cls = c.difference_ci95[0] > 0 ? "good" : c.difference_ci95[1] < 0 ? "bad" : "";
      parts.push(el("p", { class: `big ${cls}`, id: "uplift-figure" }, points(c.difference)),
        el("p", {}, `95 % interval ${points(c.difference_ci95[0])} to ${points(c.difference_ci95[1])}, over ${num(c.cohort.decisions, 0)} closed decisions`));
      const lo = Math.min(c.difference_ci95[0], 0), hi = Math.max(c.difference_ci95[1], 0);
      const pad = Math.max(0.01, (hi - lo) * 0.1);
      const w = 300, hh = 22;
      const x = (v) => ((v - (lo - pad)) / (hi - lo + 2 * pad)) * w;
      parts.push(svg("svg", { width: w, height: hh, viewBox: `0 0 ${w} ${hh}`, role: "img", "aria-label": "uplift interval" },
        svg("line", { class: "zero", x1: x(0), x2: x(0), y1: 0, y2: hh }),
        svg("line", { class: "ci", x1: x(c.difference_ci95[0]), x2: x(c.difference_ci95[1]), y1: hh / 2, y2: hh / 2 }),
        svg("circle", { class: "mean", cx: x(c.difference), cy: hh / 2, r: 4 })));
    }
    const row = (name, g) => [name, num(g.decisions, 0), num(g.open, 0), num(g.cohort.decisions, 0),
      num(g.cohort.converted, 0), pct(g.conversion_rate), intervalBar(g.conversion_rate, ...g.conversion_rate_ci95)];
    parts.push(table(["group", "decisions", "open", "closed", "converted", "rate", "95 % interval"],
      [row("signalled", s), row("holdout", ho)]));
    parts.push(el("p", { class: "note" }, `Holdout share ${pct(c.holdout_share, 0)}; rates over decisions whose horizon has closed.`));
    fill("uplift", parts);
  }

  // Signals sent per period and variant, stacked, from GET /v1/bandits allocations.
  function allocationChart(allocations, periodS) {
    const periods = [...new Set(allocations.map((a) => a.period_start))].sort((a, b) => a - b).slice(-24);
    const names = [...new Set(allocations.map((a) => `${a.intent} / ${a.variant}`))].sort();
    const w = 640, h = 140, left = 34, bottom = 18, top = 6;
    const totals = periods.map((p) => allocations.filter((a) => a.period_start === p).reduce((t, a) => t + a.signals, 0));
    const max = Math.max(1, ...totals);
    const bw = Math.min(60, (w - left) / Math.max(1, periods.length));
    const parts = [svg("line", { class: "axis", x1: left, x2: w, y1: h - bottom, y2: h - bottom }),
      svg("text", { x: left - 4, y: top + 8, "text-anchor": "end" }, String(max))];
    periods.forEach((p, i) => {
      let base = h - bottom;
      names.forEach((name, j) => {
        const n = allocations.filter((a) => a.period_start === p && `${a.intent} / ${a.variant}` === name).reduce((t, a) => t + a.signals, 0);
        if (!n) return;
        const height = (h - bottom - top) * (n / max);
        base -= height;
        parts.push(svg("rect", { class: "alloc", x: (left + i * bw + 2).toFixed(1), y: base.toFixed(1), width: (bw - 4).toFixed(1),
          height: height.toFixed(1), fill: PALETTE[j % PALETTE.length] }, svg("title", {}, `${name}: ${n}`)));
      });
      const d = new Date(p * 1000);
      parts.push(svg("text", { x: left + i * bw + bw / 2, y: h - 5, "text-anchor": "middle" },
        `${String(d.getHours()).padStart(2, "0")}:${String(d.getMinutes()).padStart(2, "0")}`));
    });
    return [svg("svg", { id: "allocation-chart", width: w, height: h, viewBox: `0 0 ${w} ${h}`, role: "img",
      "aria-label": `signals sent per ${periodS / 3600} h and variant` }, parts), legend(names)];
  }

  function renderSignals(stats, bandits) {
    const sent = stats.signals.sent_by_type || {};
    const rows = [];
    for (const [type, variants] of Object.entries(sent).sort()) {
      for (const [variant, n] of Object.entries(variants).sort()) rows.push([type, variant, num(n, 0)]);
    }
    const funnel = stats.funnel.by_type || {};
    const steps = ["sent", "received", "handled", "shown", "clicked", "converted", "dismissed"];
    const parts = [
      el("p", {}, `${num(stats.signals.sent, 0)} signals sent, ${num(stats.signals.withheld, 0)} withheld (holdout).`),
      rows.length ? table(["type", "variant", "sent"], rows) : el("p", { class: "note" }, "No signal sent yet."),
    ];
    if (Object.keys(funnel).length) {
      parts.push(el("h3", {}, "Funnel per type (feedback reports)"),
        table(["type", ...steps], Object.entries(funnel).map(([type, f]) => [type, ...steps.map((s) => num(f[s] || 0, 0))])));
    }
    parts.push(el("h3", {}, `Sent over time (per ${num(bandits.period_s / 3600, 2)} h, by intent and variant)`));
    parts.push(...(bandits.allocations.length ? allocationChart(bandits.allocations, bandits.period_s)
      : [el("p", { class: "note" }, "Nothing sent in the retention window yet.")]));
    fill("signals", parts);
  }

  function renderBandits(bandits) {
    const latest = bandits.allocations.length ? Math.max(...bandits.allocations.map((a) => a.period_start)) : null;
    const parts = [];
    for (const [intent, b] of Object.entries(bandits.bandits).sort()) {
      const recent = bandits.allocations.filter((a) => a.intent === intent && a.period_start === latest);
      const recentTotal = recent.reduce((t, a) => t + a.signals, 0);
      const mode = b.allocation === "even"
        ? `even split until each arm has ${b.min_outcomes} outcomes`
        : `Thompson sampling, floor ${pct(b.floor_share, 0)} per arm`;
      parts.push(el("h3", {}, `${intent} → ${b.type}: ${mode}`));
      parts.push(table(["variant", "mean", "95 % interval", "α", "β", "outcomes", "share, latest period"],
        b.variants.map((v, i) => {
          const n = recent.filter((a) => a.variant === v).reduce((t, a) => t + a.signals, 0);
          return [v, num(b.mean[i], 3), intervalBar(b.mean[i], b.ci95_low[i], b.ci95_high[i]), num(b.alpha[i], 1),
            num(b.beta[i], 1), num(b.outcomes[i], 0), recentTotal ? pct(n / recentTotal, 0) : "–"];
        })));
    }
    fill("bandits", parts.length ? parts : el("p", { class: "note" }, "No bandit configured."));
  }

  function renderWeights(w) {
    const rows = w.actions.map((a) => [a.action, num(a.mean, 3), intervalBar(a.mean, a.ci95[0], a.ci95[1]),
      num(a.alpha, 1), num(a.beta, 1), num(a.prior_mean, 2)]);
    fill("weights",
      el("p", { class: "note" }, `${num(w.events_applied, 0)} events applied · horizon ${num(w.horizon_s / 60, 0)} min · ` +
        `${num(w.pending_attribution, 0)} awaiting attribution · ${w.contexts.length} contexts with evidence`),
      table(["action", "weight", "95 % interval", "α", "β", "prior"], rows));
  }

  function renderLifts(w) {
    const t = w.transitions;
    const header = el("tr", {}, el("th", {}, "from ↓ to →"), t.actions.map((a) => el("th", {}, a)));
    const body = t.lift.map((row, i) => el("tr", {}, el("th", {}, t.actions[i]), row.map((v, j) => {
      const cell = el("td", { class: "lift", title: `${t.actions[i]} → ${t.actions[j]}` }, num(v, 2));
      const strength = Math.min(1, Math.abs(Math.log(Math.max(v, 1e-6))) / Math.log(3));
      cell.style.background = v >= 1 ? `rgba(31, 138, 76, ${0.6 * strength})` : `rgba(192, 57, 43, ${0.6 * strength})`;
      return cell;
    })));
    fill("lifts",
      el("div", { class: "scroll" }, el("table", { id: "lift-table" }, el("thead", {}, header), el("tbody", {}, body))),
      el("p", { class: "note" }, "How much more (green) or less (red) likely a conversion is after this pair of actions than after the second action alone; 1 is no difference."));
  }

  // ---- fetching -------------------------------------------------------------------------------------------

  async function getJson(path) {
    const response = await fetch(path, { headers: { Authorization: `Bearer ${key}`, Accept: "application/json" }, cache: "no-store" });
    let body = null;
    try {
      body = await response.json();
    } catch (_) {
      // not a nudge answer (a proxy's page): the status says enough
    }
    if (response.status === 401) throw new AuthError(body && body.error ? body.error.message : "the key was refused");
    if (!response.ok) {
      const code = body && body.error ? `${body.error.code}: ${body.error.message}` : response.statusText;
      throw new Error(`HTTP ${response.status} ${code}`);
    }
    return body;
  }

  const PANELS = [
    ["model", ["model", "history"], renderModel],
    ["activity", ["activity"], renderActivity],
    ["histogram", ["histogram"], renderHistogram],
    ["uplift", ["stats"], renderUplift],
    ["signals", ["stats", "bandits"], renderSignals],
    ["bandits", ["bandits"], renderBandits],
    ["weights", ["weights"], renderWeights],
    ["lifts", ["weights"], renderLifts],
  ];

  async function refresh() {
    const mine = generation;
    const names = Object.keys(ROUTES);
    const settled = await Promise.allSettled(names.map((n) => getJson(ROUTES[n])));
    if (mine !== generation) return;
    const refused = settled.find((s) => s.status === "rejected" && s.reason instanceof AuthError);
    if (refused) {
      refuse(`Not authorized: ${refused.reason.message}. No data is shown; enter a valid key.`);
      return;
    }
    const data = {}, failed = {};
    names.forEach((n, i) => {
      if (settled[i].status === "fulfilled") data[n] = settled[i].value;
      else failed[n] = settled[i].reason;
    });
    let errors = 0;
    for (const [panel, needs, render] of PANELS) {
      const missing = needs.find((n) => failed[n]);
      if (missing) {
        errors += 1;
        fill(panel, el("p", { class: "error" }, `Could not load ${ROUTES[missing]}: ${failed[missing].message}`));
        continue;
      }
      try {
        render(...needs.map((n) => data[n]));
      } catch (err) {
        errors += 1;
        fill(panel, el("p", { class: "error" }, `Could not draw this panel: ${err.message}`));
      }
    }
    document.getElementById("panels").hidden = false;
    setStatus(`Updated ${new Date().toLocaleTimeString()} · refreshes every ${REFRESH_MS / 1000} s` +
      (errors ? ` · ${errors} panel(s) failed` : ""), errors > 0);
    timer = setTimeout(refresh, REFRESH_MS);
  }

  function setStatus(text, isError) {
    const status = document.getElementById("status");
    status.textContent = text;
    status.classList.toggle("error", Boolean(isError));
  }

  function clearPanels() {
    for (const [panel] of PANELS) fill(panel);
    document.getElementById("panels").hidden = true;
  }

  function stop() {
    generation += 1;
    clearTimeout(timer);
    timer = null;
  }

  function refuse(message) {
    stop();
    key = null;
    sessionStorage.removeItem(KEY_ITEM);
    clearPanels();
    const alert = document.getElementById("auth-error");
    alert.textContent = message;
    alert.hidden = false;
    setStatus("Enter the tenant's API key.", true);
  }

  function open(newKey) {
    if (!/^[\x21-\x7e]+$/.test(newKey)) {
      refuse("Not authorized: that is not an API key (keys are printable ASCII). No data is shown.");
      return;
    }
    stop();
    key = newKey;
    sessionStorage.setItem(KEY_ITEM, newKey);
    document.getElementById("auth-error").hidden = true;
    setStatus("Loading…", false);
    refresh();
  }

  // A key in the fragment (#key=...) never reaches the server; it is taken into this tab's storage and out of
  // the address bar and history at once. Returns it, or null.
  function takeFragmentKey() {
    const fragment = new URLSearchParams(location.hash.slice(1));
    if (!fragment.has("key")) return null;
    history.replaceState(null, "", location.pathname + location.search);
    return fragment.get("key") || null;
  }

  function start() {
    const fromFragment = takeFragmentKey();
    if (fromFragment) sessionStorage.setItem(KEY_ITEM, fromFragment);
    window.addEventListener("hashchange", () => {
      const changed = takeFragmentKey();
      if (changed) open(changed);
    });
    document.getElementById("key-form").addEventListener("submit", (event) => {
      event.preventDefault();
      const input = document.getElementById("key-input");
      const typed = input.value.trim();
      input.value = "";
      if (typed) open(typed);
    });
    document.getElementById("key-forget").addEventListener("click", () => {
      stop();
      key = null;
      sessionStorage.removeItem(KEY_ITEM);
      clearPanels();
      setStatus("Key forgotten. Enter the tenant's API key to see its data.", false);
    });
    const stored = sessionStorage.getItem(KEY_ITEM);
    if (stored) open(stored);
    else refuse("Not authorized: no API key yet. Enter the tenant's key above; it is kept in this tab only.");
  }

  start();
})();
