// holmes-stream progress page: the alert, live progress (EventSource) and the analysis.
// No dependencies, no build step. Markdown is rendered by building DOM nodes (never innerHTML),
// so nothing in an analysis can inject markup or script.
"use strict";

(function () {
  const TERMINAL = new Set(["completed", "failed", "cancelled", "skipped", "budget_exceeded"]);
  const id = decodeURIComponent(location.pathname.split("/").filter(Boolean).pop() || "");
  const params = new URLSearchParams(location.search);
  const token = params.get("access_token");
  if (token) {
    // Keep the token out of the address bar, history and bookmarks.
    history.replaceState(null, "", location.pathname);
  }
  const api = "/api/v1/investigations/" + encodeURIComponent(id);
  const withToken = (url) => (token ? url + "?access_token=" + encodeURIComponent(token) : url);
  const $ = (sel) => document.getElementById(sel);

  function el(tag, attrs, ...children) {
    const node = document.createElement(tag);
    for (const [k, v] of Object.entries(attrs || {})) node.setAttribute(k, v);
    for (const c of children) node.append(c instanceof Node ? c : document.createTextNode(String(c)));
    return node;
  }

  // ---------------------------------------------------------------- markdown (safe subset)
  const INLINE = /(`+)([\s\S]*?[^`])\1(?!`)|\*\*([\s\S]+?)\*\*|__([\s\S]+?)__|\*([^*\s](?:[^*]*[^*\s])?)\*|\b_([^_\s](?:[^_]*[^_\s])?)_\b|\[([^\]]+)\]\(([^()\s]+)\)/;

  function safeHref(href) {
    try {
      const url = new URL(href, location.href);
      return ["http:", "https:", "mailto:"].includes(url.protocol) ? url.href : null;
    } catch (e) {
      return null;
    }
  }

  function inline(text, parent) {
    let rest = text;
    while (rest) {
      const m = INLINE.exec(rest);
      if (!m) { parent.append(document.createTextNode(rest)); break; }
      if (m.index > 0) parent.append(document.createTextNode(rest.slice(0, m.index)));
      if (m[1] !== undefined) parent.append(el("code", {}, m[2].trim() || m[2]));
      else if (m[3] !== undefined || m[4] !== undefined) inline(m[3] ?? m[4], parent.appendChild(el("strong")));
      else if (m[5] !== undefined || m[6] !== undefined) inline(m[5] ?? m[6], parent.appendChild(el("em")));
      else {
        const href = safeHref(m[8]);
        if (href) inline(m[7], parent.appendChild(el("a", { href, rel: "noopener noreferrer", target: "_blank" })));
        else parent.append(document.createTextNode(m[0]));
      }
      rest = rest.slice(m.index + m[0].length);
    }
    return parent;
  }

  function renderMarkdown(source) {
    const out = document.createDocumentFragment();
    const lines = String(source || "").replace(/\r\n?/g, "\n").split("\n");
    let i = 0;
    while (i < lines.length) {
      const line = lines[i];
      let m;
      if (/^\s*$/.test(line)) { i++; continue; }
      if ((m = /^\s*(```|~~~)\s*([\w+-]*)\s*$/.exec(line))) {
        const fence = m[1], body = [];
        i++;
        while (i < lines.length && !lines[i].trim().startsWith(fence)) body.push(lines[i++]);
        i++;
        const code = el("code", m[2] ? { "data-lang": m[2] } : {}, body.join("\n"));
        out.append(el("pre", {}, code));
        continue;
      }
      if ((m = /^(#{1,6})\s+(.*?)\s*#*\s*$/.exec(line))) {
        out.append(inline(m[2], el("h" + m[1].length)));
        i++;
        continue;
      }
      if (/^\s*([-*_])(\s*\1){2,}\s*$/.test(line)) { out.append(el("hr")); i++; continue; }
      if (/^\s*>/.test(line)) {
        const body = [];
        while (i < lines.length && /^\s*>/.test(lines[i])) body.push(lines[i++].replace(/^\s*>\s?/, ""));
        const quote = el("blockquote");
        quote.append(renderMarkdown(body.join("\n")));
        out.append(quote);
        continue;
      }
      if ((m = /^\s*([-*+]|\d+[.)])\s+/.exec(line))) {
        const ordered = /\d/.test(m[1]);
        const list = el(ordered ? "ol" : "ul");
        const item = ordered ? /^\s*\d+[.)]\s+(.*)$/ : /^\s*[-*+]\s+(.*)$/;
        while (i < lines.length) {
          const im = item.exec(lines[i]);
          if (im) { list.append(inline(im[1], el("li"))); i++; continue; }
          if (/^\s{2,}\S/.test(lines[i]) && list.lastChild) {
            list.lastChild.append(document.createTextNode(" "));
            inline(lines[i].trim(), list.lastChild);
            i++;
            continue;
          }
          break;
        }
        out.append(list);
        continue;
      }
      const para = [];
      while (
        i < lines.length && !/^\s*$/.test(lines[i]) &&
        !/^(#{1,6}\s|\s*(```|~~~)|\s*>|\s*([-*+]|\d+[.)])\s+)/.test(lines[i])
      ) para.push(lines[i++].trim());
      out.append(inline(para.join(" "), el("p")));
    }
    return out;
  }
  window.holmesRenderMarkdown = renderMarkdown; // for tests and the curious

  // ---------------------------------------------------------------- page
  function showError(message) {
    const box = $("error");
    box.textContent = message;
    box.hidden = false;
  }

  function setStatus(status) {
    const node = $("status");
    node.textContent = status;
    node.dataset.status = status;
  }

  function renderRecord(record) {
    setStatus(record.status);
    document.title = (record.alert.labels.alertname || "alert") + " · holmes-stream";
    const labels = record.alert.labels || {};
    $("alert-title").textContent =
      (labels.alertname || "alert") + (labels.namespace ? " in " + labels.namespace : "") +
      " — " + record.alert.status + " since " + record.alert.startsAt;
    const dl = $("alert-labels");
    dl.replaceChildren();
    for (const [k, v] of Object.entries(labels)) dl.append(el("dt", {}, k), el("dd", {}, v));
    const ann = $("alert-annotations");
    ann.replaceChildren();
    for (const [k, v] of Object.entries(record.alert.annotations || {})) {
      ann.append(el("p", {}, el("strong", {}, k + ": "), v));
    }
    const analysis = $("analysis");
    if (record.result && record.result.analysis) {
      analysis.replaceChildren(renderMarkdown(record.result.analysis));
      analysis.dataset.rendered = "true";
    } else if (TERMINAL.has(record.status) || record.status === "dead_lettered") {
      analysis.replaceChildren(el("p", { class: "muted" }, record.reason || record.error || "No analysis."));
      analysis.dataset.rendered = "true";
    }
  }

  function summary(type, payload) {
    payload = payload || {};
    if (payload.tool_name) return payload.tool_name + (payload.status ? " → " + payload.status : "");
    if (type === "ai_message" && payload.content) return String(payload.content).slice(0, 140);
    if (type === "token_count" && payload.tokens) {
      const total = payload.tokens.total_tokens;
      return total !== undefined ? total + " tokens in context" : JSON.stringify(payload.tokens).slice(0, 100);
    }
    if (payload.reason) return payload.reason;
    if (payload.error) return payload.error;
    if (payload.attempt) return "attempt " + payload.attempt;
    return "";
  }

  async function loadRecord() {
    const response = await fetch(withToken(api), { headers: { Accept: "application/json" } });
    if (!response.ok) {
      let detail = response.statusText;
      try { detail = (await response.json()).detail || detail; } catch (e) { /* not JSON */ }
      throw new Error(response.status + ": " + detail);
    }
    return response.json();
  }

  function follow() {
    const events = $("events");
    const source = new EventSource(withToken(api + "/events"));
    const seen = new Set();
    $("stream-state").textContent = "following…";
    const onEvent = (msg) => {
      const event = JSON.parse(msg.data);
      if (seen.has(event.seq)) return;
      seen.add(event.seq);
      events.append(
        el("li", { "data-type": event.type, "data-seq": String(event.seq) },
          el("span", { class: "seq" }, "#" + event.seq),
          el("span", { class: "etype" }, event.type),
          summary(event.type, event.payload))
      );
      if (TERMINAL.has(event.type)) {
        source.close();
        $("stream-state").textContent = "finished";
        loadRecord().then(renderRecord).catch((e) => showError(String(e.message || e)));
      }
    };
    for (const type of [
      "queued", "started", "start_tool_calling", "tool_calling_result", "ai_message", "token_count",
      "conversation_history_compacted", "ai_answer_end", "retry", "error", ...TERMINAL,
    ]) source.addEventListener(type, onEvent);
    source.onerror = () => {
      if (source.readyState === EventSource.CLOSED) {
        $("stream-state").textContent = "disconnected: reload the page (with a new link if the access token expired)";
      } else {
        $("stream-state").textContent = "reconnecting…";
      }
    };
  }

  loadRecord()
    .then((record) => { renderRecord(record); follow(); })
    .catch((e) => { setStatus("error"); showError(String(e.message || e)); });
})();
