/**
 * moat's message kinds and their payload codecs. Pure: no I/O.
 *
 * The wire format is documented in `docs/PROTOCOL.md`.
 *
 * @module
 */

import { type ErrorBody, ProtocolError } from "./errors.ts";
import { type DigestName, parseDigestName } from "./digest.ts";
import { truncateText } from "./text.ts";

/** Protocol version carried in the preamble. */
export const PROTOCOL_VERSION = 1;

/**
 * The 8-byte preamble: 0x89 "MOAT" CR LF, then the version byte. The first
 * byte is not text, so a plain-text client is told apart by its first byte.
 */
export const MAGIC: Uint8Array = Uint8Array.of(
  0x89,
  0x4d,
  0x4f,
  0x41,
  0x54,
  0x0d,
  0x0a,
);

/** Smallest frame limit a peer may announce (matches `--max-frame`'s floor). */
export const MIN_MAX_FRAME_SIZE = 1024;

/** Length of magic + version. */
export const PREAMBLE_SIZE = MAGIC.length + 1;

/** Frame types. */
export const Kind = {
  /** client → server, JSON {@linkcode Hello} */
  Hello: 0x01,
  /** server → client, JSON {@linkcode Welcome} */
  Welcome: 0x02,
  /** server → client, before Welcome when a token is required: JSON `{nonce, methods}` (lib/auth.ts) */
  Challenge: 0x03,
  /** client → server, the answer to a Challenge: JSON `{name, proof}` (lib/auth.ts) */
  Auth: 0x04,
  /**
   * client → server after the Welcome, empty: "still here". Sent only to a
   * server whose Welcome carries `idleTimeoutMs`; see {@linkcode Welcome}.
   */
  Ping: 0x05,
  /** server → client, empty: the answer to a Ping */
  Pong: 0x06,
  /** either way, JSON {@linkcode ErrorBody}; the sender closes after it */
  Error: 0x0f,
  /** client → server: UTF-8 text; server → client: JSON {@linkcode ChatLine} */
  Chat: 0x10,
  /** client → server, JSON {@linkcode GetRequest} */
  Get: 0x20,
  /** server → client, JSON {@linkcode FileMeta} */
  FileMeta: 0x21,
  /** server → client, raw file bytes */
  FileData: 0x22,
  /** server → client, 32 raw bytes: SHA-256 of the whole file */
  FileEnd: 0x23,
  /** server → client, JSON {@linkcode ShipReady} */
  ShipReady: 0x30,
  /** client → server, binary records, see {@linkcode encodeShipBatch} */
  ShipBatch: 0x31,
  /** server → client, 8 bytes: f64 LE, every record up to this seq is durable */
  ShipAck: 0x32,
  /**
   * server → client, only to a shipper that asked for receipts: the source's
   * signed checkpoint and a consistency proof, see {@linkcode encodeShipReceipt}
   */
  ShipReceipt: 0x33,
  /**
   * client → server, empty: "a receipt now, please" (its spool is full, or
   * it is done); only after receipts were offered
   */
  ShipSync: 0x34,
  /**
   * client → server, 16 bytes: seq f64 LE, size f64 LE: "prove that record
   * seq is in the tree of that size"; only after receipts were offered
   */
  ShipProve: 0x35,
  /** server → client, the answer to a ShipProve, see {@linkcode encodeShipProof} */
  ShipProof: 0x36,
  /** vault → witness, JSON {@linkcode WitnessAdd}: a checkpoint to cosign */
  WitnessAdd: 0x40,
  /** witness → vault, JSON `{cosignature}`: the cosignature line */
  WitnessCosigned: 0x41,
  /** witness → vault, JSON `{size}`: the size it holds is not the request's `old` */
  WitnessConflict: 0x42,
} as const;
/** A frame type. */
export type Kind = typeof Kind[keyof typeof Kind];

/** What a client intends to do on this connection. */
export type Mode = "get" | "chat" | "ship" | "witness";

/** First frame a client sends. */
export interface Hello {
  client: string;
  mode: Mode;
  /** Largest frame payload the client accepts. */
  maxFrameSize: number;
  /** Mode "ship": the shipper's source name. */
  source?: string;
  /**
   * Mode "ship": the shipper wants receipts (ShipReceipt frames), and holds
   * a checkpoint of this tree size for the source (0: none yet).
   */
  receipts?: number;
}

/** Server's answer to a shipper's hello: where to resume. */
export interface ShipReady {
  /** The source as stored: the peer's identity and the shipper's name. */
  peer: string;
  source: string;
  /** Highest sequence number durably stored for this source (0 if none). */
  lastSeq: number;
  /**
   * The vault's checkpoint verifier key (`name+id+base64`), present exactly
   * when the shipper asked for receipts and the vault signs checkpoints: a
   * ShipReceipt then follows at once.
   */
  vaultKey?: string;
}

/** One shipped log record. */
export interface ShipRecord {
  seq: number;
  /** Shipper's timestamp, ms since the epoch. */
  ts: number;
  line: Uint8Array;
  /** The next record continues this line. */
  partial: boolean;
}

/** Bytes before each line in a ShipBatch: seq f64, ts f64, flags u8, length u32. */
export const SHIP_RECORD_HEADER = 21;

/** Server's answer to {@linkcode Hello}. */
export interface Welcome {
  server: string;
  /** Name the server assigned to this connection, e.g. "c7". */
  name: string;
  /** The client's address as the server sees it. */
  peer: string;
  maxFrameSize: number;
  /**
   * The server's idle timeout in ms. A server that sends it answers Ping
   * with Pong and counts a Ping as activity, so a client that pings more
   * often than this is never dropped for being quiet. Absent from servers
   * that predate heartbeats: a client must then send no Ping.
   */
  idleTimeoutMs?: number;
}

export type { ErrorBody };

/** A chat line as relayed by the server. */
export interface ChatLine {
  /** "operator", "server" or a client name. */
  from: string;
  /** The sender's address, "" for the operator. */
  addr: string;
  text: string;
}

/** A file request. */
export interface GetRequest {
  path: string;
  /** Resume from this byte offset; the digest still covers the whole file. */
  offset: number;
  /** The digest FileEnd should carry; `sha256` when absent. */
  digest: DigestName;
}

/** Announces a file transfer. */
export interface FileMeta {
  path: string;
  size: number;
  offset: number;
  mtimeMs: number;
  /** The digest FileEnd will carry; `sha256` when absent. */
  digest: DigestName;
}

const encoder = new TextEncoder();
const decoder = new TextDecoder("utf-8", { fatal: false });

/**
 * Encodes a JSON payload.
 *
 * @param value Any JSON-serialisable value.
 * @returns UTF-8 bytes.
 */
export function encodeJson(value: unknown): Uint8Array {
  return encoder.encode(JSON.stringify(value));
}

/**
 * Decodes a JSON object payload.
 *
 * @param payload UTF-8 JSON bytes.
 * @param what Name of the message, for the error.
 * @returns The parsed object.
 * @throws {ProtocolError} When the payload is not a JSON object.
 */
export function decodeJson(
  payload: Uint8Array,
  what: string,
): Record<string, unknown> {
  let value: unknown;
  try {
    value = JSON.parse(decoder.decode(payload));
  } catch (err) {
    throw new ProtocolError(`Cannot decode ${what}: payload is not JSON`, {
      cause: err,
    });
  }
  if (value === null || typeof value !== "object" || Array.isArray(value)) {
    throw new ProtocolError(`Cannot decode ${what}: payload is not an object`);
  }
  return value as Record<string, unknown>;
}

function field<T extends "string" | "number">(
  obj: Record<string, unknown>,
  key: string,
  type: T,
  what: string,
): T extends "string" ? string : number {
  const v = obj[key];
  if (typeof v !== type || (type === "number" && !Number.isFinite(v))) {
    throw new ProtocolError(
      `Cannot decode ${what}: field "${key}" must be a ${type}`,
    );
  }
  return v as T extends "string" ? string : number;
}

/** An optional digest field: absent means SHA-256, the protocol's first digest. */
function digestField(obj: Record<string, unknown>, what: string): DigestName {
  if (obj.digest === undefined) return "sha256";
  return parseDigestName(field(obj, "digest", "string", what));
}

function count(obj: Record<string, unknown>, key: string, what: string) {
  const n = field(obj, key, "number", what);
  if (!Number.isSafeInteger(n) || n < 0) {
    throw new ProtocolError(
      `Cannot decode ${what}: field "${key}" must be a non-negative integer`,
    );
  }
  return n;
}

/**
 * Parses a Hello payload.
 *
 * @param payload Frame payload.
 * @returns The hello.
 * @throws {ProtocolError} On a malformed payload.
 */
export function decodeHello(payload: Uint8Array): Hello {
  const o = decodeJson(payload, "hello");
  const mode = field(o, "mode", "string", "hello");
  if (
    mode !== "get" && mode !== "chat" && mode !== "ship" && mode !== "witness"
  ) {
    throw new ProtocolError(`Cannot decode hello: unknown mode "${mode}"`);
  }
  const hello: Hello = {
    client: field(o, "client", "string", "hello"),
    mode,
    maxFrameSize: count(o, "maxFrameSize", "hello"),
  };
  // Tiny frames would make the server send a file a few bytes at a time.
  if (hello.maxFrameSize < MIN_MAX_FRAME_SIZE) {
    throw new ProtocolError(
      `Cannot decode hello: maxFrameSize ${hello.maxFrameSize} is below ${MIN_MAX_FRAME_SIZE}`,
    );
  }
  if (mode === "ship") {
    const source = field(o, "source", "string", "hello");
    if (source.length === 0 || source.length > 128) {
      throw new ProtocolError(
        "Cannot decode hello: source must be 1 to 128 characters",
      );
    }
    hello.source = source;
    if (o.receipts !== undefined) {
      hello.receipts = count(o, "receipts", "hello");
    }
  }
  return hello;
}

/**
 * Parses a Welcome payload.
 *
 * @param payload Frame payload.
 * @returns The welcome.
 * @throws {ProtocolError} On a malformed payload.
 */
export function decodeWelcome(payload: Uint8Array): Welcome {
  const o = decodeJson(payload, "welcome");
  const welcome: Welcome = {
    server: field(o, "server", "string", "welcome"),
    name: field(o, "name", "string", "welcome"),
    peer: field(o, "peer", "string", "welcome"),
    maxFrameSize: count(o, "maxFrameSize", "welcome"),
  };
  if (o.idleTimeoutMs !== undefined) {
    welcome.idleTimeoutMs = count(o, "idleTimeoutMs", "welcome");
  }
  return welcome;
}

/**
 * Encodes an error payload that fits any peer's frame limit: the message is
 * cut (and ends in `…`) until the JSON is at most
 * {@linkcode MIN_MAX_FRAME_SIZE} bytes. Make the body with `toErrorBody`
 * (`errors.ts`), which decides what a peer may be told.
 *
 * @param body Code and message.
 * @returns UTF-8 JSON bytes, at most 1024 of them.
 * @throws {RangeError} When the code alone does not fit.
 */
export function encodeError(body: ErrorBody): Uint8Array {
  const encode = (max: number) =>
    encodeJson({ code: body.code, message: truncateText(body.message, max) });
  // Every character is at least one byte of JSON, so no more than the limit
  // fits; then the longest cut that fits, by bisection (about ten rounds).
  const whole = encode(MIN_MAX_FRAME_SIZE);
  if (whole.length <= MIN_MAX_FRAME_SIZE) return whole;
  let fits = -1;
  let over = MIN_MAX_FRAME_SIZE;
  while (over - fits > 1) {
    const mid = Math.floor((fits + over) / 2);
    if (encode(mid).length <= MIN_MAX_FRAME_SIZE) fits = mid;
    else over = mid;
  }
  if (fits < 0) {
    throw new RangeError(
      `Cannot encode error: code of ${body.code.length} characters is too long`,
    );
  }
  return encode(fits);
}

/**
 * Parses an error payload.
 *
 * @param payload Frame payload.
 * @returns The error body.
 * @throws {ProtocolError} On a malformed payload.
 */
export function decodeError(payload: Uint8Array): ErrorBody {
  const o = decodeJson(payload, "error");
  return {
    code: field(o, "code", "string", "error"),
    message: field(o, "message", "string", "error"),
  };
}

/**
 * Parses a relayed chat line.
 *
 * @param payload Frame payload.
 * @returns The chat line.
 * @throws {ProtocolError} On a malformed payload.
 */
export function decodeChatLine(payload: Uint8Array): ChatLine {
  const o = decodeJson(payload, "chat line");
  return {
    from: field(o, "from", "string", "chat line"),
    addr: field(o, "addr", "string", "chat line"),
    text: field(o, "text", "string", "chat line"),
  };
}

/**
 * Parses a Get payload.
 *
 * @param payload Frame payload.
 * @returns The request.
 * @throws {ProtocolError} On a malformed payload.
 */
export function decodeGet(payload: Uint8Array): GetRequest {
  const o = decodeJson(payload, "get request");
  return {
    path: field(o, "path", "string", "get request"),
    offset: count(o, "offset", "get request"),
    digest: digestField(o, "get request"),
  };
}

/**
 * Parses a FileMeta payload.
 *
 * @param payload Frame payload.
 * @returns The metadata.
 * @throws {ProtocolError} On a malformed payload.
 */
export function decodeFileMeta(payload: Uint8Array): FileMeta {
  const o = decodeJson(payload, "file metadata");
  return {
    path: field(o, "path", "string", "file metadata"),
    size: count(o, "size", "file metadata"),
    offset: count(o, "offset", "file metadata"),
    mtimeMs: field(o, "mtimeMs", "number", "file metadata"),
    digest: digestField(o, "file metadata"),
  };
}

/**
 * Decodes UTF-8 text leniently (invalid sequences become U+FFFD).
 *
 * @param bytes UTF-8 bytes.
 * @returns The text.
 */
export function decodeText(bytes: Uint8Array): string {
  return decoder.decode(bytes);
}

/**
 * Encodes text as UTF-8.
 *
 * @param text The text.
 * @returns UTF-8 bytes.
 */
export function encodeText(text: string): Uint8Array {
  return encoder.encode(text);
}

/**
 * Builds the 8-byte preamble for a protocol version.
 *
 * @param version Protocol version.
 * @returns Magic followed by the version byte.
 */
export function encodePreamble(version: number = PROTOCOL_VERSION): Uint8Array {
  const out = new Uint8Array(PREAMBLE_SIZE);
  out.set(MAGIC);
  out[MAGIC.length] = version;
  return out;
}

/**
 * Checks whether `bytes` could be the start of the preamble (used to tell
 * framed clients from plain-text ones after the first bytes arrive).
 *
 * @param bytes The first bytes received.
 * @returns true when every byte given agrees with the magic.
 */
export function isMagicPrefix(bytes: Uint8Array): boolean {
  const n = Math.min(bytes.length, MAGIC.length);
  for (let i = 0; i < n; i++) if (bytes[i] !== MAGIC[i]) return false;
  return true;
}

/** Longest `vaultKey` a ShipReady may carry (a verifier key is about 100). */
export const VAULT_KEY_MAX = 512;

/** Longest signed note a ShipReceipt carries, in bytes. */
export const SHIP_NOTE_MAX = 8192;

/**
 * Most hashes in a receipt's consistency proof or a proof's audit path: a
 * tree below 2^53 leaves needs at most 54.
 */
export const SHIP_PROOF_HASHES_MAX = 64;

/**
 * Largest ShipReceipt payload: from (8), note length (2), the note, hash
 * count (1) and the hashes. A server sends receipts only to a shipper whose
 * Hello announces at least this `maxFrameSize`.
 */
export const SHIP_RECEIPT_MAX = 8 + 2 + SHIP_NOTE_MAX + 1 +
  SHIP_PROOF_HASHES_MAX * 32;

/** A source's signed checkpoint, and the proof that it extends one before. */
export interface ShipReceipt {
  /**
   * The tree size the proof starts from: the size the shipper said it holds
   * (Hello `receipts`), then the size of the previous receipt sent on this
   * connection.
   */
  from: number;
  /** The signed checkpoint (a C2SP signed note), as text. */
  note: string;
  /** RFC 9162 consistency proof from `from` to the note's size. */
  proof: Uint8Array[];
}

/** A ShipProve request: is record `seq` in the tree of `size` leaves? */
export interface ShipProve {
  seq: number;
  size: number;
}

/** The answer to a {@linkcode ShipProve}. */
export interface ShipProof extends ShipProve {
  /** False: the vault cannot prove the record in that tree (nothing follows). */
  found: boolean;
  /** The record's leaf bytes (docs/VAULT.md), empty when not found. */
  leaf: Uint8Array;
  /** RFC 9162 audit path of the leaf in the tree of `size`. */
  path: Uint8Array[];
}

const strictUtf8 = new TextDecoder("utf-8", { fatal: true });

function hashesAt(
  payload: Uint8Array,
  at: number,
  what: string,
): Uint8Array[] {
  if (payload.length < at + 1) {
    throw new ProtocolError(`Cannot decode ${what}: truncated`);
  }
  const n = payload[at]!;
  if (n > SHIP_PROOF_HASHES_MAX) {
    throw new ProtocolError(
      `Cannot decode ${what}: ${n} hashes is more than ${SHIP_PROOF_HASHES_MAX}`,
    );
  }
  if (payload.length !== at + 1 + n * 32) {
    throw new ProtocolError(
      `Cannot decode ${what}: ${payload.length} bytes where ${
        at + 1 + n * 32
      } were announced`,
    );
  }
  const out: Uint8Array[] = [];
  for (let i = 0; i < n; i++) {
    out.push(payload.slice(at + 1 + i * 32, at + 33 + i * 32));
  }
  return out;
}

function putHashes(
  out: Uint8Array,
  at: number,
  hashes: readonly Uint8Array[],
): void {
  out[at] = hashes.length;
  hashes.forEach((h, i) => out.set(h, at + 1 + i * 32));
}

function checkHashes(hashes: readonly Uint8Array[], what: string): void {
  if (hashes.length > SHIP_PROOF_HASHES_MAX) {
    throw new RangeError(`Cannot encode ${what}: too many hashes`);
  }
  for (const h of hashes) {
    if (h.length !== 32) {
      throw new RangeError(`Cannot encode ${what}: a hash is 32 bytes`);
    }
  }
}

function sizeAt(view: DataView, at: number, what: string): number {
  const n = view.getFloat64(at, true);
  if (!Number.isSafeInteger(n) || n < 0) {
    throw new ProtocolError(`Cannot decode ${what}: bad tree size or seq`);
  }
  return n;
}

function viewOf(payload: Uint8Array): DataView {
  return new DataView(payload.buffer, payload.byteOffset, payload.byteLength);
}

/**
 * Encodes a ShipReceipt payload: from (f64 LE), note length (u16 LE), the
 * note (UTF-8), hash count (u8), the hashes (32 bytes each).
 *
 * @param receipt The receipt.
 * @returns The payload, at most {@linkcode SHIP_RECEIPT_MAX} bytes.
 * @throws {RangeError} For a note over {@linkcode SHIP_NOTE_MAX} bytes or
 * a proof of more than {@linkcode SHIP_PROOF_HASHES_MAX} hashes.
 */
export function encodeShipReceipt(receipt: ShipReceipt): Uint8Array {
  const note = encoder.encode(receipt.note);
  if (note.length === 0 || note.length > SHIP_NOTE_MAX) {
    throw new RangeError(
      `Cannot encode ship receipt: note of ${note.length} bytes`,
    );
  }
  checkHashes(receipt.proof, "ship receipt");
  const out = new Uint8Array(11 + note.length + receipt.proof.length * 32);
  const view = viewOf(out);
  view.setFloat64(0, receipt.from, true);
  view.setUint16(8, note.length, true);
  out.set(note, 10);
  putHashes(out, 10 + note.length, receipt.proof);
  return out;
}

/**
 * Decodes a ShipReceipt payload. The note is checked to be UTF-8 of the
 * allowed length only: its signature and form are the shipper's to check.
 *
 * @param payload Frame payload.
 * @returns The receipt.
 * @throws {ProtocolError} On a malformed payload.
 */
export function decodeShipReceipt(payload: Uint8Array): ShipReceipt {
  const what = "ship receipt";
  if (payload.length > SHIP_RECEIPT_MAX || payload.length < 11) {
    throw new ProtocolError(
      `Cannot decode ${what}: ${payload.length} bytes is out of range`,
    );
  }
  const view = viewOf(payload);
  const from = sizeAt(view, 0, what);
  const len = view.getUint16(8, true);
  if (len === 0 || len > SHIP_NOTE_MAX || payload.length < 11 + len) {
    throw new ProtocolError(`Cannot decode ${what}: bad note length ${len}`);
  }
  let note: string;
  try {
    note = strictUtf8.decode(payload.subarray(10, 10 + len));
  } catch (err) {
    throw new ProtocolError(`Cannot decode ${what}: note is not UTF-8`, {
      cause: err,
    });
  }
  return { from, note, proof: hashesAt(payload, 10 + len, what) };
}

/**
 * Encodes a ShipProve payload: seq (f64 LE), size (f64 LE).
 *
 * @param request The record and the tree size.
 * @returns 16 bytes.
 */
export function encodeShipProve(request: ShipProve): Uint8Array {
  const out = new Uint8Array(16);
  const view = viewOf(out);
  view.setFloat64(0, request.seq, true);
  view.setFloat64(8, request.size, true);
  return out;
}

/**
 * Decodes a ShipProve payload.
 *
 * @param payload Frame payload.
 * @returns The request.
 * @throws {ProtocolError} Unless it is 16 bytes of two counts, seq ≥ 1.
 */
export function decodeShipProve(payload: Uint8Array): ShipProve {
  const what = "ship prove";
  if (payload.length !== 16) {
    throw new ProtocolError(`Cannot decode ${what}: ${payload.length} bytes`);
  }
  const view = viewOf(payload);
  const seq = sizeAt(view, 0, what);
  const size = sizeAt(view, 8, what);
  if (seq < 1) throw new ProtocolError(`Cannot decode ${what}: seq 0`);
  return { seq, size };
}

/**
 * Encodes a ShipProof payload: seq (f64 LE), size (f64 LE), status (u8: 0 =
 * found, 1 = cannot prove, nothing follows), then when found the leaf length
 * (u32 LE), the leaf, hash count (u8) and the audit path.
 *
 * @param proof The answer.
 * @returns The payload.
 * @throws {RangeError} For an audit path that is too long.
 */
export function encodeShipProof(proof: ShipProof): Uint8Array {
  const head = 17;
  const size = proof.found
    ? head + 4 + proof.leaf.length + 1 + proof.path.length * 32
    : head;
  if (proof.found) checkHashes(proof.path, "ship proof");
  const out = new Uint8Array(size);
  const view = viewOf(out);
  view.setFloat64(0, proof.seq, true);
  view.setFloat64(8, proof.size, true);
  out[16] = proof.found ? 0 : 1;
  if (proof.found) {
    view.setUint32(head, proof.leaf.length, true);
    out.set(proof.leaf, head + 4);
    putHashes(out, head + 4 + proof.leaf.length, proof.path);
  }
  return out;
}

/**
 * Decodes a ShipProof payload.
 *
 * @param payload Frame payload.
 * @returns The answer; the leaf is a copy.
 * @throws {ProtocolError} On a malformed payload.
 */
export function decodeShipProof(payload: Uint8Array): ShipProof {
  const what = "ship proof";
  if (payload.length < 17) {
    throw new ProtocolError(`Cannot decode ${what}: truncated`);
  }
  const view = viewOf(payload);
  const seq = sizeAt(view, 0, what);
  const size = sizeAt(view, 8, what);
  const status = payload[16];
  if (status === 1 && payload.length === 17) {
    return { seq, size, found: false, leaf: new Uint8Array(0), path: [] };
  }
  if (status !== 0 || payload.length < 22) {
    throw new ProtocolError(`Cannot decode ${what}: bad status or length`);
  }
  const len = view.getUint32(17, true);
  if (payload.length < 21 + len + 1) {
    throw new ProtocolError(`Cannot decode ${what}: truncated leaf`);
  }
  return {
    seq,
    size,
    found: true,
    leaf: payload.slice(21, 21 + len),
    path: hashesAt(payload, 21 + len, what),
  };
}

/**
 * Parses a ShipReady payload.
 *
 * @param payload Frame payload.
 * @returns Where the shipper resumes.
 * @throws {ProtocolError} On a malformed payload.
 */
export function decodeShipReady(payload: Uint8Array): ShipReady {
  const o = decodeJson(payload, "ship ready");
  const ready: ShipReady = {
    peer: field(o, "peer", "string", "ship ready"),
    source: field(o, "source", "string", "ship ready"),
    lastSeq: count(o, "lastSeq", "ship ready"),
  };
  if (o.vaultKey !== undefined) {
    const key = field(o, "vaultKey", "string", "ship ready");
    if (key.length === 0 || key.length > VAULT_KEY_MAX) {
      throw new ProtocolError(
        `Cannot decode ship ready: vaultKey must be 1 to ${VAULT_KEY_MAX} characters`,
      );
    }
    ready.vaultKey = key;
  }
  return ready;
}

/**
 * Encodes records as one ShipBatch payload: per record, seq (f64 LE), ts
 * (f64 LE), flags (u8, 1 = partial), line length (u32 LE), line bytes.
 *
 * @param records Consecutive records.
 * @returns The payload.
 */
export function encodeShipBatch(records: readonly ShipRecord[]): Uint8Array {
  let size = 0;
  for (const r of records) size += SHIP_RECORD_HEADER + r.line.length;
  const out = new Uint8Array(size);
  const view = new DataView(out.buffer);
  let at = 0;
  for (const r of records) {
    view.setFloat64(at, r.seq, true);
    view.setFloat64(at + 8, r.ts, true);
    out[at + 16] = r.partial ? 1 : 0;
    view.setUint32(at + 17, r.line.length, true);
    out.set(r.line, at + SHIP_RECORD_HEADER);
    at += SHIP_RECORD_HEADER + r.line.length;
  }
  return out;
}

/**
 * A ShipBatch payload, checked and indexed: record `i` is read from the
 * payload when asked for, so a frame of thousands of records costs one
 * array of offsets, not an object and a view per record (it satisfies the
 * vault's `AppendBatch`). Made by {@linkcode indexShipBatch}.
 */
export class ShipBatchView {
  /** How many records. */
  readonly length: number;
  readonly #payload: Uint8Array;
  readonly #view: DataView;
  /** Where each record's header starts. */
  readonly #starts: Uint32Array;

  /**
   * @param payload The payload.
   * @param starts Where each record's header starts, checked.
   */
  constructor(payload: Uint8Array, starts: Uint32Array) {
    this.#payload = payload;
    this.#view = new DataView(
      payload.buffer,
      payload.byteOffset,
      payload.byteLength,
    );
    this.#starts = starts;
    this.length = starts.length;
  }

  /**
   * @param i A record's index.
   * @returns Its sequence number.
   */
  seq(i: number): number {
    return this.#view.getFloat64(this.#starts[i]!, true);
  }

  /**
   * @param i A record's index.
   * @returns The shipper's timestamp.
   */
  ts(i: number): number {
    return this.#view.getFloat64(this.#starts[i]! + 8, true);
  }

  /**
   * @param i A record's index.
   * @returns Whether the next record continues its line.
   */
  partial(i: number): boolean {
    return this.#payload[this.#starts[i]! + 16] === 1;
  }

  /**
   * @param i A record's index.
   * @returns Its line's length in bytes.
   */
  lineLength(i: number): number {
    return this.#view.getUint32(this.#starts[i]! + 17, true);
  }

  /**
   * @param i A record's index.
   * @returns Its line: a view into the payload.
   */
  line(i: number): Uint8Array {
    const start = this.#starts[i]! + SHIP_RECORD_HEADER;
    return this.#payload.subarray(start, start + this.lineLength(i));
  }

  /**
   * Copies a record's line.
   *
   * @param i A record's index.
   * @param to Where to.
   * @param at At what offset.
   */
  copyLine(i: number, to: Uint8Array, at: number): void {
    const from = this.#starts[i]! + SHIP_RECORD_HEADER;
    const length = this.lineLength(i);
    const payload = this.#payload;
    // A short line byte by byte: a view to copy it would cost more.
    if (length <= 64) {
      for (let k = 0; k < length; k++) to[at + k] = payload[from + k]!;
    } else {
      to.set(payload.subarray(from, from + length), at);
    }
  }
}

/**
 * Checks a ShipBatch payload and indexes its records (see
 * {@linkcode encodeShipBatch} for the layout).
 *
 * @param payload Frame payload; the view reads it, so it must not change.
 * @returns The records, read by index.
 * @throws {ProtocolError} On a truncated record, a bad number or flag.
 */
export function indexShipBatch(payload: Uint8Array): ShipBatchView {
  const view = new DataView(
    payload.buffer,
    payload.byteOffset,
    payload.byteLength,
  );
  let count = 0;
  let at = 0;
  while (at < payload.length) {
    if (payload.length - at < SHIP_RECORD_HEADER) {
      throw new ProtocolError(
        "Cannot decode ship batch: truncated record header",
      );
    }
    const seq = view.getFloat64(at, true);
    const ts = view.getFloat64(at + 8, true);
    const flags = payload[at + 16]!;
    const len = view.getUint32(at + 17, true);
    if (
      !Number.isSafeInteger(seq) || seq < 1 || !Number.isSafeInteger(ts) ||
      ts < 0 || flags > 1
    ) {
      throw new ProtocolError(
        "Cannot decode ship batch: bad sequence number, time or flags",
      );
    }
    const start = at + SHIP_RECORD_HEADER;
    if (payload.length - start < len) {
      throw new ProtocolError("Cannot decode ship batch: truncated line");
    }
    at = start + len;
    count++;
  }
  const starts = new Uint32Array(count);
  at = 0;
  for (let i = 0; i < count; i++) {
    starts[i] = at;
    at += SHIP_RECORD_HEADER + view.getUint32(at + 17, true);
  }
  return new ShipBatchView(payload, starts);
}

/**
 * Decodes a ShipBatch payload into one object per record (the server reads
 * it by index instead: {@linkcode indexShipBatch}).
 *
 * @param payload Frame payload.
 * @returns The records; lines are views into `payload`.
 * @throws {ProtocolError} On a truncated record, a bad number or flag.
 */
export function decodeShipBatch(payload: Uint8Array): ShipRecord[] {
  const batch = indexShipBatch(payload);
  const out: ShipRecord[] = new Array(batch.length);
  for (let i = 0; i < batch.length; i++) {
    out[i] = {
      seq: batch.seq(i),
      ts: batch.ts(i),
      partial: batch.partial(i),
      line: batch.line(i),
    };
  }
  return out;
}

/** Most hashes in a {@linkcode WitnessAdd}'s consistency proof (a tree of 2^64 leaves needs 64). */
export const WITNESS_PROOF_MAX = 64;
/** Longest signed checkpoint a {@linkcode WitnessAdd} carries, in characters. */
export const WITNESS_NOTE_MAX = 8192;
/** Longest vault key a {@linkcode WitnessAdd} carries, in characters. */
const WITNESS_KEY_MAX = 512;
/** Longest cosignature line a {@linkcode decodeWitnessCosigned} takes. */
const COSIGNATURE_MAX = 1024;

/**
 * A vault's request to a witness: cosign this checkpoint, which extends the
 * one the vault believes the witness holds.
 */
export interface WitnessAdd {
  /** The vault's verifier key (`name+id+base64`), pinned per origin by the witness. */
  key: string;
  /** The tree size the vault believes the witness holds for this origin (0: none). */
  old: number;
  /** The consistency proof from `old` to the checkpoint's size. */
  proof: Uint8Array[];
  /** The signed checkpoint (a signed note). */
  checkpoint: string;
}

/**
 * Encodes a WitnessAdd payload: JSON, the proof as base64 hashes.
 *
 * @param add The request.
 * @returns UTF-8 JSON bytes.
 */
export function encodeWitnessAdd(add: WitnessAdd): Uint8Array {
  return encodeJson({
    key: add.key,
    old: add.old,
    proof: add.proof.map((h) => Buffer.from(h).toString("base64")),
    checkpoint: add.checkpoint,
  });
}

/**
 * Parses a WitnessAdd payload, bounding each field: the key at 512
 * characters, the checkpoint at {@linkcode WITNESS_NOTE_MAX}, the proof at
 * {@linkcode WITNESS_PROOF_MAX} hashes of 32 bytes each.
 *
 * @param payload Frame payload.
 * @returns The request.
 * @throws {ProtocolError} On a malformed or oversized field.
 */
export function decodeWitnessAdd(payload: Uint8Array): WitnessAdd {
  const what = "witness request";
  const o = decodeJson(payload, what);
  const key = field(o, "key", "string", what);
  const checkpoint = field(o, "checkpoint", "string", what);
  if (key.length > WITNESS_KEY_MAX) {
    throw new ProtocolError(
      `Cannot decode ${what}: key is over ${WITNESS_KEY_MAX} characters`,
    );
  }
  if (checkpoint.length > WITNESS_NOTE_MAX) {
    throw new ProtocolError(
      `Cannot decode ${what}: checkpoint is over ${WITNESS_NOTE_MAX} characters`,
    );
  }
  const list = o.proof;
  if (!Array.isArray(list) || list.length > WITNESS_PROOF_MAX) {
    throw new ProtocolError(
      `Cannot decode ${what}: proof must be a list of at most ${WITNESS_PROOF_MAX} hashes`,
    );
  }
  const proof = list.map((h) => {
    if (typeof h !== "string" || !/^[A-Za-z0-9+/]{43}=$/.test(h)) {
      throw new ProtocolError(
        `Cannot decode ${what}: a proof hash is not 32 bytes of base64`,
      );
    }
    return new Uint8Array(Buffer.from(h, "base64"));
  });
  return { key, old: count(o, "old", what), proof, checkpoint };
}

/**
 * Parses a WitnessCosigned payload.
 *
 * @param payload Frame payload.
 * @returns The cosignature line, ending in a newline.
 * @throws {ProtocolError} On a malformed payload.
 */
export function decodeWitnessCosigned(payload: Uint8Array): string {
  const what = "witness cosignature";
  const line = field(decodeJson(payload, what), "cosignature", "string", what);
  if (line.length > COSIGNATURE_MAX || !/^[^\n]+\n$/.test(line)) {
    throw new ProtocolError(
      `Cannot decode ${what}: not one signature line`,
    );
  }
  return line;
}

/**
 * Parses a WitnessConflict payload.
 *
 * @param payload Frame payload.
 * @returns The tree size the witness holds for the origin.
 * @throws {ProtocolError} On a malformed payload.
 */
export function decodeWitnessConflict(payload: Uint8Array): number {
  return count(
    decodeJson(payload, "witness conflict"),
    "size",
    "witness conflict",
  );
}
