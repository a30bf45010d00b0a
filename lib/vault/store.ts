/**
 * The vault's writer: per-source append-only segment logs with group commit.
 * An append resolves only once its records are fsync'd; appends from many
 * sources that arrive while a commit runs share the next round of fsyncs.
 * It keeps each source's segment index, and prunes old segments (recorded
 * in a seal first) on demand or on a retention schedule.
 *
 * Layout and guarantees: `docs/VAULT.md`.
 *
 * @module
 */

import { readdir, rm } from "node:fs/promises";
import { join, resolve } from "node:path";
import { parseVerifier, signCheckpoint } from "../checkpoint.ts";
import { emptyRoot } from "../merkle.ts";
import {
  MoatError,
  TooManyRecordsError,
  TooManySourcesError,
} from "../errors.ts";
import { DEFAULT_MAX_BATCH_RECORDS } from "../limits.ts";
import { MAX_RECORD_BYTES } from "../segment/codec.ts";
import {
  CommitGroup,
  DEFAULT_MAX_OPEN_FILES,
} from "../segment/commit_group.ts";
import { acquireLock, makeDir, removeTempFiles } from "../segment/fs.ts";
import type { Lock } from "../segment/fs.ts";
import { SegmentLog } from "../segment/log.ts";
import type {
  ClosedSegment,
  LogRepair,
  SegmentLogOptions,
} from "../segment/log.ts";
import { LINK_BYTES } from "./_chain.ts";
import { INDEX_FILE, linkOf, recvTsOf } from "./_index.ts";
import { findFirstCovers, PRUNED_FILE } from "./_prune.ts";
import {
  type AppendBatch,
  encodeVaultRecords,
  LOCK_FILE,
  MARKER_FILE,
  readSourceKey,
  recordBatch,
  SOURCES_DIR,
  VAULT_KIND,
  VAULT_LINE_OFFSET,
  VAULT_MAGIC,
} from "./_format.ts";
import {
  checkNewSourceKey,
  sourceDirName,
  sourceHash,
  sourceLabel,
} from "./_key.ts";
import type { SourceKey } from "./_key.ts";
import {
  ensureVaultDir,
  ensureVaultInfo,
  INFO_FILE,
  KEY_FILE,
  MAX_SEAL_INTERVAL_MS,
  writeVaultInfo,
} from "./_seal.ts";
import type { SealEntry, VaultInfo } from "./_seal.ts";
import { Sealer } from "./_sealer.ts";
import type { SealEvent, SealInfo, WrittenSeal } from "./_sealer.ts";
import { createSourceDir, SourceLog } from "./_source.ts";
import { checkpointOrigin, loadCheckpointKey } from "./_checkpoints.ts";
import { SourceTree } from "./_tree.ts";
import { TreeHasher } from "./_tree_chunk.ts";
import { leafHashInto, RecordLeaves } from "./_tree_file.ts";

/** Bytes of a Merkle leaf hash. */
const LEAF_HASH_BYTES = 32;
import type {
  SignedCheckpoint,
  TreeContext,
  TreeEvent,
  TreeHost,
} from "./_tree.ts";
import type {
  AppendOptions,
  AppendRecord,
  PrunedSource,
  PrunePlan,
  VaultSource,
} from "./_source.ts";

export type { SourceKey } from "./_key.ts";
export { sourceKey, sourceLabel } from "./_key.ts";
export type {
  AppendOptions,
  AppendRecord,
  PrunedSource,
  VaultSource,
} from "./_source.ts";
export type { AppendBatch } from "./_format.ts";
export type { SealEvent, SealInfo } from "./_sealer.ts";
export type { SignedCheckpoint, TreeEvent } from "./_tree.ts";
export { encodeLeaf } from "./leaf.ts";

/** A checkpoint the vault logged (every seal interval, per source that grew). */
export interface CheckpointEvent extends SignedCheckpoint {
  /** The source. */
  source: SourceKey;
}

/** An inclusion proof of one record (see {@linkcode Vault.inclusionProof}). */
export interface InclusionProof {
  /** The record's leaf bytes (`encodeLeaf` in `leaf.ts`). */
  leaf: Uint8Array;
  /** The leaf's index: its sequence number minus the tree's first. */
  index: number;
  /** The RFC 9162 audit path, deepest sibling first. */
  path: Uint8Array[];
}

/** Default segment size: a new segment starts once one would pass 64 MiB. */
export const DEFAULT_SEGMENT_BYTES: number = 64 * 1024 * 1024;
/** Default interval between seals of a sealed vault: 60 s. */
export const DEFAULT_SEAL_INTERVAL_MS = 60_000;
/** Default longest line accepted: 1 MiB. */
export const DEFAULT_MAX_LINE_BYTES: number = 1024 * 1024;
/**
 * Default bound on the sources one peer (one address) may create: 64. A
 * shipper uses one source per log stream, and a host with more than a few
 * dozen streams is rare; every source costs a directory, a file and memory
 * for as long as the vault exists, so without a bound one host could make
 * the server keep any number of them.
 */
export const DEFAULT_MAX_SOURCES_PER_PEER = 64;
/**
 * Default bound on segment files the vault keeps open: 128. Each source
 * writes one file; the least recently used idle ones are closed (and
 * reopened when needed), so a thousand sources cost 128 descriptors, well
 * inside the usual limit of 1024 together with the connections.
 */
export const DEFAULT_MAX_OPEN_SEGMENTS = DEFAULT_MAX_OPEN_FILES;
/** Default interval between prunes of a vault with a retention: one hour. */
export const DEFAULT_PRUNE_INTERVAL_MS = 3_600_000;

/** Options for {@linkcode Vault.prune}. */
export interface PruneOptions {
  /**
   * The cut-off, ms since the epoch. Whole segments go, oldest first, while
   * every record in them was first covered by a seal made before it (in an
   * unsealed vault: was received before it); never a source's last segment.
   */
  before: number;
}

/** What a prune removed. */
export interface PruneInfo {
  /** The cut-off. */
  before: number;
  /** When the prune was made (its seal's time in a sealed vault). */
  time: number;
  /** The seal that records the prune (sealed vaults, when it pruned something new). */
  epoch?: number;
  /** Sources records were removed from. */
  sources: PrunedSource[];
  /** Records removed, over all sources. */
  records: number;
  /** Bytes removed, over all sources. */
  bytes: number;
  /** Sources left alone: the chain at their cut does not hold (verify them). */
  skipped: { source: SourceKey; reason: string }[];
}

/** A prune made for `retainMs`, or one that failed. */
export type PruneEvent =
  | ({ type: "pruned" } & PruneInfo)
  | { type: "prune_failed"; message: string };

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
  /**
   * Most sources one peer (one address, whatever identity it presents) may
   * have; asking for a new one beyond it throws `ERR_TOO_MANY_SOURCES`.
   * Sources already on disk count, and stay usable.
   * @default {64}
   */
  maxSourcesPerPeer?: number;
  /**
   * Most records one append may carry (`ERR_TOO_MANY_RECORDS` beyond it):
   * each costs a chain hash, so this bounds the work one ship batch makes.
   * @default {4096}
   */
  maxRecordsPerAppend?: number;
  /**
   * Most segment files kept open at once over all sources; the least
   * recently used idle ones are closed and reopened on demand.
   * @default {128}
   */
  maxOpenSegments?: number;
  /**
   * The clock, in ms since the epoch: seal times, the default receive time,
   * and the cut-off of `retainMs`.
   * @default {Date.now}
   */
  now?: () => number;
  /**
   * Keep records this many milliseconds: at open and every
   * `pruneIntervalMs` the vault prunes with the cut-off `now() - retainMs`
   * (see {@linkcode Vault.prune}). Undefined: it never prunes on its own.
   */
  retainMs?: number;
  /** Milliseconds between prunes with `retainMs`. @default {3600000} */
  pruneIntervalMs?: number;
  /** Told about every prune for `retainMs` that removed or skipped something, and every one that failed. */
  onPrune?: (event: PruneEvent) => void;
  /**
   * Told about the Merkle trees: a checkpoint key made, trees built for
   * sources from before trees, a tree rebuilt, restarted, cut back behind
   * its last checkpoint, or failing.
   */
  onTree?: (event: TreeEvent) => void;
  /**
   * Told about every checkpoint logged (every `sealIntervalMs`, for each
   * source whose tree grew, and at close): what a witness should see.
   */
  onCheckpoint?: (event: CheckpointEvent) => void;
}

/** Counters for tests and monitoring. */
export interface VaultStats {
  /** Append calls that queued at least one new record. */
  readonly appends: number;
  /** Group-commit rounds. */
  readonly commits: number;
  /** File fsyncs (one per dirty segment per round, plus one per rotation). */
  readonly syncs: number;
  /** Idle segment files closed to stay within `maxOpenSegments`. */
  readonly evictions: number;
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
   * The verifier key of the vault's checkpoint key
   * (`<name>+<id>+<base64>`): what shippers and witnesses pin.
   */
  readonly checkpointVerifier: string;
  /**
   * The latest signed checkpoint of a source's Merkle tree, covering only
   * durable (fsync'd, acknowledged) records: every record whose append has
   * resolved, at least. Signed anew only when the tree grew since the last
   * call (Ed25519 is deterministic: the same size gives the same note).
   * Waits while the tree catches up with records after an open, so it
   * never signs less than it signed before. A source the vault does not
   * hold gets a checkpoint of the empty tree.
   *
   * @param key The source.
   * @returns The note (C2SP signed checkpoint), its tree size and root.
   * @throws {MoatError} `ERR_CORRUPT` (as a rejection) if the tree cannot be
   * built from the records; `ERR_CLOSED` after close.
   */
  checkpoint(key: SourceKey): Promise<SignedCheckpoint>;
  /**
   * The RFC 9162 consistency proof between two sizes of a source's tree.
   *
   * @param key The source.
   * @param from The older size.
   * @param to The newer size, at most the tree's current size.
   * @returns The proof (empty when `from` is 0 or equals `to`).
   * @throws {RangeError} For sizes out of range.
   * @throws {MoatError} `ERR_NO_SOURCE` for a source the vault does not hold.
   */
  consistencyProof(key: SourceKey, from: number, to: number): Uint8Array[];
  /**
   * The inclusion proof of record `seq` in the source's tree of `size`
   * leaves (leaf index `seq - first`, first = 1 unless the tree started
   * after a prune), with the record's leaf read from its segment.
   *
   * @param key The source.
   * @param seq The record's sequence number.
   * @param size The tree size (a checkpoint's), at most the current size.
   * @returns Leaf bytes, leaf index and audit path.
   * @throws {RangeError} For a record not in that tree, pruned, or absent.
   * @throws {MoatError} `ERR_NO_SOURCE` for a source the vault does not
   * hold; `ERR_CORRUPT` if the record on disk does not match the tree.
   */
  inclusionProof(key: SourceKey, seq: number, size: number): InclusionProof;
  /**
   * Keeps a cosigned checkpoint of a source in its checkpoint log, after
   * checking that the vault signed it and that it agrees with the tree
   * (cosignatures are not checked: the caller did).
   *
   * @param key The source.
   * @param note The checkpoint with its cosignature lines.
   * @returns When durable.
   * @throws {MoatError} `ERR_CHECKPOINT` if it is not a checkpoint of this
   * source's tree; `ERR_NO_SOURCE` for an unknown source.
   */
  storeCosigned(key: SourceKey, note: string): Promise<void>;
  /**
   * Returns the handle of a source, creating it in memory if it is new (its
   * directory is made at its first commit). Build the key with
   * {@linkcode sourceKey}.
   *
   * @param key The peer's address and identity as the server saw them, and
   * the shipper's name.
   * @returns The handle; the same object for the same key.
   * @throws {SourceNameError} `ERR_SOURCE_NAME` for a new source whose name
   * holds `/` or a control character (may go to the peer).
   * @throws {TooManySourcesError} `ERR_TOO_MANY_SOURCES` for a new source
   * beyond `maxSourcesPerPeer` (may go to the peer).
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
   * @throws {TooManyRecordsError} (as a rejection) `ERR_TOO_MANY_RECORDS` for
   * more than `maxRecordsPerAppend` records (may go to the peer).
   * @throws {SourceNameError | TooManySourcesError} (as a rejection) as
   * {@linkcode Vault.source}.
   * @throws {RangeError} (as a rejection) for a bad `seq`, `ts`, `recvTs`, or
   * a line longer than `maxLineBytes`.
   */
  append(
    key: SourceKey,
    records: readonly AppendRecord[] | AppendBatch,
    options?: AppendOptions,
  ): Promise<number>;
  /**
   * Brings a source up to date with the vault's shared store before a
   * shipper is told its last sequence number: a JetStream vault reads what
   * other front doors wrote (`lib/vault/nats/vault.ts`). Absent for a
   * directory vault, which nobody else writes.
   *
   * @param key The source.
   * @returns When the source's `lastSeq` is current.
   */
  catchUp?(key: SourceKey): Promise<void>;
  /**
   * Every source known: found on disk at open or appended to since.
   *
   * @returns The handles.
   */
  sources(): VaultSource[];
  /**
   * Removes old records: per source, whole segments from the oldest on,
   * while every record in them was first covered by a seal made before
   * `before` (in an unsealed vault: was received before it). Never a
   * source's last segment, nor a record no seal covers. In a sealed vault
   * the prune is first recorded in a seal (the source, the last record
   * removed, its chain link and the cut-off, under the seal's HMAC), so that
   * `verify` checks the kept records from the cut and tells a prune from a
   * deletion; then each source's `pruned.json` is written and the segment
   * files deleted. Prunes run one at a time.
   *
   * @param options The cut-off.
   * @returns What was removed.
   * @throws {RangeError} For a bad cut-off.
   * @throws {MoatError} `ERR_CLOSED` after close; the system error if the
   * seal or a deletion fails (what is sealed is removed by a later prune).
   */
  prune(options: PruneOptions): Promise<PruneInfo>;
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
  const settings = _settings(options);
  const root = resolve(dir);
  await makeDir(root);
  const lock = await acquireLock(join(root, LOCK_FILE), `Vault "${root}"`);
  try {
    return await _openLocked(root, lock, settings);
  } catch (error) {
    await lock.release();
    throw error;
  }
}

/** Options with defaults applied and checked. */
interface _Settings {
  segmentBytes: number;
  maxLineBytes: number;
  sealIntervalMs: number;
  maxSourcesPerPeer: number;
  maxRecordsPerAppend: number;
  maxOpenSegments: number;
  pruneIntervalMs: number;
  retainMs: number | undefined;
  now: () => number;
  onEvent: ((event: VaultEvent) => void) | undefined;
  onSeal: ((event: SealEvent) => void) | undefined;
  onPrune: ((event: PruneEvent) => void) | undefined;
  onTree: ((event: TreeEvent) => void) | undefined;
  onCheckpoint: ((event: CheckpointEvent) => void) | undefined;
}

function _settings(options: OpenVaultOptions): _Settings {
  const settings = {
    segmentBytes: options.segmentBytes ?? DEFAULT_SEGMENT_BYTES,
    maxLineBytes: options.maxLineBytes ?? DEFAULT_MAX_LINE_BYTES,
    sealIntervalMs: options.sealIntervalMs ?? DEFAULT_SEAL_INTERVAL_MS,
    maxSourcesPerPeer: options.maxSourcesPerPeer ??
      DEFAULT_MAX_SOURCES_PER_PEER,
    maxRecordsPerAppend: options.maxRecordsPerAppend ??
      DEFAULT_MAX_BATCH_RECORDS,
    maxOpenSegments: options.maxOpenSegments ?? DEFAULT_MAX_OPEN_SEGMENTS,
    pruneIntervalMs: options.pruneIntervalMs ?? DEFAULT_PRUNE_INTERVAL_MS,
    retainMs: options.retainMs,
    now: options.now ?? Date.now,
    onEvent: options.onEvent,
    onSeal: options.onSeal,
    onPrune: options.onPrune,
    onTree: options.onTree,
    onCheckpoint: options.onCheckpoint,
  };
  const { sealIntervalMs, segmentBytes, maxLineBytes } = settings;
  if (
    !Number.isSafeInteger(sealIntervalMs) || sealIntervalMs < 0 ||
    sealIntervalMs > MAX_SEAL_INTERVAL_MS
  ) {
    throw new RangeError(
      `Invalid sealIntervalMs: ${sealIntervalMs} is not an integer from 0 to ${MAX_SEAL_INTERVAL_MS}`,
    );
  }
  if (!Number.isSafeInteger(segmentBytes) || segmentBytes < 4096) {
    throw new RangeError(
      `Invalid segmentBytes: ${segmentBytes} is below 4096 or not an integer`,
    );
  }
  if (
    !Number.isSafeInteger(maxLineBytes) || maxLineBytes < 1 ||
    maxLineBytes + VAULT_LINE_OFFSET + LINK_BYTES > MAX_RECORD_BYTES
  ) {
    throw new RangeError(
      `Invalid maxLineBytes: ${maxLineBytes} is out of range (1 to 16 MiB)`,
    );
  }
  const retain = settings.retainMs;
  if (retain !== undefined && (!Number.isSafeInteger(retain) || retain < 1)) {
    throw new RangeError(
      `Invalid retainMs: ${retain} is not a positive integer`,
    );
  }
  for (
    const name of [
      "maxSourcesPerPeer",
      "maxRecordsPerAppend",
      "maxOpenSegments",
      "pruneIntervalMs",
    ] as const
  ) {
    const value = settings[name];
    if (!Number.isSafeInteger(value) || value < 1) {
      throw new RangeError(
        `Invalid ${name}: ${value} is not a positive integer`,
      );
    }
  }
  return settings;
}

/**
 * Opens a vault whose lock the caller holds (released by `close`).
 * `seal: true` opens it as sealed whatever `vault.json` says (for
 * `moat vault init`, which marks it sealed only after its first seal).
 */
async function _openLocked(
  root: string,
  lock: Lock,
  settings: _Settings,
  force: { seal?: boolean } = {},
): Promise<_Vault> {
  await removeTempFiles(join(root, MARKER_FILE));
  await removeTempFiles(join(root, INFO_FILE));
  await removeTempFiles(join(root, KEY_FILE));
  await ensureVaultDir(root);
  const info = await ensureVaultInfo(root);
  const impl = new _Vault(root, lock, { ...settings, vaultId: info.id });
  const sealed = force.seal ?? info.sealed;
  const sourcesDir = join(root, SOURCES_DIR);
  try {
    if (sealed) await impl.openSeals();
    if (force.seal === undefined) await impl.openCheckpointKey(info);
    for (const entry of await readdir(sourcesDir)) {
      const path = join(sourcesDir, entry);
      if (entry.startsWith(".tmp-")) {
        // A source directory whose creation was interrupted: never durable.
        await rm(path, { recursive: true, force: true });
        continue;
      }
      const key = await readSourceKey(path, entry);
      await _removeSourceTemps(path);
      const log = await SegmentLog.open(path, {
        ...impl.logOptions,
        onRepair(repair) {
          settings.onEvent?.({ ...repair, source: key });
        },
        onSegmentClosed: (closed) => impl.segmentClosed(entry, closed),
      });
      await impl.load(impl.adopt(key, entry, log));
    }
    if (force.seal === undefined) await impl.openTrees();
  } catch (error) {
    await impl.abandon();
    throw error;
  }
  const interval = settings.sealIntervalMs;
  if (sealed && interval > 0) {
    // verify accepts unsealed records only up to about an interval after
    // the last seal: a seal right away covers whatever a crash left
    // unsealed, however long the server was down, before any new record
    // arrives; then verify must know the interval now in force.
    await impl.sealAndReport();
    if (info.sealIntervalMs !== interval && force.seal === undefined) {
      await writeVaultInfo(root, { ...info, sealIntervalMs: interval });
    }
    impl.startTimer(interval);
  }
  if (force.seal === undefined) {
    // After the seal at open: every complete segment is then covered by a
    // seal in the log, which dates the ones the index has no time for.
    impl.startBackfill();
    if (settings.retainMs !== undefined) impl.startRetention();
    if (interval > 0) impl.startCheckpoints(interval);
  }
  return impl;
}

/**
 * Opens a vault for `moat vault init` as a sealed one (its key file is
 * written, `vault.json` not yet marked sealed), without a timer, to write
 * its first seal. The caller holds the lock; `close` does not release it.
 *
 * @internal
 * @param root The vault directory.
 * @returns The vault.
 */
export function _openForFirstSeal(root: string): Promise<Vault> {
  const noLock: Lock = { release: () => Promise.resolve() };
  return _openLocked(root, noLock, _settings({ sealIntervalMs: 0 }), {
    seal: true,
  });
}

class _Vault implements Vault {
  readonly dir: string;
  readonly vaultId: Uint8Array;
  #group: CommitGroup;
  #lock: Lock;
  #settings: _Settings;
  #sources = new Map<string, SourceLog>();
  /** Sources per peer (address), for maxSourcesPerPeer. */
  #perPeer = new Map<string, number>();
  #appends = 0;
  /** Said when the tree worker fails: the trees hash here from then on. */
  #workerFailed = (message: string): void => {
    this.#settings.onTree?.({ type: "tree_worker_failed", message });
  };
  /** Sources that appended in this second, and how many in the last. */
  #activeNow = new Set<SourceLog>();
  #activeBefore = 0;
  #activeSince = 0;
  #closed = false;
  #sealer: Sealer | undefined;
  #now: () => number;
  /** Index writes, one at a time over all sources. */
  #indexQueue: Promise<void> = Promise.resolve();
  #indexDirty = new Set<SourceLog>();
  /** Completing the index of segments found at open; never rejects. */
  #backfilled: Promise<void> = Promise.resolve();
  /** The prune running or last run; never rejects. */
  #pruning: Promise<unknown> = Promise.resolve();
  #pruneTimer: ReturnType<typeof setTimeout> | undefined;
  /** What every source's tree shares; undefined until the key is loaded. */
  #trees: TreeContext | undefined;
  #checkpointTimer: ReturnType<typeof setTimeout> | undefined;
  /** The checkpoint round running; never rejects. */
  #checkpointing: Promise<void> = Promise.resolve();

  constructor(
    dir: string,
    lock: Lock,
    settings: _Settings & { vaultId: Uint8Array },
  ) {
    this.dir = dir;
    this.#group = new CommitGroup({ maxOpenFiles: settings.maxOpenSegments });
    this.#lock = lock;
    this.#settings = settings;
    this.#now = settings.now;
    this.vaultId = settings.vaultId;
  }

  get id(): string {
    return this.vaultId.toHex();
  }

  get sealed(): boolean {
    return this.#sealer !== undefined;
  }

  /** Loads (or makes) the checkpoint key, recording its verifier. */
  async openCheckpointKey(info: VaultInfo): Promise<void> {
    const { signer, created } = await loadCheckpointKey(
      this.dir,
      this.vaultId,
      info.checkpointKey,
    );
    if (info.checkpointKey === undefined) {
      await writeVaultInfo(this.dir, {
        ...info,
        checkpointKey: signer.verifier,
      });
      info.checkpointKey = signer.verifier;
    }
    this.#trees = {
      vaultId: this.vaultId,
      signer,
      verifier: parseVerifier(signer.verifier),
      now: this.#now,
      onEvent: this.#settings.onTree,
      hasher: TreeHasher.acquire(this.#workerFailed),
    };
    if (created) {
      this.#settings.onTree?.({
        type: "checkpoint_key_created",
        verifier: signer.verifier,
      });
    }
  }

  /** Opens the tree of every source found at open (building missing ones). */
  async openTrees(): Promise<void> {
    const ctx = this.#trees!;
    for (const source of this.#sources.values()) {
      source.tree = await SourceTree.open(_treeHost(source, this.dir), ctx);
    }
  }

  get checkpointVerifier(): string {
    return this.#trees?.signer.verifier ?? "";
  }

  #tree(key: SourceKey): SourceTree {
    this.#checkOpen();
    const tree = this.#sources.get(sourceDirName(key))?.tree;
    if (tree === undefined) {
      throw new MoatError(
        "ERR_NO_SOURCE",
        `The vault holds no source "${sourceLabel(key)}"`,
      );
    }
    return tree;
  }

  checkpoint(key: SourceKey): Promise<SignedCheckpoint> {
    try {
      this.#checkOpen();
      const tree = this.#sources.get(sourceDirName(key))?.tree;
      if (tree !== undefined) return tree.checkpoint();
      const ctx = this.#trees;
      if (ctx === undefined) throw new MoatError("ERR_CLOSED", "no trees");
      const root = emptyRoot();
      const note = signCheckpoint(
        {
          origin: checkpointOrigin(this.vaultId, sourceHash(key)),
          size: 0,
          root,
        },
        ctx.signer,
      );
      return Promise.resolve({ note, size: 0, root });
    } catch (error) {
      return Promise.reject(error);
    }
  }

  consistencyProof(key: SourceKey, from: number, to: number): Uint8Array[] {
    return this.#tree(key).consistencyProof(from, to);
  }

  inclusionProof(key: SourceKey, seq: number, size: number): InclusionProof {
    return this.#tree(key).inclusionProof(seq, size);
  }

  storeCosigned(key: SourceKey, note: string): Promise<void> {
    try {
      return this.#tree(key).storeCosigned(note);
    } catch (error) {
      return Promise.reject(error);
    }
  }

  /** Logs a checkpoint every `intervalMs` for each source that grew. */
  startCheckpoints(intervalMs: number): void {
    const tick = () => {
      this.#checkpointTimer = setTimeout(() => {
        this.#checkpointing = this.#logCheckpoints().finally(() => {
          if (!this.#closed) tick();
        });
      }, intervalMs);
    };
    tick();
  }

  /** Logs the latest checkpoint of every source whose tree grew; never rejects. */
  async #logCheckpoints(): Promise<void> {
    const sources = [...this.#sources.values()];
    // A few at a time: their fsyncs share the file system's journal commits.
    const next = async (): Promise<void> => {
      for (let source = sources.pop(); source; source = sources.pop()) {
        try {
          const cp = await source.tree?.logCheckpoint();
          if (cp) this.#settings.onCheckpoint?.({ source: source.key, ...cp });
        } catch (error) {
          this.#settings.onTree?.({
            type: "tree_failed",
            source: source.key,
            message: error instanceof Error ? error.message : String(error),
          });
        }
      }
    };
    await Promise.all(Array.from({ length: 16 }, next));
  }

  /** Opens the seal log and the key, and lines the key up with the log. */
  async openSeals(): Promise<void> {
    this.#sealer = await Sealer.open(this.dir, {
      vaultId: this.vaultId,
      heads: () => this.#heads(),
      onSeal: this.#settings.onSeal,
      onSealed: (seal) => this.#stamp(seal),
      now: this.#now,
    });
  }

  /** Dates the segments a durable seal covers now. */
  #stamp(seal: WrittenSeal): void {
    const counts = new Map<string, number>();
    for (const entry of seal.entries) {
      counts.set(entry.source.toHex(), entry.lastSeq);
    }
    for (const source of this.#sources.values()) {
      const count = counts.get(source.hash);
      if (count !== undefined) source.stamp(count, seal.time);
    }
  }

  /** Queues a write of a source's segment index (a cache: failures are ignored). */
  #indexChanged(source: SourceLog): void {
    if (this.#indexDirty.has(source)) return;
    this.#indexDirty.add(source);
    this.#indexQueue = this.#indexQueue.then(async () => {
      this.#indexDirty.delete(source);
      await source.writeIndex().catch(() => {});
    });
  }

  /** Tells a source its log closed a segment. */
  segmentClosed(id: string, closed: ClosedSegment): void {
    this.#sources.get(id)?.segmentClosed(closed);
  }

  /** Loads a source's index and prune marker (sources found at open). */
  load(source: SourceLog): Promise<void> {
    return source.load(() => this.#indexChanged(source));
  }

  /**
   * Completes the index of the complete segments found at open: their
   * times and last link (read from each segment whose entry lacks them),
   * and their seal times (from the seal log).
   */
  startBackfill(): void {
    this.#backfilled = this.#backfill().catch(() => {});
  }

  async #backfill(): Promise<void> {
    const wants = new Map<string, number[]>();
    const undated = new Map<SourceLog, Map<number, number>>();
    for (const source of [...this.#sources.values()]) {
      if (this.#closed) return;
      await source.finishPrune().catch(() => {});
      const found = await source.backfill(() => this.#closed);
      if (found.size > 0 && this.#sealer !== undefined) {
        wants.set(source.hash, [...found.values()]);
        undated.set(source, found);
      }
    }
    if (wants.size === 0 || this.#closed) return;
    const covers = await findFirstCovers(this.dir, wants, {
      stopped: () => this.#closed,
    });
    for (const source of undated.keys()) {
      source.date(covers.get(source.hash) ?? new Map());
    }
  }

  /** Prunes for `retainMs` now and then every `pruneIntervalMs`. */
  startRetention(): void {
    const retainMs = this.#settings.retainMs!;
    const onPrune = this.#settings.onPrune;
    const tick = async () => {
      try {
        const info = await this.prune({ before: this.#now() - retainMs });
        if (info.sources.length > 0 || info.skipped.length > 0) {
          onPrune?.({ type: "pruned", ...info });
        }
      } catch (error) {
        if (this.#closed) return;
        onPrune?.({
          type: "prune_failed",
          message: error instanceof Error ? error.message : String(error),
        });
      }
      if (!this.#closed) {
        this.#pruneTimer = setTimeout(tick, this.#settings.pruneIntervalMs);
      }
    };
    void tick();
  }

  prune(options: PruneOptions): Promise<PruneInfo> {
    try {
      this.#checkOpen();
      _checkTime("before", options?.before);
    } catch (error) {
      return Promise.reject(error);
    }
    const run = this.#pruning.then(() => this.#prune(options.before));
    this.#pruning = run.catch(() => {});
    return run;
  }

  async #prune(cutoff: number): Promise<PruneInfo> {
    await this.#backfilled;
    // Records a tree has not taken in yet must stay until it has.
    for (const source of [...this.#sources.values()]) {
      await source.tree?.caughtUp().catch(() => {});
    }
    this.#checkOpen();
    // A cut-off cannot be later than the prune itself.
    let before = Math.min(cutoff, this.#now());
    const sealer = this.#sealer;
    const plans: [SourceLog, PrunePlan][] = [];
    const skipped: PruneInfo["skipped"] = [];
    for (const source of [...this.#sources.values()]) {
      const plan = await source.planPrune(before, sealer !== undefined);
      if (typeof plan === "string") {
        skipped.push({ source: source.key, reason: plan });
      } else if (plan !== undefined) {
        plans.push([source, plan]);
      }
    }
    const fresh = plans.filter(([, plan]) => plan.fresh);
    let time = this.#now();
    let epoch: number | undefined;
    if (sealer !== undefined && fresh.length > 0) {
      // Recorded under a seal before anything goes: a prune verify cannot
      // find is a deletion.
      const sealed = await sealer.seal(
        fresh.map(([source, plan]) => ({
          source: sourceHash(source.key),
          seq: plan.through,
          link: plan.link,
          before,
        })),
      );
      this.#settings.onSeal?.({ type: "sealed", ...sealed });
      time = sealed.time;
      epoch = sealed.epoch;
    }
    before = Math.min(before, time);
    const sources: PrunedSource[] = [];
    for (const [source, plan] of plans) {
      const done = await source.applyPrune(plan, {
        before,
        time,
        ...(epoch !== undefined && { epoch }),
      });
      if (done.segments > 0) sources.push(done);
    }
    let records = 0;
    let bytes = 0;
    for (const done of sources) {
      records += done.records;
      bytes += done.bytes;
    }
    return {
      before,
      time,
      ...(epoch !== undefined && { epoch }),
      sources,
      records,
      bytes,
      skipped,
    };
  }

  /** Every source's durable record count and chain head, for a seal. */
  #heads(): SealEntry[] {
    const entries: SealEntry[] = [];
    for (const source of this.#sources.values()) {
      const durable = source.durableHead();
      if (durable.seq === 0) continue;
      entries.push({
        source: sourceHash(source.key),
        lastSeq: durable.seq,
        head: durable.link,
      });
    }
    return entries;
  }

  /** Starts sealing every `intervalMs`. */
  startTimer(intervalMs: number): void {
    this.#sealer?.startTimer(intervalMs);
  }

  /** Seals now and reports it through `onSeal`; never rejects. */
  async sealAndReport(): Promise<void> {
    await this.#sealer?.sealAndReport();
  }

  seal(): Promise<SealInfo> {
    if (this.#sealer === undefined) {
      return Promise.reject(
        new MoatError(
          "ERR_NOT_SEALED",
          `Vault "${this.dir}" has no sealing key (set it up with moat vault init)`,
        ),
      );
    }
    return this.#sealer.seal();
  }

  get stats(): VaultStats {
    return { appends: this.#appends, ...this.#group.stats };
  }

  /** Format and commit settings shared by every source log. */
  get logOptions(): SegmentLogOptions {
    return {
      magic: VAULT_MAGIC,
      kind: VAULT_KIND,
      segmentBytes: this.#settings.segmentBytes,
      group: this.#group,
      summarizer: { timeOf: recvTsOf, tailOf: linkOf },
    };
  }

  adopt(key: SourceKey, id: string, log: SegmentLog): SourceLog {
    const source = new SourceLog(key, {
      id,
      log,
      vaultId: this.vaultId,
      queue: (source, log, records, options) =>
        this.queue(source, log, records, options),
    });
    source.watchIndex(() => this.#indexChanged(source));
    this.#sources.set(id, source);
    this.#perPeer.set(key.peer, (this.#perPeer.get(key.peer) ?? 0) + 1);
    return source;
  }

  source(key: SourceKey): VaultSource {
    this.#checkOpen();
    // Also for a source already on disk: one an earlier version created
    // under a name with "/" stays readable, but takes no more records.
    checkNewSourceKey(key);
    const found = this.#sources.get(sourceDirName(key));
    if (found) return found;
    const count = this.#perPeer.get(key.peer) ?? 0;
    if (count >= this.#settings.maxSourcesPerPeer) {
      throw new TooManySourcesError(key.peer, count);
    }
    const id = sourceDirName(key);
    const sourcesDir = join(this.dir, SOURCES_DIR);
    const copy: SourceKey = key.identity === undefined
      ? { peer: key.peer, name: key.name }
      : { peer: key.peer, identity: key.identity, name: key.name };
    const log = SegmentLog.empty(join(sourcesDir, id), {
      ...this.logOptions,
      init: () => createSourceDir(sourcesDir, id, copy),
      onSegmentClosed: (closed) => this.segmentClosed(id, closed),
    });
    const source = this.adopt(copy, id, log);
    if (this.#trees) {
      source.tree = SourceTree.fresh(_treeHost(source, this.dir), this.#trees);
    }
    return source;
  }

  append(
    key: SourceKey,
    records: readonly AppendRecord[] | AppendBatch,
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
    source: SourceLog,
    log: SegmentLog,
    records: readonly AppendRecord[] | AppendBatch,
    options: AppendOptions,
  ): Promise<number> {
    this.#checkOpen();
    const batch = Array.isArray(records)
      ? recordBatch(records)
      : _isBatch(records)
      ? records
      : undefined;
    if (batch === undefined) {
      throw new TypeError("Invalid records: not an array");
    }
    const count = batch.length;
    if (count > this.#settings.maxRecordsPerAppend) {
      throw new TooManyRecordsError(
        count,
        this.#settings.maxRecordsPerAppend,
      );
    }
    const recvTs = options.recvTs ?? this.#now();
    _checkTime("recvTs", recvTs);
    const accepted = log.lastSeq;
    let start = 0;
    let highest = 0;
    while (start < count) {
      const seq = _checkSeq(batch.seq(start));
      if (seq > accepted) break;
      if (seq <= highest) throw _outOfOrder(source.key, seq, highest);
      highest = seq;
      start++;
    }
    if (start === count) {
      return highest === 0
        ? log.waitDurable(log.durableSeq)
        : log.waitDurable(highest);
    }
    const maxLineBytes = this.#settings.maxLineBytes;
    for (let i = start; i < count; i++) {
      const expected = accepted + 1 + i - start;
      const seq = _checkSeq(batch.seq(i));
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
      _checkTime("ts", batch.ts(i));
      const length = batch.lineLength(i);
      if (length > maxLineBytes) {
        throw new RangeError(
          `Invalid record ${seq}: line of ${length} bytes exceeds maxLineBytes ${maxLineBytes}`,
        );
      }
    }
    const chain = { link: source.acceptedHead() };
    const added = count - start;
    const tree = source.tree;
    // The Merkle leaves are hashed as each record is encoded, while its
    // bytes are in the CPU's cache; the tree takes them once durable.
    let leaves: Uint8Array | undefined;
    let each: ((b: Uint8Array, at: number, end: number) => void) | undefined;
    // With a tree worker, the worker hashes the chunk (leaves and nodes)
    // while more than one source appends (#manySources); else, with the
    // batch SHA-256 (Bun), the leaves are noted as the records are encoded
    // and hashed in one native call after; without it (Deno), each leaf is
    // hashed as its record is encoded.
    const elsewhere = tree !== undefined && this.#manySources(source) &&
      tree.hashesElsewhere(accepted + 1);
    const hashHere = tree?.takesLeaves === true && !elsewhere;
    const batchLeaves = hashHere
      ? RecordLeaves.open(tree.host.sourceHash, added)
      : undefined;
    if (batchLeaves !== undefined) {
      each = (b, at, end) => batchLeaves.add(b, at, end);
    } else if (hashHere) {
      const hashes = leaves = new Uint8Array(added * LEAF_HASH_BYTES);
      const sourceHash = tree.host.sourceHash;
      let i = 0;
      each = (b, at, end) =>
        leafHashInto(
          b,
          at,
          end - at,
          sourceHash,
          hashes,
          LEAF_HASH_BYTES * i++,
        );
    }
    const bytes = encodeVaultRecords(batch, recvTs, {
      chain,
      from: start,
      each,
    });
    if (batchLeaves !== undefined) leaves = batchLeaves.hash(bytes);
    this.#appends++;
    const done = log.enqueue(bytes, {
      firstSeq: accepted + 1,
      lastSeq: accepted + added,
      note: { minTime: recvTs, maxTime: recvTs, tail: chain.link },
    });
    source.pushHead(accepted + added, chain.link);
    if (tree === undefined) return done;
    // Into the tree once durable, before the append resolves: a checkpoint
    // asked for after it covers these records. Noted now, so that a
    // checkpoint asked for between the commit and this callback takes
    // them from here too, not from disk.
    const firstSeq = accepted + 1;
    const hashed = tree.expect(
      firstSeq,
      accepted + added,
      bytes,
      leaves,
      elsewhere,
    );
    // With the worker, the append resolves once it answered too: what is
    // out at the worker stays within the append budget and the pipelines'
    // windows (it answers within the commit's fsync almost always; with the
    // append resolving at the fsync alone, 60 shippers of empty records
    // queued chunks at the worker without bound: 460 MiB, soak).
    const ready = hashed === undefined
      ? done
      : Promise.all([done, hashed]).then(([seq]) => seq);
    return ready.then((seq) => {
      tree.appendDurable(firstSeq, bytes);
      return seq;
    });
  }

  /**
   * Whether more than one source appended within about a second. One
   * source's shipper bounds the rate, not this thread, and hashing here
   * costs less CPU in all than the worker's copies and thread hops: on 2
   * cores, one shipper acknowledged 12% more lines/s with the tree hashed
   * here on Bun (batch SHA-256; 3 rounds, 1M lines), 10 shippers 4–8% and
   * one generator of 10 sources 16–24% fewer. On Deno (four FFI calls a
   * hash, about 0.5 µs a record) one shipper kept 0.80 of its rate without
   * trees with the worker and 0.92 hashing here (medians of 3 rounds).
   */
  #manySources(source: SourceLog): boolean {
    const now = performance.now();
    if (now - this.#activeSince >= 1000) {
      this.#activeBefore = this.#activeNow.size;
      this.#activeNow.clear();
      this.#activeSince = now;
    }
    this.#activeNow.add(source);
    return Math.max(this.#activeBefore, this.#activeNow.size) > 1;
  }

  sources(): VaultSource[] {
    return [...this.#sources.values()];
  }

  async close(): Promise<void> {
    if (this.#closed) return;
    this.#closed = true;
    clearTimeout(this.#pruneTimer);
    clearTimeout(this.#checkpointTimer);
    this.#sealer?.stop();
    await this.#backfilled;
    await this.#pruning;
    await this.#group.idle();
    await this.#checkpointing;
    // A last checkpoint of every tree that grew, so the next open trusts it
    // whole; the trees stop building first.
    for (const source of this.#sources.values()) {
      await source.tree?.stop();
    }
    await this.#logCheckpoints();
    for (const source of this.#sources.values()) await source.tree?.close();
    this.#trees?.hasher?.release(this.#workerFailed);
    // A last seal, so a cleanly stopped vault has no unsealed tail.
    await this.#sealer?.close();
    await this.#indexQueue;
    for (const source of this.#sources.values()) await source.close();
    await this.#lock.release();
  }

  /** Closes what an open that failed half-way had opened (not the lock). */
  async abandon(): Promise<void> {
    this.#closed = true;
    for (const source of this.#sources.values()) await source.tree?.close();
    this.#trees?.hasher?.release(this.#workerFailed);
    await this.#indexQueue;
    await this.#sealer?.discard();
    for (const source of this.#sources.values()) await source.close();
  }

  #checkOpen(): void {
    if (this.#closed) {
      throw new MoatError("ERR_CLOSED", `Vault "${this.dir}" is closed`);
    }
  }
}

/** What a source's tree needs of it. */
function _treeHost(source: SourceLog, root: string): TreeHost {
  return {
    key: source.key,
    dir: join(root, SOURCES_DIR, source.id),
    sourceHash: sourceHash(source.key),
    segments: () => source.segmentList(),
    durableSeq: () => source.lastSeq,
    firstSeq: () => source.firstSeq,
  };
}

/**
 * Removes what an interrupted atomic write of a source's index or prune
 * marker left (one directory listing for both).
 */
async function _removeSourceTemps(dir: string): Promise<void> {
  const prefixes = [`.${INDEX_FILE}.tmp-`, `.${PRUNED_FILE}.tmp-`];
  for (const name of await readdir(dir)) {
    if (prefixes.some((p) => name.startsWith(p))) {
      await rm(join(dir, name), { force: true });
    }
  }
}

/** Whether `records` is read by index (an {@linkcode AppendBatch}). */
function _isBatch(records: unknown): records is AppendBatch {
  return typeof records === "object" && records !== null &&
    typeof (records as AppendBatch).seq === "function" &&
    typeof (records as AppendBatch).copyLine === "function";
}

/** A record's sequence number, checked (also used by the JetStream vault). */
export function _checkSeq(seq: unknown): number {
  if (typeof seq !== "number" || !Number.isSafeInteger(seq) || seq < 1) {
    throw new RangeError(
      `Invalid record: sequence number ${
        String(seq)
      } is not a positive integer`,
    );
  }
  return seq;
}

/** A time in ms since the epoch, checked (also used by the JetStream vault). */
export function _checkTime(what: string, value: unknown): void {
  if (typeof value !== "number" || !Number.isSafeInteger(value) || value < 0) {
    throw new RangeError(
      `Invalid ${what}: ${
        String(value)
      } is not a non-negative integer of milliseconds`,
    );
  }
}

/** The error for a record out of order (also used by the JetStream vault). */
export function _outOfOrder(
  key: SourceKey,
  seq: number,
  after: number,
): MoatError {
  return new MoatError(
    "ERR_SEQUENCE",
    `Cannot append to source "${
      sourceLabel(key)
    }": record ${seq} is out of order after ${after}`,
  );
}
