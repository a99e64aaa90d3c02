// What the console knows about the user's runs, built from REST snapshots and
// live events, and how it shows them. All text goes in with textContent:
// thoughts, inputs and results are user data, never markup.

const TERMINAL = new Set(["completed", "failed", "timed_out", "cancelled"]);
const ERROR_STATUS = { timeout: "timed_out", cancelled: "cancelled" }; // any other kind: failed

export const isActive = (run) => !TERMINAL.has(run.status);
const stage = (status) => (TERMINAL.has(status) ? 2 : status === "running" ? 1 : 0);

export class RunStore {
  constructor() {
    this.runs = new Map(); // id -> run
  }

  get(id) {
    return this.runs.get(id);
  }

  // Newest first.
  list() {
    return [...this.runs.values()].sort((a, b) => b.created_at.localeCompare(a.created_at));
  }

  // Merge a run from the API. A snapshot can be older than events already
  // seen live (a start's response often arrives after the run's first
  // events), so it never moves a run back: not from running to queued, not
  // from an end to running.
  applyRun(snapshot) {
    const run = this.ensure(snapshot.id, snapshot.agent, snapshot.created_at);
    const keep = stage(run.status) > stage(snapshot.status);
    const { status, started_at, result, error, duration_ms, finished_at } = run;
    Object.assign(run, snapshot, { events: run.events, eventsLoaded: run.eventsLoaded, known: true });
    if (keep) Object.assign(run, { status, started_at, result, error, duration_ms, finished_at });
    return run;
  }

  // Record an event; returns its run, or null if this event was already known.
  applyEvent(frame) {
    const run = this.ensure(frame.run_id, frame.agent, frame.created_at);
    if (run.events.has(frame.seq)) return null;
    run.events.set(frame.seq, frame);
    const data = frame.data;
    if (frame.event === "agent_started") {
      run.started_at ??= frame.created_at;
      if (!TERMINAL.has(run.status)) run.status = "running";
    } else if (frame.event === "agent_completed") {
      Object.assign(run, { status: "completed", result: data.result, duration_ms: data.duration_ms });
      run.finished_at = frame.created_at;
    } else if (frame.event === "agent_error") {
      run.status = ERROR_STATUS[data.kind] ?? "failed";
      Object.assign(run, { error: { kind: data.kind, message: data.message }, duration_ms: data.duration_ms });
      run.finished_at = frame.created_at;
    }
    return run;
  }

  ensure(id, agent, createdAt) {
    let run = this.runs.get(id);
    if (!run) {
      // known: the API's view of the run has been asked for (or it came from the API).
      run = { id, agent, status: "queued", created_at: createdAt, events: new Map(), eventsLoaded: false, known: false };
      this.runs.set(id, run);
    }
    return run;
  }
}

// DOM helpers.

export function el(tag, { className, text, attrs } = {}, children = []) {
  const node = document.createElement(tag);
  if (className) node.className = className;
  if (text !== undefined) node.textContent = text;
  for (const [name, value] of Object.entries(attrs ?? {})) node.setAttribute(name, value);
  for (const child of children) node.append(child);
  return node;
}

const json = (value) => JSON.stringify(value, null, 2);
const block = (value) => el("pre", { text: typeof value === "string" ? value : json(value) });

export const statusLabel = (status) => status.replace("_", " ");

export function formatDuration(ms) {
  if (ms === null || ms === undefined) return "";
  ms = Math.round(ms);
  return ms < 1000 ? `${ms} ms` : `${(ms / 1000).toFixed(ms < 10000 ? 2 : 1)} s`;
}

export function formatTime(iso) {
  return new Date(iso).toLocaleString(undefined, { dateStyle: "medium", timeStyle: "medium" });
}

// One event of the timeline: a label, when it happened relative to the run's
// first event, and its details.
export function eventItem(frame, runStart) {
  const data = frame.data;
  const offset = runStart ? (Date.parse(frame.created_at) - Date.parse(runStart)) / 1000 : 0;
  let title;
  const details = [];
  switch (frame.event) {
    case "agent_started":
      title = "Started";
      details.push(el("p", { text: "Input" }), block(data.input));
      break;
    case "agent_thinking":
      title = `Thinking (step ${data.step})`;
      details.push(el("p", { className: "thought", text: data.thought }));
      break;
    case "tool_executing":
      title = `Calling ${data.tool}`;
      details.push(el("p", { text: "Arguments" }), block(data.args));
      break;
    case "tool_completed":
      title = data.ok ? `${data.tool} returned` : `${data.tool} failed`;
      if (data.duration_ms !== null) title += ` in ${formatDuration(data.duration_ms)}`;
      details.push(data.ok ? block(data.result) : el("p", { className: "error-text", text: data.error }));
      break;
    case "agent_completed":
      title = `Completed in ${formatDuration(data.duration_ms)}`;
      details.push(el("p", { text: "Result" }), block(data.result));
      break;
    case "agent_error":
      title = `Error: ${data.kind}`;
      if (data.duration_ms !== null && data.duration_ms !== undefined) title += ` after ${formatDuration(data.duration_ms)}`;
      details.push(el("p", { className: "error-text", text: data.message }));
      break;
    default:
      title = frame.event;
      details.push(block(data));
  }
  return el("li", { className: `event ${frame.event}`, attrs: { "data-seq": frame.seq, "data-event": frame.event } }, [
    el("div", { className: "event-head" }, [
      el("span", { className: "event-title", text: title }),
      el("span", { className: "event-meta", text: `#${frame.seq} · +${offset.toFixed(3)} s` }),
    ]),
    ...details,
  ]);
}

// Put an event's item into the timeline in seq order (REST pages and live
// events can arrive interleaved).
export function timelineInsert(list, item) {
  const seq = Number(item.dataset.seq);
  for (const existing of list.children) {
    if (Number(existing.dataset.seq) > seq) {
      list.insertBefore(item, existing);
      return;
    }
  }
  list.append(item);
}

export function runButton(run, selected) {
  return el("button", { className: "run-item", attrs: { type: "button", "data-run": run.id, "aria-current": String(selected) } }, [
    el("span", { className: "run-agent", text: run.agent }),
    el("span", { className: `status ${run.status}`, text: statusLabel(run.status) }),
    el("span", { className: "run-when", text: formatTime(run.created_at) }),
  ]);
}
