/**
 * `NatsVault`: the vault of a front door whose records live in a JetStream
 * stream. The stream is the truth; a local directory vault is the door's
 * materialized copy, never ahead of the stream, on which trees, checkpoints,
 * receipts, proofs and seals work unchanged.
 *
 * An append is validated as the directory vault validates it, queued on its
 * source, published (one publish in flight per source; appends arriving
 * meanwhile are coalesced into the next message), and once JetStream's
 * publish ack says it is stored (on a quorum of replicas), applied to the
 * local copy through `apply.ts` — the code every reader uses — and only
 * then resolved, so the ship handler acks only what the stream holds.
 *
 * Single writer per source: every publish names the stream sequence of the
 * subject's last message it knows (`Nats-Expected-Last-Subject-Sequence`).
 * When another door wrote meanwhile, JetStream refuses it; the door reads
 * the messages it missed, applies them, drops queued records the stream now
 * holds, and publishes the rest after them (a gap is refused, as on a
 * directory vault). Two doors can therefore never interleave or fork a
 * source. Design and failure costs: `docs/VAULT.md` and `docs/DEPLOY.md`.
 *
 * @module
 */

import {
  MoatError,
  TooManyRecordsError,
  TooManySourcesError,
} from "../../errors.ts";
import { DEFAULT_MAX_BATCH_RECORDS } from "../../limits.ts";
import { FLAG_PARTIAL, recordBatch } from "../_format.ts";
import type { AppendBatch } from "../_format.ts";
import { checkNewSourceKey, sourceDirName, sourceLabel } from "../_key.ts";
import type { SourceKey } from "../_key.ts";
import { _checkSeq, _checkTime, _outOfOrder, openVault } from "../store.ts";
import type {
  AppendOptions,
  AppendRecord,
  CheckpointEvent,
  InclusionProof,
  OpenVaultOptions,
  PruneInfo,
  SealInfo,
  SignedCheckpoint,
  Vault,
  VaultSource,
  VaultStats,
} from "../store.ts";
import {
  DEFAULT_MAX_LINE_BYTES,
  DEFAULT_MAX_SOURCES_PER_PEER,
} from "../store.ts";
import {
  applyRecordMessage,
  loadRecordKeys,
  prepareLocalCopy,
  SourceApplier,
} from "./apply.ts";
import {
  decodeRecordMessage,
  DEFAULT_MAX_MESSAGE_BYTES,
  encodeRecordMessage,
  encodeRecordSection,
  FORMAT_VERSION,
  RECORD_FIXED_BYTES,
  recordMessageBytes,
  recordMsgId,
  sourceId,
} from "./codec.ts";
import type { RecordKey, RecordMessage } from "./codec.ts";
import { getU64 } from "../../segment/codec.ts";
import { connectNats } from "./connect.ts";
import { SealPublisher } from "./seals.ts";
import type { NatsConnection, NatsConnectOptions } from "./connect.ts";
import {
  _unavailable,
  lastMessage,
  nextMessage,
  openStream,
  streamMeta,
  WRONG_LAST_SEQUENCE,
} from "./stream.ts";
import type { OpenStream, StreamOptions } from "./stream.ts";

/** Options for {@linkcode openNatsVault}. */
export interface OpenNatsVaultOptions
  extends NatsConnectOptions, StreamOptions, OpenVaultOptions {
  /** The local directory vault (the door's materialized copy). */
  cache: string;
  /** Milliseconds a publish may wait for its ack. @default {10000} */
  publishTimeoutMs?: number;
  /** Most body bytes per record message. @default {1040384} */
  maxMessageBytes?: number;
  /** Told when a checkpoint or a seal could not be published (they are retried with the next one). */
  onPublishFailed?: (event: { what: string; message: string }) => void;
}

/** Counters of the stream side, for tests and the bench. */
export interface NatsVaultStats {
  /** Record messages JetStream acknowledged. */
  published: number;
  /** Publishes refused because another door wrote the source first. */
  conflicts: number;
  /** Publishes that failed (timeout, cluster down). */
  failures: number;
  /** Messages read from the stream into the local copy (catch-up). */
  caughtUp: number;
}

/** A front door's vault over JetStream. */
export interface NatsVault extends Vault {
  /** Stream-side counters. */
  readonly natsStats: NatsVaultStats;
  /** The stream's name. */
  readonly stream: string;
  /** Whether opening created the stream. */
  readonly created: boolean;
  /**
   * Reads what other doors wrote of a source into the local copy.
   *
   * @param key The source.
   * @returns When the source's `lastSeq` is the stream's.
   */
  catchUp(key: SourceKey): Promise<void>;
}

/**
 * Connects, opens (or creates) and checks the stream, agrees on the vault
 * id and checkpoint key through the meta message, prepares and opens the
 * local copy.
 *
 * A stream without meta takes the local copy's id and checkpoint key (the
 * first door's). A stream with meta needs a local copy of that id: an empty
 * directory (holding at most `checkpoint.key`, copied from the first door)
 * becomes one.
 *
 * @param options Cluster, stream, local copy, vault options.
 * @returns The vault.
 * @throws {MoatError} `ERR_CONNECT` when the cluster does not answer;
 * `ERR_USAGE` for a stream whose config does not protect records;
 * `ERR_CHECKPOINT` for a local copy of another vault or key.
 */
export async function openNatsVault(
  options: OpenNatsVaultOptions,
): Promise<NatsVault> {
  const nc = await connectNats(options);
  try {
    const stream = await openStream(nc, options);
    let meta = await streamMeta(stream);
    // Never pruned (the stream denies deletes; the copy follows it).
    const { retainMs: _retain, ...rest } = options;
    const localOptions: OpenVaultOptions = {
      ...rest,
      // Sources other doors created are taken whatever their peer; the
      // door bounds the ones its own peers create.
      maxSourcesPerPeer: Number.MAX_SAFE_INTEGER,
    };
    const hooks: {
      onCheckpoint?: (e: CheckpointEvent) => void;
      onSealed?: () => void;
    } = {};
    localOptions.onCheckpoint = (e) => {
      options.onCheckpoint?.(e);
      hooks.onCheckpoint?.(e);
    };
    localOptions.onSeal = (e) => {
      options.onSeal?.(e);
      if (e.type === "sealed") hooks.onSealed?.();
    };
    let local: Vault;
    if (meta === undefined) {
      local = await openVault(options.cache, localOptions);
      const mine = {
        format: FORMAT_VERSION,
        vaultId: local.id,
        checkpointKey: local.checkpointVerifier,
      };
      try {
        meta = await streamMeta(stream, mine);
      } catch (error) {
        await local.close();
        throw error;
      }
      if (
        meta?.vaultId !== mine.vaultId ||
        meta.checkpointKey !== mine.checkpointKey
      ) {
        await local.close();
        throw new MoatError(
          "ERR_CHECKPOINT",
          `Another front door set up stream "${stream.name}" first (vault ${meta?.vaultId}): start this one on an empty --vault-cache with its checkpoint.key`,
        );
      }
    } else {
      await prepareLocalCopy(options.cache, meta);
      local = await openVault(options.cache, localOptions);
    }
    let keys: { sign: RecordKey; check: RecordKey };
    try {
      keys = await loadRecordKeys(options.cache, meta);
    } catch (error) {
      await local.close();
      throw error;
    }
    const seals = new SealPublisher(
      stream,
      options.cache,
      {
        timeoutMs: options.publishTimeoutMs ?? 10_000,
        onFailed: (message) =>
          options.onPublishFailed?.({ what: "seals", message }),
      },
    );
    const vault = new _NatsVault(nc, stream, local, options, seals, keys);
    hooks.onCheckpoint = (e) => vault.publishCheckpoint(e);
    hooks.onSealed = () => seals.kick();
    // The seals made so far (the one at open, any a crash kept from the
    // stream).
    if (local.sealed) seals.kick();
    return vault;
  } catch (error) {
    await nc.close().catch(() => {});
    throw error;
  }
}

/** One queued append (or a part of one too big for a message). */
interface _Entry {
  first: number;
  last: number;
  section: Uint8Array;
  /** Numbered by this door (syslog): renumbered, not dropped, on a conflict. */
  fresh: boolean;
  resolve?: (seq: number) => void;
  reject?: (error: unknown) => void;
}

class _NatsVault implements NatsVault {
  readonly #nc: NatsConnection;
  readonly #stream: OpenStream;
  readonly #local: Vault;
  readonly #seals: SealPublisher;
  /** Signs this door's record messages. */
  readonly signer: RecordKey;
  /** Checks every record message read (catch-up): never adopt a forged one. */
  readonly check: RecordKey;
  readonly #sources = new Map<string, _NatsSource>();
  readonly #perPeer = new Map<string, number>();
  readonly #maxSourcesPerPeer: number;
  readonly #maxLineBytes: number;
  readonly #maxRecords: number;
  readonly #now: () => number;
  readonly #onPublishFailed: OpenNatsVaultOptions["onPublishFailed"];
  readonly publishTimeoutMs: number;
  /** Records are packed into messages of at most this many bytes… */
  readonly maxMessageBytes: number;
  /** …but a single record may take up to this many (the servers' max_payload). */
  readonly maxPayloadBytes: number;
  readonly natsStats: NatsVaultStats = {
    published: 0,
    conflicts: 0,
    failures: 0,
    caughtUp: 0,
  };
  #closed = false;

  constructor(
    nc: NatsConnection,
    stream: OpenStream,
    local: Vault,
    options: OpenNatsVaultOptions,
    seals: SealPublisher,
    keys: { sign: RecordKey; check: RecordKey },
  ) {
    this.#seals = seals;
    this.signer = keys.sign;
    this.check = keys.check;
    this.#nc = nc;
    this.#stream = stream;
    this.#local = local;
    this.#maxSourcesPerPeer = options.maxSourcesPerPeer ??
      DEFAULT_MAX_SOURCES_PER_PEER;
    this.#maxLineBytes = options.maxLineBytes ?? DEFAULT_MAX_LINE_BYTES;
    this.#maxRecords = options.maxRecordsPerAppend ??
      DEFAULT_MAX_BATCH_RECORDS;
    this.#now = options.now ?? Date.now;
    this.#onPublishFailed = options.onPublishFailed;
    this.publishTimeoutMs = options.publishTimeoutMs ?? 10_000;
    // Headers share max_payload: 8 KiB is left for them.
    this.maxPayloadBytes = (nc.info?.max_payload ?? 1024 * 1024) - 8 * 1024;
    this.maxMessageBytes = Math.min(
      options.maxMessageBytes ?? DEFAULT_MAX_MESSAGE_BYTES,
      this.maxPayloadBytes,
    );
    for (const source of local.sources()) this.#adopt(source.key);
  }

  get stream(): string {
    return this.#stream.name;
  }
  get created(): boolean {
    return this.#stream.created;
  }
  get local(): Vault {
    return this.#local;
  }
  get dir(): string {
    return this.#local.dir;
  }
  get id(): string {
    return this.#local.id;
  }
  get sealed(): boolean {
    return this.#local.sealed;
  }
  get stats(): VaultStats {
    return this.#local.stats;
  }
  get checkpointVerifier(): string {
    return this.#local.checkpointVerifier;
  }
  seal(): Promise<SealInfo> {
    return this.#local.seal();
  }
  checkpoint(key: SourceKey): Promise<SignedCheckpoint> {
    return this.#local.checkpoint(key);
  }
  consistencyProof(key: SourceKey, from: number, to: number): Uint8Array[] {
    return this.#local.consistencyProof(key, from, to);
  }
  inclusionProof(key: SourceKey, seq: number, size: number): InclusionProof {
    return this.#local.inclusionProof(key, seq, size);
  }
  storeCosigned(key: SourceKey, note: string): Promise<void> {
    return this.#local.storeCosigned(key, note).then(() =>
      this.#publishNote(key, note)
    );
  }
  prune(): Promise<PruneInfo> {
    return Promise.reject(
      new MoatError(
        "ERR_USAGE",
        `A JetStream vault is never pruned (stream "${this.#stream.name}" denies deletes)`,
      ),
    );
  }

  /** Publishes a checkpoint the local copy logged to `ckpt.<srcid>`. */
  publishCheckpoint(event: CheckpointEvent): void {
    const done = this.#publishNote(event.source, event.note);
    this.#notes.add(done);
    void done.finally(() => this.#notes.delete(done));
  }

  /** Checkpoints being published (awaited at close). */
  #notes = new Set<Promise<void>>();

  async #publishNote(key: SourceKey, note: string): Promise<void> {
    try {
      await this.#stream.js.publish(
        this.#stream.subjects.ckpt(sourceId(key)),
        new TextEncoder().encode(note),
        { timeout: this.publishTimeoutMs },
      );
    } catch (error) {
      this.#onPublishFailed?.({
        what: `checkpoint of ${sourceLabel(key)}`,
        message: (error as Error).message,
      });
    }
  }

  #adopt(key: SourceKey): _NatsSource {
    const id = sourceDirName(key);
    let source = this.#sources.get(id);
    if (source === undefined) {
      source = new _NatsSource(this, key, this.#local.source(key));
      this.#sources.set(id, source);
      this.#perPeer.set(key.peer, (this.#perPeer.get(key.peer) ?? 0) + 1);
    }
    return source;
  }

  source(key: SourceKey): VaultSource {
    this.#checkOpen();
    checkNewSourceKey(key);
    const found = this.#sources.get(sourceDirName(key));
    if (found) return found;
    const count = this.#perPeer.get(key.peer) ?? 0;
    if (count >= this.#maxSourcesPerPeer) {
      throw new TooManySourcesError(key.peer, count);
    }
    return this.#adopt(key);
  }

  sources(): VaultSource[] {
    return [...this.#sources.values()];
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

  /**
   * Brings a source's local copy up to the stream (another door may have
   * written it): before a shipper is told its last sequence number.
   */
  catchUp(key: SourceKey): Promise<void> {
    try {
      return (this.source(key) as _NatsSource).catchUp();
    } catch (error) {
      return Promise.reject(error);
    }
  }

  /** Validates an append and queues it (synchronous checks, as the directory vault's). */
  queue(
    source: _NatsSource,
    records: readonly AppendRecord[] | AppendBatch,
    options: AppendOptions = {},
    caughtUp = false,
  ): Promise<number> {
    this.#checkOpen();
    if (source.forked) throw source.forked;
    const batch = Array.isArray(records)
      ? recordBatch(records)
      : records as AppendBatch;
    if (typeof batch?.seq !== "function") {
      throw new TypeError("Invalid records: not an array");
    }
    const count = batch.length;
    if (count > this.#maxRecords) {
      throw new TooManyRecordsError(count, this.#maxRecords);
    }
    const recvTs = options.recvTs ?? this.#now();
    _checkTime("recvTs", recvTs);
    const accepted = source.acceptedSeq;
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
      return source.waitFor(highest === 0 ? source.acceptedSeq : highest);
    }
    for (let i = start; i < count; i++) {
      const expected = accepted + 1 + i - start;
      const seq = _checkSeq(batch.seq(i));
      if (seq !== expected) {
        if (i === start && seq > expected && !caughtUp) {
          // Another door may hold the records before it: read them, then
          // check again (a gap then is one).
          const recvTs = options.recvTs ?? this.#now();
          // The records outlive this call now: a batch read by index may
          // sit in a buffer its caller reuses once append returns (ship
          // frames, syslog reads), so the ones still wanted are copied.
          const held = _copyRecords(batch, start);
          return source.catchUp().then(() =>
            this.queue(source, held, { ...options, recvTs }, true)
          );
        }
        if (i === start && seq > expected) {
          throw new MoatError(
            "ERR_SEQ_GAP",
            `Cannot append to source "${
              sourceLabel(source.key)
            }": record ${seq} arrived but the vault holds up to ${accepted} (${
              seq - 1 === expected
                ? `record ${expected} is missing`
                : `records ${expected} to ${seq - 1} are missing`
            })`,
          );
        }
        throw _outOfOrder(source.key, seq, expected - 1);
      }
      _checkTime("ts", batch.ts(i));
      const length = batch.lineLength(i);
      if (length > this.#maxLineBytes) {
        throw new RangeError(
          `Invalid record ${seq}: line of ${length} bytes exceeds maxLineBytes ${this.#maxLineBytes}`,
        );
      }
    }
    // Split so that every message fits: a part of at most maxMessageBytes
    // of records (at least one record).
    const limit = this.maxMessageBytes - recordMessageBytes(source.key, 0);
    const entries: _Entry[] = [];
    let from = start;
    while (from < count) {
      let bytes = RECORD_FIXED_BYTES + batch.lineLength(from);
      let to = from + 1;
      while (
        to < count &&
        bytes + RECORD_FIXED_BYTES + batch.lineLength(to) <= limit
      ) {
        bytes += RECORD_FIXED_BYTES + batch.lineLength(to);
        to++;
      }
      if (bytes > this.maxPayloadBytes - recordMessageBytes(source.key, 0)) {
        throw new RangeError(
          `Invalid record ${batch.seq(from)}: a line of ${
            batch.lineLength(from)
          } bytes does not fit in a NATS message of ${this.maxPayloadBytes} bytes (raise the servers' max_payload)`,
        );
      }
      entries.push({
        first: batch.seq(from),
        last: batch.seq(to - 1),
        section: encodeRecordSection(batch, recvTs, from, to),
        fresh: options.fresh === true,
      });
      from = to;
    }
    return source.enqueue(entries);
  }

  /** Publishes one record message with the compare-and-set header. */
  async publish(
    source: _NatsSource,
    body: Uint8Array,
    first: number,
    last: number,
    expected: number,
  ): Promise<{ seq: number; duplicate: boolean }> {
    const ack = await this.#stream.js.publish(source.subject, body, {
      msgID: recordMsgId(source.srcid, first, last),
      expect: { lastSubjectSequence: expected },
      timeout: this.publishTimeoutMs,
    });
    this.natsStats.published++;
    return { seq: ack.seq, duplicate: ack.duplicate };
  }

  get streamHandle(): OpenStream {
    return this.#stream;
  }

  async close(): Promise<void> {
    if (this.#closed) return;
    this.#closed = true;
    for (const source of this.#sources.values()) await source.idle();
    // The local copy's last checkpoints are published before the
    // connection closes.
    await this.#local.close();
    await Promise.all(this.#notes);
    await this.#seals.idle();
    await this.#nc.close().catch(() => {});
  }

  #checkOpen(): void {
    if (this.#closed) {
      throw new MoatError(
        "ERR_CLOSED",
        `Vault stream "${this.#stream.name}" is closed`,
      );
    }
  }
}

/** One source: its queue, its publisher, its place in the stream. */
class _NatsSource implements VaultSource {
  readonly key: SourceKey;
  readonly id: string;
  readonly srcid: string;
  readonly subject: string;
  readonly #vault: _NatsVault;
  readonly #local: VaultSource;
  /** The stream sequence of the subject's last message the local copy holds; undefined: not known (read it first). */
  #streamSeq: number | undefined;
  /** Highest sequence number queued, published or held. */
  #queued: number;
  /**
   * Set once the stream held other records than a shipper sent at the same
   * numbers (a fork): every later append and catch-up of the source on
   * this door is refused with it, so a resend is never taken for a
   * duplicate of the other records. Until the door restarts.
   */
  forked: MoatError | undefined;
  #pending: _Entry[] = [];
  /** Acknowledged messages going into the local copy (never rejects). */
  #applying: Promise<void> = Promise.resolve();
  #applies = 0;
  #running: Promise<void> | undefined;
  /** Waiters for records at or below a sequence number that are queued. */
  #waiters: {
    seq: number;
    resolve: (n: number) => void;
    reject: (e: unknown) => void;
  }[] = [];

  constructor(vault: _NatsVault, key: SourceKey, local: VaultSource) {
    this.#vault = vault;
    this.key = key;
    this.id = local.id;
    this.srcid = sourceId(key);
    this.subject = vault.streamHandle.subjects.rec(this.srcid);
    this.#local = local;
    this.#queued = local.acceptedSeq;
  }

  get lastSeq(): number {
    return this.#local.lastSeq;
  }
  get acceptedSeq(): number {
    return this.#queued;
  }

  append(
    records: readonly AppendRecord[] | AppendBatch,
    options?: AppendOptions,
  ): Promise<number> {
    try {
      return this.#vault.queue(this, records, options);
    } catch (error) {
      return Promise.reject(error);
    }
  }

  /** Resolves once record `seq` is held (in the stream and the local copy). */
  waitFor(seq: number): Promise<number> {
    if (seq <= this.#local.lastSeq) return Promise.resolve(seq);
    return new Promise((resolve, reject) => {
      this.#waiters.push({ seq, resolve, reject });
    });
  }

  enqueue(entries: _Entry[]): Promise<number> {
    const last = entries.at(-1)!;
    const done = new Promise<number>((resolve, reject) => {
      last.resolve = resolve;
      last.reject = reject;
    });
    this.#pending.push(...entries);
    this.#queued = last.last;
    this.#kick();
    return done;
  }

  catchUp(): Promise<void> {
    if (this.forked) return Promise.reject(this.forked);
    // Through the publisher: never while a publish is in flight.
    const run = this.#serial(() => this.#sync());
    return run;
  }

  async idle(): Promise<void> {
    await this.#running?.catch(() => {});
    await this.#applying;
  }

  #serial(task: () => Promise<void>): Promise<void> {
    const previous = this.#running ?? Promise.resolve();
    const run = previous.catch(() => {}).then(task);
    this.#running = run.catch(() => {});
    return run;
  }

  #kicked = false;
  #kick(): void {
    if (this.#kicked) return;
    this.#kicked = true;
    void this.#serial(async () => {
      this.#kicked = false;
      await this.#pump();
    }).catch(() => {});
  }

  /** Publishes what is queued, one message at a time. */
  async #pump(): Promise<void> {
    while (this.#pending.length > 0) {
      let taken: _Entry[] = [];
      try {
        if (this.#streamSeq === undefined) await this.#sync();
        if (this.#pending.length === 0) break;
        taken = this.#take();
        const first = taken[0]!.first;
        const last = taken.at(-1)!.last;
        const body = encodeRecordMessage(
          this.key,
          first,
          last - first + 1,
          taken.map((e) => e.section),
          this.#vault.signer,
        );
        let ack;
        try {
          ack = await this.#vault.publish(
            this,
            body,
            first,
            last,
            this.#streamSeq!,
          );
        } catch (error) {
          if ((error as { code?: number }).code === WRONG_LAST_SEQUENCE) {
            // Another door wrote this source: read what it wrote, then
            // publish what is left after it.
            this.#vault.natsStats.conflicts++;
            this.#pending.unshift(...taken);
            taken = [];
            await this.#sync();
            continue;
          }
          throw _unavailable(
            `Cannot store records ${first} to ${last} of source "${
              sourceLabel(this.key)
            }" in the stream`,
            error,
          );
        }
        if (ack.duplicate) {
          // The same range is in the stream already (a retry, or another
          // door's copy): what the local copy takes is what the stream
          // holds, read back.
          this.#pending.unshift(...taken);
          taken = [];
          await this.#sync();
          continue;
        }
        this.#streamSeq = ack.seq;
        // Into the local copy while the next message is published (its
        // fsync overlaps the next publish's round trip); acknowledged only
        // once there. Local appends of one source run in order.
        // Signed here just now: not checked again.
        const msg = decodeRecordMessage(body, this.srcid, null);
        const entries = taken;
        taken = [];
        this.#applies++;
        this.#applying = this.#applying.then(async () => {
          try {
            await applyRecordMessage(this.#vault.local, msg);
            for (const e of entries) e.resolve?.(e.last);
            this.#wake();
          } catch (error) {
            // The stream holds them, the local copy does not: read them
            // back before the next publish.
            this.#streamSeq = undefined;
            for (const e of entries) e.reject?.(error);
            for (const w of this.#waiters.splice(0)) w.reject(error);
          } finally {
            this.#applies--;
          }
        });
        // At most two messages ahead of the local copy.
        if (this.#applies > 1) await this.#applying;
      } catch (error) {
        this.#vault.natsStats.failures++;
        await this.#applying;
        // Nothing after the local copy is known to be stored: every queued
        // append fails (the shipper keeps them and sends them again), and
        // the next publish first reads where the stream is.
        this.#streamSeq = undefined;
        const failed = [...taken, ...this.#pending];
        this.#pending = [];
        this.#queued = this.#local.acceptedSeq;
        for (const e of failed) e.reject?.(error);
        for (const w of this.#waiters.splice(0)) w.reject(error);
      }
    }
  }

  /** Takes queued entries for one message (at most maxMessageBytes). */
  #take(): _Entry[] {
    const limit = this.#vault.maxMessageBytes -
      recordMessageBytes(this.key, 0);
    const taken = [this.#pending.shift()!];
    let bytes = taken[0]!.section.length;
    while (
      this.#pending.length > 0 &&
      bytes + this.#pending[0]!.section.length <= limit
    ) {
      const e = this.#pending.shift()!;
      bytes += e.section.length;
      taken.push(e);
    }
    return taken;
  }

  /**
   * Reads the subject's messages after the local copy into it; then drops
   * queued records the stream now holds, and fails the queue on a gap.
   */
  async #sync(): Promise<void> {
    await this.#applying;
    const stream = this.#vault.streamHandle;
    const local = this.#vault.local;
    let start: number;
    if (this.#streamSeq !== undefined) {
      start = this.#streamSeq + 1;
    } else {
      start = await this.#locate();
    }
    // Every message is checked against the vault's key: a forged one
    // (published by someone holding the cluster's credentials, not the
    // key) stops the catch-up with ERR_CORRUPT — never adopted, never
    // appended after, nothing queued acknowledged as its duplicate.
    const applier = new SourceApplier(local, this.srcid, this.#vault.check, {
      streamSeq: start - 1,
    });
    // The messages read that hold records queued here (records this door
    // numbered itself are renumbered instead): compared below.
    const head = this.#pending[0];
    const from = head !== undefined && !head.fresh ? head.first : Infinity;
    const to = this.#pending.at(-1)?.last ?? 0;
    const overlap: RecordMessage[] = [];
    for (;;) {
      const m = await nextMessage(stream, this.subject, applier.streamSeq + 1);
      if (m === undefined) break;
      const msg = await applier.apply(m.seq, m.data);
      if (msg.lastSeq >= from && msg.firstSeq <= to) overlap.push(msg);
      this.#vault.natsStats.caughtUp++;
    }
    this.#streamSeq = applier.streamSeq;
    const held = this.#local.lastSeq;
    if (overlap.length > 0) this.#checkSame(overlap, held);
    if (this.#pending[0]?.fresh && this.#pending[0].first <= held) {
      // Lines this door numbered whose numbers another door took: they go
      // after that door's records (the append resolves with the new last).
      let next = held + 1;
      for (const e of this.#pending) {
        const count = e.last - e.first + 1;
        e.first = next;
        e.last = next + count - 1;
        next += count;
      }
    }
    // Queued records the stream holds now are done.
    while (this.#pending.length > 0 && this.#pending[0]!.last <= held) {
      const e = this.#pending.shift()!;
      e.resolve?.(e.last);
    }
    const first = this.#pending[0];
    if (first !== undefined && first.first <= held) {
      this.#pending[0] = _dropFront(first, held);
    }
    if (first !== undefined && this.#pending[0]!.first > held + 1) {
      const gap = new MoatError(
        "ERR_SEQ_GAP",
        `Cannot append to source "${sourceLabel(this.key)}": record ${
          this.#pending[0]!.first
        } is queued but the stream holds up to ${held}`,
      );
      for (const e of this.#pending.splice(0)) e.reject?.(gap);
    }
    this.#queued = Math.max(held, this.#pending.at(-1)?.last ?? 0);
    this.#wake();
  }

  /**
   * Checks that the records the stream now holds at the numbers of queued
   * ones are those records (time, flags, line; the receive time is each
   * door's own): a shipper's records are acknowledged as duplicates only of
   * themselves. A difference is a fork — two writers of one source — and
   * fails the queue (ERR_CORRUPT): nothing is acknowledged, the shipper
   * keeps its records.
   */
  #checkSame(read: RecordMessage[], held: number): void {
    const since = this.#pending[0]!.first - 1;
    let m = 0;
    for (const e of this.#pending) {
      if (e.first > held) break;
      const view = new DataView(
        e.section.buffer,
        e.section.byteOffset,
        e.section.byteLength,
      );
      let at = 0;
      for (let seq = e.first; seq <= Math.min(e.last, held); seq++) {
        while (m < read.length && read[m]!.lastSeq < seq) m++;
        const msg = read[m];
        const i = msg === undefined ? -1 : seq - msg.firstSeq;
        const length = view.getUint32(at + 17, true);
        if (
          msg === undefined || i < 0 ||
          msg.ts(i) !== getU64(view, at) ||
          msg.partial(i) !== ((e.section[at + 16]! & FLAG_PARTIAL) !== 0) ||
          msg.lineLength(i) !== length ||
          !_sameBytes(
            msg.line(i),
            e.section.subarray(
              at + RECORD_FIXED_BYTES,
              at + RECORD_FIXED_BYTES + length,
            ),
          )
        ) {
          const fork = new MoatError(
            "ERR_CORRUPT",
            `Source "${
              sourceLabel(this.key)
            }" forked: the stream holds a record ${seq} other than the one sent here (another writer of this source): refused until the door restarts, nothing sent here after record ${since} acknowledged`,
          );
          this.forked = fork;
          for (const p of this.#pending.splice(0)) p.reject?.(fork);
          this.#queued = held;
          throw fork;
        }
        at += RECORD_FIXED_BYTES + length;
      }
    }
  }

  /**
   * Where the local copy ends in the stream, when not known (at the first
   * publish or catch-up of a source, or after a failure): the stream
   * sequence to read from. Binary search over `next_by_subj`, with the
   * record ranges decoded from the messages themselves.
   */
  async #locate(): Promise<number> {
    const stream = this.#vault.streamHandle;
    const held = this.#local.lastSeq;
    const last = await lastMessage(stream, this.subject);
    if (last === undefined) {
      if (held > 0) throw this.#ahead(held, 0);
      return 1;
    }
    // From the start: every message is checked as it is applied (a
    // forged last one stops the catch-up after the records before it).
    if (held === 0) return 1;
    const lastRange = this.#decode(last.seq, last.data);
    if (lastRange.lastSeq === held) return last.seq + 1;
    if (lastRange.lastSeq < held) throw this.#ahead(held, lastRange.lastSeq);
    // The first message whose records end after `held`.
    let lo = 1;
    let hi = last.seq;
    while (lo < hi) {
      const mid = Math.floor((lo + hi) / 2);
      const m = await nextMessage(stream, this.subject, mid);
      if (m === undefined) throw this.#ahead(held, lastRange.lastSeq);
      if (this.#decode(m.seq, m.data).lastSeq > held) hi = m.seq;
      else lo = m.seq + 1;
    }
    return lo;
  }

  #decode(seq: number, data: Uint8Array) {
    try {
      return decodeRecordMessage(data, this.srcid, this.#vault.check);
    } catch (error) {
      throw new MoatError(
        "ERR_CORRUPT",
        `Stream message ${seq}: ${(error as Error).message}`,
      );
    }
  }

  #ahead(held: number, streamLast: number): MoatError {
    return new MoatError(
      "ERR_VAULT_LOST",
      `The local copy of source "${
        sourceLabel(this.key)
      }" holds records up to ${held}, but the stream only up to ${streamLast}: it is not a copy of this stream`,
    );
  }

  #wake(): void {
    const held = this.#local.lastSeq;
    const still = [];
    for (const w of this.#waiters) {
      if (w.seq <= held) w.resolve(w.seq);
      else still.push(w);
    }
    this.#waiters = still;
  }
}

function _sameBytes(a: Uint8Array, b: Uint8Array): boolean {
  if (a.length !== b.length) return false;
  for (let i = 0; i < a.length; i++) if (a[i] !== b[i]) return false;
  return true;
}

/** An entry without its records up to `held`. */
function _dropFront(entry: _Entry, held: number): _Entry {
  let at = 0;
  const view = new DataView(
    entry.section.buffer,
    entry.section.byteOffset,
    entry.section.byteLength,
  );
  for (let seq = entry.first; seq <= held; seq++) {
    at += RECORD_FIXED_BYTES + view.getUint32(at + 17, true);
  }
  return { ...entry, first: held + 1, section: entry.section.subarray(at) };
}

/** Records `from` on of a batch, each line copied out of the batch's buffer. */
function _copyRecords(batch: AppendBatch, from: number): AppendRecord[] {
  const out: AppendRecord[] = [];
  for (let i = from; i < batch.length; i++) {
    const line = new Uint8Array(batch.lineLength(i));
    batch.copyLine(i, line, 0);
    out.push({
      seq: batch.seq(i),
      ts: batch.ts(i),
      line,
      ...(batch.partial(i) && { partial: true }),
    });
  }
  return out;
}
