/**
 * `moat vault verify`, first half: the problem kinds, reading the vault's
 * files for checking, and checking the seal log and the sealing key file.
 * Sources are checked in `verify.ts`.
 *
 * @module
 */

import { readdir, readFile } from "node:fs/promises";
import { join } from "node:path";
import { getU64, parseSegmentName, scanSegment } from "../segment/codec.ts";
import type { SegmentScan } from "../segment/codec.ts";
import { systemErrorCode } from "../segment/fs.ts";
import type { SegmentFile } from "../segment/scanner.ts";
import { _equal } from "./_chain.ts";
import {
  decodeSeal,
  evolveKey,
  SEAL_KIND,
  SEAL_MAGIC,
  sealMac,
  SEALS_DIR,
} from "./_seal.ts";
import type { Seal, SealingKey, SealPrune } from "./_seal.ts";

/** Kinds of damage `verifyVault` names. */
export type VerifyProblemKind =
  /** A segment header is damaged (magic, version, checksum, first sequence). */
  | "header"
  /** A record's checksum, length, kind or flags are wrong. */
  | "checksum"
  /** A record (or segment) carries the wrong sequence number: records were deleted, inserted, duplicated or reordered. */
  | "sequence"
  /** Records are missing between two segments, or at the start of a source. */
  | "gap"
  /** A segment ends inside a record, or sealed records are missing at the end. */
  | "truncated"
  /** A record's chain link does not follow from the record before it. */
  | "link"
  /** A record carries no chain link. */
  | "unchained"
  /** A source's chain head at a sealed record differs from the seal's. */
  | "seal-head"
  /** A seal's HMAC does not verify with its epoch key. */
  | "seal-mac"
  /** Seals are missing: an epoch was removed, or the key file is ahead of the seal log. */
  | "seal-gap"
  /** A seal log record or segment is damaged or inconsistent, or the seal log is missing. */
  | "seal"
  /** The sealing key file is missing, malformed, or not the key of its epoch. */
  | "seal-key"
  /** A record of a sealed vault that no seal covers although one should. */
  | "unsealed"
  /** A sealed source is missing. */
  | "missing-source"
  /** A prune breaks the rules: it removed records no earlier seal covered, or first sealed after its cut-off, it is dated in the future or (with a minimum retention) too early, or its chain head does not match. */
  | "prune"
  /** A file or directory of the vault cannot be read. */
  | "unreadable"
  /** The vault's identity does not match the key, or its identity file or sources directory is missing. */
  | "vault"
  /** A source's Merkle tree or its checkpoint log does not match the records (second layer, see `_verify_tree.ts`). */
  | "tree"
  /** A checkpoint held outside the vault (`--checkpoint`) that the vault does not extend: rolled back, cut, or rewritten. */
  | "checkpoint"
  /** With required witnesses (`--witness-key`): a cosignature that does not verify, or a latest checkpoint not cosigned in time. */
  | "witness"
  /** A JetStream vault's stream holds a message no front door writes (out of order, malformed, a second meta), or does not protect its records (`stream.json`). */
  | "stream";

/** The first bad point found in one source, or in the seals. */
export interface VerifyProblem {
  /** What is wrong. */
  kind: VerifyProblemKind;
  /** A sentence saying what is wrong and where. */
  message: string;
  /** The source's label. */
  source?: string;
  /** The sequence number due (or checked) at the bad point. */
  seq?: number;
  /** The file. */
  file?: string;
  /** Byte offset in `file` of the bad record (or where it was due). */
  offset?: number;
  /** The seal epoch involved. */
  epoch?: number;
  /** For `seal-head`: the sealed range of records the damage lies in. */
  range?: [number, number];
}

/** A source's state in one trusted seal. */
export interface Checkpoint {
  epoch: number;
  /** The seal's time. */
  time: number;
  lastSeq: number;
  head: Uint8Array;
}

/** A prune a trusted seal carries, for one source. */
export interface SealedPrune {
  /** The seal's epoch and time. */
  epoch: number;
  time: number;
  /** Records 1 to `seq` were removed. */
  seq: number;
  /** The chain link of record `seq`. */
  link: Uint8Array;
  /** The cut-off. */
  before: number;
  /** Where the seal is. */
  file: string;
  offset: number;
}

/**
 * Checks the sealing key file against the seal log: its epoch may be at
 * most one past the last seal (less after a crash between a seal and the
 * key update), and with `k0` its key must be that epoch's.
 *
 * @param keyFile The key file's epoch and key.
 * @param count Seals in the seal log (all trusted).
 * @param k0 The verification key's `k[0]`, if given.
 * @returns The problem, or undefined.
 */
export function checkKeyFile(
  keyFile: SealingKey,
  count: number,
  k0: Uint8Array | undefined,
): VerifyProblem | undefined {
  if (keyFile.epoch > count + 1) {
    const missing = keyFile.epoch - 1 === count + 1
      ? `Seal ${count + 1} is missing`
      : `Seals ${count + 1} to ${keyFile.epoch - 1} are missing`;
    return {
      kind: "seal-gap",
      message:
        `${missing}: the sealing key file is at epoch ${keyFile.epoch} but the seal log ends at seal ${count} (seals were removed)`,
      epoch: count + 1,
    };
  }
  if (k0 === undefined) return undefined;
  let expected = k0;
  for (let epoch = 0; epoch < keyFile.epoch; epoch++) {
    expected = evolveKey(expected);
  }
  if (_equal(expected, keyFile.key)) return undefined;
  return {
    kind: "seal-key",
    message:
      `The sealing key file does not hold this vault's key of epoch ${keyFile.epoch} (it was replaced)`,
    epoch: keyFile.epoch,
  };
}

/**
 * The problem of a vault file or directory that could not be read: `vault`
 * if it is missing, `unreadable` otherwise.
 *
 * @param path The file or directory.
 * @param error What reading it threw.
 * @param what What it is, for the message (`segment`, `seal log`, …).
 * @returns The problem.
 */
export function unreadableProblem(
  path: string,
  error: unknown,
  what: string,
): VerifyProblem {
  const code = systemErrorCode(error);
  return {
    kind: code === "ENOENT" ? "vault" : "unreadable",
    message: code === "ENOENT"
      ? `The vault's ${what} "${path}" is missing`
      : `Cannot read the vault's ${what} "${path}" (${
        code ?? (error as Error).message
      })`,
    file: path,
  };
}

/**
 * Reads a whole file for checking.
 *
 * @param path The file.
 * @returns Its bytes, or what reading it threw.
 */
export async function readForCheck(
  path: string,
): Promise<{ bytes: Uint8Array } | { error: unknown }> {
  try {
    const buf = await readFile(path);
    return { bytes: new Uint8Array(buf.buffer, buf.byteOffset, buf.length) };
  } catch (error) {
    return { error };
  }
}

/**
 * Lists a log directory's segments for checking.
 *
 * @param dir The directory.
 * @returns The segments, oldest first, and whether the directory exists; or
 * what listing it threw (other than ENOENT).
 */
export async function listForCheck(
  dir: string,
): Promise<{ segments: SegmentFile[]; found: boolean } | { error: unknown }> {
  let names: string[];
  try {
    names = await readdir(dir);
  } catch (error) {
    if (systemErrorCode(error) === "ENOENT") {
      return { segments: [], found: false };
    }
    return { error };
  }
  const segments: SegmentFile[] = [];
  for (const name of names.sort()) {
    const firstSeq = parseSegmentName(name);
    if (firstSeq !== undefined) {
      segments.push({ firstSeq, path: join(dir, name) });
    }
  }
  return { segments, found: true };
}

/**
 * The problem kind of a {@linkcode scanSegment} stop.
 *
 * @param kind Why the scan stopped.
 * @returns `truncated`, `checksum`, `sequence` or `header`.
 */
export function stopKind(
  kind: NonNullable<SegmentScan["stop"]>["kind"],
): VerifyProblemKind {
  return kind === "incomplete"
    ? "truncated"
    : kind === "damaged"
    ? "checksum"
    : kind;
}

/**
 * Checks the seal log: consecutive epochs from 1, each seal's HMAC (with
 * `k[n]` derived from `k0`, if given), its vault id, and its consistency
 * with the seal before it. Stops at the first bad seal.
 *
 * @param root The vault directory.
 * @param vaultId The vault id every seal must name.
 * @param k0 The verification key's `k[0]`, if given.
 * @returns How many seals are trusted, the last one's time, every source's
 * checkpoints, whether the seal log exists, and the first problem.
 */
export async function verifySeals(
  root: string,
  vaultId: Uint8Array,
  k0: Uint8Array | undefined,
): Promise<{
  count: number;
  found: boolean;
  lastTime?: number;
  checkpoints: Map<string, Checkpoint[]>;
  prunes: Map<string, SealedPrune[]>;
  pruneProblems: VerifyProblem[];
  problem?: VerifyProblem;
}> {
  const checkpoints = new Map<string, Checkpoint[]>();
  const prunes = new Map<string, SealedPrune[]>();
  const pruneProblems: VerifyProblem[] = [];
  const sealsDir = join(root, SEALS_DIR);
  const listed = await listForCheck(sealsDir);
  let count = 0;
  let lastTime: number | undefined;
  let key = k0;
  let previous: Seal | undefined;
  let previousFile: { path: string; end: number } | undefined;
  const result = (problem?: VerifyProblem) => ({
    count,
    found: "found" in listed && listed.found,
    checkpoints,
    prunes,
    pruneProblems,
    ...(lastTime !== undefined && { lastTime }),
    ...(problem && { problem }),
  });
  if ("error" in listed) {
    return result(unreadableProblem(sealsDir, listed.error, "seal log"));
  }
  for (const segment of listed.segments) {
    const due = count + 1;
    if (segment.firstSeq !== due) {
      const at = segment.firstSeq > due && previousFile
        ? { file: previousFile.path, offset: previousFile.end }
        : { file: segment.path, offset: 0 };
      return result({
        kind: segment.firstSeq > due ? "seal-gap" : "seal",
        message: segment.firstSeq > due
          ? `Seal ${due} is missing (epoch gap: the next seal is ${segment.firstSeq})`
          : `Seal segment starts at ${segment.firstSeq} where ${due} is due`,
        epoch: due,
        ...at,
      });
    }
    const read = await readForCheck(segment.path);
    if ("error" in read) {
      return result({
        ...unreadableProblem(segment.path, read.error, "seal segment"),
        kind: "unreadable",
        epoch: due,
      });
    }
    const bytes = read.bytes;
    const scan = scanSegment(bytes, {
      magic: SEAL_MAGIC,
      kind: SEAL_KIND,
      firstSeq: segment.firstSeq,
    });
    for (const record of scan.records) {
      const where = { file: segment.path, offset: record.offset };
      const seal = decodeSeal(record.bytes);
      if (typeof seal === "string") {
        return result({
          kind: "seal",
          message: `Seal ${record.seq} is malformed: ${seal}`,
          epoch: record.seq,
          ...where,
        });
      }
      if (key) {
        key = evolveKey(key);
        if (!_equal(sealMac(record.bytes, key), seal.mac)) {
          return result({
            kind: "seal-mac",
            message:
              `Seal ${seal.epoch} fails its HMAC: it was forged or re-sealed with a later key`,
            epoch: seal.epoch,
            ...where,
          });
        }
      }
      if (!_equal(seal.vaultId, vaultId)) {
        return result({
          kind: "seal",
          message:
            `Seal ${seal.epoch} names vault ${seal.vaultId.toHex()}, not ${vaultId.toHex()}`,
          epoch: seal.epoch,
          ...where,
        });
      }
      const bad = _checkSealAgainst(seal, previous);
      if (bad !== undefined) {
        return result({
          kind: "seal",
          message: `Seal ${seal.epoch} is inconsistent: ${bad}`,
          epoch: seal.epoch,
          ...where,
        });
      }
      for (const entry of seal.entries) {
        const hash = entry.source.toHex();
        let list = checkpoints.get(hash);
        if (!list) checkpoints.set(hash, list = []);
        list.push({
          epoch: seal.epoch,
          time: seal.time,
          lastSeq: entry.lastSeq,
          head: entry.head,
        });
      }
      for (const prune of seal.prunes) {
        const hash = prune.source.toHex();
        const bad = _checkPrune(prune, seal, previous);
        if (bad !== undefined) {
          pruneProblems.push({
            kind: "prune",
            message:
              `Seal ${seal.epoch} carries a prune of source ${hash} (records 1 to ${prune.seq}) that ${bad}`,
            epoch: seal.epoch,
            ...where,
          });
        }
        let list = prunes.get(hash);
        if (!list) prunes.set(hash, list = []);
        list.push({
          epoch: seal.epoch,
          time: seal.time,
          seq: prune.seq,
          link: prune.link,
          before: prune.before,
          ...where,
        });
      }
      previous = seal;
      count = seal.epoch;
      lastTime = seal.time;
    }
    if (scan.stop) {
      const missing = scan.stop.kind === "sequence" &&
        scan.stop.seq < getU64(
            new DataView(bytes.buffer, bytes.byteOffset + scan.stop.offset),
            12,
          );
      return result({
        kind: missing ? "seal-gap" : "seal",
        message: missing
          ? `Seal ${scan.stop.seq} is missing (epoch gap)`
          : `Seal log damaged: ${scan.stop.reason}`,
        epoch: scan.stop.seq,
        file: segment.path,
        offset: scan.stop.offset,
      });
    }
    previousFile = { path: segment.path, end: scan.end };
  }
  return result();
}

/**
 * Checks a prune against the seal carrying it and the seal before: only
 * records that seal covered can go, at least one record of the source
 * stays, and the cut-off is not after the seal.
 */
function _checkPrune(
  prune: SealPrune,
  seal: Seal,
  previous: Seal | undefined,
): string | undefined {
  const hash = prune.source.toHex();
  const now = seal.entries.find((e) => e.source.toHex() === hash);
  if (now === undefined) return "names no source of the seal";
  if (prune.seq < 1 || prune.seq >= now.lastSeq) {
    return `would leave none of its ${now.lastSeq} records`;
  }
  const before = previous?.entries.find((e) => e.source.toHex() === hash);
  if (before === undefined || before.lastSeq < prune.seq) {
    return `removed records the seal before it did not cover (it covered ${
      before?.lastSeq ?? 0
    })`;
  }
  if (prune.before > seal.time) {
    return `has a cut-off (${
      new Date(prune.before).toISOString()
    }) after the seal itself`;
  }
  return undefined;
}

/**
 * Checks the prunes of one source against its trusted seals and the
 * verifier's rules: records may go only if a seal made before the cut-off
 * covered them; the prune's head must equal a seal's head at the same
 * record; its seal may not be dated after `now` (plus `graceMs`); and with
 * `minRetainMs`, the cut-off must be at least that long before its seal.
 *
 * @param prunes The source's prunes, in epoch order.
 * @param checkpoints The source's trusted checkpoints, in epoch order.
 * @param rules The verifier's time, grace and minimum retention.
 * @returns A reason per prune that breaks a rule (with the prune).
 */
export function checkPruneRules(
  prunes: readonly SealedPrune[],
  checkpoints: readonly Checkpoint[],
  rules: { now: number; graceMs: number; minRetainMs?: number | undefined },
): { prune: SealedPrune; reason: string }[] {
  const out: { prune: SealedPrune; reason: string }[] = [];
  const iso = (t: number) => new Date(t).toISOString();
  for (const prune of prunes) {
    const cover = checkpoints.find((c) => c.lastSeq >= prune.seq);
    const same = checkpoints.find((c) => c.lastSeq === prune.seq);
    let reason: string | undefined;
    if (cover === undefined || cover.epoch >= prune.epoch) {
      reason = "removed records no earlier seal covered";
    } else if (cover.time >= prune.before) {
      reason = `removed records first sealed at ${
        iso(cover.time)
      } (seal ${cover.epoch}), not before its cut-off ${iso(prune.before)}`;
    } else if (same !== undefined && !_equal(same.head, prune.link)) {
      reason =
        `names a chain head at record ${prune.seq} that seal ${same.epoch} does not`;
    } else if (prune.time > rules.now + rules.graceMs) {
      reason = `is dated ${iso(prune.time)}, after the verification time`;
    } else if (
      rules.minRetainMs !== undefined &&
      prune.before > prune.time - rules.minRetainMs
    ) {
      reason = `cut at ${iso(prune.before)}, less than the minimum retention (${
        rules.minRetainMs / 1000
      } s) before the prune at ${iso(prune.time)}`;
    }
    if (reason !== undefined) out.push({ prune, reason });
  }
  return out;
}

/** Checks a seal against the one before it. */
function _checkSealAgainst(
  seal: Seal,
  previous: Seal | undefined,
): string | undefined {
  let total = 0;
  for (const entry of seal.entries) total += entry.lastSeq;
  if (total !== seal.total) return "its record total does not add up";
  if (previous === undefined) return undefined;
  if (seal.time < previous.time) return "its time is before the previous seal";
  const now = new Map(seal.entries.map((e) => [e.source.toHex(), e]));
  for (const before of previous.entries) {
    const entry = now.get(before.source.toHex());
    if (entry === undefined) {
      return `source ${before.source.toHex()} of seal ${previous.epoch} is gone`;
    }
    if (entry.lastSeq < before.lastSeq) {
      return `source ${before.source.toHex()} went back from ${before.lastSeq} to ${entry.lastSeq}`;
    }
    if (entry.lastSeq === before.lastSeq && !_equal(entry.head, before.head)) {
      return `source ${before.source.toHex()} changed its head at ${entry.lastSeq}`;
    }
  }
  return undefined;
}
