// The page: sign up or log in, upload straight to S3 in parts (resumable), watch the videos.
// Plain DOM and fetch; the API is /api (see /api/docs). The token stays in localStorage so a
// reload keeps the session, and a picked file stays in IndexedDB until its upload completes, so
// a reload resumes it (larger files than KEEP_MAX resume when picked again).

const PARALLEL = 4;
const ATTEMPTS = 5;
const POLL_MS = 2000;
const $ = (id) => document.getElementById(id);
let token = localStorage.getItem("videoproc.token");

function say(text, isError = false) {
  $("message").textContent = text;
  $("message").classList.toggle("error", isError);
}

async function api(method, path, body, headers = {}) {
  const options = { method, headers: { ...headers } };
  if (token) options.headers.Authorization = `Bearer ${token}`;
  if (body !== undefined) {
    options.headers["Content-Type"] = "application/json";
    options.body = JSON.stringify(body);
  }
  const response = await fetch(path, options);
  const data = response.status === 204 ? null : await response.json().catch(() => null);
  if (!response.ok) {
    const error = new Error(data?.error?.message || `HTTP ${response.status}`);
    error.code = data?.error?.code;
    error.status = response.status;
    throw error;
  }
  return data;
}

// Accounts

async function logIn(email, password) {
  const answer = await api("POST", "/api/auth/login", { email, password });
  token = answer.access_token;
  localStorage.setItem("videoproc.token", token);
  localStorage.setItem("videoproc.email", email);
  show();
}

async function logOut() {
  // The server forgets the token (it is refused from now on), then this browser forgets
  // everything of the user's: the token, the email, the uploads to resume, the kept files.
  try {
    await api("POST", "/api/auth/logout");
  } catch {
    // already expired or revoked: nothing to forget on the server
  }
  token = null;
  for (const key of Object.keys(localStorage)) {
    if (key.startsWith("videoproc.")) localStorage.removeItem(key);
  }
  await forgetAll();
  location.reload(); // uploads in flight stop, and nothing of theirs stays on the page for the next user
}

function show() {
  const signedIn = Boolean(token);
  $("account").hidden = signedIn;
  $("uploader").hidden = !signedIn;
  $("library").hidden = !signedIn;
  $("webhooks").hidden = !signedIn;
  $("who").hidden = !signedIn;
  $("who-email").textContent = localStorage.getItem("videoproc.email") || "";
  if (signedIn) {
    refresh();
    resumeKept();
    listEndpoints();
  }
}

$("login-form").addEventListener("submit", async (event) => {
  event.preventDefault();
  try {
    await logIn($("email").value, $("password").value);
    say("");
  } catch (error) {
    say(error.message, true);
  }
});

$("signup").addEventListener("click", async () => {
  const form = $("login-form");
  if (!form.reportValidity()) return;
  const email = $("email").value;
  const password = $("password").value;
  try {
    await api("POST", "/api/auth/signup", { email, password, password_confirm: password });
    await logIn(email, password);
    say("Account created.");
  } catch (error) {
    say(error.message, true);
  }
});

$("logout").addEventListener("click", logOut);

// Direct uploads: one upload per file, its parts PUT to S3 in parallel, each retried.

const fileKey = (file) => `videoproc.upload.${file.name}|${file.size}|${file.lastModified}`;
const sleep = (ms) => new Promise((resolve) => setTimeout(resolve, ms));
// crypto.randomUUID needs a secure context (https, or this machine): fall back elsewhere.
const newId = () => crypto.randomUUID?.() ?? `${Date.now()}-${Math.random().toString(36).slice(2)}`;

function putPart(url, blob, onProgress) {
  return new Promise((resolve, reject) => {
    const request = new XMLHttpRequest();
    request.open("PUT", url);
    request.upload.onprogress = (event) => onProgress(event.loaded);
    request.onload = () => {
      const etag = request.getResponseHeader("ETag");
      if (request.status === 200 && etag) resolve(etag);
      else reject(Object.assign(new Error(`S3 answered ${request.status}`), { status: request.status }));
    };
    request.onerror = () => reject(new Error("network error"));
    request.send(blob);
  });
}

async function sendPart(url, blob, onProgress) {
  for (let attempt = 1; ; attempt++) {
    try {
      return await putPart(url, blob, onProgress);
    } catch (error) {
      onProgress(0);
      const fatal = error.status >= 400 && error.status < 500 && error.status !== 408 && error.status !== 429;
      if (fatal || attempt >= ATTEMPTS) throw error;
      await sleep(Math.min(1000 * 2 ** attempt, 30000));
    }
  }
}

async function startOrResume(file) {
  const saved = localStorage.getItem(fileKey(file));
  if (saved) {
    try {
      return await api("GET", `/api/uploads/${saved}`);
    } catch (error) {
      if (error.status !== 404 && error.status !== 409) throw error;
      localStorage.removeItem(fileKey(file));
    }
  }
  const body = {
    title: file.name.replace(/\.[^.]+$/, "") || file.name,
    filename: file.name,
    size: file.size,
    content_type: file.type || "application/octet-stream",
  };
  const plan = await api("POST", "/api/uploads", body, { "Idempotency-Key": newId() });
  localStorage.setItem(fileKey(file), plan.upload_id);
  return plan;
}

function transferRow(file) {
  const item = document.createElement("li");
  const label = document.createElement("label");
  const bar = document.createElement("progress");
  const status = document.createElement("p");
  const id = `transfer-${newId()}`;
  bar.id = id;
  bar.max = file.size;
  bar.value = 0;
  label.htmlFor = id;
  label.textContent = file.name;
  status.className = "status";
  status.setAttribute("aria-live", "polite");
  item.append(label, bar, status);
  $("transfers").append(item);
  return { item, bar, status };
}

// Files kept across a reload, as Uppy's Golden Retriever does: each picked file up to KEEP_MAX
// is put in IndexedDB (the browser keeps a copy) until its upload completes or is refused, and
// the next page load resumes it. Quota or a private window only lose the convenience.

const KEEP_MAX = 512 * 1024 * 1024;
const owner = () => localStorage.getItem("videoproc.email") || "";
let resumed = false; // once per page load: a second login does not start them twice

function kept(mode, use) {
  return new Promise((resolve, reject) => {
    if (!window.indexedDB) return resolve(null);
    const open = indexedDB.open("videoproc", 1);
    open.onupgradeneeded = () => open.result.createObjectStore("files");
    open.onerror = () => reject(open.error);
    open.onsuccess = () => {
      const request = use(open.result.transaction("files", mode).objectStore("files"));
      request.onsuccess = () => resolve(request.result);
      request.onerror = () => reject(request.error);
    };
  }).catch(() => null);
}

const keep = (file) =>
  file.size <= KEEP_MAX && kept("readwrite", (files) => files.put({ file, owner: owner() }, fileKey(file)));
const forget = (file) => kept("readwrite", (files) => files.delete(fileKey(file)));
const forgetAll = () => kept("readwrite", (files) => files.clear());

async function resumeKept() {
  if (resumed) return;
  resumed = true;
  for (const entry of (await kept("readonly", (files) => files.getAll())) || []) {
    if (entry.owner === owner()) uploadFile(entry.file, true);
  }
}

async function uploadFile(file, isKept = false) {
  const row = transferRow(file);
  if (!isKept) await keep(file);
  try {
    const plan = await startOrResume(file);
    const etags = new Map(plan.parts_done.map((part) => [part.part_number, part.etag]));
    const doneBytes = plan.parts_done.reduce((sum, part) => sum + part.size, 0);
    const inFlight = new Map();
    const update = () => {
      row.bar.value = doneBytes + [...inFlight.values()].reduce((a, b) => a + b, 0);
      row.status.textContent = `${Math.floor((100 * row.bar.value) / file.size)} % sent`;
    };
    if (plan.parts_done.length) row.status.textContent = `resuming: ${plan.parts_done.length} part(s) already sent`;
    update();
    const queue = [...plan.parts];
    const worker = async () => {
      while (queue.length) {
        const part = queue.shift();
        const start = (part.part_number - 1) * plan.part_size;
        const blob = file.slice(start, Math.min(start + plan.part_size, file.size));
        const etag = await sendPart(part.url, blob, (loaded) => {
          inFlight.set(part.part_number, loaded);
          update();
        });
        inFlight.set(part.part_number, blob.size);
        etags.set(part.part_number, etag);
        update();
      }
    };
    await Promise.all(Array.from({ length: PARALLEL }, worker));
    const parts = [...etags.entries()].sort((a, b) => a[0] - b[0]).map(([part_number, etag]) => ({ part_number, etag }));
    row.status.textContent = "checking…";
    await api("POST", `/api/uploads/${plan.upload_id}/complete`, { parts });
    localStorage.removeItem(fileKey(file));
    forget(file);
    row.bar.value = file.size;
    row.status.textContent = "uploaded: queued for processing";
    refresh();
  } catch (error) {
    // The API said no (S3's own errors, such as an expired part URL, carry no code): a reload
    // would be told again.
    const refused =
      Boolean(error.code) && error.status >= 400 && error.status < 500 && ![401, 429].includes(error.status);
    if (refused) forget(file);
    row.status.textContent = refused ? error.message : `${error.message} (reload or pick the file again to resume)`;
    row.status.classList.add("error");
  }
}

function uploadAll(files) {
  for (const file of files) uploadFile(file);
}

$("files").addEventListener("change", (event) => {
  uploadAll([...event.target.files]);
  event.target.value = "";
});

const drop = $("drop");
drop.addEventListener("dragover", (event) => {
  event.preventDefault();
  drop.classList.add("over");
});
drop.addEventListener("dragleave", () => drop.classList.remove("over"));
drop.addEventListener("drop", (event) => {
  event.preventDefault();
  drop.classList.remove("over");
  uploadAll([...event.dataTransfer.files]);
});

// The library: the user's videos, polled while any is not finished.

const FINISHED = new Set(["processed", "failed", "cancelled"]);
const OPTIMIZING = new Set(["pending", "queued", "optimizing"]);

// Settled: nothing more will change without the owner (an optimize stage under way still will).
function settled(video) {
  return FINISHED.has(video.status) && !(video.optimization && OPTIMIZING.has(video.optimization.status));
}

// The renditions as a site offers them: AV1 first for the browsers that decode it, H.264 for every other.
function setSources(player, video) {
  const sources = [];
  if (video.av1_url) sources.push([video.av1_url, 'video/mp4; codecs="av01.0.08M.08"']);
  sources.push([video.processed_url, "video/mp4"]);
  player.replaceChildren(...sources.map(([src, type]) => Object.assign(document.createElement("source"), { src, type })));
  player.dataset.rendition = video.optimization?.optimized_at || "published";
}
const shown = new Map(); // video id -> its list item
let timer = null;

function videoItem(video) {
  let item = shown.get(video.id);
  if (!item) {
    item = document.createElement("li");
    item.dataset.videoId = video.id;
    const title = document.createElement("h3");
    const status = document.createElement("p");
    const bar = document.createElement("progress");
    status.className = "status";
    bar.max = 100;
    bar.id = `progress-${video.id}`;
    title.id = `title-${video.id}`;
    bar.setAttribute("aria-labelledby", title.id);
    item.append(title, status, bar);
    shown.set(video.id, item);
  }
  const [title, status, bar] = item.children;
  title.textContent = video.title;
  let text = video.status;
  if (video.status === "processing") text += ` ${video.progress} %` + (video.seconds_left ? `, about ${Math.ceil(video.seconds_left)} s left` : "");
  if (video.status === "queued" && video.queue_position) text += `, position ${video.queue_position}`;
  if (video.status === "uploading") text += ": pick the file again to resume";
  if (video.error) text += `: ${video.error.message}`;
  const stage = video.status === "processed" && video.optimization;
  if (stage && OPTIMIZING.has(stage.status)) text += `; making smaller renditions ${stage.progress} %`;
  if (stage && stage.status === "optimized") text += "; optimized (AV1 and a smaller H.264)";
  status.textContent = text;
  status.classList.toggle("error", video.status === "failed");
  bar.value = video.status === "processed" ? 100 : video.progress;
  bar.hidden = FINISHED.has(video.status);
  if (video.status === "processed" && !item.querySelector("video")) {
    const player = document.createElement("video");
    player.controls = true;
    player.preload = "metadata";
    player.poster = video.poster_url;
    setSources(player, video);
    player.setAttribute("aria-label", `${video.title}, processed`);
    item.append(player);
  } else if (video.status === "processed") {
    // Once optimized the published file is gone: a paused player takes the new renditions.
    const player = item.querySelector("video");
    if (player.paused && player.dataset.rendition !== (video.optimization?.optimized_at || "published")) {
      setSources(player, video);
      player.load();
    }
  }
  return item;
}

async function refresh() {
  clearTimeout(timer);
  if (!token) return;
  try {
    const page = await api("GET", "/api/videos?per_page=50");
    const items = page.items.map(videoItem);
    const list = $("videos");
    // Re-parenting a playing <video> would pause it: touch the list only when its order changed.
    if (items.length !== list.children.length || items.some((item, i) => list.children[i] !== item)) {
      list.replaceChildren(...items);
    }
    if (page.items.some((video) => !settled(video))) timer = setTimeout(refresh, POLL_MS);
  } catch (error) {
    if (error.status === 401) logOut();
    else {
      say(error.message, true);
      timer = setTimeout(refresh, POLL_MS * 2);
    }
  }
}

// Webhooks: add an endpoint (its secret is shown once, never stored here), see its recent deliveries.

function button(text, onClick) {
  const element = document.createElement("button");
  element.type = "button";
  element.textContent = text;
  element.addEventListener("click", onClick);
  return element;
}

function endpointItem(endpoint) {
  const item = document.createElement("li");
  item.dataset.endpointId = endpoint.id;
  const url = document.createElement("p");
  url.textContent = `${endpoint.url} (${endpoint.events.join(", ")})`;
  if (endpoint.disabled_at) url.textContent += `, disabled: ${endpoint.disabled_reason}`;
  url.classList.toggle("error", Boolean(endpoint.disabled_at));
  const deliveries = document.createElement("ul");
  deliveries.className = "deliveries";
  deliveries.setAttribute("aria-label", `Recent deliveries to ${endpoint.url}`);
  const buttons = document.createElement("div");
  buttons.className = "buttons";
  buttons.append(
    button("Recent deliveries", () => listDeliveries(endpoint.id, deliveries)),
    button("Remove", async () => {
      await api("DELETE", `/api/webhooks/${endpoint.id}`).catch((error) => say(error.message, true));
      listEndpoints();
    }),
  );
  item.append(url, buttons, deliveries);
  return item;
}

async function listEndpoints() {
  try {
    const answer = await api("GET", "/api/webhooks");
    $("endpoints").replaceChildren(...answer.items.map(endpointItem));
  } catch (error) {
    say(error.message, true);
  }
}

async function listDeliveries(endpointId, list) {
  try {
    const page = await api("GET", `/api/webhooks/${endpointId}/deliveries?per_page=10`);
    const rows = page.items.map((delivery) => {
      const row = document.createElement("li");
      const answers = delivery.attempts.map((a) => a.status_code ?? a.error).join(", ") || "not tried yet";
      row.textContent = `${delivery.event_type} ${delivery.status}: ${answers}`;
      if (delivery.next_attempt_at) row.textContent += `; next try ${new Date(delivery.next_attempt_at).toLocaleTimeString()}`;
      row.classList.toggle("error", delivery.status === "failed");
      return row;
    });
    if (!rows.length) rows.push(Object.assign(document.createElement("li"), { textContent: "No deliveries yet" }));
    list.replaceChildren(...rows);
  } catch (error) {
    say(error.message, true);
  }
}

$("webhook-form").addEventListener("submit", async (event) => {
  event.preventDefault();
  try {
    const endpoint = await api("POST", "/api/webhooks", { url: $("webhook-url").value });
    $("webhook-secret-value").textContent = endpoint.secret;
    $("webhook-secret").hidden = false;
    $("webhook-url").value = "";
    listEndpoints();
  } catch (error) {
    say(error.message, true);
  }
});

show();
