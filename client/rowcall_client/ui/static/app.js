// The status page: polls the local `rowcall ui` server every second and renders what the API says.
// Everything the API sends is shown through textContent, never parsed as HTML (batch names are the
// uploader's). The page holds no credential: the server does; the token here only proves to the
// server that a request comes from this page.
"use strict";

const TOKEN = document.querySelector('meta[name="rowcall-token"]').content;
const POLL_MS = 1000;
const PAGE = 20;
const DETAIL_ROWS = 50;
const GALLERY_ROWS = 100;
const TERMINAL = new Set(["completed", "partial", "failed", "canceled"]);
const RUNNING = new Set(["validating", "ingesting", "running", "paused"]);

const state = { limit: PAGE, open: new Set(), cards: new Map(), problems: new Map() };
const $ = (id) => document.getElementById(id);

class PageError extends Error {
  constructor(status, code, message, fields) {
    super(message);
    this.status = status;
    this.code = code;
    this.fields = fields || {};
  }
  toString() {
    const where = this.status ? `${this.status} ${this.code}` : this.code;
    const detail = Object.entries(this.fields).map(([k, v]) => `; ${k}: ${v}`).join("");
    return `${where}: ${this.message}${detail}`;
  }
}

async function call(method, path, body) {
  const init = { method, headers: { "X-Rowcall-Token": TOKEN, Accept: "application/json" } };
  if (body !== undefined) {
    init.headers["Content-Type"] = "application/json";
    init.body = JSON.stringify(body);
  }
  let response;
  try {
    response = await fetch(path, init);
  } catch (e) {
    throw new PageError(0, "unreachable", "the rowcall ui server does not answer (was it stopped?)");
  }
  let payload = null;
  try {
    payload = await response.json();
  } catch (e) {
    payload = null;
  }
  if (!response.ok) {
    const error = (payload && payload.error) || {};
    throw new PageError(response.status, error.code || "http_error", error.message || response.statusText, error.fields);
  }
  return payload;
}

// -- banner (errors) and notice (accepted actions) --------------------------------------------------

function showProblem(source, text) {
  state.problems.set(source, text);
  renderBanner();
}

function clearProblem(source) {
  if (state.problems.delete(source)) renderBanner();
}

function renderBanner() {
  const banner = $("banner");
  banner.replaceChildren();
  if (state.problems.size === 0) {
    banner.hidden = true;
    return;
  }
  const list = el("ul");
  for (const [source, text] of state.problems) {
    const item = el("li", { className: "problem", text });
    item.dataset.source = source;
    list.append(item);
  }
  const close = el("button", { text: "×", title: "dismiss" });
  close.type = "button";
  close.addEventListener("click", () => {
    for (const source of [...state.problems.keys()]) if (source !== "poll") state.problems.delete(source);
    renderBanner();
  });
  banner.append(list, close);
  banner.hidden = false;
}

let noticeTimer = null;
function notice(text) {
  const box = $("notice");
  box.textContent = text;
  box.hidden = false;
  clearTimeout(noticeTimer);
  noticeTimer = setTimeout(() => (box.hidden = true), 6000);
}

// -- rendering --------------------------------------------------------------------------------------

function el(tag, props = {}, children = []) {
  const node = document.createElement(tag);
  if (props.className) node.className = props.className;
  if (props.text !== undefined) node.textContent = props.text;
  if (props.title) node.title = props.title;
  node.append(...children);
  return node;
}

function count(name, label, extra = "") {
  const value = el("b");
  value.dataset.count = name;
  return el("span", { className: `${name} ${extra}`.trim() }, [value, ` ${label}`]);
}

function button(label, action, extra = "") {
  const node = el("button", { text: label, className: `action ${extra}`.trim() });
  node.type = "button";
  node.dataset.action = action;
  return node;
}

function card(batchId) {
  const root = el("li", { className: "batch" });
  root.dataset.batchId = batchId;
  const refs = {
    name: el("span", { className: "name" }),
    id: el("code", { className: "batch-id", text: batchId }),
    status: el("span", { className: "status" }),
    bar: el("div", { className: "bar" }),
    done: el("span", { className: "done" }),
    failed: el("span", { className: "failed" }),
    meta: el("div", { className: "meta" }),
    details: el("div", { className: "details" }),
    toggle: button("Details", "details"),
    reprocess: button("Reprocess failed", "reprocess"),
    cancel: button("Cancel", "cancel", "danger"),
    resume: button("Resume", "resume"),
    budget: button("Raise budget & resume", "budget"),
    results: el("a", { text: "results.csv", className: "download results" }),
    errors: el("a", { text: "row-errors.csv", className: "download row-errors" }),
  };
  refs.bar.setAttribute("role", "progressbar");
  refs.bar.setAttribute("aria-valuemin", "0");
  refs.bar.append(refs.done, refs.failed);
  refs.details.hidden = true;
  refs.failedRows = el("div", { className: "failed-rows" });
  refs.rowErrors = el("div", { className: "row-errors" });
  refs.gallery = el("div", { className: "gallery" });
  refs.details.append(
    el("h3", { text: "Saved images" }), refs.gallery,
    el("h3", { text: "Failed rows" }), refs.failedRows,
    el("h3", { text: "Row errors (rows skipped)" }), refs.rowErrors,
  );
  const counts = el("div", { className: "counts" }, [
    count("completed_count", "done"), " · ",
    count("failed_count", "failed", "failed-count"), " · ",
    count("pending_count", "pending"), " · of ",
    count("total_count", "rows"), " · ",
    count("rows_skipped", "skipped"),
  ]);
  const downloads = el("span", { className: "downloads" }, [refs.results, refs.errors]);
  const actions = el("div", { className: "actions" }, [refs.toggle, refs.reprocess, refs.cancel, refs.resume, refs.budget, downloads]);
  root.append(el("div", { className: "head" }, [refs.name, refs.id, refs.status]), refs.bar, counts, refs.meta, actions, refs.details);

  refs.toggle.addEventListener("click", () => toggleDetails(batchId));
  refs.reprocess.addEventListener("click", () => act(batchId, "reprocess", {}));
  refs.cancel.addEventListener("click", () => {
    if (confirm(`Cancel batch ${batchId}? Rows in flight finish; nothing new starts.`)) act(batchId, "cancel", {});
  });
  refs.resume.addEventListener("click", () => act(batchId, "resume", {}));
  refs.budget.addEventListener("click", () => {
    const batch = entry.batch || {};
    const suggested = batch.estimated_cost_usd ?? batch.max_cost_usd ?? "";
    const answer = prompt(`New budget for batch ${batchId}, in USD (estimate ${usd(batch.estimated_cost_usd)}):`, String(suggested));
    if (answer === null) return;
    const value = Number(answer);
    if (!answer.trim() || !Number.isFinite(value) || value < 0) {
      showProblem(`action:${batchId}`, `budget ${JSON.stringify(answer)} is not a number of USD >= 0`);
      return;
    }
    act(batchId, "resume", { max_cost_usd: value });
  });
  const entry = { root, refs, busy: false, batch: null };
  return entry;
}

function usd(value) {
  if (value === null || value === undefined) return "-";
  return `$${Number(value).toFixed(6).replace(/0+$/, "").replace(/\.$/, "")}`;
}

function number(value) {
  return value === null || value === undefined ? "?" : String(value);
}

function when(iso) {
  if (!iso) return null;
  const date = new Date(iso);
  return Number.isNaN(date.getTime()) ? String(iso) : date.toLocaleString();
}

function update(entry, batch) {
  const { root, refs } = entry;
  entry.batch = batch;
  const status = String(batch.status || "unknown");
  root.dataset.status = status;
  refs.name.textContent = batch.name || batch.batch_id;
  refs.status.textContent = status;
  refs.status.className = `status ${status}`;
  for (const node of root.querySelectorAll("[data-count]")) node.textContent = number(batch[node.dataset.count]);
  root.querySelector(".failed-count").classList.toggle("some", Number(batch.failed_count || 0) > 0);

  const done = Number(batch.completed_count || 0);
  const failed = Number(batch.failed_count || 0);
  const total = batch.total_count;
  const known = typeof total === "number";
  refs.bar.classList.toggle("unknown", !known);
  // A header-only file completes with no rows at all: a full bar, not an empty one.
  const empty = known && total === 0 && TERMINAL.has(status);
  const share = (part) => (known && total > 0 ? (100 * part) / total : 0);
  // Inline style attributes are forbidden by the page's CSP; the CSSOM is not.
  refs.done.style.width = empty ? "100%" : `${share(done)}%`;
  refs.failed.style.width = `${share(failed)}%`;
  refs.bar.setAttribute("aria-valuenow", String(done + failed));
  if (known) refs.bar.setAttribute("aria-valuemax", String(total));
  refs.bar.title = known ? `${done + failed} of ${total} rows finished` : "counting rows…";

  const meta = [];
  if (batch.reason) meta.push(`reason: ${batch.reason}`);
  if (batch.reason_detail) meta.push(String(batch.reason_detail));
  if (batch.charged_cost_usd !== null && batch.charged_cost_usd !== undefined) {
    let cost = `charged ${usd(batch.charged_cost_usd)}`;
    if (batch.estimated_cost_usd !== null && batch.estimated_cost_usd !== undefined) cost += ` of est. ${usd(batch.estimated_cost_usd)}`;
    if (batch.run_cost_usd !== null && batch.run_cost_usd !== undefined) cost += ` (${usd(batch.run_cost_usd)}/run)`;
    meta.push(cost);
  }
  if (batch.max_cost_usd !== null && batch.max_cost_usd !== undefined) meta.push(`budget ${usd(batch.max_cost_usd)}`);
  if (batch.created_at) meta.push(`created ${when(batch.created_at)}`);
  if (batch.estimated_completion && !TERMINAL.has(status)) meta.push(`ETA ${when(batch.estimated_completion)}`);
  if (batch.provider) meta.push(`provider ${batch.provider}`);
  if (batch.technique_id) meta.push(`technique ${batch.technique_id}`);
  if (batch.duplicate_runs) meta.push(`${batch.duplicate_runs} duplicate run(s) made by the provider`);
  const note = batch.notification || {};
  if (note.status) meta.push(`on-done ${note.status}`);
  refs.meta.replaceChildren(...meta.map((text) => el("span", { text })));

  if (!entry.busy) {
    refs.reprocess.disabled = !(TERMINAL.has(status) && failed > 0);
    refs.cancel.disabled = !RUNNING.has(status);
    refs.resume.disabled = status !== "paused";
    refs.budget.disabled = status !== "paused";
  }
  refs.budget.hidden = !(status === "paused" && batch.reason === "over_budget");
  const results = batch.results || {};
  link(refs.results, results.csv_key, batch.batch_id, "results.csv");
  link(refs.errors, results.errors_key, batch.batch_id, "row-errors.csv");
}

function link(anchor, key, batchId, name) {
  anchor.hidden = !key;
  if (key) {
    anchor.href = `/download/${encodeURIComponent(batchId)}/${name}?token=${encodeURIComponent(TOKEN)}`;
    anchor.title = key;
  } else {
    anchor.removeAttribute("href");
  }
}

function render(page) {
  const items = page.items || [];
  const list = $("batches");
  const seen = new Set();
  for (const batch of items) {
    let entry = state.cards.get(batch.batch_id);
    if (!entry) {
      entry = card(batch.batch_id);
      state.cards.set(batch.batch_id, entry);
    }
    update(entry, batch);
    seen.add(batch.batch_id);
    list.append(entry.root); // moves it into API order: newest first
  }
  for (const [batchId, entry] of state.cards) {
    if (!seen.has(batchId)) {
      entry.root.remove();
      state.cards.delete(batchId);
      state.open.delete(batchId);
    }
  }
  $("empty").hidden = items.length > 0;
  $("more").hidden = !page.next_cursor || items.length < state.limit || state.limit >= 100;
}

// -- details: failed rows and row errors -------------------------------------------------------------

function toggleDetails(batchId) {
  const entry = state.cards.get(batchId);
  if (!entry) return;
  const opening = entry.refs.details.hidden;
  entry.refs.details.hidden = !opening;
  entry.refs.toggle.textContent = opening ? "Hide details" : "Details";
  if (opening) {
    state.open.add(batchId);
    refreshDetails(batchId);
  } else {
    state.open.delete(batchId);
  }
}

function table(headers, rows) {
  const head = el("tr", {}, headers.map((h) => el("th", { text: h })));
  const body = rows.map((cells) => el("tr", {}, cells.map((c) => (c instanceof Node ? el("td", {}, [c]) : el("td", { text: c ?? "-" })))));
  return el("table", {}, [el("thead", {}, [head]), el("tbody", {}, body)]);
}

function more(page) {
  return page.next_cursor ? el("p", { className: "none", text: `first ${DETAIL_ROWS} shown; rowcall rows/errors lists them all` }) : "";
}

async function refreshDetails(batchId) {
  const entry = state.cards.get(batchId);
  if (!entry) return;
  const id = encodeURIComponent(batchId);
  const [rows, errors, completed] = await Promise.allSettled([
    call("GET", `/api/batches/${id}/rows?status=failed&limit=${DETAIL_ROWS}`),
    call("GET", `/api/batches/${id}/row-errors?limit=${DETAIL_ROWS}`),
    call("GET", `/api/batches/${id}/rows?status=completed&limit=${GALLERY_ROWS}`),
  ]);
  renderGallery(entry, batchId, completed);
  const { failedRows, rowErrors } = entry.refs;
  if (rows.status === "fulfilled") {
    const items = rows.value.items || [];
    failedRows.replaceChildren(
      items.length === 0
        ? el("p", { className: "none", text: "no failed rows" })
        : table(
            ["line", "key", "row_id", "attempt", "error", ""],
            items.map((row) => {
              const again = button("Reprocess", "reprocess-row");
              again.addEventListener("click", () => act(batchId, "reprocess", { row_ids: [row.row_id] }));
              const error = [row.error_code, row.error_message].filter(Boolean).join(": ");
              return [String(row.line ?? "-"), row.key ?? "-", row.row_id, String(row.attempt ?? "-"), error || "-", again];
            }),
          ),
      more(rows.value),
    );
  } else {
    failedRows.replaceChildren(el("p", { className: "error", text: String(rows.reason) }));
  }
  if (errors.status === "fulfilled") {
    const items = errors.value.items || [];
    rowErrors.replaceChildren(
      items.length === 0
        ? el("p", { className: "none", text: "no row errors" })
        : table(["line", "code", "message"], items.map((e) => [String(e.line ?? "-"), e.code, e.message])),
      more(errors.value),
    );
  } else {
    rowErrors.replaceChildren(el("p", { className: "error", text: String(errors.reason) }));
  }
}

// -- gallery: the batch's saved images, served by this page's server from the bucket ----------------

function outputUrl(key) {
  // outputs/{batch_id}/{row_name}/{file}: each part path-safe by construction (contract section 7).
  const parts = key.split("/").slice(1).map(encodeURIComponent).join("/");
  return `/output/${parts}?token=${encodeURIComponent(TOKEN)}`;
}

function galleryImages(page) {
  const images = [];
  for (const row of page.items || []) {
    for (const saved of row.saved_outputs || []) {
      if (saved.key && String(saved.content_type || "").startsWith("image/")) images.push(saved.key);
    }
  }
  return images;
}

// The first page of completed rows is asked again at each refresh; the pages after it only when
// "More images" is clicked (a batch of 100,000 rows is not read every second), kept until the card goes.
function renderGallery(entry, batchId, answer) {
  const { gallery } = entry.refs;
  if (answer.status !== "fulfilled") {
    gallery.replaceChildren(el("p", { className: "error", text: String(answer.reason) }));
    return;
  }
  entry.galleryFirst = answer.value;
  const more = entry.galleryMore || (entry.galleryMore = { keys: [], cursor: null, followed: false });
  if (!more.followed) more.cursor = answer.value.next_cursor || null;
  const first = galleryImages(answer.value);
  const seen = new Set(first);
  const images = first.concat(more.keys.filter((key) => !seen.has(key)));
  const shown = `${images.join("\n")}\n${more.cursor || ""}`;
  if (gallery.dataset.shown === shown) return; // unchanged: the thumbnails are not loaded again
  gallery.dataset.shown = shown;
  const children = images.map((key) => {
    const rowName = key.split("/")[2];
    const img = el("img");
    img.src = outputUrl(key);
    img.alt = rowName;
    img.loading = "lazy";
    const full = el("a", { title: key }, [img]);
    full.href = outputUrl(key);
    full.target = "_blank";
    full.rel = "noopener";
    return el("figure", { className: "thumb" }, [full, el("figcaption", { text: rowName })]);
  });
  if (images.length === 0 && !more.cursor) {
    children.push(el("p", { className: "none", text: "no saved images" }));
  }
  if (more.cursor) {
    const next = button("More images", "more-images");
    next.addEventListener("click", () => moreImages(entry, batchId, next));
    children.push(next);
  }
  gallery.replaceChildren(...children);
}

async function moreImages(entry, batchId, clicked) {
  const more = entry.galleryMore;
  if (!more || !more.cursor) return;
  clicked.disabled = true;
  const id = encodeURIComponent(batchId);
  try {
    const page = await call(
      "GET",
      `/api/batches/${id}/rows?status=completed&limit=${GALLERY_ROWS}&cursor=${encodeURIComponent(more.cursor)}`,
    );
    more.keys.push(...galleryImages(page));
    more.cursor = page.next_cursor || null;
    more.followed = true;
  } catch (error) {
    showProblem(`gallery:${batchId}`, `more images of ${batchId}: ${error}`);
    clicked.disabled = false;
    return;
  }
  clearProblem(`gallery:${batchId}`);
  renderGallery(entry, batchId, { status: "fulfilled", value: entry.galleryFirst });
}

// -- actions ----------------------------------------------------------------------------------------

async function act(batchId, action, body) {
  const entry = state.cards.get(batchId);
  const buttons = entry ? [entry.refs.reprocess, entry.refs.cancel, entry.refs.resume, entry.refs.budget] : [];
  if (entry) entry.busy = true;
  buttons.forEach((b) => (b.disabled = true));
  clearProblem(`action:${batchId}`);
  try {
    const answer = await call("POST", `/api/batches/${encodeURIComponent(batchId)}/${action}`, body);
    const status = answer && answer.status ? `: status ${answer.status}` : "";
    notice(`${action} of ${batchId} accepted${status}`);
    if (entry && answer && answer.batch_id === batchId) update(entry, answer);
  } catch (error) {
    showProblem(`action:${batchId}`, `${action} of ${batchId} refused: ${error}`);
  } finally {
    if (entry) entry.busy = false;
    poll(false);
  }
}

// -- polling ----------------------------------------------------------------------------------------

let polling = false;
async function poll(schedule = true) {
  if (!polling) {
    polling = true;
    try {
      render(await call("GET", `/api/batches?limit=${state.limit}`));
      clearProblem("poll");
      $("live").textContent = `live · ${new Date().toLocaleTimeString()}`;
      $("live").className = "live ok";
      await Promise.all([...state.open].map(refreshDetails));
    } catch (error) {
      showProblem("poll", `cannot list batches: ${error}`);
      $("live").textContent = "not updating";
      $("live").className = "live down";
    } finally {
      polling = false;
    }
  }
  if (schedule) setTimeout(poll, POLL_MS);
}

$("more").addEventListener("click", () => {
  state.limit = Math.min(100, state.limit + PAGE);
  poll(false);
});
poll();
