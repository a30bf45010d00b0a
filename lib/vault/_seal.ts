/**
 * The vault's seals and the files around them: the seal record codec, the
 * evolving sealing key, the verification key's text form, the vault's
 * identity file and the sealing key file. Only SHA-256 and HMAC-SHA256 from
 * `node:crypto` are used; the hash chain is in `_chain.ts`. Formats:
 * `docs/VAULT.md`, "Tamper evidence".
 *
 * @module
 */

import { createHmac, randomBytes } from "node:crypto";
import { open, readdir, readFile } from "node:fs/promises";
import { join } from "node:path";
import { ExitCode, MoatError } from "../errors.ts";
import { finishRecord, getU64, setU64 } from "../segment/codec.ts";
import {
  makeDir,
  readTextIfExists,
  systemErrorCode,
  writeFileAtomic,
} from "../segment/fs.ts";
import { sha256 } from "../sha256.ts";
import { LOCK_FILE, MARKER_FILE, MARKER_TEXT, SOURCES_DIR } from "./_format.ts";

/** Magic at the start of every seal-log segment: 0x89 "MOATSEL". */
export const SEAL_MAGIC: Uint8Array = Uint8Array.of(
  0x89,
  0x4d,
  0x4f,
  0x41,
  0x54,
  0x53,
  0x45,
  0x4c,
);
/** Record kind of a seal record. */
export const SEAL_KIND = 3;
/** Subdirectory holding the seal log. */
export const SEALS_DIR = "seals";
/** The sealing key file (current epoch key; never the verification key). */
export const KEY_FILE = "seal.key";
/** The vault's identity file. */
export const INFO_FILE = "vault.json";
/** Bytes in a vault id. */
export const VAULT_ID_BYTES = 16;
/** Offset of the first source entry in a seal record. */
export const SEAL_ENTRIES_OFFSET = 60;
/** Bytes per source entry in a seal record: source hash, last seq, head. */
export const SEAL_ENTRY_BYTES = 72;
/** Bytes of the HMAC that ends a seal record. */
export const SEAL_MAC_BYTES = 32;
/** Bytes per prune entry in a seal record: source hash, last seq pruned, its link, cut-off. */
export const SEAL_PRUNE_BYTES = 80;

const EVOLVE_LABEL = new TextEncoder().encode("moat-evolve");
const KEY_PREFIX = "moat-vk1-";

/**
 * The next epoch key: `k[n+1] = HMAC-SHA256(k[n], "moat-evolve")`. One way:
 * `k[n+1]` does not reveal `k[n]`.
 *
 * @param key The current key.
 * @returns The next key.
 */
export function evolveKey(key: Uint8Array): Uint8Array {
  return createHmac("sha256", key).update(EVOLVE_LABEL).digest();
}

/** One source's line in a seal. */
export interface SealEntry {
  /** The source's hash (`sourceHash` in `_key.ts`). */
  source: Uint8Array;
  /** Last record sealed (the source's record count: numbering starts at 1). */
  lastSeq: number;
  /** The link of record `lastSeq`. */
  head: Uint8Array;
}

/**
 * A prune carried by a seal: records 1 to `seq` of a source were removed
 * (whole segments, each first covered by a seal made before `before`).
 */
export interface SealPrune {
  /** The source's hash. */
  source: Uint8Array;
  /** Last record removed. */
  seq: number;
  /** The chain link of record `seq`: the chain of the records kept starts from it. */
  link: Uint8Array;
  /** The cut-off, ms since the epoch. */
  before: number;
}

/** A decoded seal record. */
export interface Seal {
  /** Epoch number (the seal's sequence number), from 1. */
  epoch: number;
  /** When the seal was made, ms since the epoch. */
  time: number;
  /** The vault id the seal names. */
  vaultId: Uint8Array;
  /** Sum of `lastSeq` over the entries. */
  total: number;
  /** Entries sorted by source hash. */
  entries: SealEntry[];
  /** Prunes made with this seal, sorted by source hash (usually none). */
  prunes: SealPrune[];
  /** The HMAC stored in the record. */
  mac: Uint8Array;
}

/**
 * Encodes a seal record and its HMAC with the epoch key.
 *
 * @param seal Epoch, time, vault id, entries and prunes (both sorted here).
 * @param key The epoch's key `k[epoch]`.
 * @returns The whole record.
 */
export function encodeSeal(
  seal: Omit<Seal, "mac" | "total" | "prunes"> & {
    prunes?: readonly SealPrune[];
  },
  key: Uint8Array,
): Uint8Array {
  const entries = [...seal.entries].sort((a, b) =>
    _compareBytes(a.source, b.source)
  );
  const prunes = [...(seal.prunes ?? [])].sort((a, b) =>
    _compareBytes(a.source, b.source)
  );
  const prunesAt = SEAL_ENTRIES_OFFSET + SEAL_ENTRY_BYTES * entries.length;
  const macAt = prunesAt + SEAL_PRUNE_BYTES * prunes.length;
  const out = new Uint8Array(macAt + SEAL_MAC_BYTES);
  const view = new DataView(out.buffer);
  setU64(view, 20, seal.time);
  out.set(seal.vaultId, 28);
  view.setUint32(44, entries.length, true);
  view.setUint32(48, prunes.length, true);
  let total = 0;
  let at = SEAL_ENTRIES_OFFSET;
  for (const entry of entries) {
    out.set(entry.source, at);
    setU64(view, at + 32, entry.lastSeq);
    out.set(entry.head, at + 40);
    total += entry.lastSeq;
    at += SEAL_ENTRY_BYTES;
  }
  setU64(view, 52, total);
  for (const prune of prunes) {
    out.set(prune.source, at);
    setU64(view, at + 32, prune.seq);
    out.set(prune.link, at + 40);
    setU64(view, at + 72, prune.before);
    at += SEAL_PRUNE_BYTES;
  }
  // Header fields first (the MAC covers them), then the MAC, then the CRC.
  finishRecord(out, { kind: SEAL_KIND, flags: 0, seq: seal.epoch });
  out.set(sealMac(out, key), macAt);
  finishRecord(out, { kind: SEAL_KIND, flags: 0, seq: seal.epoch });
  return out;
}

/**
 * The HMAC of a seal record: HMAC-SHA256 with the epoch key over the record
 * from byte 4 to the start of the MAC.
 *
 * @param record The seal record.
 * @param key The epoch key.
 * @returns The 32-byte MAC.
 */
export function sealMac(record: Uint8Array, key: Uint8Array): Uint8Array {
  return createHmac("sha256", key)
    .update(record.subarray(4, record.length - SEAL_MAC_BYTES)).digest();
}

/**
 * Decodes a seal record whose CRC, kind and sequence were already checked.
 *
 * @param record The record.
 * @returns The seal, or a reason it is malformed.
 */
export function decodeSeal(record: Uint8Array): Seal | string {
  if (record.length < SEAL_ENTRIES_OFFSET + SEAL_MAC_BYTES) {
    return "seal record is too short";
  }
  const view = new DataView(
    record.buffer,
    record.byteOffset,
    record.byteLength,
  );
  const count = view.getUint32(44, true);
  const pruneCount = view.getUint32(48, true);
  if (
    record.length !==
      SEAL_ENTRIES_OFFSET + SEAL_ENTRY_BYTES * count +
        SEAL_PRUNE_BYTES * pruneCount + SEAL_MAC_BYTES
  ) {
    return `seal record length does not fit ${count} sources and ${pruneCount} prunes`;
  }
  const entries: SealEntry[] = [];
  let at = SEAL_ENTRIES_OFFSET;
  for (let i = 0; i < count; i++) {
    entries.push({
      source: record.slice(at, at + 32),
      lastSeq: getU64(view, at + 32),
      head: record.slice(at + 40, at + 72),
    });
    at += SEAL_ENTRY_BYTES;
  }
  const prunes: SealPrune[] = [];
  for (let i = 0; i < pruneCount; i++) {
    prunes.push({
      source: record.slice(at, at + 32),
      seq: getU64(view, at + 32),
      link: record.slice(at + 40, at + 72),
      before: getU64(view, at + 72),
    });
    at += SEAL_PRUNE_BYTES;
  }
  return {
    epoch: getU64(view, 12),
    time: getU64(view, 20),
    vaultId: record.slice(28, 44),
    total: getU64(view, 52),
    entries,
    prunes,
    mac: record.slice(record.length - SEAL_MAC_BYTES),
  };
}

/**
 * Formats the verification key: `moat-vk1-<vault id>-<k0>-<check>`, hex,
 * where `check` is 8 hex digits of SHA-256 over the text before it.
 *
 * @param vaultId The vault id.
 * @param k0 The epoch-0 key.
 * @returns The text to hand to the operator.
 */
export function formatVerificationKey(
  vaultId: Uint8Array,
  k0: Uint8Array,
): string {
  const body = `${KEY_PREFIX}${vaultId.toHex()}-${k0.toHex()}`;
  return `${body}-${
    (sha256(new TextEncoder().encode(body))).toHex().slice(0, 8)
  }`;
}

/**
 * Parses a verification key.
 *
 * @param text The key as printed by `moat vault init` (surrounding white
 * space ignored).
 * @returns The vault id and `k0`.
 * @throws {TypeError} If it is malformed or its check digits do not match.
 */
export function parseVerificationKey(
  text: string,
): { vaultId: Uint8Array; k0: Uint8Array } {
  const m = /^moat-vk1-([0-9a-f]{32})-([0-9a-f]{64})-([0-9a-f]{8})$/.exec(
    text.trim(),
  );
  if (!m) {
    throw new TypeError(
      "Invalid verification key: expected moat-vk1-<32 hex>-<64 hex>-<8 hex>",
    );
  }
  const body = `${KEY_PREFIX}${m[1]}-${m[2]}`;
  const check = (sha256(new TextEncoder().encode(body))).toHex().slice(0, 8);
  if (check !== m[3]) {
    throw new TypeError(
      "Invalid verification key: its check digits do not match (a typo?)",
    );
  }
  return { vaultId: Uint8Array.fromHex(m[1]!), k0: Uint8Array.fromHex(m[2]!) };
}

/** Longest seal interval a vault takes: one day. */
export const MAX_SEAL_INTERVAL_MS = 86_400_000;

/** The vault's identity file. */
export interface VaultInfo {
  /** 16 random bytes made when the vault was created. */
  id: Uint8Array;
  /** True once `moat vault init` set up sealing. */
  sealed: boolean;
  /**
   * The seal interval of the server that last opened the sealed vault, in
   * milliseconds (1 to one day); absent if none was recorded (`verify` then
   * assumes the default, 60 s).
   */
  sealIntervalMs?: number;
  /**
   * The verifier key of the vault's checkpoint key (`checkpoint.key`), as
   * shippers and witnesses pin it; absent in a vault from before trees
   * until its next open.
   */
  checkpointKey?: string;
}

/**
 * Reads `vault.json`.
 *
 * @param root The vault directory.
 * @returns The info, or undefined if the file does not exist.
 * @throws {MoatError} `ERR_CORRUPT` if it is malformed.
 */
export async function readVaultInfo(
  root: string,
): Promise<VaultInfo | undefined> {
  const file = join(root, INFO_FILE);
  const text = await readTextIfExists(file);
  if (text === undefined) return undefined;
  try {
    const parsed = JSON.parse(text);
    if (
      parsed.version !== 1 || typeof parsed.id !== "string" ||
      !/^[0-9a-f]{32}$/.test(parsed.id) || typeof parsed.sealed !== "boolean"
    ) {
      throw new Error("unexpected fields");
    }
    const interval = parsed.sealIntervalMs;
    if (
      interval !== undefined &&
      (!Number.isSafeInteger(interval) || interval < 1 ||
        interval > MAX_SEAL_INTERVAL_MS)
    ) {
      throw new Error(`sealIntervalMs ${interval} is out of range`);
    }
    const checkpointKey = parsed.checkpointKey;
    if (
      checkpointKey !== undefined &&
      (typeof checkpointKey !== "string" ||
        !/^[\x21-\x7e]{1,300}$/.test(checkpointKey))
    ) {
      throw new Error("checkpointKey is not a key");
    }
    return {
      id: Uint8Array.fromHex(parsed.id),
      sealed: parsed.sealed,
      ...(interval !== undefined && { sealIntervalMs: interval }),
      ...(checkpointKey !== undefined && { checkpointKey }),
    };
  } catch (error) {
    throw new MoatError(
      "ERR_CORRUPT",
      `Damaged vault identity file "${file}": ${(error as Error).message}`,
      ExitCode.Integrity,
    );
  }
}

/**
 * Writes `vault.json` atomically.
 *
 * @param root The vault directory.
 * @param info Id, sealed flag and seal interval.
 * @returns When durable.
 */
export async function writeVaultInfo(
  root: string,
  info: VaultInfo,
): Promise<void> {
  const text = JSON.stringify({
    version: 1,
    id: info.id.toHex(),
    sealed: info.sealed,
    ...(info.sealIntervalMs !== undefined &&
      { sealIntervalMs: info.sealIntervalMs }),
    ...(info.checkpointKey !== undefined &&
      { checkpointKey: info.checkpointKey }),
  }) + "\n";
  await writeFileAtomic(join(root, INFO_FILE), new TextEncoder().encode(text));
}

/**
 * Makes sure `root` is a vault: creates the marker and `sources/` in an
 * empty (or new) directory; accepts an existing vault.
 *
 * @param root The vault directory (exists; the caller holds its lock).
 * @returns When done.
 * @throws {MoatError} `ERR_NOT_VAULT` for a non-empty non-vault directory or
 * an unsupported marker.
 */
export async function ensureVaultDir(root: string): Promise<void> {
  const text = await readTextIfExists(join(root, MARKER_FILE));
  if (text === undefined) {
    const entries = (await readdir(root)).filter((e) => e !== LOCK_FILE);
    if (entries.length > 0) {
      throw new MoatError(
        "ERR_NOT_VAULT",
        `Cannot use "${root}" as a vault: it is a non-empty directory without a "${MARKER_FILE}" file`,
        ExitCode.Usage,
      );
    }
    await makeDir(join(root, SOURCES_DIR));
    await writeFileAtomic(
      join(root, MARKER_FILE),
      new TextEncoder().encode(MARKER_TEXT),
    );
    return;
  }
  if (text !== MARKER_TEXT) {
    throw new MoatError(
      "ERR_NOT_VAULT",
      `Cannot use "${root}" as a vault: its "${MARKER_FILE}" file names an unsupported format`,
      ExitCode.Usage,
    );
  }
  await makeDir(join(root, SOURCES_DIR));
}

/**
 * Returns the vault's info, creating `vault.json` (new random id, unsealed)
 * if it is missing.
 *
 * @param root The vault directory.
 * @returns The info.
 */
export async function ensureVaultInfo(root: string): Promise<VaultInfo> {
  const found = await readVaultInfo(root);
  if (found) return found;
  const info = { id: newRandom(VAULT_ID_BYTES), sealed: false };
  await writeVaultInfo(root, info);
  return info;
}

/** The sealing key file's contents. */
export interface SealingKey {
  /** Number of the next seal, made with `key`. */
  epoch: number;
  /** `k[epoch]`. */
  key: Uint8Array;
}

/**
 * Reads the sealing key file.
 *
 * @param root The vault directory.
 * @param vaultId The vault id it must name.
 * @returns The key.
 * @throws {MoatError} `ERR_SEAL_KEY` if it is missing, malformed, or names
 * another vault.
 */
export async function readSealingKey(
  root: string,
  vaultId: Uint8Array,
): Promise<SealingKey> {
  const file = join(root, KEY_FILE);
  let parsed;
  try {
    parsed = JSON.parse(await readFile(file, "utf8"));
  } catch (error) {
    throw new MoatError(
      "ERR_SEAL_KEY",
      `Cannot read the sealing key "${file}" of a sealed vault (${
        systemErrorCode(error) ?? (error as Error).message
      })`,
    );
  }
  if (
    parsed?.version !== 1 || parsed.vault !== vaultId.toHex() ||
    !Number.isSafeInteger(parsed.epoch) || parsed.epoch < 1 ||
    typeof parsed.key !== "string" || !/^[0-9a-f]{64}$/.test(parsed.key)
  ) {
    throw new MoatError(
      "ERR_SEAL_KEY",
      `Sealing key "${file}" is malformed or belongs to another vault`,
    );
  }
  return { epoch: parsed.epoch, key: Uint8Array.fromHex(parsed.key) };
}

/**
 * Replaces the sealing key file atomically (temporary file, fsync, rename,
 * directory fsync), then overwrites the old file's blocks with zeros and
 * fsyncs them, so the previous key is erased where the file system allows.
 *
 * @param root The vault directory.
 * @param options Vault id, epoch and key.
 * @returns When the new key is durable and the old one overwritten.
 */
export async function writeSealingKey(
  root: string,
  options: { vaultId: Uint8Array; epoch: number; key: Uint8Array },
): Promise<void> {
  const file = join(root, KEY_FILE);
  const old = await open(file, "r+").catch(() => undefined);
  try {
    const text = JSON.stringify({
      version: 1,
      vault: options.vaultId.toHex(),
      epoch: options.epoch,
      key: options.key.toHex(),
    }) + "\n";
    await writeFileAtomic(file, new TextEncoder().encode(text));
    if (old) {
      const size = (await old.stat()).size;
      await old.write(new Uint8Array(size), 0, size, 0);
      await old.sync();
    }
  } finally {
    await old?.close();
  }
}

/**
 * Random bytes from the system's CSPRNG.
 *
 * @param n How many.
 * @returns The bytes.
 */
export function newRandom(n: number): Uint8Array {
  return new Uint8Array(randomBytes(n));
}

/**
 * Orders byte strings lexicographically.
 *
 * @param a One.
 * @param b The other.
 * @returns Negative, zero or positive.
 */
export function _compareBytes(a: Uint8Array, b: Uint8Array): number {
  const n = Math.min(a.length, b.length);
  for (let i = 0; i < n; i++) {
    if (a[i] !== b[i]) return a[i]! - b[i]!;
  }
  return a.length - b.length;
}
