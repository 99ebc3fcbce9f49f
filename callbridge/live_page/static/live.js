// callbridge live page: vanilla JavaScript, no build step, no third-party code.
//
// The API token lives in sessionStorage (this tab only) and goes in the Authorization
// header of every request, never in a URL. EventSource cannot send that header, so the
// event stream is read with fetch() and parsed here as the SSE spec describes; it resumes
// with Last-Event-ID after a dropped connection and stops on 204 or after the last event.
"use strict";

(() => {
  const TOKEN_KEY = "callbridge.apiToken";
  const REFRESH_MS = 5000;
  const $ = (id) => document.getElementById(id);

  const state = {
    token: sessionStorage.getItem(TOKEN_KEY),
    callSid: null,
    stream: null, // {controller, lastEventId, retryMs, done}
    refreshTimer: null,
    turns: new Set(), // sequences shown for the current call
  };

  // --- the token -------------------------------------------------------------------

  function showConnect(message) {
    $("connect").hidden = false;
    $("app").hidden = true;
    $("forget").hidden = true;
    const error = $("token-error");
    error.textContent = message || "";
    error.hidden = !message;
    stopRefresh();
    stopStream();
    $("token").focus();
  }

  function forgetToken(message) {
    sessionStorage.removeItem(TOKEN_KEY);
    state.token = null;
    showConnect(message);
  }

  async function connect(token) {
    state.token = token;
    const response = await api("/v1/calls?limit=1");
    if (!response) return;
    if (!response.ok) {
      forgetToken(`The bridge answered ${response.status}.`);
      return;
    }
    sessionStorage.setItem(TOKEN_KEY, token);
    $("connect").hidden = true;
    $("app").hidden = false;
    $("forget").hidden = false;
    await refreshCalls();
    startRefresh();
    openFromHash();
  }

  async function api(path, options = {}) {
    const headers = { Authorization: `Bearer ${state.token}`, ...(options.headers || {}) };
    let response;
    try {
      response = await fetch(path, { cache: "no-store", ...options, headers });
    } catch (error) {
      if (error.name === "AbortError") throw error;
      showCallsError("The bridge cannot be reached.");
      return null;
    }
    if (response.status === 401) {
      forgetToken("That token was not accepted. Check CALLBRIDGE_API_TOKENS.");
      return null;
    }
    return response;
  }

  // --- the call lists --------------------------------------------------------------

  function showCallsError(message) {
    const error = $("calls-error");
    error.textContent = message || "";
    error.hidden = !message;
  }

  function startRefresh() {
    stopRefresh();
    state.refreshTimer = setInterval(refreshCalls, REFRESH_MS);
  }

  function stopRefresh() {
    if (state.refreshTimer) clearInterval(state.refreshTimer);
    state.refreshTimer = null;
  }

  async function refreshCalls() {
    const [live, recent] = await Promise.all([
      api("/v1/calls?status=live&limit=50"),
      api("/v1/calls?limit=20"),
    ]);
    if (!live || !recent) return;
    if (!live.ok || !recent.ok) {
      showCallsError(`Listing calls failed (${live.ok ? recent.status : live.status}).`);
      return;
    }
    showCallsError("");
    const liveCalls = (await live.json()).calls;
    const recentCalls = (await recent.json()).calls.filter((c) => c.status !== "live");
    renderCalls($("live-calls"), liveCalls);
    renderCalls($("recent-calls"), recentCalls);
    $("no-live").hidden = liveCalls.length > 0;
  }

  function renderCalls(list, calls) {
    list.replaceChildren(...calls.map(callItem));
  }

  function callItem(call) {
    const item = document.createElement("li");
    const link = document.createElement("a");
    link.href = `#call=${encodeURIComponent(call.call_sid)}`;
    link.dataset.callSid = call.call_sid;
    if (call.call_sid === state.callSid) link.setAttribute("aria-current", "true");
    const who = document.createElement("span");
    who.className = "who";
    who.textContent = parties(call);
    const badge = document.createElement("span");
    badge.className = `badge ${call.status}`;
    badge.textContent = call.status;
    who.append(badge);
    const when = document.createElement("span");
    when.className = "when";
    const started = call.started_at || call.created_at;
    const bits = [started ? new Date(started).toLocaleString() : ""];
    if (call.duration_ms != null) bits.push(duration(call.duration_ms));
    bits.push(`${call.segments} segment${call.segments === 1 ? "" : "s"}`);
    when.textContent = bits.filter(Boolean).join(" · ");
    link.append(who, when);
    item.append(link);
    return item;
  }

  function parties(call) {
    if (call.from || call.to) return `${call.from || "unknown"} → ${call.to || "unknown"}`;
    return call.call_sid;
  }

  // --- one call --------------------------------------------------------------------

  function openFromHash() {
    const match = /^#call=(.+)$/.exec(location.hash);
    if (match) openCall(decodeURIComponent(match[1]));
  }

  async function openCall(callSid) {
    stopStream();
    state.callSid = callSid;
    state.turns = new Set();
    for (const link of document.querySelectorAll(".call-list a")) {
      if (link.dataset.callSid === callSid) link.setAttribute("aria-current", "true");
      else link.removeAttribute("aria-current");
    }
    $("transcript").replaceChildren();
    hidePartial();
    $("summary").hidden = true;
    $("call-title").textContent = `Call ${callSid}`;
    $("call-meta").textContent = "";
    setStatus("Connecting…");
    $("call").focus();
    const response = await api(`/v1/calls/${encodeURIComponent(callSid)}`);
    if (!response || state.callSid !== callSid) return;
    if (response.status === 404) {
      setStatus("This call does not exist (or was erased).");
      return;
    }
    if (response.ok) showMeta(await response.json());
    streamEvents(callSid);
  }

  function showMeta(call) {
    $("call-title").textContent = `Call ${parties(call)}`;
    const started = call.started_at ? new Date(call.started_at).toLocaleString() : "not started";
    $("call-meta").textContent = `${call.call_sid} · ${call.status} · ${started}`;
  }

  async function refreshMeta(callSid) {
    const response = await api(`/v1/calls/${encodeURIComponent(callSid)}`);
    if (response && response.ok && state.callSid === callSid) showMeta(await response.json());
  }

  function setStatus(text) {
    $("stream-status").textContent = text;
  }

  // --- the event stream (SSE over fetch) -------------------------------------------

  function stopStream() {
    if (state.stream) {
      state.stream.done = true;
      state.stream.controller.abort();
    }
    state.stream = null;
  }

  async function streamEvents(callSid) {
    const stream = {
      controller: new AbortController(),
      lastEventId: null,
      retryMs: 3000,
      done: false,
      complete: false, // the last event has come: the server ends the stream after it
    };
    state.stream = stream;
    while (!stream.done && state.callSid === callSid) {
      const headers = { Accept: "text/event-stream" };
      if (stream.lastEventId) headers["Last-Event-ID"] = stream.lastEventId;
      let response;
      try {
        response = await api(`/v1/calls/${encodeURIComponent(callSid)}/events`, {
          headers,
          signal: stream.controller.signal,
        });
      } catch (error) {
        return; // aborted: another call was opened
      }
      if (!response) return;
      if (response.status === 204) {
        finish(stream);
        return;
      }
      if (!response.ok) {
        setStatus(`The event stream failed (${response.status}); trying again…`);
      } else {
        setStatus(stream.lastEventId ? "Reconnected." : "Following the call.");
        try {
          await readEvents(response.body, stream, dispatch);
        } catch (error) {
          if (stream.done) return;
        }
        if (stream.done) return;
        if (stream.complete) {
          finish(stream);
          return;
        }
        setStatus("Connection lost; reconnecting…");
      }
      await sleep(stream.retryMs);
    }
  }

  function finish(stream) {
    stream.done = true;
    hidePartial();
    setStatus("The call has ended; nothing more will come.");
  }

  // Parses a text/event-stream body: fields up to a blank line make one message.
  async function readEvents(body, stream, onMessage) {
    const reader = body.pipeThrough(new TextDecoderStream()).getReader();
    let buffer = "";
    let message = { event: "message", data: [], id: null };
    for (;;) {
      const { value, done } = await reader.read();
      if (done) break;
      buffer += value;
      let newline;
      while ((newline = buffer.search(/\r\n|\r|\n/)) >= 0) {
        const line = buffer.slice(0, newline);
        buffer = buffer.slice(newline + (buffer.startsWith("\r\n", newline) ? 2 : 1));
        if (line === "") {
          if (message.data.length) {
            if (message.id !== null) stream.lastEventId = message.id;
            onMessage(message.event, message.data.join("\n"), stream);
          }
          message = { event: "message", data: [], id: null };
          continue;
        }
        if (line.startsWith(":")) continue; // a comment: the heartbeat
        const colon = line.indexOf(":");
        const field = colon < 0 ? line : line.slice(0, colon);
        let text = colon < 0 ? "" : line.slice(colon + 1);
        if (text.startsWith(" ")) text = text.slice(1);
        if (field === "data") message.data.push(text);
        else if (field === "event") message.event = text;
        else if (field === "id") message.id = text;
        else if (field === "retry" && /^\d+$/.test(text)) stream.retryMs = Number(text);
      }
    }
  }

  function dispatch(type, data, stream) {
    let body;
    try {
      body = JSON.parse(data);
    } catch {
      return;
    }
    const payload = body.data || {};
    switch (type) {
      case "call.started":
        showMeta({ ...payload, status: "live" });
        setStatus("Live: following the call.");
        break;
      case "transcript.committed":
        addTurn(payload);
        break;
      case "transcript.partial":
        showPartial(payload);
        break;
      case "call.ended":
        hidePartial();
        showSummary(payload.summary || {}, payload.reason);
        setStatus("The call has ended.");
        refreshMeta(payload.call_sid);
        // With an AI summary on its way the stream carries on until call.summarized.
        stream.complete = !(payload.summary && payload.summary.ai && payload.summary.ai.status === "pending");
        break;
      case "call.summarized":
        showAi(payload.ai || {});
        stream.complete = true;
        break;
      default:
        break;
    }
  }

  function addTurn(segment) {
    if (state.turns.has(segment.sequence) || !segment.text) return;
    state.turns.add(segment.sequence);
    hidePartial(segment.speaker);
    const item = document.createElement("li");
    item.className = "turn";
    item.dataset.speaker = segment.speaker;
    item.dataset.track = segment.track;
    item.dataset.sequence = String(segment.sequence);
    const head = document.createElement("div");
    const speaker = document.createElement("span");
    speaker.className = "speaker";
    speaker.textContent = segment.speaker;
    const time = document.createElement("time");
    time.className = "time";
    time.textContent = clock(segment.start_ms);
    time.dateTime = `PT${(segment.start_ms / 1000).toFixed(1)}S`;
    head.append(speaker, time);
    const text = document.createElement("p");
    text.className = "text";
    text.textContent = segment.text;
    item.append(head, text);
    $("transcript").append(item);
    item.scrollIntoView({ block: "nearest" });
  }

  function showPartial(partial) {
    const box = $("partial");
    box.dataset.speaker = partial.speaker;
    box.textContent = `${partial.speaker} is saying: ${partial.text}`;
    box.hidden = !partial.text;
  }

  function hidePartial(speaker) {
    const box = $("partial");
    if (speaker && box.dataset.speaker && box.dataset.speaker !== speaker) return;
    box.hidden = true;
    box.textContent = "";
  }

  // --- the summary -----------------------------------------------------------------

  function showSummary(summary, reason) {
    $("summary").hidden = false;
    const facts = [
      ["Duration", duration(summary.duration_ms || 0)],
      ["Segments", String(summary.segments ?? "")],
      ["Ended by", reason || summary.reason || ""],
      ["Language", summary.language_code || "—"],
      ["Overlap", duration(summary.overlap_ms || 0)],
      ["Silence", duration(summary.silence_ms || 0)],
    ];
    if (summary.degraded) facts.push(["Incomplete", summary.degraded]);
    fillFacts($("summary-facts"), facts);
    const rows = Object.entries(summary.speakers || {}).map(([label, stats]) => {
      const row = document.createElement("tr");
      const share = summary.talk_ratio && summary.talk_ratio[label];
      const cells = [
        label,
        duration(stats.talk_ms || 0),
        share == null ? "—" : `${Math.round(share * 100)} %`,
        String(stats.turns ?? ""),
        String(stats.words ?? ""),
        stats.words_per_minute == null ? "—" : String(Math.round(stats.words_per_minute)),
      ];
      cells.forEach((value, index) => {
        const cell = document.createElement(index === 0 ? "th" : "td");
        if (index === 0) cell.scope = "row";
        cell.textContent = value;
        row.append(cell);
      });
      return row;
    });
    $("speaker-table").tBodies[0].replaceChildren(...rows);
    if (summary.ai) showAi(summary.ai);
  }

  function showAi(ai) {
    $("summary").hidden = false;
    const status = $("ai-status");
    if (ai.status === "pending") {
      status.textContent = "The AI summary is being written…";
      status.hidden = false;
      return;
    }
    if (ai.status === "failed") {
      status.textContent = `No AI summary: ${(ai.error && ai.error.message) || "it failed"}.`;
      status.hidden = false;
      return;
    }
    status.hidden = true;
    if (ai.gist) {
      $("ai-gist").textContent = ai.gist;
      $("ai-gist").hidden = false;
    }
    const facts = [];
    if (ai.reason) facts.push(["Reason", ai.reason]);
    if (ai.outcome) facts.push(["Outcome", [ai.outcome.status, ai.outcome.text].filter(Boolean).join(": ")]);
    if (ai.sentiment) {
      facts.push(["Sentiment", Object.entries(ai.sentiment).map(([who, s]) => `${who} ${s}`).join(", ")]);
    }
    fillFacts($("ai-details"), facts);
    $("ai-details").hidden = facts.length === 0;
    const actions = (ai.action_items || []).map((action) => {
      const item = document.createElement("li");
      item.textContent = action.owner ? `${action.owner}: ${action.text}` : action.text;
      return item;
    });
    $("ai-actions").replaceChildren(...actions);
    $("ai-actions").hidden = actions.length === 0;
  }

  function fillFacts(list, facts) {
    list.replaceChildren(
      ...facts.flatMap(([name, value]) => {
        const term = document.createElement("dt");
        term.textContent = name;
        const detail = document.createElement("dd");
        detail.textContent = value;
        return [term, detail];
      }),
    );
  }

  // --- small helpers ---------------------------------------------------------------

  function clock(ms) {
    const seconds = Math.max(0, Math.floor(ms / 1000));
    return `${Math.floor(seconds / 60)}:${String(seconds % 60).padStart(2, "0")}`;
  }

  function duration(ms) {
    const seconds = Math.round(ms / 100) / 10;
    if (seconds < 60) return `${seconds.toFixed(1)} s`;
    return `${Math.floor(seconds / 60)} min ${Math.round(seconds % 60)} s`;
  }

  function sleep(ms) {
    return new Promise((resolve) => setTimeout(resolve, ms));
  }

  // --- wiring ----------------------------------------------------------------------

  document.addEventListener("DOMContentLoaded", () => {
    $("token-form").addEventListener("submit", (event) => {
      event.preventDefault();
      const token = $("token").value.trim();
      if (!token) {
        showConnect("Enter an API token.");
        return;
      }
      $("token").value = "";
      connect(token);
    });
    $("forget").addEventListener("click", () => forgetToken(""));
    $("refresh").addEventListener("click", refreshCalls);
    window.addEventListener("hashchange", openFromHash);
    if (state.token) connect(state.token);
    else showConnect("");
  });
})();
