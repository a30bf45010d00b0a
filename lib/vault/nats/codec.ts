/**
 * The JetStream vault's message formats (byte by byte in `docs/VAULT.md`,
 * "JetStream vault"): subjects, the record message (one batch of one
 * source's records, as the front door stamped them), the meta message, and
 * the `Nats-Msg-Id` of a record message. Pure: no I/O, no NATS client.
 *
 * A record message carries, per record, its timestamp, receive time, flags
 * and line, and for the whole message the source key and the first
 * sequence number (records are consecutive). Not the chain links: they
 * follow from the vault id, the previous link and the record, and whoever
 * applies the message (`apply.ts`) computes them.
 *
 * @module
 */

import { createHash, type KeyObject, sign, verify } from "node:crypto";
import { parseVerifier } from "../../checkpoint.ts";
import { getU64, setU64 } from "../../segment/codec.ts";
import type { AppendBatch } from "../_format.ts";
import { FLAG_PARTIAL } from "../_format.ts";
import { checkSourceKey } from "../_key.ts";
import { checkStreamName } from "./url.ts";

export { checkStreamName } from "./url.ts";
import type { SourceKey } from "../_key.ts";

/** Magic at the start of every record message: 0x89 "MOATREC". */
export const RECORD_MAGIC: Uint8Array = Uint8Array.of(
  0x89,
  0x4d,
  0x4f,
  0x41,
  0x54,
  0x52,
  0x45,
  0x43,
);
/**
 * Format version of record messages and of the meta message. Version 2
 * signs every record message (version 1, never released, did not: anyone
 * holding the cluster's credentials could continue a source).
 */
export const FORMAT_VERSION = 2;
/** Bytes of the Ed25519 signature that ends every record message. */
export const SIGNATURE_BYTES = 64;
/** What a record message's signature is over, before the vault id and digest. */
const SIGNATURE_CONTEXT = new TextEncoder().encode("moat/nats-record/v2\n");
/** Bytes before the key in a record message: magic, version, key length. */
const HEAD_BYTES = 11;
/** Bytes after the key before the first record: first seq, count. */
const RANGE_BYTES = 12;
/** Fixed bytes per record: ts, recvTs, flags, line length. */
export const RECORD_FIXED_BYTES = 21;
/** Longest key accepted (three parts of at most 1024 characters, JSON). */
const MAX_KEY_BYTES = 16 * 1024;
/**
 * Most body bytes a door packs into one record message: the NATS default
 * `max_payload` is 1 MiB, and headers share it.
 */
export const DEFAULT_MAX_MESSAGE_BYTES = 1024 * 1024 - 8 * 1024;
/** The flags a record may carry (the vault's "partial" flag). */
const KNOWN_FLAGS = FLAG_PARTIAL;

/** The subjects of one stream. */
export interface Subjects {
  /** `moat.<stream>`, lowercased. */
  readonly prefix: string;
  /** `<prefix>.>`: what the stream holds. */
  readonly all: string;
  /** `<prefix>.meta`. */
  readonly meta: string;
  /** `<prefix>.rec.>`. */
  readonly records: string;
  /**
   * @param srcid A source id ({@linkcode sourceId}).
   * @returns `<prefix>.rec.<srcid>`.
   */
  rec(srcid: string): string;
  /**
   * @param srcid A source id.
   * @returns `<prefix>.ckpt.<srcid>`.
   */
  ckpt(srcid: string): string;
  /**
   * @param doorid A front door's id.
   * @returns `<prefix>.seal.<doorid>`.
   */
  seal(doorid: string): string;
}

const SRCID = /^[0-9a-f]{32}$/;

/**
 * The subjects of a stream.
 *
 * @example Usage
 * ```ts
 * import { subjectsOf } from "./codec.ts";
 * import assert from "node:assert/strict";
 * const s = subjectsOf("MOAT");
 * assert.equal(s.all, "moat.moat.>");
 * assert.equal(s.rec("00".repeat(16)), `moat.moat.rec.${"00".repeat(16)}`);
 * ```
 *
 * @param stream The stream name.
 * @returns Its subjects.
 * @throws {RangeError} For a bad stream name.
 */
export function subjectsOf(stream: string): Subjects {
  checkStreamName(stream);
  const prefix = `moat.${stream.toLowerCase()}`;
  return {
    prefix,
    all: `${prefix}.>`,
    meta: `${prefix}.meta`,
    records: `${prefix}.rec.>`,
    rec: (srcid) => `${prefix}.rec.${srcid}`,
    ckpt: (srcid) => `${prefix}.ckpt.${srcid}`,
    seal: (doorid) => `${prefix}.seal.${doorid}`,
  };
}

/**
 * The bytes a source key is named by: JSON `[peer, name]`, or
 * `[peer, name, identity]` — exactly what the vault's source hash hashes.
 *
 * @param key The source.
 * @returns UTF-8 bytes.
 */
export function keyBytes(key: SourceKey): Uint8Array {
  return new TextEncoder().encode(
    JSON.stringify(
      key.identity === undefined
        ? [key.peer, key.name]
        : [key.peer, key.name, key.identity],
    ),
  );
}

/**
 * A source's id in subjects: the first 32 hex digits of SHA-256 over
 * {@linkcode keyBytes} (the vault's source hash; the same digits end the
 * source's directory name).
 *
 * @param key The source.
 * @returns 32 lowercase hex digits.
 */
export function sourceId(key: SourceKey): string {
  return _srcidOf(keyBytes(key));
}

function _srcidOf(bytes: Uint8Array): string {
  return createHash("sha256").update(bytes).digest("hex").slice(0, 32);
}

/**
 * The `Nats-Msg-Id` of a record message: `<srcid>:<firstSeq>-<lastSeq>`. A
 * door that publishes the same records again within the stream's duplicate
 * window gets JetStream's duplicate ack instead of a second copy.
 *
 * @param srcid The source id.
 * @param firstSeq The first record's sequence number.
 * @param lastSeq The last record's.
 * @returns The id.
 */
export function recordMsgId(
  srcid: string,
  firstSeq: number,
  lastSeq: number,
): string {
  return `${srcid}:${firstSeq}-${lastSeq}`;
}

/**
 * Reads the record range back from a `Nats-Msg-Id`.
 *
 * @param id The header's value.
 * @returns The source id and range, or undefined if it is not one.
 */
export function parseRecordMsgId(
  id: string,
): { srcid: string; firstSeq: number; lastSeq: number } | undefined {
  const m = /^([0-9a-f]{32}):([1-9][0-9]{0,15})-([1-9][0-9]{0,15})$/.exec(id);
  if (!m) return undefined;
  const firstSeq = Number(m[2]);
  const lastSeq = Number(m[3]);
  if (
    !Number.isSafeInteger(firstSeq) || !Number.isSafeInteger(lastSeq) ||
    lastSeq < firstSeq
  ) return undefined;
  return { srcid: m[1]!, firstSeq, lastSeq };
}

/**
 * Encodes the records of one append, stamped with one receive time, as the
 * record section of a record message: per record u64 ts, u64 recvTs, u8
 * flags, u32 line length, the line. Sections of consecutive appends of one
 * source concatenate (see {@linkcode encodeRecordMessage}).
 *
 * @param batch The records (read by index).
 * @param recvTs The receive time of all of them.
 * @param from The index of the first record to encode.
 * @param to After the last one.
 * @returns The section.
 */
export function encodeRecordSection(
  batch: AppendBatch,
  recvTs: number,
  from = 0,
  to: number = batch.length,
): Uint8Array {
  const count = to;
  let total = 0;
  for (let i = from; i < count; i++) {
    total += RECORD_FIXED_BYTES + batch.lineLength(i);
  }
  const out = new Uint8Array(total);
  const view = new DataView(out.buffer);
  let at = 0;
  for (let i = from; i < count; i++) {
    const length = batch.lineLength(i);
    setU64(view, at, batch.ts(i));
    setU64(view, at + 8, recvTs);
    out[at + 16] = batch.partial(i) ? FLAG_PARTIAL : 0;
    view.setUint32(at + 17, length, true);
    if (length > 0) batch.copyLine(i, out, at + RECORD_FIXED_BYTES);
    at += RECORD_FIXED_BYTES + length;
  }
  return out;
}

/**
 * Encodes a record message: magic, version, the source key, the first
 * sequence number and the record count, then the sections' records.
 *
 * @example Round trip
 * ```ts
 * import { decodeRecordMessage, encodeRecordMessage, encodeRecordSection } from "./codec.ts";
 * import { recordBatch } from "../_format.ts";
 * import { generateKeyPairSync } from "node:crypto";
 * import assert from "node:assert/strict";
 * const line = new TextEncoder().encode("hello");
 * const section = encodeRecordSection(recordBatch([{ seq: 7, ts: 1, line }]), 2);
 * const key = { peer: "10.0.0.5", name: "web" };
 * const pair = generateKeyPairSync("ed25519");
 * const vaultId = new Uint8Array(16);
 * const body = encodeRecordMessage(key, 7, 1, [section], { vaultId, key: pair.privateKey });
 * const msg = decodeRecordMessage(body, undefined, { vaultId, key: pair.publicKey });
 * assert.equal(msg.firstSeq, 7);
 * assert.equal(msg.recvTs(0), 2);
 * assert.deepEqual(msg.key, key);
 * ```
 *
 * @param key The source.
 * @param firstSeq The first record's sequence number.
 * @param count How many records the sections hold together.
 * @param sections Record sections ({@linkcode encodeRecordSection}).
 * @param signer The vault's checkpoint key and id: the message ends in
 * their signature ({@linkcode RecordKey}).
 * @returns The message body.
 */
export function encodeRecordMessage(
  key: SourceKey,
  firstSeq: number,
  count: number,
  sections: readonly Uint8Array[],
  signer: RecordKey,
): Uint8Array {
  const kb = keyBytes(key);
  let total = HEAD_BYTES + kb.length + RANGE_BYTES + SIGNATURE_BYTES;
  for (const s of sections) total += s.length;
  const out = new Uint8Array(total);
  const view = new DataView(out.buffer);
  out.set(RECORD_MAGIC, 0);
  out[8] = FORMAT_VERSION;
  view.setUint16(9, kb.length, true);
  out.set(kb, HEAD_BYTES);
  let at = HEAD_BYTES + kb.length;
  setU64(view, at, firstSeq);
  view.setUint32(at + 8, count, true);
  at += RANGE_BYTES;
  for (const s of sections) {
    out.set(s, at);
    at += s.length;
  }
  out.set(
    sign(null, _signedBytes(signer.vaultId, out.subarray(0, at)), signer.key),
    at,
  );
  return out;
}

/**
 * The key record messages are signed and checked with: the vault's
 * checkpoint key (every front door holds its private half; readers take
 * the public half from the meta message or `--vault-key`) and the vault
 * id, which the signature binds too.
 */
export interface RecordKey {
  /** The vault id (16 bytes). */
  readonly vaultId: Uint8Array;
  /** Ed25519: private to sign, public (or private) to check. */
  readonly key: KeyObject;
}

/**
 * The key that checks a stream's record messages: the checkpoint verifier
 * and vault id its meta message names.
 *
 * @param meta The stream's meta.
 * @returns The key.
 * @throws {MoatError} `ERR_CHECKPOINT` for a malformed verifier.
 */
export function recordVerifier(
  meta: Pick<StreamMeta, "vaultId" | "checkpointKey">,
): RecordKey {
  return {
    vaultId: Uint8Array.fromHex(meta.vaultId),
    key: parseVerifier(meta.checkpointKey).key,
  };
}

/**
 * What a record message's signature is over: the context
 * `moat/nats-record/v2\n`, the vault id, and SHA-256 of the message up to
 * the signature (its key — hence the subject's source id —, range and
 * records).
 */
function _signedBytes(vaultId: Uint8Array, unsigned: Uint8Array): Uint8Array {
  const out = new Uint8Array(SIGNATURE_CONTEXT.length + vaultId.length + 32);
  out.set(SIGNATURE_CONTEXT, 0);
  out.set(vaultId, SIGNATURE_CONTEXT.length);
  out.set(
    createHash("sha256").update(unsigned).digest(),
    SIGNATURE_CONTEXT.length + vaultId.length,
  );
  return out;
}

/** The body bytes a message of these sections takes, for packing. */
export function recordMessageBytes(key: SourceKey, sectionBytes: number) {
  return HEAD_BYTES + keyBytes(key).length + RANGE_BYTES + sectionBytes +
    SIGNATURE_BYTES;
}

/**
 * A decoded record message: its source and range, and its records read by
 * index with no object per record (an {@linkcode AppendBatch} with the
 * receive times). Lines are views into the message body.
 */
export interface RecordMessage extends AppendBatch {
  /** The source, checked against the subject's id when one is given. */
  readonly key: SourceKey;
  /** Its id (32 hex digits). */
  readonly srcid: string;
  /** The first record's sequence number. */
  readonly firstSeq: number;
  /** The last record's (`firstSeq + length - 1`). */
  readonly lastSeq: number;
  /**
   * @param i A record's index.
   * @returns Its receive time.
   */
  recvTs(i: number): number;
  /**
   * @param i A record's index.
   * @returns A view of its line.
   */
  line(i: number): Uint8Array;
}

/**
 * Decodes and checks a record message: magic, version, a well-formed key
 * (whose id must equal `srcid` when given), a first sequence number of at
 * least 1, at least one record, every record inside the body, known flags,
 * times that are safe integers, no byte left over before the signature,
 * and the signature itself.
 *
 * @param body The message body.
 * @param srcid The id the subject names, if read from a subject.
 * @param check The vault's key and id to check the signature with; `null`
 * only for a body this process has just signed itself.
 * @returns The message (a view: `body` is not copied).
 * @throws {SyntaxError} For anything malformed or a signature that does
 * not check ({@linkcode ForgedMessageError}), naming what.
 */
export function decodeRecordMessage(
  body: Uint8Array,
  srcid: string | undefined,
  check: RecordKey | null,
): RecordMessage {
  if (body.length < HEAD_BYTES + RANGE_BYTES + SIGNATURE_BYTES) {
    throw _bad(`${body.length} bytes is too short`);
  }
  for (let i = 0; i < RECORD_MAGIC.length; i++) {
    if (body[i] !== RECORD_MAGIC[i]) throw _bad("wrong magic");
  }
  if (body[8] !== FORMAT_VERSION) {
    throw body[8] === 1
      ? new ForgedMessageError(
        "Invalid record message: format 1 is unsigned (a pre-release build's): not taken",
      )
      : _bad(`unsupported format version ${body[8]}`);
  }
  const end = body.length - SIGNATURE_BYTES;
  if (check !== null) {
    const signed = _signedBytes(check.vaultId, body.subarray(0, end));
    let good = false;
    try {
      good = verify(null, signed, check.key, body.subarray(end));
    } catch {
      good = false;
    }
    if (!good) {
      throw new ForgedMessageError(
        "Invalid record message: its signature is not the vault's checkpoint key's (forged, or of another vault)",
      );
    }
  }
  body = body.subarray(0, end);
  const view = new DataView(body.buffer, body.byteOffset, body.byteLength);
  const keyLength = view.getUint16(9, true);
  if (keyLength > MAX_KEY_BYTES) throw _bad("source key is too long");
  let at = HEAD_BYTES + keyLength;
  if (body.length < at + RANGE_BYTES) throw _bad("truncated source key");
  const kb = body.subarray(HEAD_BYTES, at);
  const key = _parseKey(kb);
  const id = _srcidOf(kb);
  if (srcid !== undefined && id !== srcid) {
    throw _bad(`source key is of source ${id}, not ${srcid}`);
  }
  const firstSeq = getU64(view, at);
  const count = view.getUint32(at + 8, true);
  at += RANGE_BYTES;
  if (!Number.isSafeInteger(firstSeq) || firstSeq < 1) {
    throw _bad(`first sequence number ${firstSeq} is invalid`);
  }
  if (count < 1) throw _bad("no records");
  if (!Number.isSafeInteger(firstSeq + count - 1)) {
    throw _bad("sequence numbers overflow");
  }
  // A record takes at least RECORD_FIXED_BYTES: a count beyond what the
  // body can hold is refused before the offsets are allocated.
  if (count > (body.length - at) / RECORD_FIXED_BYTES) {
    throw _bad(`${count} records cannot fit in ${body.length} bytes`);
  }
  const offsets = new Float64Array(count);
  for (let i = 0; i < count; i++) {
    if (at + RECORD_FIXED_BYTES > body.length) {
      throw _bad(`record ${firstSeq + i} is truncated`);
    }
    const ts = getU64(view, at);
    const recvTs = getU64(view, at + 8);
    if (!Number.isSafeInteger(ts) || !Number.isSafeInteger(recvTs)) {
      throw _bad(`record ${firstSeq + i} has a time out of range`);
    }
    const flags = body[at + 16]!;
    if ((flags & ~KNOWN_FLAGS) !== 0) {
      throw _bad(`record ${firstSeq + i} has unknown flags ${flags}`);
    }
    const length = view.getUint32(at + 17, true);
    if (at + RECORD_FIXED_BYTES + length > body.length) {
      throw _bad(`record ${firstSeq + i} is truncated`);
    }
    offsets[i] = at;
    at += RECORD_FIXED_BYTES + length;
  }
  if (at !== body.length) {
    throw _bad(`${body.length - at} bytes after the last record`);
  }
  return new _RecordMessage(body, view, key, id, firstSeq, offsets);
}

class _RecordMessage implements RecordMessage {
  readonly key: SourceKey;
  readonly srcid: string;
  readonly firstSeq: number;
  readonly #body: Uint8Array;
  readonly #view: DataView;
  readonly #offsets: Float64Array;

  constructor(
    body: Uint8Array,
    view: DataView,
    key: SourceKey,
    srcid: string,
    firstSeq: number,
    offsets: Float64Array,
  ) {
    this.#body = body;
    this.#view = view;
    this.key = key;
    this.srcid = srcid;
    this.firstSeq = firstSeq;
    this.#offsets = offsets;
  }

  get length(): number {
    return this.#offsets.length;
  }

  get lastSeq(): number {
    return this.firstSeq + this.#offsets.length - 1;
  }

  seq(i: number): number {
    return this.firstSeq + i;
  }

  ts(i: number): number {
    return getU64(this.#view, this.#offsets[i]!);
  }

  recvTs(i: number): number {
    return getU64(this.#view, this.#offsets[i]! + 8);
  }

  partial(i: number): boolean {
    return (this.#body[this.#offsets[i]! + 16]! & FLAG_PARTIAL) !== 0;
  }

  lineLength(i: number): number {
    return this.#view.getUint32(this.#offsets[i]! + 17, true);
  }

  line(i: number): Uint8Array {
    const at = this.#offsets[i]! + RECORD_FIXED_BYTES;
    return this.#body.subarray(at, at + this.lineLength(i));
  }

  copyLine(i: number, to: Uint8Array, at: number): void {
    to.set(this.line(i), at);
  }
}

/**
 * Records `from` to `to - 1` of a batch, as a batch (a view).
 *
 * @param batch The batch.
 * @param from First index.
 * @param to After the last index.
 * @returns The slice.
 */
export function sliceBatch<T extends AppendBatch>(
  batch: T,
  from: number,
  to: number,
): AppendBatch {
  return {
    length: to - from,
    seq: (i) => batch.seq(from + i),
    ts: (i) => batch.ts(from + i),
    partial: (i) => batch.partial(from + i),
    lineLength: (i) => batch.lineLength(from + i),
    copyLine: (i, out, at) => batch.copyLine(from + i, out, at),
  };
}

function _parseKey(bytes: Uint8Array): SourceKey {
  let parts: unknown;
  try {
    parts = JSON.parse(new TextDecoder("utf-8", { fatal: true }).decode(bytes));
  } catch {
    throw _bad("source key is not JSON");
  }
  if (
    !Array.isArray(parts) || (parts.length !== 2 && parts.length !== 3) ||
    !parts.every((p) => typeof p === "string")
  ) {
    throw _bad("source key is not [peer, name] or [peer, name, identity]");
  }
  const [peer, name, identity] = parts as string[];
  const key: SourceKey = identity === undefined
    ? { peer: peer!, name: name! }
    : { peer: peer!, name: name!, identity };
  try {
    checkSourceKey(key);
  } catch (error) {
    throw _bad((error as Error).message);
  }
  return key;
}

/**
 * A record message that is not signed by the vault's checkpoint key: never
 * written by a front door of this vault.
 */
export class ForgedMessageError extends SyntaxError {
  constructor(message: string) {
    super(message);
    this.name = "ForgedMessageError";
  }
}

function _bad(what: string): SyntaxError {
  return new SyntaxError(`Invalid record message: ${what}`);
}

/** The meta message: what every front door and reader of the stream agrees on. */
export interface StreamMeta {
  /** Format version ({@linkcode FORMAT_VERSION}). */
  format: number;
  /** The vault id, 32 hex digits: bound into every chain. */
  vaultId: string;
  /** The checkpoint verifier key every door signs with (`<name>+<id>+<base64>`). */
  checkpointKey: string;
}

/**
 * Encodes the meta message (JSON).
 *
 * @param meta The meta.
 * @returns The body.
 */
export function encodeMeta(meta: StreamMeta): Uint8Array {
  return new TextEncoder().encode(JSON.stringify({
    format: meta.format,
    vaultId: meta.vaultId,
    checkpointKey: meta.checkpointKey,
  }));
}

/**
 * Decodes and checks the meta message.
 *
 * @param body The body.
 * @returns The meta.
 * @throws {SyntaxError} For a malformed one or an unknown format.
 */
export function decodeMeta(body: Uint8Array): StreamMeta {
  let meta: Partial<StreamMeta>;
  try {
    meta = JSON.parse(new TextDecoder().decode(body));
  } catch {
    throw new SyntaxError("Invalid stream meta: not JSON");
  }
  if (meta?.format === 1) {
    throw new SyntaxError(
      "Invalid stream meta: format 1 (a pre-release build's, whose record messages are unsigned) is not read by this build: use a new stream (--stream)",
    );
  }
  if (meta?.format !== FORMAT_VERSION) {
    throw new SyntaxError(
      `Invalid stream meta: unsupported format ${String(meta?.format)}`,
    );
  }
  if (typeof meta.vaultId !== "string" || !SRCID.test(meta.vaultId)) {
    throw new SyntaxError("Invalid stream meta: vaultId is not 32 hex digits");
  }
  if (typeof meta.checkpointKey !== "string" || meta.checkpointKey === "") {
    throw new SyntaxError("Invalid stream meta: no checkpointKey");
  }
  return {
    format: meta.format,
    vaultId: meta.vaultId,
    checkpointKey: meta.checkpointKey,
  };
}

/**
 * Whether a string is a source id (32 lowercase hex digits).
 *
 * @param text The text.
 * @returns True if it is.
 */
export function isSourceId(text: string): boolean {
  return SRCID.test(text);
}
