// Drives the official @fal-ai/client (pinned in package.json) against a lipsync server.
// Usage: BASE=http://127.0.0.1:PORT FAL_KEY=id:secret VIDEO=… AUDIO=… node client_e2e.mjs <scenario>
// Prints one JSON line with what the scenario observed; tests/test_js_client.py asserts on it.
import { readFileSync } from "node:fs";
import { createFalClient, ValidationError } from "@fal-ai/client";

const { BASE, FAL_KEY, VIDEO, AUDIO } = process.env;
const APP = "pipio/lipsync";

// Route (b) for JS: rewrite fal's hosts to ours in a request middleware (README shows the same lines).
const pointAt = (base) => async (request) => ({
  ...request,
  url: request.url
    .replace(/^https:\/\/queue\.fal\.run/, base)
    .replace(/^https:\/\/fal\.run/, `${base}/run`)
    .replace(/^https:\/\/rest\.fal\.ai/, base),
});

const blob = (path, type) => new Blob([readFileSync(path)], { type });

function viaMiddleware() {
  return createFalClient({ credentials: FAL_KEY, requestMiddleware: pointAt(BASE) });
}

function viaProxy() {
  return createFalClient({ credentials: FAL_KEY, proxyUrl: { url: `${BASE}/api/fal/proxy`, when: "always" } });
}

async function subscribe(fal, mode) {
  const logs = [];
  const statuses = new Set();
  const audioUrl = await fal.storage.upload(blob(AUDIO, "audio/wav")); // explicit upload
  const result = await fal.subscribe(APP, {
    input: { video: blob(VIDEO, "video/mp4"), audio: audioUrl, num_frames: 8 }, // Blob: auto-uploaded
    logs: true,
    mode,
    pollInterval: 100,
    onQueueUpdate: (update) => {
      statuses.add(update.status);
      for (const entry of update.logs ?? []) logs.push(entry.message);
    },
  });
  return { requestId: result.requestId, data: result.data, logs, statuses: [...statuses], audioUrl };
}

const scenarios = {
  subscribe: () => subscribe(viaMiddleware(), "polling"),
  streaming: () => subscribe(viaMiddleware(), "streaming"),
  proxy: () => subscribe(viaProxy(), "polling"),
  async queue() {
    const fal = viaMiddleware();
    const input = { video: blob(VIDEO, "video/mp4"), audio: blob(AUDIO, "audio/wav"), num_frames: 5 };
    const submitted = await fal.queue.submit(APP, { input });
    const first = await fal.queue.status(APP, { requestId: submitted.request_id, logs: true });
    await fal.queue.subscribeToStatus(APP, { requestId: submitted.request_id, pollInterval: 100 });
    const done = await fal.queue.status(APP, { requestId: submitted.request_id, logs: true });
    const result = await fal.queue.result(APP, { requestId: submitted.request_id });
    return { submitted, first: first.status, done, requestId: result.requestId, data: result.data };
  },
  async slow() {
    // A request that runs a few seconds, followed by polling: the tests crash the API meanwhile.
    const fal = viaMiddleware();
    const result = await fal.subscribe(APP, {
      input: { video: blob(VIDEO, "video/mp4"), audio: blob(AUDIO, "audio/wav"), num_frames: 12,
               use_custom_prompt: true, custom_prompt: "test:slow=0.3" },
      pollInterval: 200,
    });
    return { requestId: result.requestId, data: result.data };
  },
  async request() {
    // One lip-sync request: REQUEST holds the extra input fields (JSON); VIDEO and AUDIO are uploaded as Blobs.
    const fal = viaMiddleware();
    const types = { mp4: "video/mp4", png: "image/png", wav: "audio/wav" };
    const typeOf = (path) => types[path.split(".").pop()];
    const logs = [];
    try {
      const result = await fal.subscribe(APP, {
        input: { video: blob(VIDEO, typeOf(VIDEO)), audio: blob(AUDIO, typeOf(AUDIO)),
                 ...JSON.parse(process.env.REQUEST ?? "{}") },
        logs: true,
        pollInterval: 200,
        onQueueUpdate: (update) => { for (const entry of update.logs ?? []) logs.push(entry.message); },
      });
      return { requestId: result.requestId, data: result.data, logs };
    } catch (err) {
      return { error: { status: err.status, body: err.body, fieldErrors: err.fieldErrors ?? null }, logs };
    }
  },
  async multipart() {
    // Over 90 MB the client switches to the multipart flow (10 MB parts + complete).
    const fal = viaMiddleware();
    const bytes = new Uint8Array(91 * 1024 * 1024);
    for (let i = 0; i < bytes.length; i += 4096) bytes[i] = (i / 4096) % 251;
    const url = await fal.storage.upload(new Blob([bytes], { type: "video/mp4" }));
    const back = new Uint8Array(await (await fetch(url)).arrayBuffer());
    let same = back.length === bytes.length;
    for (let i = 0; same && i < bytes.length; i += 4096) same = back[i] === bytes[i];
    return { url, size: back.length, same };
  },
  async validation() {
    const fal = viaMiddleware();
    try {
      await fal.queue.submit(APP, { input: { video: "ftp://nope", audio: "https://example.com/a.wav", seed: "x" } });
      return { raised: false };
    } catch (err) {
      return {
        raised: true,
        isValidationError: err instanceof ValidationError,
        status: err.status,
        videoErrors: err.getFieldErrors?.("video") ?? [],
        seedErrors: err.getFieldErrors?.("seed") ?? [],
      };
    }
  },
};

const name = process.argv[2];
if (!scenarios[name]) {
  console.error(`unknown scenario ${name}; one of ${Object.keys(scenarios).join(", ")}`);
  process.exit(2);
}
try {
  console.log(JSON.stringify(await scenarios[name]()));
} catch (err) {
  console.error(err?.stack ?? err, JSON.stringify(err?.body ?? null));
  process.exit(1);
}
