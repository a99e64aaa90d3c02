// The console page: sign in, start and cancel runs, and watch their events live.

import { NotificationsClient, State } from "../notifications/client.js";
import { ApiError, Session, SignedOut } from "./api.js";
import {
  RunStore,
  eventItem,
  formatDuration,
  formatTime,
  isActive,
  runButton,
  statusLabel,
  timelineInsert,
} from "./runs.js";

const $ = (id) => document.getElementById(id);
const STATE_TEXT = {
  [State.CONNECTING]: "Connecting…",
  [State.LIVE]: "Live",
  [State.RECONNECTING]: "Reconnecting…",
  [State.SIGNED_OUT]: "Signed out",
};
const RUNS_PAGE = 20;

let store = new RunStore();
let client = null;
let selectedId = null;
let historyLoaded = false;
let oldestLoaded = null; // created_at of the oldest run loaded, for "Load older runs"
let agents = [];
let ticker = null;
let historyRetry = null;

const session = new Session({
  onAccess: (token) => client?.reauth(token), // keep the live socket past the old token's expiry
  onSignedOut: () => showSignedOut(),
});

function message(id, text) {
  $(id).textContent = text;
}

function describe(error) {
  if (error instanceof ApiError) return error.code ? `${error.message} (${error.code})` : error.message;
  if (error instanceof SignedOut) return "Your session ended: sign in again.";
  return "The server could not be reached. Try again.";
}

// Signing in and out.

// Forget everything of the session, so the next user of this page sees none of it.
function showSignedOut() {
  client?.stop();
  client = null;
  clearInterval(ticker);
  clearTimeout(historyRetry);
  store = new RunStore();
  selectedId = null;
  historyLoaded = false;
  agents = [];
  oldestLoaded = null;
  $("app-view").hidden = true;
  $("who").hidden = true;
  $("login-view").hidden = false;
  $("runs").replaceChildren();
  delete $("runs").dataset.loaded;
  $("timeline").replaceChildren();
  $("run-detail").hidden = true;
  $("run-title").textContent = "No run selected";
  for (const id of ["app-error", "run-error", "start-error"]) message(id, "");
  if (location.hash) history.replaceState(null, "", location.pathname);
  showConnection(State.SIGNED_OUT);
}

function showConnection(state) {
  const node = $("connection");
  node.dataset.state = state;
  node.textContent = STATE_TEXT[state];
}

function signedIn() {
  client?.stop(); // never two clients
  clearInterval(ticker);
  $("login-view").hidden = true;
  $("app-view").hidden = false;
  const scheme = location.protocol === "https:" ? "wss" : "ws";
  client = new NotificationsClient({
    url: `${scheme}://${location.host}/ws/notifications/`,
    getToken: (options) => session.token(options),
    onEvent: showEvent,
    onState: showConnection,
    onGap: () => {
      // We missed events we cannot replay: take the log's word for every run.
      for (const run of store.runs.values()) run.eventsLoaded = false;
      loadHistory();
    },
    onFrame: (frame) => {
      if (frame.type === "hello") {
        $("username").textContent = frame.user.username;
        $("who").hidden = false;
        // History is read after the first hello: anything older is in the
        // log, anything newer comes live, so nothing falls in between.
        if (!historyLoaded) loadHistory();
      }
    },
  });
  client.start();
  ticker = setInterval(showRunningDuration, 250);
}

$("login-form").addEventListener("submit", async (submit) => {
  submit.preventDefault();
  message("login-error", "");
  const form = new FormData(submit.target);
  const button = submit.target.querySelector("button[type=submit]");
  button.disabled = true; // one sign-in at a time
  try {
    await session.login(form.get("username"), form.get("password"));
  } catch (error) {
    message("login-error", error instanceof ApiError && error.status === 401 ? "Wrong username or password." : describe(error));
    return;
  } finally {
    button.disabled = false;
  }
  $("login-password").value = "";
  signedIn();
});

$("logout").addEventListener("click", () => session.logout());

// Loading what is already in the log.

async function loadHistory() {
  historyLoaded = true;
  clearTimeout(historyRetry);
  message("app-error", "");
  try {
    if (!agents.length) await loadAgents();
    const page = await session.call("GET", `/api/runs/?limit=${RUNS_PAGE}`);
    for (const run of page.results) store.applyRun(run);
    trackOldest(page.results);
    const wanted = new URLSearchParams(location.hash.slice(1)).get("run");
    if (selectedId) {
      store.get(selectedId).eventsLoaded = false;
      await selectRun(selectedId);
    } else if (wanted && store.get(wanted)) {
      await selectRun(wanted);
    } else {
      renderRuns();
    }
    $("runs").dataset.loaded = "true"; // for tests and styles: the history is in
  } catch (error) {
    if (error instanceof SignedOut) return;
    historyLoaded = false;
    message("app-error", `Could not load your runs: ${describe(error)} Retrying…`);
    historyRetry = setTimeout(loadHistory, 3000);
  }
}

function trackOldest(results) {
  if (results.length) oldestLoaded = results[results.length - 1].created_at;
  $("runs-more").hidden = results.length < RUNS_PAGE;
}

$("runs-more").addEventListener("click", async () => {
  message("app-error", "");
  try {
    const query = new URLSearchParams({ limit: RUNS_PAGE, before: oldestLoaded });
    const page = await session.call("GET", `/api/runs/?${query}`);
    for (const run of page.results) store.applyRun(run);
    trackOldest(page.results);
    renderRuns();
  } catch (error) {
    message("app-error", describe(error));
  }
});

async function loadEvents(run) {
  let url = `/api/events/?run=${run.id}&limit=500`;
  while (url) {
    const page = await session.call("GET", url);
    for (const frame of page.results) showEvent(frame);
    // `next` is absolute; keep requests on this origin's path.
    url = page.next ? new URL(page.next).pathname + new URL(page.next).search : null;
  }
  run.eventsLoaded = true;
}

// Agents and starting runs.

async function loadAgents() {
  agents = await session.call("GET", "/api/agents/");
  const select = $("agent");
  select.replaceChildren(...agents.map((agent) => new Option(agent.name, agent.name)));
  showAgent();
}

function showAgent() {
  const agent = agents.find((candidate) => candidate.name === $("agent").value);
  if (!agent) return;
  message("agent-description", agent.description);
  $("agent-fields").replaceChildren(
    ...Object.entries(agent.input).flatMap(([name, help]) => {
      const term = document.createElement("dt");
      term.textContent = name;
      const description = document.createElement("dd");
      description.textContent = help;
      return [term, description];
    }),
  );
  $("input").value = JSON.stringify(agent.example ?? {});
}

$("agent").addEventListener("change", showAgent);

$("start-form").addEventListener("submit", async (submit) => {
  submit.preventDefault();
  message("start-error", "");
  let input;
  try {
    input = JSON.parse($("input").value.trim() || "{}");
  } catch (error) {
    message("start-error", `Input is not valid JSON: ${error.message}`);
    $("input").focus();
    return;
  }
  const body = { agent: $("agent").value, input };
  const timeout = $("timeout").value;
  if (timeout !== "") body.timeout = Number(timeout);
  const button = submit.target.querySelector("button[type=submit]");
  button.disabled = true;
  try {
    const run = await session.call("POST", "/api/runs/", body);
    store.applyRun(run).eventsLoaded = true; // a new run: its events all come live
    await selectRun(run.id);
  } catch (error) {
    message("start-error", describe(error));
  } finally {
    button.disabled = false;
  }
});

$("cancel").addEventListener("click", async () => {
  const run = store.get(selectedId);
  if (!run) return;
  $("cancel").disabled = true;
  $("cancel").textContent = "Cancelling…";
  try {
    await session.call("POST", `/api/runs/${run.id}/cancel/`);
    // The run's agent_error (cancelled) arrives as an event.
  } catch (error) {
    message("run-error", describe(error));
    $("cancel").disabled = false;
    $("cancel").textContent = "Cancel run";
  }
});

// Showing runs and events.

function showEvent(frame) {
  const run = store.applyEvent(frame);
  if (!run) return; // already shown
  if (!run.known) fetchRun(run); // started elsewhere (another tab, the CLI) or older than the list
  renderRunItem(run);
  if (run.id === selectedId) {
    timelineInsert($("timeline"), eventItem(frame, run.started_at ?? run.created_at));
    showSelectedSummary();
  }
}

async function fetchRun(run) {
  run.known = true; // once
  try {
    store.applyRun(await session.call("GET", `/api/runs/${run.id}/`));
    renderRuns();
    if (run.id === selectedId) showSelectedSummary();
  } catch {
    // Its events still show; only the run's own fields (input, timeout) are missing.
  }
}

function renderRuns() {
  const focused = document.activeElement?.dataset?.run; // keep a keyboard user's place
  const runs = store.list();
  $("runs").replaceChildren(...runs.map((run) => runListItem(run)));
  $("runs-empty").hidden = runs.length > 0;
  if (focused) $("runs").querySelector(`button[data-run="${focused}"]`)?.focus();
}

function runListItem(run) {
  const item = document.createElement("li");
  item.dataset.run = run.id;
  item.append(runButton(run, run.id === selectedId));
  return item;
}

function renderRunItem(run) {
  const status = $("runs").querySelector(`li[data-run="${run.id}"] .status`);
  if (!status) return renderRuns(); // a run started elsewhere (another tab, the CLI)
  // Update in place, so a keyboard user's focus stays where it is.
  status.className = `status ${run.status}`;
  status.textContent = statusLabel(run.status);
}

$("runs").addEventListener("click", (click) => {
  const button = click.target.closest("button[data-run]");
  if (!button) return;
  selectRun(button.dataset.run);
  // On one column the run is below the list: bring it into view.
  if (matchMedia("(max-width: 50rem)").matches) $("run-view").scrollIntoView({ block: "start" });
});

async function selectRun(id) {
  selectedId = id;
  history.replaceState(null, "", `#run=${id}`);
  message("run-error", "");
  for (const button of $("runs").querySelectorAll("button[data-run]")) {
    button.setAttribute("aria-current", String(button.dataset.run === id));
  }
  if (!$("runs").querySelector(`button[data-run="${id}"]`)) renderRuns();
  const run = store.get(id);
  $("run-title").textContent = `${run.agent} run`;
  $("run-detail").hidden = false;
  $("cancel").disabled = false;
  $("cancel").textContent = "Cancel run";
  $("timeline").replaceChildren();
  const start = () => run.started_at ?? run.created_at;
  for (const frame of [...run.events.values()].sort((a, b) => a.seq - b.seq)) {
    $("timeline").append(eventItem(frame, start()));
  }
  showSelectedSummary();
  if (!run.eventsLoaded) {
    try {
      await loadEvents(run);
    } catch (error) {
      message("run-error", describe(error));
    }
  }
}

function showRunningDuration() {
  const run = store.get(selectedId);
  if (run && isActive(run) && run.started_at) {
    $("run-duration").textContent = `${formatDuration(Math.max(0, Date.now() - Date.parse(run.started_at)))} so far`;
  }
}

function showSelectedSummary() {
  const run = store.get(selectedId);
  if (!run) return;
  const status = $("run-status");
  status.className = `status ${run.status}`;
  status.textContent = statusLabel(run.status);
  $("run-id").textContent = run.id;
  $("run-created").textContent = formatTime(run.started_at ?? run.created_at);
  const running = isActive(run);
  $("cancel").hidden = !running;
  const outcome = $("run-outcome");
  outcome.hidden = running;
  outcome.className = `outcome ${run.status}`;
  if (run.status === "completed") outcome.textContent = `Result: ${JSON.stringify(run.result)}`;
  else if (run.error) outcome.textContent = `${run.error.kind}: ${run.error.message}`;
  else outcome.hidden = true;
  if (running && run.started_at) showRunningDuration();
  else $("run-duration").textContent = running ? "not started" : formatDuration(run.duration_ms) || "—";
}

// Start: signed in already (a reload), or show the login form.

if (session.signedIn) signedIn();
else showSignedOut();
