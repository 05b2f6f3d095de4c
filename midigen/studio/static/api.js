// The studio's JSON API, as the page uses it. Every error becomes an Error whose message is the
// server's one-line "detail".

export async function call(method, path, body, headers = {}) {
  const init = { method, headers: { ...headers } };
  if (body instanceof Blob || body instanceof ArrayBuffer) {
    init.body = body;
  } else if (body !== undefined) {
    init.body = JSON.stringify(body);
    init.headers["Content-Type"] = "application/json";
  }
  let res;
  try {
    res = await fetch(path, init);
  } catch (e) {
    throw new Error("the studio server is not answering (is it still running?)");
  }
  if (res.status === 204) return null;
  const text = await res.text();
  let data = null;
  try { data = text ? JSON.parse(text) : null; } catch (e) { data = null; }
  if (!res.ok) {
    const detail = data && data.detail;
    const msg = typeof detail === "string" ? detail : (text || res.statusText);
    const err = new Error(msg);
    err.status = res.status;
    throw err;
  }
  return data;
}

const piece = (id) => `/api/pieces/${id}`;

export const api = {
  info: () => call("GET", "/api/info"),
  chords: (text) => call("POST", "/api/chords", { chords: text }),  // a chart as the server reads it
  pieces: () => call("GET", "/api/pieces"),
  piece: (id) => call("GET", piece(id)),
  createPiece: (name) => call("POST", "/api/pieces", { name }),
  deletePiece: (id) => call("DELETE", piece(id)),
  upload: (file) => call("POST", `/api/pieces/upload?name=${encodeURIComponent(file.name || "upload.mid")}`,
    file, { "Content-Type": "audio/midi" }),
  roll: (id, vid) => call("GET", `${piece(id)}/versions/${vid}/roll`),
  undo: (id) => call("POST", `${piece(id)}/undo`),
  redo: (id) => call("POST", `${piece(id)}/redo`),
  select: (id, vid) => call("POST", `${piece(id)}/select`, { version: vid }),
  deleteVersion: (id, vid) => call("DELETE", `${piece(id)}/versions/${vid}`),
  submit: (id, kind, body) => call("POST", `${piece(id)}/${kind}`, body),
  job: (jid, since, wait) => call("GET", `/api/jobs/${jid}?since=${since}&wait=${wait}`),
  cancel: (jid) => call("POST", `/api/jobs/${jid}/cancel`),
  midiUrl: (id, vid) => `${piece(id)}/versions/${vid}/midi`,
  wavUrl: (id, vid, download = false, tracks = null) => {  // tracks: only these (the roll's indices) sound
    const q = [download ? "download=true" : "", tracks ? `tracks=${tracks.join(",")}` : ""].filter(Boolean);
    return `${piece(id)}/versions/${vid}/wav${q.length ? `?${q.join("&")}` : ""}`;
  },
};
