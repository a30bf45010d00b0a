/**
 * The vault's writer: per-source append-only segment logs with group commit.
 * An append resolves only once its records are fsync'd; appends from many
 * sources that arrive while a commit runs share the next round of fsyncs.
 *
 * Layout and guarantees: `docs/VAULT.md`.
 *
 * @module
 */

import { mkdir, readdir, readFile, rename, rm } from "node:fs/promises";
import { join, resolve } from "node:path";
import { ExitCode, MoatError } from "../errors.ts";
import {
  _code,
  acquireLock,
  makeDir,
  removeTempFiles,
  syncDir,
  writeFileAtomic,
} from "./_fs.ts";
import type { Lock } from "./_fs.ts";
import {
  checkSourceKey,
  encodeVaultRecords,
  LOCK_FILE,
  MARKER_FILE,
  MARKER_TEXT,
  readSourceKey,
  SOURCE_FILE,
  sourceDirName,
  sourceLabel,
  SOURCES_DIR,
  VAULT_KIND,
  VAULT_LINE_OFFSET,
  VAULT_MAGIC,
} from "./_format.ts";
import type { SourceKey } from "./_format.ts";
import { CommitGroup, MAX_RECORD_BYTES, SegmentLog } from "./_segment_log.ts";
import type { LogRepair, SegmentLogOptions } from "./_segment_log.ts";

export type { SourceKey } from "./_format.ts";

/** Default segment size: a new segment starts once one would pass 64 MiB. */
export const DEFAULT_SEGMENT_BYTES: number = 64 * 1024 * 1024;
/** Default longest line accepted: 1 MiB. */
export const DEFAULT_MAX_LINE_BYTES: number = 1024 * 1024;

/** One record handed to {@linkcode Vault.append}. */
export interface AppendRecord {
  /** Per-source sequence number: 1 for the first line, then +1 per line. */
  seq: number;
  /** The shipper's timestamp, integer milliseconds since the epoch (0 to 2^53 - 1). */
  ts: number;
  /** The line without its newline. */
  line: Uint8Array;
  /** True if the next record continues this line (an overlong line was split). @default {false} */
  partial?: boolean;
}

/** Options for {@linkcode Vault.append}. */
export interface AppendOptions {
  /** Receive time to store, integer milliseconds since the epoch. @default {Date.now()} */
  recvTs?: number;
}

/** A repair made while opening the vault: a torn tail cut, or an empty segment removed. */
export type VaultEvent = LogRepair & {
  /** The source whose log was repaired. */
  source: SourceKey;
};

/** Options for {@linkcode openVault}. */
export interface OpenVaultOptions {
  /** Start a new segment once the current one would grow past this. @default {67108864} */
  segmentBytes?: number;
  /** Longest line accepted by `append`, in bytes (at most 16 MiB). @default {1048576} */
  maxLineBytes?: number;
  /** Told about every repair recovery makes (instead of logging to the console). */
  onEvent?: (event: VaultEvent) => void;
}

/** Counters for tests and monitoring. */
export interface VaultStats {
  /** Append calls that queued at least one new record. */
  readonly appends: number;
  /** Group-commit rounds. */
  readonly commits: number;
  /** File fsyncs (one per dirty segment per round, plus one per rotation). */
  readonly syncs: number;
}

/** One source's log inside an open vault. */
export interface VaultSource {
  /** The source key. */
  readonly key: SourceKey;
  /** Its directory name under `sources/`. */
  readonly id: string;
  /** Highest durable sequence number; 0 for a new source. */
  readonly lastSeq: number;
  /** Highest sequence number accepted, durable or still being committed. */
  readonly acceptedSeq: number;
  /**
   * Appends records; see {@linkcode Vault.append}.
   *
   * @param records Records in sequence order.
   * @param options Receive time.
   * @returns The highest sequence number in `records`, once durable.
   */
  append(
    records: readonly AppendRecord[],
    options?: AppendOptions,
  ): Promise<number>;
}

/** An open vault. Create with {@linkcode openVault}. */
export interface Vault {
  /** The vault directory (absolute). */
  readonly dir: string;
  /** Counters. */
  readonly stats: VaultStats;
  /**
   * Returns the handle of a source, creating it in memory if it is new (its
   * directory is made at its first commit).
   *
   * @param key The peer as the server identified it, and the shipper's name.
   * @returns The handle; the same object for the same key.
   * @throws {TypeError} For a malformed key.
   * @throws {MoatError} `ERR_CLOSED` after {@linkcode Vault.close}.
   */
  source(key: SourceKey): VaultSource;
  /**
   * Appends records to a source. Records with a sequence number at or below
   * the source's accepted sequence are duplicates and skipped; the rest must
   * continue it without a gap. Nothing from the call is stored if any check
   * fails. Resolves only once every record of the call is fsync'd. On a
   * write or fsync error (disk full, I/O error) the promise rejects, nothing
   * after the last durable record is kept, and the next append resumes from
   * there once the disk works again.
   *
   * @param key The source.
   * @param records Records in sequence order.
   * @param options Receive time.
   * @returns The highest sequence number in `records` (for an empty list,
   * the source's `lastSeq`), once it is durable.
   * @throws {MoatError} (as a rejection) `ERR_SEQ_GAP` when records are
   * missing before the first new one; `ERR_SEQUENCE` for records out of order;
   * `ERR_CLOSED` after close; the system error when writing fails.
   * @throws {RangeError} (as a rejection) for a bad `seq`, `ts`, `recvTs`, or
   * a line longer than `maxLineBytes`.
   */
  append(
    key: SourceKey,
    records: readonly AppendRecord[],
    options?: AppendOptions,
  ): Promise<number>;
  /**
   * Every source known: found on disk at open or appended to since.
   *
   * @returns The handles.
   */
  sources(): VaultSource[];
  /**
   * Waits for running commits, then closes every file and releases the lock.
   *
   * @returns When closed.
   */
  close(): Promise<void>;
}

/**
 * Opens (or creates) a vault directory and recovers every source: each
 * source's last segment is verified record by record; a torn or invalid tail
 * is truncated and reported through `onEvent`. Takes a lock file so that only
 * one process writes the vault.
 *
 * @example Append and read back
 * ```ts ignore
 * import { openVault } from "./store.ts";
 * import { readRecords } from "./read.ts";
 * const vault = await openVault("/srv/moat-vault");
 * const key = { peer: "10.0.0.5", name: "web1" };
 * const line = new TextEncoder().encode("hello");
 * await vault.append(key, [{ seq: 1, ts: Date.now(), line }]);
 * await vault.close();
 * for await (const r of readRecords("/srv/moat-vault")) console.log(r.seq);
 * ```
 *
 * @param dir The vault directory; created if missing.
 * @param options Segment size, line limit, repair callback.
 * @returns The open vault.
 * @throws {MoatError} `ERR_NOT_VAULT` if `dir` is a non-empty directory
 * without a vault marker; `ERR_LOCKED` if another live process has it open;
 * `ERR_CORRUPT` for a damaged source directory.
 * @throws {RangeError} For bad options.
 */
export async function openVault(
  dir: string,
  options: OpenVaultOptions = {},
): Promise<Vault> {
  const segmentBytes = options.segmentBytes ?? DEFAULT_SEGMENT_BYTES;
  const maxLineBytes = options.maxLineBytes ?? DEFAULT_MAX_LINE_BYTES;
  if (!Number.isSafeInteger(segmentBytes) || segmentBytes < 4096) {
    throw new RangeError(
      `Invalid segmentBytes: ${segmentBytes} is below 4096 or not an integer`,
    );
  }
  if (
    !Number.isSafeInteger(maxLineBytes) || maxLineBytes < 1 ||
    maxLineBytes + VAULT_LINE_OFFSET + 32 > MAX_RECORD_BYTES
  ) {
    throw new RangeError(
      `Invalid maxLineBytes: ${maxLineBytes} is out of range (1 to 16 MiB)`,
    );
  }
  const root = resolve(dir);
  await makeDir(root);
  const lock = await acquireLock(join(root, LOCK_FILE), `Vault "${root}"`);
  try {
    await removeTempFiles(join(root, MARKER_FILE));
    await _ensureMarker(root);
    const group = new CommitGroup();
    const impl = new _Vault(root, group, lock, { segmentBytes, maxLineBytes });
    const sourcesDir = join(root, SOURCES_DIR);
    for (const entry of await readdir(sourcesDir)) {
      const path = join(sourcesDir, entry);
      if (entry.startsWith(".tmp-")) {
        // A source directory whose creation was interrupted: never durable.
        await rm(path, { recursive: true, force: true });
        continue;
      }
      const key = await readSourceKey(path, entry);
      const log = await SegmentLog.open(path, {
        ...impl.logOptions,
        onRepair(repair) {
          options.onEvent?.({ ...repair, source: key });
        },
      });
      impl.adopt(key, entry, log);
    }
    return impl;
  } catch (error) {
    await lock.release();
    throw error;
  }
}

async function _ensureMarker(root: string): Promise<void> {
  let text: string | undefined;
  try {
    text = await readFile(join(root, MARKER_FILE), "utf8");
  } catch (error) {
    if (_code(error) !== "ENOENT") throw error;
  }
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

class _Vault implements Vault {
  readonly dir: string;
  #group: CommitGroup;
  #lock: Lock;
  #segmentBytes: number;
  #maxLineBytes: number;
  #sources = new Map<string, _Source>();
  #appends = 0;
  #closed = false;

  constructor(
    dir: string,
    group: CommitGroup,
    lock: Lock,
    options: { segmentBytes: number; maxLineBytes: number },
  ) {
    this.dir = dir;
    this.#group = group;
    this.#lock = lock;
    this.#segmentBytes = options.segmentBytes;
    this.#maxLineBytes = options.maxLineBytes;
  }

  get stats(): VaultStats {
    return { appends: this.#appends, ...this.#group.stats };
  }

  /** Format and commit settings shared by every source log. */
  get logOptions(): SegmentLogOptions {
    return {
      magic: VAULT_MAGIC,
      kind: VAULT_KIND,
      segmentBytes: this.#segmentBytes,
      group: this.#group,
    };
  }

  adopt(key: SourceKey, id: string, log: SegmentLog): _Source {
    const source = new _Source(this, key, id, log);
    this.#sources.set(id, source);
    return source;
  }

  source(key: SourceKey): VaultSource {
    this.#checkOpen();
    checkSourceKey(key);
    const id = sourceDirName(key);
    const found = this.#sources.get(id);
    if (found) return found;
    const sourcesDir = join(this.dir, SOURCES_DIR);
    const path = join(sourcesDir, id);
    const log = SegmentLog.empty(path, {
      ...this.logOptions,
      init: () => _createSourceDir(sourcesDir, id, key),
    });
    return this.adopt({ peer: key.peer, name: key.name }, id, log);
  }

  append(
    key: SourceKey,
    records: readonly AppendRecord[],
    options?: AppendOptions,
  ): Promise<number> {
    try {
      return this.source(key).append(records, options);
    } catch (error) {
      return Promise.reject(error);
    }
  }

  /** Validates and queues; the part of append that must run synchronously. */
  queue(
    source: _Source,
    log: SegmentLog,
    records: readonly AppendRecord[],
    options: AppendOptions,
  ): Promise<number> {
    this.#checkOpen();
    if (!Array.isArray(records)) {
      throw new TypeError("Invalid records: not an array");
    }
    const recvTs = options.recvTs ?? Date.now();
    _checkTime("recvTs", recvTs);
    const accepted = log.lastSeq;
    let start = 0;
    let highest = 0;
    while (start < records.length) {
      const seq = _checkSeq(records[start]!.seq);
      if (seq > accepted) break;
      if (seq <= highest) throw _outOfOrder(source.key, seq, highest);
      highest = seq;
      start++;
    }
    if (start === records.length) {
      return highest === 0
        ? log.waitDurable(log.durableSeq)
        : log.waitDurable(highest);
    }
    for (let i = start; i < records.length; i++) {
      const record = records[i]!;
      const expected = accepted + 1 + i - start;
      const seq = _checkSeq(record.seq);
      if (seq !== expected) {
        if (i === start && seq > expected) {
          const missing = seq - 1 === expected
            ? `record ${expected} is missing`
            : `records ${expected} to ${seq - 1} are missing`;
          throw new MoatError(
            "ERR_SEQ_GAP",
            `Cannot append to source "${
              sourceLabel(source.key)
            }": record ${seq} arrived but the vault holds up to ${accepted} (${missing})`,
          );
        }
        throw _outOfOrder(source.key, seq, expected - 1);
      }
      _checkTime("ts", record.ts);
      if (!(record.line instanceof Uint8Array)) {
        throw new TypeError(`Invalid record ${seq}: line is not a Uint8Array`);
      }
      if (record.line.length > this.#maxLineBytes) {
        throw new RangeError(
          `Invalid record ${seq}: line of ${record.line.length} bytes exceeds maxLineBytes ${this.#maxLineBytes}`,
        );
      }
    }
    const fresh = start === 0 ? records : records.slice(start);
    const bytes = encodeVaultRecords(fresh, recvTs);
    this.#appends++;
    return log.enqueue(bytes, {
      firstSeq: accepted + 1,
      lastSeq: accepted + fresh.length,
    });
  }

  sources(): VaultSource[] {
    return [...this.#sources.values()];
  }

  async close(): Promise<void> {
    if (this.#closed) return;
    this.#closed = true;
    await this.#group.idle();
    for (const source of this.#sources.values()) await source.close();
    await this.#lock.release();
  }

  #checkOpen(): void {
    if (this.#closed) {
      throw new MoatError("ERR_CLOSED", `Vault "${this.dir}" is closed`);
    }
  }
}

class _Source implements VaultSource {
  readonly key: SourceKey;
  readonly id: string;
  #vault: _Vault;
  #log: SegmentLog;

  constructor(vault: _Vault, key: SourceKey, id: string, log: SegmentLog) {
    this.#vault = vault;
    this.key = key;
    this.id = id;
    this.#log = log;
  }

  get lastSeq(): number {
    return this.#log.durableSeq;
  }

  get acceptedSeq(): number {
    return this.#log.lastSeq;
  }

  append(
    records: readonly AppendRecord[],
    options: AppendOptions = {},
  ): Promise<number> {
    try {
      return this.#vault.queue(this, this.#log, records, options);
    } catch (error) {
      return Promise.reject(error);
    }
  }

  close(): Promise<void> {
    return this.#log.close();
  }
}

/**
 * Creates a source directory atomically: temp dir, key file, rename. A
 * retry after a failed directory fsync finds the directory in place.
 */
async function _createSourceDir(
  sourcesDir: string,
  id: string,
  key: SourceKey,
): Promise<void> {
  const final = join(sourcesDir, id);
  if (await readSourceKey(final, id).then(() => true, () => false)) {
    await syncDir(sourcesDir);
    return;
  }
  const temp = join(
    sourcesDir,
    `.tmp-${id}-${Math.floor(Math.random() * 0x100000000).toString(16)}`,
  );
  await mkdir(temp);
  try {
    await writeFileAtomic(
      join(temp, SOURCE_FILE),
      new TextEncoder().encode(
        JSON.stringify({ peer: key.peer, name: key.name }) + "\n",
      ),
    );
    await rename(temp, final);
  } catch (error) {
    await rm(temp, { recursive: true, force: true }).catch(() => {});
    throw error;
  }
  await syncDir(sourcesDir);
}

function _checkSeq(seq: unknown): number {
  if (typeof seq !== "number" || !Number.isSafeInteger(seq) || seq < 1) {
    throw new RangeError(
      `Invalid record: sequence number ${
        String(seq)
      } is not a positive integer`,
    );
  }
  return seq;
}

function _checkTime(what: string, value: unknown): void {
  if (typeof value !== "number" || !Number.isSafeInteger(value) || value < 0) {
    throw new RangeError(
      `Invalid ${what}: ${
        String(value)
      } is not a non-negative integer of milliseconds`,
    );
  }
}

function _outOfOrder(key: SourceKey, seq: number, after: number): MoatError {
  return new MoatError(
    "ERR_SEQUENCE",
    `Cannot append to source "${
      sourceLabel(key)
    }": record ${seq} is out of order after ${after}`,
  );
}
