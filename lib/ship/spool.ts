/**
 * The shipper's durable queue. Lines read from the inputs get their sequence
 * numbers here and are written, with the input position after each line, to
 * an on-disk spool before anything is sent; the sender reads records back
 * from the spool, and acknowledged records are trimmed.
 *
 * Crash safety: a sequence number is bound to a line only once its spool
 * record is durable, and the resume position of each input is derived from
 * the same records. After a crash at any point, the inputs resume right
 * after the last durable record, and the next line gets the next sequence
 * number: no line is skipped, none gets two numbers, no number is reused.
 * Records not yet acknowledged are sent again; the server drops duplicates.
 *
 * Files: the state file (see `state.ts`) and, beside it, the directory
 * `<state file>.spool/` with segment files and a lock. Formats:
 * `docs/VAULT.md`.
 *
 * @module
 */

import type { FileHandle } from "node:fs/promises";
import { open } from "node:fs/promises";
import { dirname, join, resolve } from "node:path";
import { ExitCode, MoatError } from "../errors.ts";
import {
  acquireLock,
  makeDir,
  removeTempFiles,
  systemErrorCode,
} from "../segment/fs.ts";
import type { Lock } from "../segment/fs.ts";
import {
  corruptError,
  finishRecord,
  getU64,
  MAX_RECORD_BYTES,
  setU64,
} from "../segment/codec.ts";
import type { RawRecord } from "../segment/codec.ts";
import { CommitGroup } from "../segment/commit_group.ts";
import { SegmentLog } from "../segment/log.ts";
import type { LogRepair, SegmentInfo } from "../segment/log.ts";
import {
  listSegments,
  readSegment,
  SegmentScanner,
} from "../segment/scanner.ts";
import type { FilePosition } from "./follow.ts";
import {
  _isCount,
  newShipState,
  readShipState,
  STATE_VERSION_RECEIPTS,
  writeShipState,
} from "./state.ts";
import type { ShipState } from "./state.ts";

/** Magic at the start of every spool segment: 0x89 "MOATSPL". */
export const SPOOL_MAGIC: Uint8Array = Uint8Array.of(
  0x89,
  0x4d,
  0x4f,
  0x41,
  0x54,
  0x53,
  0x50,
  0x4c,
);
/** Record kind of a spool record. */
export const SPOOL_KIND = 2;
/** Offset of the line in a spool record. */
export const SPOOL_LINE_OFFSET = 56;
const LINE_OFFSET = SPOOL_LINE_OFFSET;
/** Record flag: the line continues in the next record (as in the vault). */
export const SPOOL_FLAG_PARTIAL = 0x02;
const FLAG_PARTIAL = SPOOL_FLAG_PARTIAL;
/**
 * Bytes of records kept in memory after they became durable, for the
 * sender to take without reading and checking them again (see `_Kept`).
 */
const KEEP_BYTES = 16 * 1024 * 1024;
/** Appends whose positions are kept in memory for the next trim. */
const KEEP_APPENDS = 65536;

/** Default spool bound: 256 MiB. */
export const DEFAULT_SPOOL_BYTES: number = 256 * 1024 * 1024;
/** Default longest line: 1 MiB. */
export const DEFAULT_MAX_LINE_BYTES: number = 1024 * 1024;

/** One line handed to {@linkcode Spool.append}; a `FollowedLine` fits. */
export interface SpoolLine extends FilePosition {
  /** The line without its newline. */
  line: Uint8Array;
  /** True if the next line continues this one (an overlong line was split). */
  partial?: boolean;
  /** Shipper timestamp, ms since the epoch. @default {Date.now()} */
  ts?: number;
}

/** One record read back for sending. */
export interface SpoolRecord {
  /** Sequence number. */
  seq: number;
  /** Shipper timestamp, ms since the epoch. */
  ts: number;
  /** The line (may be kept; not reused). */
  line: Uint8Array;
  /** True if the next record continues this line. */
  partial: boolean;
}

/**
 * Consecutive spool records as they are on disk (layout: `docs/VAULT.md`),
 * checked: read back and verified, or kept from the append that wrote them.
 */
export interface SpoolChunk {
  /** Sequence number of the first record. */
  firstSeq: number;
  /** Sequence number of the last record. */
  lastSeq: number;
  /** Records `firstSeq` to `lastSeq`, back to back. May be kept; never change it. */
  bytes: Uint8Array;
}

/** An input registered with {@linkcode Spool.input}. */
export interface SpoolInput {
  /** Its id, for {@linkcode Spool.append}. */
  id: number;
  /** Its absolute path, or `-`. */
  path: string;
  /** Where to resume reading it; undefined if nothing was read yet. */
  position: FilePosition | undefined;
}

/** Something the shipper should report. */
export type SpoolEvent =
  | {
    /** The spool reached its bound: appends wait, so reading stops. */
    type: "full";
    usedBytes: number;
    maxBytes: number;
  }
  | {
    /** Acknowledgements made room again. */
    type: "resumed";
    usedBytes: number;
    maxBytes: number;
  }
  | {
    /** Saving the state or trimming failed; retried at the next checkpoint. */
    type: "checkpoint_failed";
    error: unknown;
  }
  | LogRepair;

/** Options for {@linkcode openSpool}. */
export interface OpenSpoolOptions {
  /** The source name; must match the state file's if it exists. */
  source: string;
  /** Bound on spool bytes on disk (records not yet trimmed). @default {268435456} */
  maxBytes?: number;
  /** Segment size; trimming frees whole segments. @default {maxBytes / 16, 64 KiB to 16 MiB} */
  segmentBytes?: number;
  /** Longest line accepted. @default {1048576} */
  maxLineBytes?: number;
  /** How long acknowledgements may wait before being saved and trimmed. @default {1000} */
  checkpointMs?: number;
  /** Told about a full spool, recovery repairs, and failed checkpoints. */
  onEvent?: (event: SpoolEvent) => void;
  /**
   * Bytes of appended records kept in memory for {@linkcode Spool.chunks}.
   * @default {16777216}
   */
  keepBytes?: number;
  /**
   * Appends whose input positions are kept in memory for the next trim;
   * past that, the trim reads them back. @default {65536}
   */
  keepAppends?: number;
}

/** Options for {@linkcode Spool.records}. */
export interface SpoolRecordsOptions {
  /** Keep waiting for new records at the end instead of returning. @default {false} */
  follow?: boolean;
  /** Ends the iteration (it returns normally). */
  signal?: AbortSignal;
  /** Approximate bytes of lines per batch. @default {262144} */
  maxBatchBytes?: number;
}

/** The shipper's spool. Create with {@linkcode openSpool}. */
export interface Spool {
  /** The source name. */
  readonly source: string;
  /** Random id of this record stream (new when the state file was created). */
  readonly stream: string;
  /** The state file. */
  readonly stateFile: string;
  /** Highest durable sequence number (0 if none was ever assigned). */
  readonly lastSeq: number;
  /** Highest acknowledged sequence number. */
  readonly ackedSeq: number;
  /** Bytes on disk in the spool, plus bytes being written. */
  readonly usedBytes: number;
  /** True while appends wait for room. */
  readonly full: boolean;
  /**
   * Registers an input (or finds it) and tells where to resume reading it.
   * Call at start-up, before appending its lines.
   *
   * @param path A file path (made absolute) or `-` for standard input.
   * @returns Its id and resume position.
   * @throws {Error} A system error while saving the state.
   */
  input(path: string): Promise<SpoolInput>;
  /**
   * Assigns the next sequence numbers to `lines`, in order, and writes them
   * to the spool. Resolves once durable; only then may they be sent. Waits
   * while the spool is full (a `full` event is sent once). On rejection
   * nothing of the call was kept and its numbers will be given out again:
   * retry the same lines.
   *
   * @param input An id from {@linkcode Spool.input}.
   * @param lines The lines with the position after each.
   * @returns The last sequence number assigned.
   * @throws {RangeError} (as a rejection) for a bad input id, line or position.
   * @throws {MoatError} (as a rejection) `ERR_CLOSED` after close.
   * @throws {Error} (as a rejection) a write error.
   */
  append(input: number, lines: readonly SpoolLine[]): Promise<number>;
  /**
   * Reads durable records from `fromSeq` on, in batches.
   *
   * @param fromSeq The first sequence number wanted (the server's last + 1).
   * @param options Follow the end, abort signal, batch size.
   * @returns Batches of records in sequence order.
   * @throws {MoatError} `ERR_TRIMMED` if `fromSeq` was acknowledged and
   * trimmed; `ERR_SEQ_AHEAD` if `fromSeq` is beyond `lastSeq + 1`;
   * `ERR_CORRUPT` for damaged spool data.
   */
  records(
    fromSeq: number,
    options?: SpoolRecordsOptions,
  ): AsyncGenerator<SpoolRecord[]>;
  /**
   * Reads durable records from `fromSeq` on, as {@linkcode records} does,
   * but undecoded: batches of chunks of encoded records, for a sender that
   * copies them into frames. Records appended by this process since it
   * opened the spool come from memory while the reader keeps up (up to
   * `keepBytes` of them, each once); others are read from disk and checked.
   *
   * @param fromSeq The first sequence number wanted.
   * @param options Follow the end, abort signal, batch size.
   * @returns Batches of chunks in sequence order.
   * @throws {MoatError} As {@linkcode records}.
   */
  chunks(
    fromSeq: number,
    options?: SpoolRecordsOptions,
  ): AsyncGenerator<SpoolChunk[]>;
  /**
   * Records that the server acknowledged everything up to `seq`. Saved and
   * trimmed at the next checkpoint (at once if appends wait for room).
   *
   * @param seq The server's acknowledged sequence number.
   * @throws {RangeError} If `seq` is beyond `lastSeq` or not an integer.
   */
  ack(seq: number): void;
  /** The vault key and checkpoint the state holds (`lib/ship/witness.ts`). */
  readonly vaultKey: string | undefined;
  readonly vaultCheckpoint: string | undefined;
  /**
   * Keeps a vault key and an accepted checkpoint in the state, saved by the
   * next checkpoint, in the same write as the acknowledgements it covers:
   * acknowledge no more than its size before calling this.
   *
   * @param vaultKey The vault's verifier key.
   * @param checkpoint The signed note.
   */
  keepReceipt(vaultKey: string, checkpoint: string): void;
  /**
   * Saves the state and trims acknowledged segments now.
   *
   * @returns When done.
   * @throws {Error} A system error.
   */
  checkpoint(): Promise<void>;
  /**
   * Waits for pending writes, saves the state, and releases the lock.
   *
   * @returns When closed.
   */
  close(): Promise<void>;
}

/**
 * Opens the spool beside `stateFile` (creating both if missing), recovers it
 * (a torn tail of the last segment is cut and reported), and computes each
 * input's resume position. Takes a lock so that one shipper uses the state.
 *
 * @example Follow a file into the spool
 * ```ts ignore
 * import { openSpool } from "./spool.ts";
 * import { follow } from "./follow.ts";
 * const spool = await openSpool("/var/lib/moat/ship.json", { source: "web1" });
 * const input = await spool.input("/var/log/app.log");
 * const start = input.position;
 * for await (const batch of follow(input.path, start ? { start } : {})) {
 *   await spool.append(input.id, batch);
 * }
 * ```
 *
 * @param stateFile The state file.
 * @param options Source name, bounds, callbacks.
 * @returns The spool.
 * @throws {MoatError} `ERR_LOCKED` if another shipper uses it;
 * `ERR_STATE_MISMATCH` if the state belongs to another source;
 * `ERR_CORRUPT` for damaged state or spool data.
 * @throws {RangeError} For bad options.
 */
export async function openSpool(
  stateFile: string,
  options: OpenSpoolOptions,
): Promise<Spool> {
  const maxBytes = options.maxBytes ?? DEFAULT_SPOOL_BYTES;
  const maxLineBytes = options.maxLineBytes ?? DEFAULT_MAX_LINE_BYTES;
  if (!Number.isSafeInteger(maxBytes) || maxBytes < 65536) {
    throw new RangeError(`Invalid maxBytes: ${maxBytes} is below 65536`);
  }
  if (
    !Number.isSafeInteger(maxLineBytes) || maxLineBytes < 1 ||
    maxLineBytes + LINE_OFFSET > MAX_RECORD_BYTES
  ) {
    throw new RangeError(
      `Invalid maxLineBytes: ${maxLineBytes} is out of range (1 to 16 MiB)`,
    );
  }
  const segmentBytes = options.segmentBytes ??
    Math.min(16 * 1024 * 1024, Math.max(65536, Math.floor(maxBytes / 16)));
  if (!Number.isSafeInteger(segmentBytes) || segmentBytes < 4096) {
    throw new RangeError(`Invalid segmentBytes: ${segmentBytes} is below 4096`);
  }
  for (const name of ["keepBytes", "keepAppends"] as const) {
    const n = options[name];
    if (n !== undefined && (!Number.isSafeInteger(n) || n < 0)) {
      throw new RangeError(`Invalid ${name}: ${n} is not a count`);
    }
  }
  const file = resolve(stateFile);
  const spoolDir = `${file}.spool`;
  await makeDir(dirname(file), 0o700);
  await makeDir(spoolDir, 0o700);
  const lock = await acquireLock(
    join(spoolDir, "LOCK"),
    `Shipper state "${file}"`,
  );
  try {
    await removeTempFiles(file);
    let state = await readShipState(file);
    const segments = await listSegments(spoolDir);
    if (state === undefined) {
      if (segments.length > 0) {
        throw corruptError(
          file,
          0,
          "the state file is missing but the spool is not empty",
        );
      }
      state = newShipState(options.source);
      await writeShipState(file, state);
    }
    if (state.source !== options.source) {
      throw new MoatError(
        "ERR_STATE_MISMATCH",
        `State file "${file}" belongs to source "${state.source}", not "${options.source}"`,
        ExitCode.Usage,
      );
    }
    const group = new CommitGroup();
    const log = await SegmentLog.open(spoolDir, {
      magic: SPOOL_MAGIC,
      kind: SPOOL_KIND,
      segmentBytes,
      group,
      baseSeq: state.acked,
      onRepair: (repair) => options.onEvent?.(repair),
    });
    if (log.firstSeq > state.acked + 1 || log.lastSeq < state.acked) {
      throw corruptError(
        spoolDir,
        0,
        `the spool holds records ${log.firstSeq} to ${log.lastSeq} but ${state.acked} were acknowledged`,
      );
    }
    const positions = await _positions(state, log.segments);
    const spool = new _Spool({
      file,
      state,
      log,
      lock,
      positions,
      maxBytes,
      maxLineBytes,
      checkpointMs: options.checkpointMs ?? 1000,
      onEvent: options.onEvent,
      keepBytes: options.keepBytes ?? KEEP_BYTES,
      keepAppends: options.keepAppends ?? KEEP_APPENDS,
    });
    await spool.checkpoint();
    return spool;
  } catch (error) {
    await lock.release();
    throw error;
  }
}

/** The state's positions overlaid with every spooled record's position. */
async function _positions(
  state: ShipState,
  segments: readonly { firstSeq: number; path: string }[],
): Promise<Map<number, FilePosition>> {
  const positions = new Map<number, FilePosition>();
  state.inputs.forEach((input, id) => {
    if (input.position) positions.set(id, { ...input.position });
  });
  await _overlay(positions, segments, state.inputs.length);
  return positions;
}

/** Sets each input's position from the records of `segments`, in order. */
async function _overlay(
  positions: Map<number, FilePosition>,
  segments: readonly { firstSeq: number; path: string }[],
  inputs: number,
): Promise<void> {
  for (const [i, segment] of segments.entries()) {
    for await (
      const batch of readSegment(segment.path, {
        magic: SPOOL_MAGIC,
        kind: SPOOL_KIND,
        firstSeq: segment.firstSeq,
        last: i === segments.length - 1,
      })
    ) {
      for (const raw of batch) {
        const view = _view(raw.bytes);
        const input = view.getUint32(28, true);
        if (input >= inputs) {
          throw corruptError(
            segment.path,
            raw.offset,
            `record names unknown input ${input}`,
          );
        }
        positions.set(input, {
          dev: getU64(view, 32),
          ino: getU64(view, 40),
          offset: getU64(view, 48),
        });
      }
    }
  }
}

function _view(bytes: Uint8Array): DataView {
  return new DataView(bytes.buffer, bytes.byteOffset, bytes.byteLength);
}

/**
 * Decodes the records of a chunk.
 *
 * @param chunk Checked spool records.
 * @returns One object per record; lines are views into `chunk.bytes`.
 */
export function decodeSpoolChunk(chunk: SpoolChunk): SpoolRecord[] {
  const { bytes } = chunk;
  const view = _view(bytes);
  const out: SpoolRecord[] = [];
  let at = 0;
  for (let seq = chunk.firstSeq; seq <= chunk.lastSeq; seq++) {
    const length = view.getUint32(at + 4, true);
    out.push({
      seq,
      ts: getU64(view, at + 20),
      line: bytes.subarray(at + LINE_OFFSET, at + length),
      partial: (bytes[at + 9]! & FLAG_PARTIAL) !== 0,
    });
    at += length;
  }
  return out;
}

/** The records of `raw` (contiguous, from one read) as one chunk. */
function _chunkOf(raw: readonly RawRecord[]): SpoolChunk {
  const first = raw[0]!.bytes;
  const last = raw[raw.length - 1]!.bytes;
  return {
    firstSeq: raw[0]!.seq,
    lastSeq: raw[raw.length - 1]!.seq,
    bytes: new Uint8Array(
      first.buffer,
      first.byteOffset,
      last.byteOffset + last.length - first.byteOffset,
    ),
  };
}

/**
 * One append of this process, kept in memory: where its input stood after
 * it (so a trim needs not read the segment back for positions), and, until
 * the sender took them, its encoded records (so the sender needs not read
 * and check them again). One append is never split across segments.
 */
interface _Kept {
  firstSeq: number;
  lastSeq: number;
  input: number;
  position: FilePosition;
  /** The bytes written, until taken; none if over the bound when written. */
  bytes: Uint8Array | undefined;
}

/** A kept append's records from `seq` on. */
function _from(entry: _Kept, seq: number): SpoolChunk {
  const bytes = entry.bytes!;
  let at = 0;
  if (seq > entry.firstSeq) {
    const view = _view(bytes);
    for (let s = entry.firstSeq; s < seq; s++) {
      at += view.getUint32(at + 4, true);
    }
  }
  return {
    firstSeq: seq,
    lastSeq: entry.lastSeq,
    bytes: at === 0 ? bytes : bytes.subarray(at),
  };
}

interface _SpoolInit {
  file: string;
  state: ShipState;
  log: SegmentLog;
  lock: Lock;
  positions: Map<number, FilePosition>;
  maxBytes: number;
  maxLineBytes: number;
  checkpointMs: number;
  onEvent: ((event: SpoolEvent) => void) | undefined;
  keepBytes: number;
  keepAppends: number;
}

interface _Blocked {
  size: number;
  admit: () => void;
}

class _Spool implements Spool {
  readonly stateFile: string;
  #state: ShipState;
  #log: SegmentLog;
  #lock: Lock;
  #positions: Map<number, FilePosition>;
  #maxBytes: number;
  #maxLineBytes: number;
  #checkpointMs: number;
  #onEvent: ((event: SpoolEvent) => void) | undefined;
  #acked: number;
  #blocked: _Blocked[] = [];
  #full = false;
  #timer: ReturnType<typeof setTimeout> | undefined;
  #serialized: Promise<void> = Promise.resolve();
  /** Segments taken out of the log, their positions not yet saved. */
  #toRead: SegmentInfo[] = [];
  /** Segments whose positions are in the state, to delete once it is saved. */
  #toDelete: SegmentInfo[] = [];
  #stateDirty = false;
  #closed = false;
  /**
   * Every append from `#keptFrom` on, oldest first, until a trim folds
   * its position into the state. Appends before it (an earlier run's, or
   * dropped when too many waited) are read back from disk when trimmed.
   */
  #kept: _Kept[] = [];
  #keptFrom: number;
  /** Bytes held by `#kept`. */
  #keptBytes = 0;
  /** Index in `#kept` of the oldest entry that may still hold bytes. */
  #keptBytesAt = 0;
  #keepBytes: number;
  #keepAppends: number;

  constructor(init: _SpoolInit) {
    this.stateFile = init.file;
    this.#state = init.state;
    this.#log = init.log;
    this.#lock = init.lock;
    this.#positions = init.positions;
    this.#maxBytes = init.maxBytes;
    this.#maxLineBytes = init.maxLineBytes;
    this.#checkpointMs = init.checkpointMs;
    this.#onEvent = init.onEvent;
    this.#acked = init.state.acked;
    this.#keptFrom = init.log.lastSeq + 1;
    this.#keepBytes = init.keepBytes;
    this.#keepAppends = init.keepAppends;
  }

  get source(): string {
    return this.#state.source;
  }

  get stream(): string {
    return this.#state.stream;
  }

  get lastSeq(): number {
    return this.#log.durableSeq;
  }

  get ackedSeq(): number {
    return this.#acked;
  }

  get usedBytes(): number {
    return this.#log.bytes;
  }

  get full(): boolean {
    return this.#full;
  }

  async input(path: string): Promise<SpoolInput> {
    this.#checkOpen();
    const absolute = path === "-" ? "-" : resolve(path);
    let id = this.#state.inputs.findIndex((i) => i.path === absolute);
    if (id === -1) {
      // Saved before any record names it, so every record's input resolves.
      id = this.#state.inputs.length;
      this.#state.inputs.push({ path: absolute });
      this.#stateDirty = true;
      await this.#serial(() =>
        this.#stateDirty ? this.#saveState() : undefined
      );
    }
    const position = this.#positions.get(id);
    return { id, path: absolute, position: position && { ...position } };
  }

  append(input: number, lines: readonly SpoolLine[]): Promise<number> {
    try {
      this.#checkOpen();
      if (
        !Number.isSafeInteger(input) || input < 0 ||
        input >= this.#state.inputs.length
      ) {
        throw new RangeError(
          `Invalid input: ${input} is not a registered input id`,
        );
      }
      let size = 0;
      for (const line of lines) {
        if (!(line.line instanceof Uint8Array)) {
          throw new TypeError("Invalid line: not a Uint8Array");
        }
        if (line.line.length > this.#maxLineBytes) {
          throw new RangeError(
            `Invalid line: ${line.line.length} bytes exceed maxLineBytes ${this.#maxLineBytes}`,
          );
        }
        if (
          !_isCount(line.dev) || !_isCount(line.ino) || !_isCount(line.offset)
        ) {
          throw new RangeError("Invalid line: position is not three counts");
        }
        if (line.ts !== undefined && !_isCount(line.ts)) {
          throw new RangeError(`Invalid line: ts ${line.ts} is not a count`);
        }
        size += LINE_OFFSET + line.line.length;
      }
      if (lines.length === 0) return Promise.resolve(this.#log.lastSeq);
      const used = this.#log.bytes;
      if (
        this.#blocked.length === 0 &&
        (used + size <= this.#maxBytes || used === 0)
      ) {
        return this.#admit(input, lines, size);
      }
      return new Promise<number>((resolve, reject) => {
        this.#blocked.push({
          size,
          admit: () => {
            try {
              this.#checkOpen();
              resolve(this.#admit(input, lines, size));
            } catch (error) {
              reject(error);
            }
          },
        });
        if (!this.#full) {
          this.#full = true;
          this.#onEvent?.({
            type: "full",
            usedBytes: used,
            maxBytes: this.#maxBytes,
          });
        }
        this.#schedule(0);
      });
    } catch (error) {
      return Promise.reject(error);
    }
  }

  /** Assigns numbers and queues the records; must run synchronously. */
  #admit(
    input: number,
    lines: readonly SpoolLine[],
    size: number,
  ): Promise<number> {
    const log = this.#log;
    const first = log.lastSeq + 1;
    const out = new Uint8Array(size);
    const view = new DataView(out.buffer);
    const now = Date.now();
    let at = 0;
    let seq = first;
    for (const line of lines) {
      const length = LINE_OFFSET + line.line.length;
      setU64(view, at + 20, line.ts ?? now);
      view.setUint32(at + 28, input, true);
      setU64(view, at + 32, line.dev);
      setU64(view, at + 40, line.ino);
      setU64(view, at + 48, line.offset);
      out.set(line.line, at + LINE_OFFSET);
      finishRecord(out.subarray(at, at + length), {
        kind: SPOOL_KIND,
        flags: line.partial ? FLAG_PARTIAL : 0,
        seq,
      });
      at += length;
      seq++;
    }
    const last = lines[lines.length - 1]!;
    const position = { dev: last.dev, ino: last.ino, offset: last.offset };
    this.#positions.set(input, position);
    const durable = log.enqueue(out, { firstSeq: first, lastSeq: seq - 1 });
    this.#keep({
      firstSeq: first,
      lastSeq: seq - 1,
      input,
      position,
      bytes: out,
    });
    return durable;
  }

  /** Remembers an append (see `#kept`). */
  #keep(entry: _Kept): void {
    const kept = this.#kept;
    // A failed commit gave its numbers back: forget what it held.
    while (
      kept.length > 0 && kept[kept.length - 1]!.firstSeq >= entry.firstSeq
    ) {
      this.#keptBytes -= kept.pop()!.bytes?.length ?? 0;
    }
    this.#keptBytesAt = Math.min(this.#keptBytesAt, kept.length);
    if (kept.length >= this.#keepAppends) {
      // Too many small appends wait: their trim reads them back instead.
      this.#kept = [];
      this.#keptBytes = 0;
      this.#keptBytesAt = 0;
      this.#keptFrom = entry.lastSeq + 1;
      return;
    }
    if (this.#keptFrom > entry.firstSeq) this.#keptFrom = entry.firstSeq;
    if (this.#keptBytes + entry.bytes!.length > this.#keepBytes) {
      // The sender is that far behind: it reads these from disk when it
      // gets here, and takes the older ones kept from memory first.
      entry.bytes = undefined;
    }
    this.#kept.push(entry);
    this.#keptBytes += entry.bytes?.length ?? 0;
  }

  /** Lets go of the bytes of `#kept[at]` and of every older entry's. */
  #dropBytes(at: number): void {
    const kept = this.#kept;
    while (this.#keptBytesAt <= at && this.#keptBytesAt < kept.length) {
      const entry = kept[this.#keptBytesAt++]!;
      this.#keptBytes -= entry.bytes?.length ?? 0;
      entry.bytes = undefined;
    }
  }

  /** The kept, durable append holding record `seq` with its bytes, if any. */
  #keptAt(seq: number): number {
    const kept = this.#kept;
    let lo = this.#keptBytesAt;
    let hi = kept.length - 1;
    while (lo <= hi) {
      const mid = (lo + hi) >>> 1;
      const entry = kept[mid]!;
      if (entry.lastSeq < seq) lo = mid + 1;
      else if (entry.firstSeq > seq) hi = mid - 1;
      else {
        const ready = entry.bytes !== undefined &&
          entry.lastSeq <= this.#log.durableSeq;
        return ready ? mid : -1;
      }
    }
    return -1;
  }

  /** Whether record `seq` is in a segment after `segment`. */
  #pastSegment(segment: { firstSeq: number }, seq: number): boolean {
    for (const s of this.#log.segments) {
      if (s.firstSeq > segment.firstSeq) return s.firstSeq <= seq;
    }
    return false;
  }

  async *records(
    fromSeq: number,
    options: SpoolRecordsOptions = {},
  ): AsyncGenerator<SpoolRecord[]> {
    for await (const batch of this.chunks(fromSeq, options)) {
      const out: SpoolRecord[] = [];
      for (const chunk of batch) {
        for (const record of decodeSpoolChunk(chunk)) out.push(record);
      }
      yield out;
    }
  }

  async *chunks(
    fromSeq: number,
    options: SpoolRecordsOptions = {},
  ): AsyncGenerator<SpoolChunk[]> {
    const { follow = false, signal } = options;
    const maxBatchBytes = options.maxBatchBytes ?? 262144;
    const log = this.#log;
    if (!Number.isSafeInteger(fromSeq) || fromSeq < 1) {
      throw new RangeError(
        `Invalid fromSeq: ${fromSeq} is not a positive integer`,
      );
    }
    if (fromSeq > log.durableSeq + 1) {
      throw new MoatError(
        "ERR_SEQ_AHEAD",
        `Cannot send from record ${fromSeq}: the spool ends at ${log.durableSeq}`,
      );
    }
    let next = fromSeq;
    let current:
      | { firstSeq: number; handle: FileHandle; scanner: SegmentScanner }
      | undefined;
    const aborted = new Promise<void>((resolve) => {
      if (signal?.aborted) resolve();
      signal?.addEventListener("abort", () => resolve(), { once: true });
    });
    try {
      while (!signal?.aborted) {
        if (next > log.durableSeq) {
          if (!follow || log.closed) return;
          await Promise.race([log.changed(), aborted]);
          continue;
        }
        let at = this.#keptAt(next);
        if (at !== -1) {
          // Written by this process and not taken yet: no need to read it.
          // The file stays open where it was: the records after these may
          // have to be read from it.
          const out: SpoolChunk[] = [];
          let bytes = 0;
          const kept = this.#kept;
          const durable = log.durableSeq;
          while (
            at < kept.length && bytes < maxBatchBytes &&
            kept[at]!.lastSeq <= durable && kept[at]!.bytes !== undefined &&
            kept[at]!.firstSeq <= next
          ) {
            const entry = kept[at]!;
            const chunk = _from(entry, next);
            out.push(chunk);
            bytes += chunk.bytes.length;
            next = entry.lastSeq + 1;
            at++;
          }
          // Taken: should the sender need them again (a reconnect), they
          // are read back from disk.
          this.#dropBytes(at - 1);
          if (current !== undefined && this.#pastSegment(current, next)) {
            // Not held open for a trim to wait on.
            await current.handle.close();
            current = undefined;
          }
          yield out;
          continue;
        }
        const segments = log.segments;
        if (current === undefined) {
          const at = segments.findLastIndex((s) => s.firstSeq <= next);
          if (at === -1) {
            throw new MoatError(
              "ERR_TRIMMED",
              `Cannot send from record ${next}: the spool starts at ${log.firstSeq} (older records were acknowledged and removed)`,
            );
          }
          const segment = segments[at]!;
          let handle: FileHandle;
          try {
            handle = await open(segment.path, "r");
          } catch (error) {
            if (systemErrorCode(error) !== "ENOENT") throw error;
            await Promise.race([log.changed(), aborted]);
            continue;
          }
          current = {
            firstSeq: segment.firstSeq,
            handle,
            scanner: new SegmentScanner(handle, {
              kind: SPOOL_KIND,
              nextSeq: segment.firstSeq,
            }),
          };
        }
        at = segments.findIndex((s) => s.firstSeq === current!.firstSeq);
        const isLast = at === segments.length - 1;
        const limit = at === -1
          ? (await current.handle.stat()).size
          : segments[at]!.size;
        if (current.scanner.nextSeq < next) {
          // Taken from memory, or before `fromSeq`: stepped over by their
          // headers, unchecked, as they are not sent now.
          const scanner = current.scanner;
          await scanner.skipWhile(limit, {
            peek: 0,
            skip: () => scanner.nextSeq < next,
          });
        }
        const batch = await current.scanner.read(limit, maxBatchBytes);
        if (batch.length > 0) {
          const skip = batch.findIndex((raw) => raw.seq >= next);
          if (skip !== -1) {
            const chunk = _chunkOf(skip === 0 ? batch : batch.slice(skip));
            next = chunk.lastSeq + 1;
            yield [chunk];
          }
          continue;
        }
        if (current.scanner.error !== undefined) {
          throw corruptError(
            segments[at]?.path ?? "spool",
            current.scanner.offset,
            current.scanner.error,
          );
        }
        if (isLast && at !== -1) {
          // Caught up with the segment being written.
          if (!follow && next > log.durableSeq) return;
          if (next > log.durableSeq) {
            await Promise.race([log.changed(), aborted]);
          }
          continue;
        }
        await current.handle.close();
        current = undefined;
      }
    } finally {
      await current?.handle.close().catch(() => {});
    }
  }

  ack(seq: number): void {
    if (!Number.isSafeInteger(seq) || seq < 0) {
      throw new RangeError(`Invalid acknowledgement: ${seq} is not a count`);
    }
    if (seq > this.#log.durableSeq) {
      throw new RangeError(
        `Invalid acknowledgement: ${seq} is beyond the last spooled record ${this.#log.durableSeq}`,
      );
    }
    if (seq <= this.#acked) return;
    this.#acked = seq;
    this.#schedule(this.#blocked.length > 0 ? 0 : this.#checkpointMs);
  }

  get vaultKey(): string | undefined {
    return this.#state.vaultKey;
  }

  get vaultCheckpoint(): string | undefined {
    return this.#state.checkpoint;
  }

  keepReceipt(vaultKey: string, checkpoint: string): void {
    this.#state.version = STATE_VERSION_RECEIPTS;
    this.#state.vaultKey = vaultKey;
    this.#state.checkpoint = checkpoint;
    this.#stateDirty = true;
    this.#schedule(this.#checkpointMs);
  }

  #schedule(ms: number): void {
    if (this.#closed) return;
    if (this.#timer !== undefined) {
      if (ms > 0) return;
      clearTimeout(this.#timer);
    }
    this.#timer = setTimeout(() => {
      this.#timer = undefined;
      this.checkpoint().catch((error) => {
        this.#onEvent?.({ type: "checkpoint_failed", error });
      });
    }, ms);
  }

  checkpoint(): Promise<void> {
    return this.#serial(() => this.#checkpoint());
  }

  /** Runs state writes one at a time, so an older state never lands last. */
  #serial(task: () => Promise<void> | undefined): Promise<void> {
    const run = this.#serialized.then(task);
    this.#serialized = run.catch(() => {});
    return run;
  }

  async #checkpoint(): Promise<void> {
    const acked = this.#acked;
    this.#toRead.push(...this.#log.takeSegmentsThrough(acked));
    // The last record of the segments taken (now or by a failed checkpoint).
    const rest = this.#log.segments[0];
    const through = rest ? rest.firstSeq - 1 : this.#log.durableSeq;
    if (this.#toRead.length > 0) {
      const positions = new Map<number, FilePosition>();
      // Segments with appends not kept in memory are read back; the
      // positions of the kept ones that follow then apply in order. Taken
      // now: appends may change `#kept` while the segments are read.
      const unkept = this.#toRead.filter((s) => s.firstSeq < this.#keptFrom);
      let n = 0;
      while (n < this.#kept.length && this.#kept[n]!.lastSeq <= through) n++;
      const fold = this.#kept.slice(0, n);
      await _overlay(positions, unkept, this.#state.inputs.length);
      for (const entry of fold) positions.set(entry.input, entry.position);
      const kept = this.#kept;
      n = 0;
      while (n < kept.length && kept[n]!.lastSeq <= through) n++;
      if (n > 0) {
        this.#dropBytes(n - 1);
        kept.splice(0, n);
        this.#keptBytesAt -= n;
      }
      if (this.#keptFrom <= through) this.#keptFrom = through + 1;
      for (const [id, position] of positions) {
        this.#state.inputs[id]!.position = position;
      }
      this.#toDelete.push(...this.#toRead);
      this.#toRead = [];
      this.#stateDirty = true;
    }
    if (this.#state.acked !== acked) {
      this.#state.acked = acked;
      this.#stateDirty = true;
    }
    if (this.#stateDirty) await this.#saveState();
    if (this.#toDelete.length > 0) {
      await this.#log.removeSegments(this.#toDelete);
      this.#toDelete = [];
    }
    this.#admitBlocked();
  }

  /** Saves the state; marks it clean only if nothing changed meanwhile. */
  async #saveState(): Promise<void> {
    const snapshot = structuredClone(this.#state);
    this.#stateDirty = false;
    try {
      await writeShipState(this.stateFile, snapshot);
    } catch (error) {
      this.#stateDirty = true;
      throw error;
    }
  }

  #admitBlocked(): void {
    const blocked = this.#blocked;
    while (blocked.length > 0) {
      const used = this.#log.bytes;
      const head = blocked[0]!;
      if (used + head.size > this.#maxBytes && used > 0) break;
      blocked.shift();
      head.admit();
    }
    if (blocked.length === 0 && this.#full) {
      this.#full = false;
      this.#onEvent?.({
        type: "resumed",
        usedBytes: this.#log.bytes,
        maxBytes: this.#maxBytes,
      });
    }
  }

  async close(): Promise<void> {
    if (this.#closed) return;
    this.#closed = true;
    clearTimeout(this.#timer);
    this.#timer = undefined;
    const blocked = this.#blocked;
    this.#blocked = [];
    for (const entry of blocked) entry.admit();
    try {
      await this.#log.close();
      await this.checkpoint();
    } finally {
      await this.#lock.release();
    }
  }

  #checkOpen(): void {
    if (this.#closed) {
      throw new MoatError("ERR_CLOSED", `Spool "${this.stateFile}" is closed`);
    }
  }
}
