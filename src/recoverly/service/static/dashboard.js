// recoverly dashboard: polls the JSON feed and redraws. The DOM is built with
// textContent only: run and breaker names come from clients.
"use strict";

(function () {
  const body = document.body;
  const feedUrl = body.dataset.feed;
  const pollMs = Math.max(200, Number(body.dataset.pollMs) || 1000);
  const TOTALS = [
    ["retries", "Retries"], ["recovered", "Recovered"], ["gave_up", "Gave up"],
    ["rejections", "Rejected calls"], ["fallbacks", "Fallbacks"], ["timeouts", "Timeouts"],
  ];

  function el(tag, attrs, children) {
    const node = document.createElement(tag);
    for (const [key, value] of Object.entries(attrs || {})) {
      if (value === null || value === undefined) continue;
      if (key === "text") node.textContent = String(value);
      else if (key === "class") node.className = value;
      else node.setAttribute(key, String(value));
    }
    for (const child of children || []) node.appendChild(child);
    return node;
  }

  function token(text) {
    // A safe CSS class from a state or status value.
    return String(text || "").toLowerCase().replace(/[^a-z0-9_-]/g, "");
  }

  function replace(container, nodes) {
    container.replaceChildren(...nodes);
  }

  function show(id, visible) {
    document.getElementById(id).hidden = !visible;
  }

  function fmtMetrics(metrics) {
    return Object.entries(metrics || {})
      .map(([k, v]) => `${k}=${Number(v).toPrecision(3)}`).join(" ");
  }

  function renderTotals(totals) {
    replace(document.getElementById("totals"), TOTALS.map(([key, label]) =>
      el("div", { class: "total", "data-total": key }, [
        el("div", { class: "value", text: (totals || {})[key] || 0 }),
        el("div", { class: "label", text: label }),
      ])));
  }

  function renderRuns(runs, error) {
    const errorBox = document.getElementById("runs-error");
    errorBox.hidden = !error;
    errorBox.textContent = error ? `Runs unavailable: ${error}` : "";
    const rows = runs.map((run) => {
      const pct = run.percent === null || run.percent === undefined ? null : Number(run.percent);
      const fill = el("div", { class: "fill" });
      // CSSOM, not a style attribute: the page's CSP forbids inline styles.
      fill.style.width = `${pct === null ? 0 : pct}%`;
      const bar = el("div", {
        class: "bar", role: "progressbar", "aria-valuemin": 0, "aria-valuemax": 100,
        "aria-valuenow": pct === null ? null : pct,
      }, [fill, el("div", { class: "text", text: pct === null ? "–" : `${pct.toFixed(1)}%` })]);
      const checkpoints = run.checkpoints || [];
      const chips = checkpoints.slice(-8).map((c, i, shown) =>
        el("span", {
          class: i === shown.length - 1 ? "chip latest" : "chip",
          title: [c.saved_at, fmtMetrics(c.metrics)].filter(Boolean).join(" "),
          text: `step ${c.step}`,
        }));
      if (checkpoints.length > 8) chips.unshift(el("span", { class: "chip", text: `+${checkpoints.length - 8}` }));
      const stepText = run.total_steps ? `${run.step} / ${run.total_steps}` : String(run.step);
      return el("tr", { "data-run": run.id }, [
        el("td", {}, [el("div", { text: run.name || `run ${run.id}` }),
          el("div", { class: "stats", text: fmtMetrics(run.metrics) }),
          run.error ? el("div", { class: "run-error", text: run.error }) : el("span")]),
        el("td", {}, [el("span", { class: `badge ${token(run.status)}`, text: run.status })]),
        el("td", {}, [bar]),
        el("td", { text: stepText }),
        el("td", { text: run.epoch }),
        el("td", { text: run.resumes }),
        el("td", {}, [el("div", { class: "chips" }, chips)]),
      ]);
    });
    replace(document.querySelector("#runs tbody"), rows);
    show("runs-empty", rows.length === 0 && !error);
  }

  function renderBreakers(breakers) {
    const cards = breakers.map((b) => {
      const stats = [];
      if (b.failure_threshold !== undefined && b.failure_threshold !== null) {
        stats.push(`failures ${b.failure_count}/${b.failure_threshold}`);
      }
      if (b.failed_calls !== undefined) stats.push(`failed ${b.failed_calls}`);
      if (b.rejected_calls !== undefined) stats.push(`rejected ${b.rejected_calls}`);
      if (b.retry_after !== undefined && b.retry_after !== null) {
        stats.push(`probe in ${Number(b.retry_after).toFixed(1)}s`);
      }
      return el("div", { class: `breaker ${token(b.state)}`, "data-breaker": b.name, "data-state": b.state }, [
        el("div", { class: "top" }, [
          el("span", { class: "name", text: b.name }),
          el("span", { class: `badge ${token(b.state)}`, text: String(b.state).replace("_", " ") }),
        ]),
        el("div", { class: "stats", text: stats.join(" · ") }),
      ]);
    });
    replace(document.getElementById("breakers"), cards);
    show("breakers-empty", cards.length === 0);
  }

  function renderTransitions(transitions) {
    const items = transitions.map((t) => el("li", { "data-transition": t.name }, [
      el("time", { datetime: t.at, text: new Date(t.at).toLocaleTimeString() }),
      el("strong", { text: t.name }),
      el("span", { class: `badge ${token(t.from)}`, text: t.from.replace("_", " ") }),
      el("span", { class: "arrow", text: "→" }),
      el("span", { class: `badge ${token(t.to)}`, text: t.to.replace("_", " ") }),
    ]));
    replace(document.getElementById("transitions"), items);
    show("transitions-empty", items.length === 0);
  }

  function renderRetries(retries) {
    const rows = retries.map((r) => el("tr", { "data-retry": r.name }, [
      el("td", { text: r.name }), el("td", { text: r.retries }),
      el("td", { text: r.recovered }), el("td", { text: r.gave_up }),
    ]));
    replace(document.querySelector("#retries tbody"), rows);
    show("retries-empty", rows.length === 0);
  }

  function setStatus(state, text) {
    const status = document.getElementById("status");
    status.dataset.state = state;
    status.textContent = text;
  }

  async function poll() {
    try {
      const response = await fetch(feedUrl, { cache: "no-store", headers: { Accept: "application/json" } });
      if (!response.ok) throw new Error(`HTTP ${response.status}`);
      const data = await response.json();
      renderTotals(data.totals);
      renderRuns(data.runs || [], data.runs_error);
      renderBreakers(data.breakers || []);
      renderTransitions(data.transitions || []);
      renderRetries(data.retries || []);
      setStatus("live", "live");
      document.getElementById("updated").textContent =
        `Updated ${new Date(data.generated_at).toLocaleTimeString()} · polling every ${(pollMs / 1000).toFixed(1)} s`;
    } catch (err) {
      setStatus("down", `disconnected (${err.message})`);
    } finally {
      window.setTimeout(poll, pollMs);
    }
  }

  poll();
})();
