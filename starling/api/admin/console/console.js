// Starling's admin console: plain JavaScript over the Synapse-compatible admin API.
// Everything shown comes from users (names, reasons), so it is only ever set as text,
// never as HTML. The access token lives in sessionStorage (gone with the tab).
"use strict";

const ADMIN = "/_synapse/admin";
const CLIENT = "/_matrix/client/v3";
const state = { token: sessionStorage.getItem("starling-admin-token") };

const $ = (id) => document.getElementById(id);

function say(text, isError = false) {
  const status = $("status");
  status.textContent = text;
  status.className = isError ? "error" : "";
}

async function api(method, path, body, params) {
  const url = new URL(path, window.location.origin);
  for (const [k, v] of Object.entries(params || {})) {
    if (v !== undefined && v !== null && v !== "") url.searchParams.set(k, v);
  }
  const headers = { "Content-Type": "application/json" };
  if (state.token) headers.Authorization = "Bearer " + state.token;
  const resp = await fetch(url, {
    method,
    headers,
    body: body === undefined ? undefined : JSON.stringify(body),
  });
  const data = await resp.json().catch(() => ({}));
  if (!resp.ok) {
    const err = new Error((data.errcode || resp.status) + ": " + (data.error || resp.statusText));
    err.status = resp.status;
    throw err;
  }
  return data;
}

function cell(value) {
  const td = document.createElement("td");
  if (value === null || value === undefined) td.textContent = "–";
  else if (typeof value === "boolean") td.textContent = value ? "yes" : "no";
  else if (typeof value === "number" && value > 1e11) td.textContent = new Date(value).toISOString().slice(0, 16).replace("T", " ");
  else td.textContent = String(value);
  return td;
}

function button(label, onClick) {
  const b = document.createElement("button");
  b.type = "button";
  b.textContent = label;
  b.addEventListener("click", async () => {
    b.disabled = true;
    try {
      await onClick();
    } catch (e) {
      say(e.message, true);
    } finally {
      b.disabled = false;
    }
  });
  return b;
}

// Fill a table: columns are [heading, row -> value]; actions(row) gives buttons.
function fillTable(table, rows, columns, actions) {
  table.replaceChildren();
  const head = table.createTHead().insertRow();
  for (const [title] of columns) {
    const th = document.createElement("th");
    th.textContent = title;
    th.scope = "col";
    head.appendChild(th);
  }
  if (actions) head.appendChild(Object.assign(document.createElement("th"), { textContent: "Actions" }));
  const body = table.createTBody();
  for (const row of rows) {
    const tr = body.insertRow();
    for (const [, get] of columns) tr.appendChild(cell(get(row)));
    if (actions) {
      const td = document.createElement("td");
      for (const b of actions(row)) td.appendChild(b);
      tr.appendChild(td);
    }
  }
  if (rows.length === 0) {
    const td = body.insertRow().insertCell();
    td.colSpan = columns.length + (actions ? 1 : 0);
    td.textContent = "Nothing here.";
  }
}

const enc = encodeURIComponent;

// Poll a background task's status (room deletion, purge, redaction) until it ends.
async function waitTask(path) {
  for (let i = 0; i < 300; i++) {
    const st = await api("GET", path);
    if (st.status === "complete" || st.status === "failed") return st;
    await new Promise((done) => setTimeout(done, 200));
  }
  return { status: "still running" };
}

// --- pages ---------------------------------------------------------------------------------

async function showDashboard() {
  const [users, pending, rooms, reports, destinations, tasks, media] = await Promise.all([
    api("GET", ADMIN + "/v3/users", undefined, { limit: 1 }),
    api("GET", ADMIN + "/v3/users", undefined, { limit: 1, approved: "false" }),
    api("GET", ADMIN + "/v1/rooms", undefined, { limit: 1 }),
    api("GET", ADMIN + "/v1/event_reports", undefined, { limit: 1 }),
    api("GET", ADMIN + "/v1/federation/destinations", undefined, { limit: 1000 }),
    api("GET", ADMIN + "/v1/scheduled_tasks"),
    api("GET", ADMIN + "/v1/statistics/users/media", undefined, { limit: 1000, order_by: "media_length", dir: "b" }),
  ]);
  const mediaBytes = media.users.reduce((sum, u) => sum + u.media_length, 0);
  const mediaFiles = media.users.reduce((sum, u) => sum + u.media_count, 0);
  const top = media.total > media.users.length ? " (the " + media.users.length + " largest users)" : "";
  const running = tasks.scheduled_tasks.filter((t) => t.status === "active" || t.status === "scheduled").length;
  const failedTasks = tasks.scheduled_tasks.filter((t) => t.status === "failed").length;
  const failing = destinations.destinations.filter((d) => d.failure_ts).length;
  const stats = [
    ["Users", users.total],
    ["Awaiting approval", pending.total],
    ["Rooms", rooms.total_rooms],
    ["Open reports", reports.total],
    ["Media stored" + top, (mediaBytes / 1048576).toFixed(1) + " MiB in " + mediaFiles + " files"],
    ["Federation destinations", destinations.total],
    ["Destinations failing", failing],
    ["Background tasks running", running],
    ["Background tasks failed (24 h)", failedTasks],
  ];
  const dl = $("stats");
  dl.replaceChildren();
  for (const [label, value] of stats) {
    const div = document.createElement("div");
    div.append(Object.assign(document.createElement("dt"), { textContent: label }));
    div.append(Object.assign(document.createElement("dd"), { textContent: String(value) }));
    dl.append(div);
  }
}

async function showUsers() {
  const form = $("users-search");
  const params = { name: form.name.value, limit: 100 };
  if (form.deactivated.checked) params.deactivated = "true";
  if (form.pending.checked) params.approved = "false";
  params.locked = "true";
  const data = await api("GET", ADMIN + "/v2/users", undefined, params);
  fillTable(
    $("users-table"),
    data.users,
    [
      ["User", (u) => u.name],
      ["Display name", (u) => u.displayname],
      ["Admin", (u) => u.admin],
      ["Deactivated", (u) => u.deactivated],
      ["Locked", (u) => u.locked],
      ["Approved", (u) => u.approved],
      ["Created", (u) => u.creation_ts],
      ["Last seen", (u) => u.last_seen_ts],
    ],
    (u) =>
      u.deactivated
        ? []
        : [
            ...(u.approved
              ? []
              : [
                  button("Approve", async () => {
                    await api("PUT", ADMIN + "/v2/users/" + enc(u.name), { approved: true });
                    say(u.name + " approved");
                    await showUsers();
                  }),
                ]),
            button("Redact messages", async () => {
              if (!confirm("Redact every message of " + u.name + "?")) return;
              const started = await api("POST", ADMIN + "/v1/user/" + enc(u.name) + "/redact", { rooms: [] });
              say("Redacting the messages of " + u.name + "…");
              const st = await waitTask(ADMIN + "/v1/user/redact_status/" + enc(started.redact_id));
              const failed = Object.keys(st.failed_redactions || {}).length;
              say("Messages of " + u.name + " redacted: " + st.status + (failed ? ", " + failed + " could not be" : ""), failed > 0);
            }),
            button("Deactivate", async () => {
              if (!confirm("Deactivate " + u.name + "? This cannot be undone.")) return;
              await api("POST", ADMIN + "/v1/deactivate/" + enc(u.name), { erase: false });
              say(u.name + " deactivated");
              await showUsers();
            }),
            button(u.locked ? "Unlock" : "Lock", async () => {
              await api("PUT", ADMIN + "/v2/users/" + enc(u.name), { locked: !u.locked });
              say(u.name + (u.locked ? " unlocked" : " locked"));
              await showUsers();
            }),
          ],
  );
}

async function createUser(event) {
  event.preventDefault();
  const form = event.target;
  const userId = form.user_id.value.trim();
  await api("PUT", ADMIN + "/v2/users/" + enc(userId), {
    password: form.password.value,
    admin: form.admin.checked,
  });
  form.reset();
  say(userId + " saved");
  await showUsers();
}

async function showRooms() {
  const data = await api("GET", ADMIN + "/v1/rooms", undefined, {
    search_term: $("rooms-search").search.value,
    limit: 100,
  });
  fillTable(
    $("rooms-table"),
    data.rooms,
    [
      ["Room", (r) => r.room_id],
      ["Name", (r) => r.name],
      ["Alias", (r) => r.canonical_alias],
      ["Members", (r) => r.joined_members],
      ["Local", (r) => r.joined_local_members],
      ["Public", (r) => r.public],
      ["Encryption", (r) => r.encryption],
    ],
    (r) => [
      button("Delete", async () => {
        if (!confirm("Delete " + (r.name || r.room_id) + "? Everyone here leaves and its history is purged.")) return;
        const started = await api("DELETE", ADMIN + "/v2/rooms/" + enc(r.room_id), { block: true, purge: true });
        say("Deleting " + r.room_id + "…");
        for (let i = 0; i < 300; i++) {
          const st = await api("GET", ADMIN + "/v2/rooms/delete_status/" + enc(started.delete_id));
          if (st.status === "complete") { say(r.room_id + " deleted"); break; }
          if (st.status === "failed") { say("Deleting failed: " + (st.error || ""), true); break; }
          await new Promise((done) => setTimeout(done, 200));
        }
        await showRooms();
      }),
    ],
  );
}

async function purgeHistory(event) {
  event.preventDefault();
  const form = event.target;
  const roomId = form.room_id.value.trim();
  const days = Number(form.days.value);
  const started = await api("POST", ADMIN + "/v1/purge_history/" + enc(roomId), {
    purge_up_to_ts: Math.floor(Date.now() - days * 86400000),
    delete_local_events: form.local.checked,
  });
  say("Purging the history of " + roomId + "…");
  const st = await waitTask(ADMIN + "/v1/purge_history_status/" + enc(started.purge_id));
  say("History of " + roomId + " purged: " + st.status + (st.error ? " (" + st.error + ")" : ""), st.status !== "complete");
}

async function showMedia(event) {
  if (event) event.preventDefault();
  const userId = $("media-search").user_id.value.trim();
  if (!userId) return;
  const data = await api("GET", ADMIN + "/v1/users/" + enc(userId) + "/media", undefined, { limit: 100 });
  const server = userId.slice(userId.indexOf(":") + 1);
  fillTable(
    $("media-table"),
    data.media,
    [
      ["Media ID", (m) => m.media_id],
      ["Type", (m) => m.media_type],
      ["Bytes", (m) => m.media_length],
      ["Name", (m) => m.upload_name],
      ["Uploaded", (m) => m.created_ts],
      ["Quarantined by", (m) => m.quarantined_by],
    ],
    (m) => [
      button(m.quarantined_by ? "Release" : "Quarantine", async () => {
        const action = m.quarantined_by ? "unquarantine" : "quarantine";
        await api("POST", ADMIN + "/v1/media/" + action + "/" + enc(server) + "/" + enc(m.media_id), {});
        say("mxc://" + server + "/" + m.media_id + " " + action + "d");
        await showMedia();
      }),
      button("Delete", async () => {
        if (!confirm("Delete this file for good?")) return;
        await api("DELETE", ADMIN + "/v1/media/" + enc(server) + "/" + enc(m.media_id));
        say("mxc://" + server + "/" + m.media_id + " deleted");
        await showMedia();
      }),
    ],
  );
}

async function showReports() {
  const data = await api("GET", ADMIN + "/v1/event_reports", undefined, { limit: 100 });
  fillTable(
    $("reports-table"),
    data.event_reports,
    [
      ["#", (r) => r.id],
      ["When", (r) => r.received_ts],
      ["Room", (r) => r.name || r.room_id],
      ["Event", (r) => r.event_id || "(the room)"],
      ["Sender", (r) => r.sender],
      ["Reported by", (r) => r.user_id],
      ["Reason", (r) => r.reason],
    ],
    (r) => [
      button("Dismiss", async () => {
        await api("DELETE", ADMIN + "/v1/event_reports/" + r.id);
        say("Report " + r.id + " dismissed");
        await showReports();
      }),
    ],
  );
}

async function showFederation() {
  const data = await api("GET", ADMIN + "/v1/federation/destinations", undefined, { limit: 1000 });
  fillTable(
    $("federation-table"),
    data.destinations,
    [
      ["Server", (d) => d.destination],
      ["Failing since", (d) => d.failure_ts || null],
      ["Retry in (ms)", (d) => d.retry_interval || null],
      ["Next retry", (d) => d.retry_until_ts || null],
    ],
    (d) =>
      d.failure_ts
        ? [
            button("Retry now", async () => {
              await api("POST", ADMIN + "/v1/federation/destinations/" + enc(d.destination) + "/reset_connection", {});
              say("Retrying " + d.destination);
              await showFederation();
            }),
          ]
        : [],
  );
}

async function showAudit() {
  const data = await api("GET", ADMIN + "/v1/audit_log", undefined, { limit: 200 });
  fillTable($("audit-table"), data.entries, [
    ["When", (e) => e.ts],
    ["Admin", (e) => e.admin],
    ["Action", (e) => e.method + " " + e.path],
    ["On", (e) => e.target],
    ["Result", (e) => e.status],
  ]);
}

const PAGES = {
  dashboard: showDashboard,
  users: showUsers,
  rooms: showRooms,
  media: null,
  reports: showReports,
  federation: showFederation,
  audit: showAudit,
};

async function route() {
  const loggedIn = Boolean(state.token);
  $("login-page").hidden = loggedIn;
  $("nav").hidden = !loggedIn;
  const name = (location.hash || "#dashboard").slice(1);
  const page = name in PAGES ? name : "dashboard";
  for (const section of document.querySelectorAll(".page")) {
    section.hidden = !loggedIn || section.id !== page + "-page";
  }
  for (const link of document.querySelectorAll("nav a")) {
    if (link.getAttribute("href") === "#" + page) link.setAttribute("aria-current", "page");
    else link.removeAttribute("aria-current");
  }
  if (!loggedIn) return;
  const show = PAGES[page];
  if (!show) return;
  try {
    await show();
  } catch (e) {
    if (e.status === 401) return logout();
    say(e.message, true);
  }
}

async function login(event) {
  event.preventDefault();
  const form = event.target;
  try {
    const resp = await api("POST", CLIENT + "/login", {
      type: "m.login.password",
      identifier: { type: "m.id.user", user: form.user.value.trim() },
      password: form.password.value,
      initial_device_display_name: "Starling admin console",
    });
    state.token = resp.access_token;
    try {
      await api("GET", ADMIN + "/v3/users", undefined, { limit: 1 });
    } catch (e) {
      await api("POST", CLIENT + "/logout", {}).catch(() => {});
      state.token = null;
      throw new Error(e.status === 403 ? "This account is not a server admin." : e.message);
    }
    sessionStorage.setItem("starling-admin-token", state.token);
    form.reset();
    say("Logged in as " + resp.user_id);
    await route();
  } catch (e) {
    say(e.message, true);
  }
}

async function logout() {
  if (state.token) await api("POST", CLIENT + "/logout", {}).catch(() => {});
  state.token = null;
  sessionStorage.removeItem("starling-admin-token");
  location.hash = "";
  say("Logged out");
  await route();
}

function guard(handler) {
  return (event) => {
    event.preventDefault();
    handler(event).catch((e) => say(e.message, true));
  };
}

window.addEventListener("DOMContentLoaded", () => {
  $("login-form").addEventListener("submit", login);
  $("logout").addEventListener("click", logout);
  $("users-search").addEventListener("submit", guard(showUsers));
  $("user-create").addEventListener("submit", guard(createUser));
  $("rooms-search").addEventListener("submit", guard(showRooms));
  $("purge-form").addEventListener("submit", guard(purgeHistory));
  $("media-search").addEventListener("submit", guard(showMedia));
  window.addEventListener("hashchange", route);
  route();
});
