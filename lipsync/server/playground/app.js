// The lipsync playground: a form built from the app's OpenAPI input schema, driving the queue API with
// plain fetch/XHR (upload initiate + PUT, submit, SSE status stream with logs, result, cancel).
// Everything is relative to this page's own origin; nothing is fetched from anywhere else.

const $ = (id) => document.getElementById(id);
const KEY_STORE = "lipsync.playground.key";
const HISTORY_STORE = "lipsync.playground.requests";
const PROGRESS_LINE = /^(.*\S)\s+(\d+)\/(\d+)$/; // the worker logs progress as "<stage> <done>/<total>"
const ACCEPT = { video: "video/*,image/*", audio: "audio/*,video/*" };

// Field name -> group; a field of another app's schema lands in "Other".
const GROUPS = [
  ["Inputs", ["video", "audio", "use_custom_prompt", "custom_prompt"]],
  ["Speaker and length", ["speaker", "sync_mode"]],
  ["Output size and rate", ["num_frames", "frame_rate", "width", "height"]],
  ["Long-video knobs", ["vae_chunk_size", "vae_overlap_window_width", "frame_block_width", "feed_forward_num_splits"]],
  ["Conditioning", ["face_id_cond_strength", "appearance_cond_strength"]],
  ["Edits", ["edit_addition_start_frames", "edit_addition_durations", "edit_removal_ranges", "edit_removal_bridge_durations"]],
  ["Seed", ["seed"]],
  ["Video cache", ["skip_video_cache"]],
];
const OPEN_GROUPS = new Set(["Inputs", "Speaker and length", "Output size and rate"]);
const REQUEST_STAGES = ["queue_time", "fetch_time", "inference_time", "upload_time"]; // lipsync/worker/runtime.py's

const state = { app: null, authRequired: false, fields: new Map(), current: null, watcher: null };

// --- HTTP ------------------------------------------------------------------------------------------------

class ApiError extends Error {
  constructor(status, body) {
    const text = typeof body?.detail === "string" ? body.detail : `HTTP ${status}`;
    super(text);
    this.status = status;
    this.body = body;
  }
}

function authHeaders() {
  const key = sessionStorage.getItem(KEY_STORE);
  return state.authRequired && key ? { Authorization: `Key ${key}` } : {};
}

async function api(method, path, body, signal) {
  const init = { method, headers: { Accept: "application/json", ...authHeaders() }, signal };
  if (body !== undefined) {
    init.headers["Content-Type"] = "application/json";
    init.body = JSON.stringify(body);
  }
  const response = await fetch(path, init);
  const text = await response.text();
  let data = null;
  try { data = text ? JSON.parse(text) : null; } catch { data = { detail: text }; }
  if (!response.ok) throw new ApiError(response.status, data);
  return data;
}

function describeError(err) {
  if (err instanceof ApiError) {
    const type = err.body?.error_type || (err.status === 422 ? "validation_error" : "error");
    return `${type} (HTTP ${err.status}): ${err.message}`;
  }
  return `network error: ${err.message}`;
}

// --- the form, from the schema -----------------------------------------------------------------------------

function resolve(spec, schema) {
  while (schema && schema.$ref) schema = spec.components.schemas[schema.$ref.split("/").pop()];
  return schema || {};
}

// A field's widget: a file (URL string or {url} object), a checkbox, a select, a number, a list of numbers,
// text, or JSON for anything else. `main` is the schema variant that is not null.
function kindOf(spec, prop) {
  const variants = (prop.anyOf || prop.oneOf || [prop]).map((s) => resolve(spec, s));
  const main = { ...(variants.find((s) => s.type && s.type !== "null") || variants[0]), ...prop };
  if (variants.some((s) => s.type === "object" && s.properties && s.properties.url)) return ["file", main];
  if (variants.some((s) => s.type === "object" && s.properties && s.properties.x && s.properties.y)) return ["speaker", main];
  if (main.enum) return ["enum", main];
  if (main.type === "array" && ["integer", "number"].includes(resolve(spec, main.items).type)) return ["list", main];
  return [{ boolean: "boolean", integer: "integer", number: "number", string: "string" }[main.type] || "json", main];
}

function bounds(prop) {
  const parts = [];
  const names = { minimum: "min", maximum: "max", exclusiveMinimum: "above", exclusiveMaximum: "below",
                  minLength: "min length", maxLength: "max length", minItems: "min items", maxItems: "max items" };
  for (const [key, label] of Object.entries(names)) if (prop[key] !== undefined) parts.push(`${label} ${prop[key]}`);
  if (prop.enum) parts.push(`one of ${prop.enum.join(", ")}`);
  return parts;
}

function el(tag, attrs = {}, ...children) {
  const node = document.createElement(tag);
  for (const [key, value] of Object.entries(attrs)) {
    if (value === undefined || value === null || value === false) continue;
    if (key === "text") node.textContent = value;
    else node.setAttribute(key, value === true ? "" : value);
  }
  node.append(...children.filter(Boolean));
  return node;
}

function buildField(spec, name, fieldSchema, required) {
  const [kind, prop] = kindOf(spec, fieldSchema);
  const id = `field-${name}`;
  const field = { name, kind, prop, box: null, input: null, error: null, upload: null };
  const wrap = el("div", { class: `field field-${kind}`, id: `${id}-box` });
  const label = el("label", { for: id }, el("code", { text: name }));
  if (required) label.append(el("span", { class: "required", text: " required" }));
  wrap.append(label);
  const hintId = `${id}-hint`;
  const hint = [prop.description, prop.default !== undefined && kind !== "file" ? `default ${JSON.stringify(prop.default)}` : null,
                ...bounds(prop)].filter(Boolean).join(" · ");
  const described = `${hintId} ${id}-error`;

  if (kind === "file") buildFileField(field, wrap, id, described);
  else if (kind === "speaker") buildSpeakerField(field, wrap, id, described);
  else if (kind === "boolean") {
    field.input = el("input", { id, type: "checkbox", "aria-describedby": described, checked: prop.default === true });
    label.prepend(field.input);
  } else if (kind === "enum") {
    field.input = el("select", { id, "aria-describedby": described });
    for (const option of prop.enum) field.input.append(el("option", { value: option, text: option }));
    if (prop.default !== undefined) field.input.value = prop.default;
    wrap.append(field.input);
  } else if (kind === "integer" || kind === "number") {
    field.input = el("input", { id, type: "number", inputmode: kind === "integer" ? "numeric" : "decimal",
                                step: kind === "integer" ? "1" : "any", min: prop.minimum, max: prop.maximum,
                                value: prop.default, "aria-describedby": described });
    wrap.append(field.input);
  } else if (kind === "list") {
    field.input = el("input", { id, type: "text", inputmode: "numeric", placeholder: "e.g. 10, 20",
                                value: (prop.default || []).join(", "), "aria-describedby": described });
    wrap.append(field.input);
  } else if (kind === "string") {
    field.input = el("textarea", { id, rows: 2, maxlength: prop.maxLength, "aria-describedby": described });
    field.input.value = prop.default ?? "";
    wrap.append(field.input);
  } else {
    field.input = el("textarea", { id, rows: 3, "aria-describedby": described, spellcheck: "false" });
    field.input.value = prop.default !== undefined ? JSON.stringify(prop.default) : "";
    wrap.append(field.input);
  }
  wrap.append(el("p", { class: "hint", id: hintId, text: hint }));
  field.error = el("p", { class: "field-error", id: `${id}-error`, role: "alert", hidden: true });
  wrap.append(field.error);
  field.box = wrap;
  return field;
}

function buildFileField(field, wrap, id, described) {
  const modes = el("div", { class: "modes", role: "radiogroup", "aria-label": `${field.name} source` });
  const fileInput = el("input", { id, type: "file", accept: ACCEPT[field.name], "aria-describedby": described });
  const urlInput = el("input", { id: `${id}-url`, type: "url", placeholder: "https://… or data: URI", hidden: true,
                                 "aria-label": `${field.name} URL`, "aria-describedby": described });
  for (const mode of ["file", "url"]) {
    const radio = el("input", { type: "radio", name: `${id}-mode`, value: mode, id: `${id}-mode-${mode}`,
                                checked: mode === "file" });
    radio.addEventListener("change", () => {
      fileInput.hidden = mode !== "file";
      urlInput.hidden = mode !== "url";
      field.mode = mode;
    });
    modes.append(el("label", { class: "mode" }, radio, mode === "file" ? " file" : " URL"));
  }
  const progress = el("progress", { id: `${id}-progress`, max: 1, value: 0, hidden: true, "aria-label": `${field.name} upload` });
  const status = el("span", { class: "upload-status", id: `${id}-upload` });
  fileInput.addEventListener("change", () => {
    field.upload = null;
    if (fileInput.files[0]) startUpload(field);
  });
  Object.assign(field, { mode: "file", input: fileInput, urlInput, progress, status });
  wrap.append(modes, fileInput, urlInput, el("div", { class: "upload-row" }, progress, status));
}

// speaker (an extension of the hosted schema): "largest", "auto", a point {frame, x, y} in the video's own pixels
// (a click on the video's first frame sets it, or type it), or {boxes: [...]} as JSON.
function buildSpeakerField(field, wrap, id, described) {
  const mode = el("select", { id, "aria-describedby": described });
  for (const option of ["largest", "auto", "point", "boxes"]) mode.append(el("option", { value: option, text: option }));
  const point = el("div", { class: "speaker-point", id: `${id}-point`, hidden: true });
  const inputs = {};
  for (const key of ["frame", "x", "y"]) {
    inputs[key] = el("input", { id: `${id}-${key}`, type: "number", min: 0, step: key === "frame" ? "1" : "any",
                                value: key === "frame" ? "0" : null, "aria-label": `speaker ${key}` });
    point.append(el("label", { class: "inline" }, `${key} `, inputs[key]));
  }
  const canvas = el("canvas", { id: `${id}-canvas`, class: "speaker-frame", width: 1, height: 1, hidden: true,
                                "aria-label": "The video's first frame: click the face to lip-sync" });
  const note = el("p", { class: "hint", id: `${id}-frame-note`,
                         text: "Choose the video above: its first frame shows here; click the face to lip-sync." });
  point.append(canvas, note);
  const boxes = el("textarea", { id: `${id}-boxes`, rows: 3, hidden: true, spellcheck: "false", "aria-label": "speaker boxes",
                                 placeholder: '[{"frame": 0, "box": [x0, y0, x1, y1]}, …] (keys interpolated)' });
  mode.addEventListener("change", () => {
    point.hidden = mode.value !== "point";
    boxes.hidden = mode.value !== "boxes";
    if (mode.value === "point") showFirstFrame(field);
  });
  canvas.addEventListener("click", (event) => {
    const rect = canvas.getBoundingClientRect();
    const x = Math.round(((event.clientX - rect.left) / rect.width) * canvas.width);
    const y = Math.round(((event.clientY - rect.top) / rect.height) * canvas.height);
    inputs.frame.value = "0";
    inputs.x.value = String(x);
    inputs.y.value = String(y);
    drawFrame(field);
  });
  for (const key of ["x", "y"]) inputs[key].addEventListener("input", () => drawFrame(field));
  Object.assign(field, { input: mode, point: inputs, canvas, note, boxes, frame: null });
  wrap.append(mode, point, boxes);
}

// The video field's first frame (a local file or its URL) on the speaker canvas, at the video's own size.
function showFirstFrame(field) {
  const video = state.fields.get("video");
  if (!video || field.point === undefined) return;
  const file = video.mode === "file" ? video.input.files[0] : null;
  const src = file ? URL.createObjectURL(file) : video.mode === "url" ? video.urlInput.value.trim() : "";
  if (!src) return;
  const isImage = file ? file.type.startsWith("image/") : /\.(png|jpe?g|webp)(\?|$)/i.test(src);
  const media = isImage ? new Image() : el("video", { muted: true, playsinline: true, preload: "auto" });
  const ready = () => {
    const [w, h] = isImage ? [media.naturalWidth, media.naturalHeight] : [media.videoWidth, media.videoHeight];
    if (!w || !h) return;
    field.frame = { media, w, h };
    field.canvas.width = w;
    field.canvas.height = h;
    field.canvas.hidden = false;
    field.note.textContent = `First frame, ${w}x${h}: click the face to lip-sync.`;
    drawFrame(field);
    field.canvas.dataset.ready = "1";
  };
  field.canvas.dataset.ready = "";
  if (isImage) media.addEventListener("load", ready, { once: true });
  else {
    media.addEventListener("loadeddata", () => { media.currentTime = 0; ready(); }, { once: true });
    media.addEventListener("seeked", ready);
  }
  media.addEventListener("error", () => { field.note.textContent = "This browser cannot show the video's first frame: type x and y."; });
  media.src = src;
}

function drawFrame(field) {
  const { canvas, frame, point } = field;
  if (!frame) return;
  const ctx = canvas.getContext("2d");
  ctx.drawImage(frame.media, 0, 0, frame.w, frame.h);
  const [x, y] = [Number(point.x.value), Number(point.y.value)];
  if (point.x.value === "" || point.y.value === "") return;
  const r = Math.max(4, Math.round(Math.min(frame.w, frame.h) / 40));
  ctx.lineWidth = Math.max(2, r / 2);
  ctx.strokeStyle = "#ff2d55";
  ctx.beginPath();
  ctx.arc(x, y, r, 0, 2 * Math.PI);
  ctx.stroke();
}

function buildForm(spec) {
  const path = spec.paths[`/${state.app}`];
  const schema = resolve(spec, path.post.requestBody.content["application/json"].schema);
  const required = new Set(schema.required || []);
  const names = Object.keys(schema.properties);
  const container = $("groups");
  container.replaceChildren();
  state.fields.clear();
  const placed = new Set();
  const groups = GROUPS.map(([title, members]) => [title, members.filter((n) => names.includes(n))]);
  groups.push(["Other", names.filter((n) => !GROUPS.some(([, members]) => members.includes(n)))]);
  for (const [title, members] of groups) {
    if (!members.length) continue;
    const details = el("details", { class: "group", open: OPEN_GROUPS.has(title) });
    details.append(el("summary", { text: title }));
    const grid = el("div", { class: "fields" });
    for (const name of members) {
      if (placed.has(name)) continue;
      placed.add(name);
      const field = buildField(spec, name, schema.properties[name], required.has(name));
      state.fields.set(name, field);
      grid.append(field.box);
    }
    details.append(grid);
    container.append(details);
  }
  const speaker = state.fields.get("speaker");
  const video = state.fields.get("video");
  if (speaker?.kind === "speaker" && video?.kind === "file") {
    const refresh = () => { if (speaker.input.value === "point") showFirstFrame(speaker); };
    video.input.addEventListener("change", refresh);
    video.urlInput.addEventListener("change", refresh);
  }
}

// --- uploads: the server's own flow (initiate, then PUT the bytes), with progress -----------------------

function putWithProgress(url, file, onProgress) {
  return new Promise((resolveUpload, reject) => {
    const xhr = new XMLHttpRequest();
    xhr.open("PUT", url);
    xhr.setRequestHeader("Content-Type", file.type || "application/octet-stream");
    xhr.upload.onprogress = (e) => e.lengthComputable && onProgress(e.loaded / e.total);
    xhr.onload = () => {
      if (xhr.status >= 200 && xhr.status < 300) return resolveUpload();
      let body = null;
      try { body = JSON.parse(xhr.responseText); } catch { body = { detail: xhr.responseText }; }
      reject(new ApiError(xhr.status, body));
    };
    xhr.onerror = () => reject(new Error("upload failed"));
    xhr.send(file);
  });
}

function startUpload(field) {
  const file = field.input.files[0];
  setFieldError(field, null);
  field.progress.hidden = false;
  field.progress.value = 0;
  field.status.textContent = `uploading ${file.name}…`;
  const upload = { file, url: null, promise: null };
  upload.promise = (async () => {
    try {
      const target = await api("POST", "storage/upload/initiate",
                               { content_type: file.type || "application/octet-stream", file_name: file.name });
      await putWithProgress(target.upload_url, file, (share) => {
        if (field.upload !== upload) return; // another file was chosen meanwhile
        field.progress.value = share;
        field.status.textContent = `uploading ${file.name}: ${Math.round(share * 100)}%`;
      });
      upload.url = target.file_url;
      if (field.upload === upload) {
        field.progress.value = 1;
        field.status.textContent = `uploaded ${file.name} (${formatBytes(file.size)})`;
      }
      return upload.url;
    } catch (err) {
      if (field.upload === upload) {
        field.status.textContent = "upload failed";
        field.upload = null; // the next submit tries again (with a corrected key, say)
        showError(err, field);
      }
      throw err;
    }
  })();
  upload.promise.catch(() => {}); // reported above; a submit awaits it again
  field.upload = upload;
  return upload.promise;
}

function formatBytes(n) {
  return n < 1024 ? `${n} B` : n < 1 << 20 ? `${(n / 1024).toFixed(1)} kB` : `${(n / (1 << 20)).toFixed(1)} MB`;
}

// --- reading the form ----------------------------------------------------------------------------------

class FieldProblem extends Error {
  constructor(field, message) { super(message); this.field = field; }
}

async function readValue(field) {
  const { kind, input } = field;
  if (kind === "file") {
    if (field.mode === "url") return field.urlInput.value.trim() || undefined;
    if (!input.files[0]) return undefined;
    return (field.upload || { promise: startUpload(field) }).promise;
  }
  if (kind === "speaker") return readSpeaker(field);
  if (kind === "boolean") return input.checked;
  const raw = input.value.trim();
  if (kind === "integer" || kind === "number") {
    if (input.validity.badInput) throw new FieldProblem(field, "is not a number");
    return raw === "" ? undefined : Number(raw);
  }
  if (kind === "list") {
    const items = raw.split(/[\s,]+/).filter(Boolean).map(Number);
    if (items.some(Number.isNaN)) throw new FieldProblem(field, "must be numbers separated by commas");
    return items;
  }
  if (kind === "json") {
    if (raw === "") return undefined;
    try { return JSON.parse(raw); } catch { throw new FieldProblem(field, "is not valid JSON"); }
  }
  return input.value;
}

function readSpeaker(field) {
  const mode = field.input.value;
  if (mode === "largest") return undefined; // the default: the request is the hosted schema's
  if (mode === "auto") return "auto";
  if (mode === "point") {
    const [frame, x, y] = ["frame", "x", "y"].map((k) => field.point[k].value.trim());
    if (x === "" || y === "") throw new FieldProblem(field, "click the face on the video's first frame, or type x and y");
    return { frame: Number(frame || 0), x: Number(x), y: Number(y) };
  }
  let value;
  try { value = JSON.parse(field.boxes.value.trim() || "null"); } catch { throw new FieldProblem(field, "boxes are not valid JSON"); }
  if (value === null) throw new FieldProblem(field, "give the boxes as JSON");
  return Array.isArray(value) ? { boxes: value } : value;
}

async function readBody() {
  const body = {};
  for (const field of state.fields.values()) {
    const value = await readValue(field);
    if (value !== undefined) body[field.name] = value;
  }
  return body;
}

// --- errors beside their fields ------------------------------------------------------------------------

function setFieldError(field, message) {
  field.error.textContent = message || "";
  field.error.hidden = !message;
  for (const input of [field.input, field.urlInput].filter(Boolean)) {
    if (message) input.setAttribute("aria-invalid", "true");
    else input.removeAttribute("aria-invalid");
  }
  if (message) field.box.closest("details").open = true;
}

function clearErrors() {
  for (const field of state.fields.values()) setFieldError(field, null);
  for (const id of ["form-error", "api-key-error"]) { $(id).hidden = true; $(id).textContent = ""; }
}

function showFormError(text) {
  $("form-error").textContent = text;
  $("form-error").hidden = false;
}

// A 422 names fields (detail: [{loc: ["body", field, …], msg, type}]); a 401 is about the key; else say what.
function showError(err, fallbackField) {
  if (err instanceof ApiError && err.status === 422 && Array.isArray(err.body?.detail)) {
    const named = [];
    for (const item of err.body.detail) {
      const loc = item.loc || [];
      const field = state.fields.get(loc[0] === "body" ? loc[1] : loc[0]);
      if (field) {
        const where = loc.slice(2).length ? ` (at ${loc.slice(2).join(".")})` : "";
        setFieldError(field, `${item.msg}${where}`);
        named.push(field);
      } else showFormError(`${loc.join(".")}: ${item.msg}`);
    }
    if (named.length) {
      showFormError(`Check ${named.map((f) => f.name).join(", ")}.`);
      (named[0].mode === "url" ? named[0].urlInput : named[0].input).focus();
    }
    return;
  }
  if (err instanceof FieldProblem) {
    setFieldError(err.field, err.message);
    err.field.input.focus();
    return;
  }
  const text = describeError(err);
  if (err instanceof ApiError && err.status === 401 && state.authRequired) {
    $("api-key-error").textContent = err.message;
    $("api-key-error").hidden = false;
    $("api-key").focus();
  } else if (fallbackField) setFieldError(fallbackField, text);
  showFormError(text);
}

// --- submit --------------------------------------------------------------------------------------------

async function submit(event) {
  event.preventDefault();
  clearErrors();
  const button = $("submit");
  button.disabled = true;
  button.textContent = "Submitting…";
  try {
    const body = await readBody();
    const queued = await api("POST", state.app, body);
    const entry = { id: queued.request_id, app: state.app, created: Date.now(), status: "IN_QUEUE", body };
    saveHistory([entry, ...loadHistory()]);
    openRequest(entry);
  } catch (err) {
    showError(err);
  } finally {
    button.disabled = false;
    button.textContent = "Run";
  }
}

// --- watching a request: SSE status stream with logs ---------------------------------------------------

function requestPath(entry, suffix = "") {
  return `${entry.app}/requests/${encodeURIComponent(entry.id)}${suffix}`;
}

function openRequest(entry) {
  if (state.watcher) state.watcher.abort();
  state.current = entry;
  $("run-empty").hidden = true;
  $("run").hidden = false;
  $("run-id").textContent = entry.id;
  $("request-json").textContent = JSON.stringify(entry.body ?? "(not kept)", null, 2);
  resetRun();
  const watcher = new AbortController();
  state.watcher = watcher;
  watch(entry, watcher.signal).catch((err) => {
    if (!watcher.signal.aborted) showRunError(describeError(err));
  });
  renderHistory();
}

function resetRun() {
  setBadge("connecting…", "");
  $("cancel").disabled = false;
  $("cancel").hidden = false;
  $("weights-warning").hidden = true;
  $("run-error").hidden = true;
  $("result").hidden = true;
  $("metrics").hidden = true;
  $("result-video").removeAttribute("src");
  $("progress").value = 0;
  $("progress-label").textContent = "";
  $("logs").textContent = "";
}

async function watch(entry, signal) {
  let poller = null;
  const onEvent = (status) => {
    onStatus(entry, status);
    clearInterval(poller);
    if (status.status === "IN_QUEUE") poller = setInterval(() => pollPosition(entry, signal), 2000);
  };
  try {
    for (let attempt = 0; ; attempt++) {
      try {
        const response = await fetch(requestPath(entry, "/status/stream?logs=1"),
                                     { headers: { Accept: "text/event-stream", ...authHeaders() }, signal });
        if (!response.ok) {
          let body = null;
          try { body = await response.json(); } catch { body = null; }
          throw new ApiError(response.status, body); // 401, 404 (expired or another key's): no retry
        }
        $("logs").textContent = ""; // the stream replays the request's whole history on every connection
        if (await readEvents(response.body, onEvent)) return;
      } catch (err) {
        if (signal.aborted || err instanceof ApiError) throw err;
        // a dropped connection: try again below
      }
      // The stream ended before COMPLETED (a proxy timeout, an API restart, a network drop): reconnect.
      await new Promise((r) => setTimeout(r, Math.min(1000 * 2 ** attempt, 10000)));
      if (signal.aborted) return;
    }
  } finally {
    clearInterval(poller);
  }
}

// Reads text/event-stream: events end with a blank line; `data:` lines carry the status JSON; `:` lines
// are keep-alive comments. Resolves true after a COMPLETED event, false when the stream ends before one.
async function readEvents(stream, onEvent) {
  const reader = stream.pipeThrough(new TextDecoderStream()).getReader();
  let buffer = "";
  for (;;) {
    const { value, done } = await reader.read();
    if (done) return false;
    buffer += value.replace(/\r\n?/g, "\n");
    let end;
    while ((end = buffer.indexOf("\n\n")) >= 0) {
      const block = buffer.slice(0, end);
      buffer = buffer.slice(end + 2);
      const data = block.split("\n").filter((l) => l.startsWith("data:")).map((l) => l.slice(5).trimStart()).join("\n");
      if (!data) continue;
      const status = JSON.parse(data);
      onEvent(status);
      if (status.status === "COMPLETED") {
        reader.cancel().catch(() => {});
        return true;
      }
    }
  }
}

async function pollPosition(entry, signal) {
  try {
    const status = await api("GET", requestPath(entry, "/status"), undefined, signal);
    if (status.status === "IN_QUEUE" && state.current === entry) setBadge(queueText(status.queue_position), "queued");
  } catch { /* the stream reports real trouble */ }
}

function queueText(position) {
  return position ? `in queue · ${position} ahead` : "in queue · next";
}

function setBadge(text, kind) {
  $("run-status").textContent = text;
  $("run-status").className = `badge ${kind}`;
}

function onStatus(entry, status) {
  if (state.current !== entry) return;
  for (const log of status.logs || []) appendLog(log);
  if (status.status === "IN_QUEUE") setBadge(queueText(status.queue_position), "queued");
  else if (status.status === "IN_PROGRESS") setBadge("running", "running");
  else if (status.status === "COMPLETED") finish(entry, status);
  updateHistory(entry.id, status.error_type ? `${status.error_type}` : status.status);
}

function appendLog(log) {
  const time = (log.timestamp || "").slice(11, 19);
  const line = el("span", { class: `log ${String(log.level || "").toLowerCase()}` },
                  el("span", { class: "time", text: `${time} ` }), `${log.message}\n`);
  const logs = $("logs");
  const atBottom = logs.scrollHeight - logs.scrollTop - logs.clientHeight < 24;
  logs.append(line);
  if (atBottom) logs.scrollTop = logs.scrollHeight;
  const progress = PROGRESS_LINE.exec(log.message);
  if (progress) {
    const [, stage, done, total] = progress;
    $("progress").value = Number(total) ? Number(done) / Number(total) : 0;
    $("progress-label").textContent = `${stage} ${done}/${total}`;
  }
  if (/NOT A TRAINED MODEL|random weights/i.test(log.message) && log.level === "WARN") showWeightsWarning(log.message);
}

function showWeightsWarning(text) {
  $("weights-warning").textContent = `⚠ ${text}`;
  $("weights-warning").hidden = false;
}

function showRunError(text) {
  $("run-error").textContent = text;
  $("run-error").hidden = false;
}

async function finish(entry, status) {
  entry.finished = true;
  $("cancel").hidden = true;
  if (status.error_type === "client_cancelled") setBadge("cancelled", "cancelled");
  else if (status.error_type) setBadge(`failed · ${status.error_type}`, "failed");
  else setBadge("completed", "completed");
  if (status.error_type) showRunError(`${status.error_type}: ${status.error}`);
  else {
    $("progress").value = 1;
    $("progress-label").textContent = status.metrics?.total_time !== undefined ? `done in ${status.metrics.total_time} s` : "done";
  }
  renderMetrics(status.metrics || {});
  if (status.error_type === "client_cancelled") return;
  try {
    const output = await api("GET", requestPath(entry));
    if (state.current === entry) showResult(output);
  } catch (err) {
    if (state.current !== entry) return;
    if (err instanceof ApiError && err.status === 422) showError(err); // e.g. no face in the video
    if (!status.error_type) showRunError(describeError(err));
  }
}

function showResult(output) {
  const file = output.video || Object.values(output).find((v) => v && v.url);
  if (!file) return;
  const video = $("result-video");
  video.src = file.url;
  $("download").href = file.url;
  $("download").setAttribute("download", file.file_name || "output.mp4");
  $("download").textContent = `Download ${file.file_name || "output.mp4"}${file.file_size ? ` (${formatBytes(file.file_size)})` : ""}`;
  $("result").hidden = false;
}

// Stage times (`*_time`), face coverage, engine, model and the random-weights flag first; all of it below.
// "auto: track 0 (frames 0-35), track 1 (frames 36-69)"; the reasons and scores are in "All metrics".
function speakerSummary(speaker) {
  const parts = (speaker.segments || []).slice(0, 4).map((s) => `track ${s.track} (frames ${s.frames[0]}-${s.frames[1]})`);
  const more = (speaker.segments || []).length > 4 ? ", …" : "";
  return `${speaker.mode}: ${parts.join(", ") || "no face chosen"}${more}${speaker.note ? ` · ${speaker.note}` : ""}`;
}

function renderMetrics(metrics) {
  if (!Object.keys(metrics).length) return;
  if (metrics.random_weights) {
    if ($("weights-warning").hidden) {
      showWeightsWarning(`NOT A TRAINED MODEL: the ${metrics.model || ""} model runs with random weights; ` +
                         "the video is not real lip-sync output.");
    }
  }
  const facts = $("facts");
  facts.replaceChildren();
  const percent = (v) => `${(100 * v).toFixed(1)}%`;
  const rows = [
    ["engine", metrics.engine], ["model", metrics.model],
    ["weights", metrics.random_weights === undefined ? undefined : metrics.random_weights ? "RANDOM (untrained)" : "trained"],
    ["face coverage", metrics.face_coverage !== undefined ? percent(metrics.face_coverage) : undefined],
    ["output face coverage", metrics.output_face_coverage !== undefined ? percent(metrics.output_face_coverage) : undefined],
    ["frames", metrics.frames],
    ["size", metrics.width ? `${metrics.width}×${metrics.height}${metrics.fps ? ` @ ${metrics.fps} fps` : ""}` : undefined],
    ["speaker", metrics.speaker ? speakerSummary(metrics.speaker) : undefined],
    ["sync mode", metrics.sync_mode],
    ["total time", metrics.total_time !== undefined ? `${metrics.total_time} s` : undefined],
  ];
  for (const [name, value] of rows) {
    if (value === undefined || value === null) continue;
    const dd = el("dd", { text: String(value) });
    if (name === "weights" && metrics.random_weights) dd.className = "bad";
    facts.append(el("dt", { text: name }), dd);
  }
  // The worker times the request (queue, fetch, inference, upload); the pipeline's own stages are inside
  // `inference`, so they are listed under it, indented.
  const times = Object.entries(metrics).filter(([k, v]) => k.endsWith("_time") && k !== "total_time" && typeof v === "number");
  const outer = times.filter(([k]) => REQUEST_STAGES.includes(k));
  const inner = times.filter(([k]) => !REQUEST_STAGES.includes(k));
  const longest = Math.max(...times.map(([, v]) => v), 1e-9);
  const row = ([name, seconds], sub) => {
    const bar = el("span", { class: "bar" });
    bar.style.width = `${Math.max(1, (100 * seconds) / longest)}%`;
    return el("li", { class: sub ? "sub" : null }, el("span", { class: "stage", text: name.replace(/_time$/, "") }),
              el("span", { class: "track" }, bar), el("span", { class: "secs", text: `${seconds.toFixed(2)} s` }));
  };
  const stageRows = [];
  for (const stage of outer) {
    stageRows.push(row(stage, false));
    if (stage[0] === "inference_time") stageRows.push(...inner.map((s) => row(s, true)));
  }
  if (!outer.some(([k]) => k === "inference_time")) stageRows.push(...inner.map((s) => row(s, false)));
  $("stages").replaceChildren(...stageRows);
  $("metrics-json").textContent = JSON.stringify(metrics, null, 2);
  $("metrics").hidden = false;
}

async function cancel() {
  const entry = state.current;
  if (!entry) return;
  $("cancel").disabled = true;
  try {
    await api("PUT", requestPath(entry, "/cancel"));
    if (!entry.finished) setBadge("cancelling…", "cancelled");
  } catch (err) {
    if (!(err instanceof ApiError && err.status === 400)) showRunError(describeError(err)); // 400: already done
  }
}

// --- this tab's requests ---------------------------------------------------------------------------------

function loadHistory() {
  try { return JSON.parse(sessionStorage.getItem(HISTORY_STORE)) || []; } catch { return []; }
}

function saveHistory(entries) {
  sessionStorage.setItem(HISTORY_STORE, JSON.stringify(entries.slice(0, 50)));
  renderHistory();
}

function updateHistory(id, status) {
  const entries = loadHistory();
  const entry = entries.find((e) => e.id === id);
  if (entry && entry.status !== status) {
    entry.status = status;
    saveHistory(entries);
  }
}

function renderHistory() {
  const list = $("history");
  const entries = loadHistory();
  list.replaceChildren();
  $("history-empty").hidden = entries.length > 0;
  for (const entry of entries) {
    const time = new Date(entry.created).toLocaleTimeString();
    const button = el("button", { type: "button", class: "link", "aria-current": state.current?.id === entry.id ? "true" : null },
                      el("span", { text: time }), el("code", { text: entry.id.slice(0, 8) }),
                      el("span", { class: "badge small", text: entry.status }));
    button.addEventListener("click", () => openRequest(entry));
    list.append(el("li", { "data-request-id": entry.id }, button));
  }
}

// --- start -------------------------------------------------------------------------------------------------

async function start() {
  try {
    const [config, spec] = await Promise.all([api("GET", "playground/config.json"), api("GET", "openapi.json")]);
    state.authRequired = config.auth_required;
    const select = $("app");
    for (const app of config.apps) select.append(el("option", { value: app, text: app }));
    $("app-pick").hidden = config.apps.length < 2;
    state.app = config.apps[0];
    select.addEventListener("change", () => { state.app = select.value; buildForm(spec); });
    $("key-box").hidden = !state.authRequired;
    $("api-key").value = sessionStorage.getItem(KEY_STORE) || "";
    $("api-key").addEventListener("input", (e) => {
      sessionStorage.setItem(KEY_STORE, e.target.value.trim());
      $("api-key-error").hidden = true;
    });
    buildForm(spec);
    $("form").addEventListener("submit", submit);
    $("cancel").addEventListener("click", cancel);
    $("loading").hidden = true;
    $("form").hidden = false;
    renderHistory();
  } catch (err) {
    $("loading").textContent = `Could not load the playground: ${describeError(err)}`;
  }
}

start();
