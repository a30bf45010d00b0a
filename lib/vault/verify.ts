/**
 * `moat vault verify`: checks every record's checksum, sequence and chain
 * link, and every seal's HMAC against the verification key. Reads the whole
 * vault; takes no lock. See `docs/VAULT.md`, "Tamper evidence".
 *
 * @module
 */

import { readdir, readFile } from "node:fs/promises";
import { join, resolve } from "node:path";
import { ExitCode, MoatError } from "../errors.ts";
import { crc32c } from "./_crc32c.ts";
import { readIfExists } from "./_fs.ts";
import {
  FLAG_CHAIN,
  FLAG_PARTIAL,
  MARKER_FILE,
  MARKER_TEXT,
  readSourceKey,
  sourceLabel,
  SOURCES_DIR,
  VAULT_KIND,
  VAULT_LINE_OFFSET,
  VAULT_MAGIC,
} from "./_format.ts";
import type { SourceKey } from "./_format.ts";
import {
  _equal,
  _hex,
  chainGenesis,
  checkLink,
  decodeSeal,
  evolveKey,
  parseVerificationKey,
  readVaultInfo,
  SEAL_KIND,
  SEAL_MAGIC,
  sealMac,
  SEALS_DIR,
  sourceHash,
} from "./_seal.ts";
import type { Seal } from "./_seal.ts";
import {
  _getU64,
  listSegments,
  MAX_RECORD_BYTES,
  RECORD_HEADER_BYTES,
  SEGMENT_HEADER_BYTES,
  SEGMENT_VERSION,
} from "./_segment_log.ts";

/** Kinds of damage {@linkcode verifyVault} names. */
export type VerifyProblemKind =
  /** A segment header is damaged (magic, version, checksum, first sequence). */
  | "header"
  /** A record's checksum, length, kind or flags are wrong. */
  | "checksum"
  /** A record (or segment) carries the wrong sequence number: records were deleted, inserted, duplicated or reordered. */
  | "sequence"
  /** Records are missing between two segments. */
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
  /** Seals are missing: an epoch was removed. */
  | "seal-gap"
  /** A seal log record or segment is damaged or inconsistent. */
  | "seal"
  /** A sealed source is missing. */
  | "missing-source"
  /** The vault's identity does not match the key, or it has no seals to check. */
  | "vault";

/** The first bad point found in one source, or in the seals. */
export interface VerifyProblem {
  /** What is wrong. */
  kind: VerifyProblemKind;
  /** A sentence saying what is wrong and where. */
  message: string;
  /** The source, as `peer/name`. */
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

/** One source's result. */
export interface VerifySource {
  /** `peer/name`. */
  label: string;
  /** The source's directory name. */
  id: string;
  /** Records read up to the first problem (or all). */
  records: number;
  /** Highest sequence number covered by a verified seal. */
  sealedSeq: number;
  /** Records after `sealedSeq`: chained but not sealed. */
  unsealed: number;
  /**
   * Bytes at the end of the last segment, after every sealed record, that
   * are not a whole valid record: a write in progress or a torn one (opening
   * the vault cuts them). Not verified, and not counted as damage.
   */
  torn?: { file: string; offset: number; bytes: number; reason: string };
}

/** The result of {@linkcode verifyVault}. */
export interface VerifyReport {
  /** True only if nothing is damaged (an unsealed tail is not damage). */
  ok: boolean;
  /** The vault id (from the key if given). */
  id: string;
  /** True if a key was given and seal HMACs were checked. */
  keyed: boolean;
  /** Seals that verified. */
  seals: number;
  /** Time of the last verified seal, ms since the epoch. */
  lastSealTime?: number;
  /** Per-source results. */
  sources: VerifySource[];
  /** Records after the last verified seal, over all sources. */
  unsealed: number;
  /** Problems; the seal log's (if any) first, then at most one per source. */
  problems: VerifyProblem[];
}

/** Options for {@linkcode verifyVault}. */
export interface VerifyOptions {
  /** The verification key printed by `moat vault init`; without it only chains are checked. */
  key?: string;
  /**
   * Check only the sources whose name, or label `peer/name`, equals this
   * (the seals are always checked; sealed sources that are missing are then
   * not reported).
   */
  source?: string;
}

interface Checkpoint {
  epoch: number;
  lastSeq: number;
  head: Uint8Array;
}

/**
 * Verifies a vault: every record's checksum, sequence number and chain link,
 * each seal's HMAC (with `k[n]` derived from the verification key), that
 * seals are consecutive, and that every source's chain head at each seal
 * matches the seal.
 *
 * @example Usage
 * ```ts ignore
 * import { verifyVault } from "./verify.ts";
 * const report = await verifyVault("/srv/moat-vault", { key: "moat-vk1-…" });
 * if (!report.ok) console.log(report.problems[0]!.message);
 * ```
 *
 * @param dir The vault directory.
 * @param options The verification key.
 * @returns The report.
 * @throws {MoatError} `ERR_NOT_VAULT` if `dir` is not a vault.
 * @throws {TypeError} For a malformed key.
 */
export async function verifyVault(
  dir: string,
  options: VerifyOptions = {},
): Promise<VerifyReport> {
  const root = resolve(dir);
  const marker = await readFile(join(root, MARKER_FILE), "utf8").catch(
    () => undefined,
  );
  if (marker !== MARKER_TEXT) {
    throw new MoatError(
      "ERR_NOT_VAULT",
      `Cannot verify "${root}": not a moat vault`,
      ExitCode.Usage,
    );
  }
  const key = options.key === undefined
    ? undefined
    : parseVerificationKey(options.key);
  const problems: VerifyProblem[] = [];
  const info = await readVaultInfo(root).catch((error) => {
    problems.push({ kind: "vault", message: (error as Error).message });
    return undefined;
  });
  const vaultId = key?.vaultId ?? info?.id ?? new Uint8Array(16);
  if (info === undefined && problems.length === 0) {
    problems.push({
      kind: "vault",
      message: "The vault has no identity file (vault.json)",
    });
  }
  if (key && info && !_equal(key.vaultId, info.id)) {
    problems.push({
      kind: "vault",
      message: `The key belongs to vault ${_hex(key.vaultId)}, this is vault ${
        _hex(info.id)
      }`,
    });
  }
  if (key && info && !info.sealed) {
    problems.push({
      kind: "vault",
      message: "The vault is not sealed (vault.json), but a key was given",
    });
  }

  const seals = await _verifySeals(root, vaultId, key?.k0);
  if (seals.problem) problems.push(seals.problem);

  const sources: VerifySource[] = [];
  const seen = new Set<string>();
  const sourcesDir = join(root, SOURCES_DIR);
  const ids = (await readdir(sourcesDir).catch(() => [] as string[]))
    .filter((id) => !id.startsWith("."));
  const entries: { key: SourceKey; id: string }[] = [];
  const sourceProblems: VerifyProblem[] = [];
  for (const id of ids) {
    try {
      entries.push({ key: await readSourceKey(join(sourcesDir, id), id), id });
    } catch (error) {
      sourceProblems.push({
        kind: "header",
        message: (error as Error).message,
        file: join(sourcesDir, id),
      });
    }
  }
  entries.sort((a, b) =>
    sourceLabel(a.key) < sourceLabel(b.key)
      ? -1
      : sourceLabel(a.key) > sourceLabel(b.key)
      ? 1
      : 0
  );
  const filter = options.source;
  for (const entry of entries) {
    if (
      filter !== undefined && entry.key.name !== filter &&
      sourceLabel(entry.key) !== filter
    ) {
      continue;
    }
    const hash = _hex(sourceHash(entry.key));
    seen.add(hash);
    const checkpoints = seals.checkpoints.get(hash) ?? [];
    const result = await _verifySource(join(sourcesDir, entry.id), {
      key: entry.key,
      genesis: chainGenesis(vaultId, entry.key),
      checkpoints,
    });
    const sealedSeq = checkpoints.at(-1)?.lastSeq ?? 0;
    sources.push({
      label: sourceLabel(entry.key),
      id: entry.id,
      records: result.records,
      sealedSeq,
      unsealed: Math.max(0, result.records - sealedSeq),
      ...(result.torn && { torn: result.torn }),
    });
    if (result.problem) sourceProblems.push(result.problem);
  }
  for (const [hash, checkpoints] of seals.checkpoints) {
    if (seen.has(hash) || filter !== undefined) continue;
    const last = checkpoints.at(-1)!;
    sourceProblems.push({
      kind: "missing-source",
      message:
        `A source sealed with ${last.lastSeq} records in seal ${last.epoch} is missing (source hash ${hash})`,
      epoch: last.epoch,
    });
  }
  problems.push(...sourceProblems);
  let unsealed = 0;
  for (const source of sources) unsealed += source.unsealed;
  return {
    ok: problems.length === 0,
    id: _hex(vaultId),
    keyed: key !== undefined,
    seals: seals.count,
    ...(seals.lastTime !== undefined && { lastSealTime: seals.lastTime }),
    sources,
    unsealed,
    problems,
  };
}

/** A record found by {@linkcode _scan}. */
interface ScannedRecord {
  seq: number;
  flags: number;
  offset: number;
  bytes: Uint8Array;
}

/** Where and why {@linkcode _scan} stopped early. */
interface ScanStop {
  kind: "header" | "checksum" | "sequence" | "truncated";
  offset: number;
  seq: number;
  reason: string;
}

/**
 * Parses one segment file's records, stopping at the first bad one.
 *
 * @returns The good records, and the stop if the file did not end cleanly.
 */
function _scan(
  bytes: Uint8Array,
  options: { magic: Uint8Array; kind: number; firstSeq: number },
): { records: ScannedRecord[]; stop?: ScanStop; end: number } {
  const records: ScannedRecord[] = [];
  const first = options.firstSeq;
  if (bytes.length < SEGMENT_HEADER_BYTES) {
    return {
      records,
      end: 0,
      stop: {
        kind: "truncated",
        offset: 0,
        seq: first,
        reason: "the segment header is incomplete",
      },
    };
  }
  const view = new DataView(bytes.buffer, bytes.byteOffset, bytes.byteLength);
  let bad: string | undefined;
  if (view.getUint32(24, true) !== crc32c(bytes, { end: 24 })) {
    bad = "its checksum does not match";
  } else if (options.magic.some((b, i) => bytes[i] !== b)) {
    bad = "its magic is wrong";
  } else if (view.getUint16(8, true) !== SEGMENT_VERSION) {
    bad = `version ${view.getUint16(8, true)} is not supported`;
  } else if (_getU64(view, 16) !== first) {
    bad = "its sequence number does not match the file name";
  }
  if (bad !== undefined) {
    return {
      records,
      end: 0,
      stop: {
        kind: "header",
        offset: 0,
        seq: first,
        reason: `the segment header is damaged: ${bad}`,
      },
    };
  }
  let at = SEGMENT_HEADER_BYTES;
  let seq = first;
  while (at < bytes.length) {
    const stop = (kind: ScanStop["kind"], reason: string) => ({
      records,
      end: at,
      stop: { kind, offset: at, seq, reason },
    });
    if (at + RECORD_HEADER_BYTES > bytes.length) {
      return stop("truncated", "the segment ends inside a record header");
    }
    const length = view.getUint32(at + 4, true);
    if (length < RECORD_HEADER_BYTES || length > MAX_RECORD_BYTES) {
      return stop("checksum", `record length ${length} is out of range`);
    }
    if (at + length > bytes.length) {
      return stop(
        "truncated",
        `the segment ends inside a record of ${length} bytes`,
      );
    }
    const record = bytes.subarray(at, at + length);
    if (view.getUint32(at, true) !== crc32c(record, { start: 4 })) {
      return stop("checksum", "the record checksum does not match");
    }
    if (record[8] !== options.kind) {
      return stop("checksum", `record kind ${record[8]} is unexpected`);
    }
    const found = _getU64(view, at + 12);
    if (found !== seq) {
      return stop(
        "sequence",
        `record ${found} is stored where ${seq} is due`,
      );
    }
    records.push({ seq, flags: record[9]!, offset: at, bytes: record });
    at += length;
    seq++;
  }
  return { records, end: at };
}

async function _verifySeals(
  root: string,
  vaultId: Uint8Array,
  k0: Uint8Array | undefined,
): Promise<{
  count: number;
  lastTime?: number;
  checkpoints: Map<string, Checkpoint[]>;
  problem?: VerifyProblem;
}> {
  const checkpoints = new Map<string, Checkpoint[]>();
  const segments = await listSegments(join(root, SEALS_DIR));
  let count = 0;
  let lastTime: number | undefined;
  let key = k0;
  let previous: Seal | undefined;
  let previousFile: { path: string; end: number } | undefined;
  const result = (problem?: VerifyProblem) => ({
    count,
    checkpoints,
    ...(lastTime !== undefined && { lastTime }),
    ...(problem && { problem }),
  });
  for (const segment of segments) {
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
    // A segment removed meanwhile reads as undefined.
    const bytes = await readIfExists(segment.path) ?? new Uint8Array(0);
    const scan = _scan(bytes, {
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
          message: `Seal ${seal.epoch} names vault ${_hex(seal.vaultId)}, not ${
            _hex(vaultId)
          }`,
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
        const hash = _hex(entry.source);
        let list = checkpoints.get(hash);
        if (!list) checkpoints.set(hash, list = []);
        list.push({
          epoch: seal.epoch,
          lastSeq: entry.lastSeq,
          head: entry.head,
        });
      }
      previous = seal;
      count = seal.epoch;
      lastTime = seal.time;
    }
    if (scan.stop) {
      const missing = scan.stop.kind === "sequence" &&
        scan.stop.seq < _getU64(
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
  const now = new Map(seal.entries.map((e) => [_hex(e.source), e]));
  for (const before of previous.entries) {
    const entry = now.get(_hex(before.source));
    if (entry === undefined) {
      return `source ${_hex(before.source)} of seal ${previous.epoch} is gone`;
    }
    if (entry.lastSeq < before.lastSeq) {
      return `source ${
        _hex(before.source)
      } went back from ${before.lastSeq} to ${entry.lastSeq}`;
    }
    if (entry.lastSeq === before.lastSeq && !_equal(entry.head, before.head)) {
      return `source ${
        _hex(before.source)
      } changed its head at ${entry.lastSeq}`;
    }
  }
  return undefined;
}

async function _verifySource(
  dir: string,
  options: { key: SourceKey; genesis: Uint8Array; checkpoints: Checkpoint[] },
): Promise<{
  records: number;
  problem?: VerifyProblem;
  torn?: VerifySource["torn"];
}> {
  const label = sourceLabel(options.key);
  const checkpoints = options.checkpoints;
  const sealedSeq = checkpoints.at(-1)?.lastSeq ?? 0;
  const segments = await listSegments(dir);
  let prev = options.genesis;
  let expect = 1;
  let cp = 0;
  let sealedFrom = 1;
  let last: { path: string; end: number } | undefined;
  let torn: VerifySource["torn"];
  const problem = (
    kind: VerifyProblemKind,
    message: string,
    where: { seq: number; file: string; offset: number },
    extra: Partial<VerifyProblem> = {},
  ) => ({
    records: expect - 1,
    problem: {
      kind,
      message:
        `${label}: ${message} (record ${where.seq}, "${where.file}" at byte ${where.offset})`,
      source: label,
      ...where,
      ...extra,
    },
  });
  for (let i = 0; i < segments.length; i++) {
    const segment = segments[i]!;
    const isLast = i === segments.length - 1;
    if (segment.firstSeq !== expect) {
      if (segment.firstSeq > expect && last) {
        return problem(
          "gap",
          `records ${expect} to ${segment.firstSeq - 1} are missing`,
          { seq: expect, file: last.path, offset: last.end },
        );
      }
      return problem(
        segment.firstSeq > expect ? "gap" : "sequence",
        `segment starts at record ${segment.firstSeq} where ${expect} is due`,
        { seq: expect, file: segment.path, offset: 0 },
      );
    }
    const bytes = await readIfExists(segment.path);
    if (bytes === undefined) continue;
    const scan = _scan(bytes, {
      magic: VAULT_MAGIC,
      kind: VAULT_KIND,
      firstSeq: segment.firstSeq,
    });
    for (const record of scan.records) {
      const where = {
        seq: record.seq,
        file: segment.path,
        offset: record.offset,
      };
      if ((record.flags & ~(FLAG_CHAIN | FLAG_PARTIAL)) !== 0) {
        return problem(
          "checksum",
          `record flags ${record.flags} are unknown`,
          where,
        );
      }
      if (!(record.flags & FLAG_CHAIN)) {
        return problem("unchained", "the record carries no chain link", where);
      }
      if (record.bytes.length < VAULT_LINE_OFFSET + 32) {
        return problem("checksum", "the record is too short", where);
      }
      const { link, ok } = checkLink(record.bytes, prev);
      if (!ok) {
        return problem(
          "link",
          "the chain link does not follow from the previous record",
          where,
        );
      }
      prev = link;
      expect = record.seq + 1;
      while (
        cp < checkpoints.length && checkpoints[cp]!.lastSeq === record.seq
      ) {
        const point = checkpoints[cp]!;
        if (!_equal(point.head, link)) {
          return problem(
            "seal-head",
            `records ${sealedFrom} to ${record.seq} do not match seal ${point.epoch}`,
            where,
            { epoch: point.epoch, range: [sealedFrom, record.seq] },
          );
        }
        cp++;
        if (checkpoints[cp]?.lastSeq !== record.seq) {
          sealedFrom = record.seq + 1;
        }
      }
    }
    if (scan.stop) {
      const stop = scan.stop;
      // Bad data at the end of the last segment, after every sealed record,
      // is what a write in progress or a torn write looks like: recovery
      // cuts it, readers stop there. It is reported, but not as damage.
      if (isLast && stop.offset > 0 && stop.seq > sealedSeq) {
        torn = {
          file: segment.path,
          offset: stop.offset,
          bytes: bytes.length - stop.offset,
          reason: stop.reason,
        };
      } else {
        return problem(stop.kind, stop.reason, {
          seq: stop.seq,
          file: segment.path,
          offset: stop.offset,
        });
      }
    }
    last = { path: segment.path, end: scan.end };
  }
  if (cp < checkpoints.length) {
    const point = checkpoints.at(-1)!;
    return problem(
      "truncated",
      `records ${expect} to ${point.lastSeq} (sealed by seal ${point.epoch}) are missing`,
      {
        seq: expect,
        file: last?.path ?? dir,
        offset: last?.end ?? 0,
      },
      { epoch: point.epoch },
    );
  }
  return { records: expect - 1, ...(torn && { torn }) };
}
