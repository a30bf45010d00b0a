/**
 * The vault's writer: per-source append-only segment logs with group commit.
 * An append resolves only once its records are fsync'd; appends from many
 * sources that arrive while a commit runs share the next round of fsyncs.
 *
 * Layout and guarantees: `docs/VAULT.md`.
 *
 * @module
 */

import { mkdir, readdir, rename, rm } from "node:fs/promises";
import { join, resolve } from "node:path";
import { ExitCode, MoatError } from "../errors.ts";
import {
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
  FLAG_CHAIN,
  LOCK_FILE,
  MARKER_FILE,
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
import {
  _hex,
  chainGenesis,
  encodeSeal,
  ensureVaultDir,
  ensureVaultInfo,
  evolveKey,
  INFO_FILE,
  KEY_FILE,
  LINK_OFFSET,
  readSealingKey,
  SEAL_KIND,
  SEAL_MAGIC,
  SEALS_DIR,
  sourceHash,
  writeSealingKey,
} from "./_seal.ts";
import type { SealEntry } from "./_seal.ts";

export type { SourceKey } from "./_format.ts";

/** Default segment size: a new segment starts once one would pass 64 MiB. */
export const DEFAULT_SEGMENT_BYTES: number = 64 * 1024 * 1024;
/** Default interval between seals of a sealed vault: 60 s. */
export const DEFAULT_SEAL_INTERVAL_MS = 60_000;
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
  /**
   * Milliseconds between seals of a sealed vault (one is written even when
   * nothing arrived); 0 seals only on {@linkcode Vault.seal} and at close.
   * @default {60000}
   */
  sealIntervalMs?: number;
  /** Told about every seal written, and every seal that failed. */
  onSeal?: (event: SealEvent) => void;
}

/** What one seal covered. */
export interface SealInfo {
  /** The seal's epoch number (1 for the first seal). */
  epoch: number;
  /** When it was made, ms since the epoch. */
  time: number;
  /** Sources with at least one durable record. */
  sources: number;
  /** Records covered, over all sources. */
  records: number;
}

/** A seal written by the timer or at close, or one that failed. */
export type SealEvent =
  | ({ type: "sealed" } & SealInfo)
  | { type: "seal_failed"; epoch: number; message: string };

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
  /** The vault id, 32 hex digits (bound into every chain and seal). */
  readonly id: string;
  /**
   * True if the vault was set up with `moat vault init` and writes seals;
   * false for a vault that keeps hash chains but no seals.
   */
  readonly sealed: boolean;
  /**
   * Writes a seal now: an HMAC with the current epoch key over every
   * source's durable chain head and record count, the epoch and the time;
   * then replaces the key with the next one and erases the old one. Seals
   * run one at a time.
   *
   * @returns What the seal covered.
   * @throws {MoatError} `ERR_NOT_SEALED` for an unsealed vault,
   * `ERR_CLOSED` after close; the system error if writing fails (the key
   * is then kept and the next seal retries).
   */
  seal(): Promise<SealInfo>;
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
  const sealIntervalMs = options.sealIntervalMs ?? DEFAULT_SEAL_INTERVAL_MS;
  if (!Number.isSafeInteger(sealIntervalMs) || sealIntervalMs < 0) {
    throw new RangeError(
      `Invalid sealIntervalMs: ${sealIntervalMs} is not a non-negative integer`,
    );
  }
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
    await removeTempFiles(join(root, INFO_FILE));
    await removeTempFiles(join(root, KEY_FILE));
    await ensureVaultDir(root);
    const info = await ensureVaultInfo(root);
    const group = new CommitGroup();
    const impl = new _Vault(root, group, lock, {
      segmentBytes,
      maxLineBytes,
      vaultId: info.id,
      onSeal: options.onSeal,
    });
    if (info.sealed) await impl.openSeals();
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
    if (info.sealed) impl.startTimer(sealIntervalMs);
    return impl;
  } catch (error) {
    await lock.release();
    throw error;
  }
}

class _Vault implements Vault {
  readonly dir: string;
  readonly vaultId: Uint8Array;
  #group: CommitGroup;
  #lock: Lock;
  #segmentBytes: number;
  #maxLineBytes: number;
  #sources = new Map<string, _Source>();
  #appends = 0;
  #closed = false;
  #onSeal: ((event: SealEvent) => void) | undefined;
  #sealLog: SegmentLog | undefined;
  #sealGroup = new CommitGroup();
  #key: Uint8Array | undefined;
  #epoch = 0;
  #keySaved = true;
  #sealing: Promise<unknown> = Promise.resolve();
  #timer: ReturnType<typeof setTimeout> | undefined;

  constructor(
    dir: string,
    group: CommitGroup,
    lock: Lock,
    options: {
      segmentBytes: number;
      maxLineBytes: number;
      vaultId: Uint8Array;
      onSeal: ((event: SealEvent) => void) | undefined;
    },
  ) {
    this.dir = dir;
    this.#group = group;
    this.#lock = lock;
    this.#segmentBytes = options.segmentBytes;
    this.#maxLineBytes = options.maxLineBytes;
    this.vaultId = options.vaultId;
    this.#onSeal = options.onSeal;
  }

  get id(): string {
    return _hex(this.vaultId);
  }

  get sealed(): boolean {
    return this.#sealLog !== undefined;
  }

  /** Opens the seal log and the key, and lines the key up with the log. */
  async openSeals(): Promise<void> {
    const stored = await readSealingKey(this.dir, this.vaultId);
    const log = await SegmentLog.open(join(this.dir, SEALS_DIR), {
      magic: SEAL_MAGIC,
      kind: SEAL_KIND,
      segmentBytes: DEFAULT_SEGMENT_BYTES,
      group: this.#sealGroup,
      init: () => makeDir(join(this.dir, SEALS_DIR), 0o700),
    });
    const next = log.durableSeq + 1;
    if (stored.epoch > next) {
      await log.close();
      throw new MoatError(
        "ERR_CORRUPT",
        `Cannot seal vault "${this.dir}": the sealing key is at epoch ${stored.epoch} but the seal log ends at seal ${log.durableSeq} (seals are missing)`,
        ExitCode.Integrity,
      );
    }
    // A crash between writing a seal and replacing the key leaves the key
    // behind the log: move it forward (one way, so nothing is lost).
    let key = stored.key;
    for (let epoch = stored.epoch; epoch < next; epoch++) key = evolveKey(key);
    this.#key = key;
    this.#epoch = next;
    this.#sealLog = log;
    if (stored.epoch !== next) await this.#saveKey();
  }

  /** Starts sealing every `intervalMs` (0: never on a timer). */
  startTimer(intervalMs: number): void {
    if (intervalMs === 0) return;
    const tick = () => {
      this.#timer = setTimeout(() => {
        this.#sealAndReport().finally(() => {
          if (!this.#closed) tick();
        });
      }, intervalMs);
    };
    tick();
  }

  async #sealAndReport(): Promise<void> {
    try {
      const info = await this.seal();
      this.#onSeal?.({ type: "sealed", ...info });
    } catch (error) {
      this.#onSeal?.({
        type: "seal_failed",
        epoch: this.#epoch,
        message: error instanceof Error ? error.message : String(error),
      });
    }
  }

  seal(): Promise<SealInfo> {
    const run = this.#sealing.then(() => this.#seal());
    this.#sealing = run.catch(() => {});
    return run;
  }

  async #seal(): Promise<SealInfo> {
    const log = this.#sealLog;
    if (log === undefined || this.#key === undefined) {
      throw new MoatError(
        "ERR_NOT_SEALED",
        `Vault "${this.dir}" has no sealing key (set it up with moat vault init)`,
      );
    }
    if (log.closed) {
      throw new MoatError("ERR_CLOSED", `Vault "${this.dir}" is closed`);
    }
    const entries: SealEntry[] = [];
    let records = 0;
    for (const source of this.#sources.values()) {
      const durable = source.durableHead();
      if (durable.seq === 0) continue;
      entries.push({
        source: sourceHash(source.key),
        lastSeq: durable.seq,
        head: durable.link,
      });
      records += durable.seq;
    }
    const epoch = this.#epoch;
    const time = Date.now();
    const bytes = encodeSeal(
      { epoch, time, vaultId: this.vaultId, entries },
      this.#key,
    );
    await log.enqueue(bytes, { firstSeq: epoch, lastSeq: epoch });
    // The seal is durable: move to the next key and erase this one.
    const old = this.#key;
    this.#key = evolveKey(old);
    old.fill(0);
    this.#epoch = epoch + 1;
    this.#keySaved = false;
    await this.#saveKey();
    return { epoch, time, sources: entries.length, records };
  }

  async #saveKey(): Promise<void> {
    await writeSealingKey(this.dir, {
      vaultId: this.vaultId,
      epoch: this.#epoch,
      key: this.#key!,
    });
    this.#keySaved = true;
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
    const source = new _Source(this, key, id, log, this.vaultId);
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
    const chain = { link: source.acceptedHead() };
    const bytes = encodeVaultRecords(fresh, recvTs, { chain });
    this.#appends++;
    const done = log.enqueue(bytes, {
      firstSeq: accepted + 1,
      lastSeq: accepted + fresh.length,
    });
    source.pushHead(accepted + fresh.length, chain.link);
    return done;
  }

  sources(): VaultSource[] {
    return [...this.#sources.values()];
  }

  async close(): Promise<void> {
    if (this.#closed) return;
    this.#closed = true;
    clearTimeout(this.#timer);
    await this.#group.idle();
    if (this.#sealLog) {
      // A last seal, so a cleanly stopped vault has no unsealed tail.
      await this.#sealing;
      await this.#sealAndReport();
      if (!this.#keySaved) await this.#saveKey().catch(() => {});
      await this.#sealLog.close();
      this.#key?.fill(0);
    }
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
  /**
   * Chain heads: the one at the last durable record, then one per queued
   * chunk (a commit makes whole chunks durable, and a failed one rolls back
   * to a chunk end).
   */
  #heads: { seq: number; link: Uint8Array }[];

  constructor(
    vault: _Vault,
    key: SourceKey,
    id: string,
    log: SegmentLog,
    vaultId: Uint8Array,
  ) {
    this.#vault = vault;
    this.key = key;
    this.id = id;
    this.#log = log;
    const last = log.lastRecordAtOpen;
    // A record without a link (written before chains existed) restarts the
    // chain from genesis; verify reports such records as unchained.
    const link = last && (last[9]! & FLAG_CHAIN)
      ? last.slice(LINK_OFFSET, LINK_OFFSET + 32)
      : chainGenesis(vaultId, key);
    this.#heads = [{ seq: log.lastSeq, link }];
  }

  /** Drops heads rolled back by a failed commit, and ones no longer needed. */
  #trim(): void {
    const heads = this.#heads;
    const lastSeq = this.#log.lastSeq;
    while (heads.length > 1 && heads.at(-1)!.seq > lastSeq) heads.pop();
    const durable = this.#log.durableSeq;
    let drop = 0;
    while (drop + 1 < heads.length && heads[drop + 1]!.seq <= durable) drop++;
    if (drop > 0) heads.splice(0, drop);
  }

  /** The link of the last accepted record (or genesis). */
  acceptedHead(): Uint8Array {
    this.#trim();
    return this.#heads.at(-1)!.link;
  }

  /** Records the head after a queued chunk. */
  pushHead(seq: number, link: Uint8Array): void {
    this.#heads.push({ seq, link });
  }

  /** The last durable record's sequence number and link. */
  durableHead(): { seq: number; link: Uint8Array } {
    this.#trim();
    const head = this.#heads[0]!;
    if (head.seq !== this.#log.durableSeq) {
      throw new MoatError(
        "ERR_INTERNAL",
        `Chain head of "${
          sourceLabel(this.key)
        }" is at ${head.seq}, the log at ${this.#log.durableSeq}`,
      );
    }
    return head;
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
