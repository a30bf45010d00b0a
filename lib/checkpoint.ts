/**
 * Signed checkpoints of a Merkle log, in the forms transparency logs share so
 * that their tools can read ours:
 *
 * - a checkpoint is a C2SP `tlog-checkpoint` body: origin line, decimal tree
 *   size, base64 root hash, optional extension lines;
 * - it travels as a C2SP `signed-note`: the body, a blank line, and one
 *   signature line per signer, `— <key name> <base64(key id ‖ signature)>`;
 * - the vault signs with Ed25519 (signature type 0x01); a witness adds a
 *   C2SP `tlog-cosignature/v1` line (type 0x04: key id ‖ 8-byte big-endian
 *   time ‖ Ed25519 over `cosignature/v1\ntime <t>\n` + the body).
 *
 * Keys are written as the signed-note spec writes them: a verifier key is
 * `<name>+<8 hex key id>+<base64(type ‖ 32-byte public key)>`, a signer key
 * `PRIVATE+KEY+<name>+<8 hex key id>+<base64(type ‖ 32-byte seed)>`. The key
 * id is the first 4 bytes of SHA-256(name ‖ "\n" ‖ type ‖ public key).
 *
 * @module
 */

import {
  createHash,
  createPrivateKey,
  createPublicKey,
  type KeyObject,
  randomBytes,
  sign,
  verify,
} from "node:crypto";
import { Code, MoatError } from "./errors.ts";
import { HASH_BYTES } from "./merkle.ts";

/** Signature type of a signed-note Ed25519 signature. */
export const ED25519 = 0x01;
/** Signature type of a `tlog-cosignature/v1` (a witness's cosignature). */
export const COSIGNATURE_V1 = 0x04;

/** A checkpoint: what a log commits to at one size. */
export interface Checkpoint {
  /** The log's name (for moat: `moat/<vault id>/<source hash>`). */
  origin: string;
  /** Leaves in the tree. */
  size: number;
  /** The RFC 9162 root hash at that size. */
  root: Uint8Array;
  /** Extension lines after the root (none by default). */
  extensions?: readonly string[];
}

/** A parsed signer key (private). */
export interface Signer {
  readonly name: string;
  readonly type: number;
  readonly id: Uint8Array;
  readonly publicKey: Uint8Array;
  readonly key: KeyObject;
  /** The matching verifier key string. */
  readonly verifier: string;
}

/** A parsed verifier key (public). */
export interface Verifier {
  readonly name: string;
  readonly type: number;
  readonly id: Uint8Array;
  readonly publicKey: Uint8Array;
  readonly key: KeyObject;
  /** The key as text, `<name>+<hex id>+<base64>`. */
  readonly text: string;
}

/** One signature line of a note, not yet checked. */
export interface NoteSignature {
  readonly name: string;
  readonly id: Uint8Array;
  /** The bytes after the key id. */
  readonly signature: Uint8Array;
}

const PKCS8_ED25519 = Buffer.from("302e020100300506032b657004220420", "hex");
const SPKI_ED25519 = Buffer.from("302a300506032b6570032100", "hex");
const enc = new TextEncoder();
const MAX_NOTE = 64 * 1024;
// deno-lint-ignore no-control-regex -- matching controls is the point
const LINE = /^[^\x00-\x1f\x7f]{1,256}$/;
// deno-lint-ignore no-control-regex -- matching controls is the point
const CONTROL_BUT_LF = /[\x00-\x09\x0b-\x1f\x7f]/;

function fail(message: string): never {
  throw new MoatError(Code.ERR_CHECKPOINT, message);
}

/**
 * Checks a key name: non-empty, printable ASCII, no `+` and no space (the
 * signed-note rules), at most 128 characters.
 */
function checkName(name: string): void {
  if (!/^[\x21-\x2a\x2c-\x7e]{1,128}$/.test(name)) {
    fail(`bad key name ${JSON.stringify(name.slice(0, 40))}`);
  }
}

function keyId(name: string, type: number, publicKey: Uint8Array): Uint8Array {
  const h = createHash("sha256").update(name).update("\n")
    .update(new Uint8Array([type])).update(publicKey).digest();
  return new Uint8Array(h.subarray(0, 4));
}

function hex(b: Uint8Array): string {
  return Buffer.from(b).toString("hex");
}

function publicKeyObject(raw: Uint8Array): KeyObject {
  return createPublicKey({
    key: Buffer.concat([SPKI_ED25519, raw]),
    format: "der",
    type: "spki",
  });
}

function signerFrom(name: string, type: number, seed: Uint8Array): Signer {
  const key = createPrivateKey({
    key: Buffer.concat([PKCS8_ED25519, seed]),
    format: "der",
    type: "pkcs8",
  });
  const spki = createPublicKey(key).export({ format: "der", type: "spki" });
  const publicKey = new Uint8Array(spki.subarray(spki.length - 32));
  const id = keyId(name, type, publicKey);
  const verifier = `${name}+${hex(id)}+${
    Buffer.from([type, ...publicKey]).toString("base64")
  }`;
  return { name, type, id, publicKey, key, verifier };
}

/**
 * Makes a new Ed25519 key pair.
 *
 * @example
 * ```ts
 * import { generateKey, parseSigner, parseVerifier } from "./checkpoint.ts";
 * const { signer, verifier } = generateKey("vault.example");
 * if (parseSigner(signer).verifier !== parseVerifier(verifier).text) {
 *   throw new Error("pair");
 * }
 * ```
 *
 * @param name The key name (no spaces, no `+`).
 * @param type {@link ED25519} for a log, {@link COSIGNATURE_V1} for a witness.
 * @returns The signer and verifier key strings.
 */
export function generateKey(
  name: string,
  type: number = ED25519,
): { signer: string; verifier: string } {
  checkName(name);
  const seed = new Uint8Array(randomBytes(32));
  const s = signerFrom(name, type, seed);
  const signer = `PRIVATE+KEY+${name}+${hex(s.id)}+${
    Buffer.from([type, ...seed]).toString("base64")
  }`;
  return { signer, verifier: s.verifier };
}

function decodeB64(text: string, what: string): Uint8Array {
  if (!/^[A-Za-z0-9+/]*={0,2}$/.test(text) || text.length % 4 !== 0) {
    fail(`${what} is not base64`);
  }
  return new Uint8Array(Buffer.from(text, "base64"));
}

function keyParts(
  text: string,
  what: string,
): { name: string; id: Uint8Array; type: number; body: Uint8Array } {
  // name+id+base64, cut at the first two "+" only: base64 may hold "+".
  const m = /^([^+]*)\+([^+]*)\+(.*)$/s.exec(text);
  if (m === null) fail(`${what} is not name+id+key`);
  const [, name = "", idHex = "", b64 = ""] = m;
  checkName(name);
  if (!/^[0-9a-f]{8}$/.test(idHex)) fail(`${what} has a bad key id`);
  const raw = decodeB64(b64, what);
  if (raw.length !== 33) fail(`${what} holds ${raw.length} bytes, not 33`);
  const type = raw[0];
  if (type !== ED25519 && type !== COSIGNATURE_V1) {
    fail(`${what} has unknown key type ${type}`);
  }
  return {
    name,
    id: new Uint8Array(Buffer.from(idHex, "hex")),
    type,
    body: raw.subarray(1),
  };
}

/**
 * Parses a signer key string (`PRIVATE+KEY+name+id+base64`).
 *
 * @param text The key, surrounding white space ignored.
 * @returns The signer.
 * @throws {MoatError} `ERR_CHECKPOINT` naming what is wrong (never the key).
 */
export function parseSigner(text: string): Signer {
  const t = text.trim();
  if (!t.startsWith("PRIVATE+KEY+")) fail("not a moat signing key");
  const p = keyParts(t.slice("PRIVATE+KEY+".length), "signing key");
  const s = signerFrom(p.name, p.type, p.body);
  if (hex(s.id) !== hex(p.id)) fail("signing key id does not match the key");
  return s;
}

/**
 * Parses a verifier key string (`name+id+base64`).
 *
 * @param text The key, surrounding white space ignored.
 * @returns The verifier.
 * @throws {MoatError} `ERR_CHECKPOINT` naming what is wrong.
 */
export function parseVerifier(text: string): Verifier {
  const t = text.trim();
  const p = keyParts(t, "public key");
  if (hex(keyId(p.name, p.type, p.body)) !== hex(p.id)) {
    fail("public key id does not match the key");
  }
  return {
    name: p.name,
    type: p.type,
    id: p.id,
    publicKey: new Uint8Array(p.body),
    key: publicKeyObject(p.body),
    text: t,
  };
}

/**
 * The checkpoint body (what is signed): origin, size, base64 root, extension
 * lines, each ending in a newline.
 *
 * @param cp The checkpoint.
 * @returns The body text.
 */
export function checkpointBody(cp: Checkpoint): string {
  if (!LINE.test(cp.origin)) fail("bad origin line");
  if (!Number.isSafeInteger(cp.size) || cp.size < 0) fail("bad tree size");
  if (cp.root.length !== HASH_BYTES) fail("a root hash is 32 bytes");
  const ext = cp.extensions ?? [];
  for (const e of ext) {
    if (!LINE.test(e)) fail("bad extension line");
  }
  return [
    cp.origin,
    String(cp.size),
    Buffer.from(cp.root).toString("base64"),
    ...ext,
  ].join("\n") + "\n";
}

function signatureLine(name: string, id: Uint8Array, sig: Uint8Array): string {
  return `\u2014 ${name} ${Buffer.concat([id, sig]).toString("base64")}\n`;
}

/**
 * Signs a checkpoint with the log's key.
 *
 * @param cp The checkpoint.
 * @param signer The log's signer ({@link ED25519}).
 * @returns The signed note: body, blank line, signature line.
 */
export function signCheckpoint(cp: Checkpoint, signer: Signer): string {
  if (signer.type !== ED25519) fail("a log signs with an Ed25519 note key");
  const body = checkpointBody(cp);
  const sig = sign(null, enc.encode(body), signer.key);
  return body + "\n" + signatureLine(signer.name, signer.id, sig);
}

/**
 * Splits a signed note into body and signature lines, checking the shape
 * only.
 *
 * @param note The note text.
 * @returns The body (ending in a newline) and its signatures.
 * @throws {MoatError} `ERR_CHECKPOINT` when the note is malformed.
 */
export function splitNote(
  note: string,
): { body: string; signatures: NoteSignature[] } {
  if (note.length > MAX_NOTE) fail("signed note is too large");
  if (CONTROL_BUT_LF.test(note)) {
    fail("signed note holds a control character");
  }
  const cut = note.lastIndexOf("\n\n");
  if (cut < 0 || !note.endsWith("\n")) fail("signed note has no signatures");
  const body = note.slice(0, cut + 1);
  const lines = note.slice(cut + 2, -1).split("\n");
  const signatures: NoteSignature[] = [];
  for (const line of lines) {
    const m = /^\u2014 (\S+) ([A-Za-z0-9+/=]+)$/.exec(line);
    if (m === null) fail("signed note has a malformed signature line");
    const [, name = "", b64 = ""] = m;
    const raw = decodeB64(b64, "signature");
    if (raw.length < 5) fail("signature is too short");
    signatures.push({
      name,
      id: raw.subarray(0, 4),
      signature: raw.subarray(4),
    });
  }
  if (signatures.length === 0 || signatures.length > 32) {
    fail("signed note has no signatures, or too many");
  }
  return { body, signatures };
}

/**
 * Parses a checkpoint body.
 *
 * @param body Origin, size, root and extension lines, ending in a newline.
 * @returns The checkpoint.
 * @throws {MoatError} `ERR_CHECKPOINT` when it is malformed.
 */
export function parseCheckpointBody(body: string): Checkpoint {
  const lines = body.slice(0, -1).split("\n");
  if (!body.endsWith("\n") || lines.length < 3) {
    fail("checkpoint has fewer than three lines");
  }
  const [origin = "", sizeText = "", rootText = "", ...extensions] = lines;
  if (!/^(0|[1-9][0-9]{0,15})$/.test(sizeText)) fail("bad tree size line");
  const size = Number(sizeText);
  if (!Number.isSafeInteger(size)) fail("tree size is too large");
  const root = decodeB64(rootText, "root hash");
  const cp = { origin, size, root, extensions };
  if (checkpointBody(cp) !== body) fail("checkpoint is not in canonical form");
  return cp;
}

function find(
  signatures: NoteSignature[],
  v: Verifier,
): NoteSignature | undefined {
  return signatures.find((s) => s.name === v.name && hex(s.id) === hex(v.id));
}

/**
 * Opens a signed checkpoint: checks the log's signature and parses the body.
 *
 * @param note The signed note.
 * @param log The log's verifier key.
 * @returns The checkpoint and its body text.
 * @throws {MoatError} `ERR_CHECKPOINT` when it is malformed or the log's
 *   signature is missing or wrong.
 */
export function openCheckpoint(
  note: string,
  log: Verifier,
): Checkpoint & { body: string } {
  const { body, signatures } = splitNote(note);
  const s = find(signatures, log);
  if (s === undefined) fail(`checkpoint is not signed by ${log.name}`);
  if (
    s.signature.length !== 64 ||
    !verify(null, enc.encode(body), log.key, s.signature)
  ) fail(`checkpoint signature by ${log.name} does not verify`);
  return { ...parseCheckpointBody(body), body };
}

function cosignedMessage(body: string, time: number): Uint8Array {
  return enc.encode(`cosignature/v1\ntime ${time}\n${body}`);
}

/**
 * A witness's cosignature line for a checkpoint it checked.
 *
 * @param body The checkpoint body.
 * @param witness The witness's signer ({@link COSIGNATURE_V1}).
 * @param time Seconds since the epoch.
 * @returns One signature line, to append to the note.
 */
export function cosign(body: string, witness: Signer, time: number): string {
  if (witness.type !== COSIGNATURE_V1) {
    fail("a witness cosigns with a cosignature/v1 key");
  }
  const ts = Buffer.alloc(8);
  ts.writeBigUInt64BE(BigInt(time));
  const sig = sign(null, cosignedMessage(body, time), witness.key);
  return signatureLine(witness.name, witness.id, Buffer.concat([ts, sig]));
}

/**
 * Checks a witness's cosignature on a signed note.
 *
 * @param note The note.
 * @param witness The witness's verifier key.
 * @returns The time the witness cosigned it (seconds since the epoch).
 * @throws {MoatError} `ERR_CHECKPOINT` when it is missing or wrong.
 */
export function verifyCosignature(note: string, witness: Verifier): number {
  const { body, signatures } = splitNote(note);
  const s = find(signatures, witness);
  if (s === undefined) fail(`checkpoint is not cosigned by ${witness.name}`);
  if (s.signature.length !== 72) fail("cosignature has the wrong length");
  const time = Number(Buffer.from(s.signature).readBigUInt64BE(0));
  if (
    !verify(
      null,
      cosignedMessage(body, time),
      witness.key,
      s.signature.subarray(8),
    )
  ) fail(`cosignature by ${witness.name} does not verify`);
  return time;
}

/**
 * Adds signature lines to a signed note (a cosignature, say).
 *
 * @param note The note.
 * @param lines Signature lines, each ending in a newline.
 * @returns The note with them.
 */
export function addSignatures(note: string, ...lines: string[]): string {
  splitNote(note);
  return note + lines.join("");
}
