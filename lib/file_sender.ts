/**
 * The bulk data path: stream a file as frames (or raw bytes) with constant
 * memory, and receive it into a temporary file that is renamed only once its
 * size and digest (CRC-32 or SHA-256, see `digest.ts`) match.
 *
 * Neither side runs through a `TransformStream`: PERF.md measured that as the
 * largest cost on the data path. The sender reads the file synchronously into
 * one reused, 64-byte aligned buffer and writes header + payload in a single
 * call; the receiver takes payload fragments straight out of the
 * {@linkcode FrameReader}'s buffer.
 *
 * @module
 */

import * as fs from "node:fs";
import * as path from "node:path";
import { encodeHeader, type FrameReader, HEADER_SIZE } from "./framer.ts";
import {
  Code,
  ConnectionClosedError,
  errorFromFrame,
  IntegrityError,
  MoatError,
  ProtocolError,
} from "./errors.ts";
import { decodeError, type FileMeta, Kind } from "./protocol.ts";
import type { OpenedFile } from "./jail.ts";
import {
  createDigest,
  DEFAULT_DIGEST,
  type Digest,
  type DigestName,
} from "./digest.ts";

/** Where frames are written: a connection, or anything with the same `write`. */
export interface ByteSink {
  write(bytes: Uint8Array): Promise<void>;
}

/** Default payload bytes per data frame: PERF.md's best buffer size. */
export const DEFAULT_CHUNK_SIZE = 1_048_576;

/** Offset of the payload inside the send buffer: keeps file reads 64-byte aligned. */
const PAYLOAD_OFFSET = 64;

/** Suffix of the temporary file a download is written to. */
export const PART_SUFFIX = ".moat-part";

/**
 * The temporary file a download of `target` is written to, beside it.
 *
 * @param target Where the file will end up.
 * @returns `target` + {@linkcode PART_SUFFIX}.
 *
 * @example
 * ```ts
 * import { partPathOf } from "./file_sender.ts";
 * import assert from "node:assert/strict";
 * assert.equal(partPathOf("out/a.log"), "out/a.log.moat-part");
 * ```
 */
export function partPathOf(target: string): string {
  return target + PART_SUFFIX;
}

/**
 * What tells one version of an open file from another: identity, size,
 * modification and change times (nanoseconds where the runtime has them).
 * Every write changes the change time, and nothing but the clock sets it back.
 */
export interface FileStamp {
  readonly dev: bigint;
  readonly ino: bigint;
  readonly size: bigint;
  readonly mtimeNs: bigint;
  readonly ctimeNs: bigint;
}

/**
 * Reads the stamp of an open file (fstat: the file, not whatever its path
 * names now).
 *
 * @param fd An open descriptor.
 * @returns Its stamp.
 */
export function readStamp(fd: number): FileStamp {
  const s = fs.fstatSync(fd, { bigint: true });
  return {
    dev: s.dev,
    ino: s.ino,
    size: s.size,
    mtimeNs: s.mtimeNs,
    ctimeNs: s.ctimeNs,
  };
}

function sameStamp(a: FileStamp, b: FileStamp): boolean {
  return a.dev === b.dev && a.ino === b.ino && a.size === b.size &&
    a.mtimeNs === b.mtimeNs && a.ctimeNs === b.ctimeNs;
}

/** Whether `stamp` still describes the file as the jail opened it. */
function matchesOpened(stamp: FileStamp, file: OpenedFile): boolean {
  return Number(stamp.dev) === file.dev && Number(stamp.ino) === file.ino &&
    Number(stamp.size) === file.size &&
    Number(stamp.mtimeNs) / 1e6 === file.mtimeMs;
}

/**
 * Whether only the change time moved: a rename, chmod or link, or a write
 * that put the mtime back. Only the content can tell those apart.
 */
function onlyCtimeMoved(a: FileStamp, b: FileStamp): boolean {
  return a.dev === b.dev && a.ino === b.ino && a.size === b.size &&
    a.mtimeNs === b.mtimeNs;
}

/** Whether the whole open file, read again now, has the digest `expected`. */
function hashesTo(
  file: OpenedFile,
  buf: Uint8Array,
  name: DigestName,
  expected: string,
): boolean {
  const again = createDigest(name);
  hashPrefix(file.fd, buf, file.size, again);
  return again.hex() === expected;
}

function fileChanged(file: OpenedFile, what = "changed"): MoatError {
  return new MoatError(
    Code.ERR_FILE_CHANGED,
    `File "${file.path}" ${what} while being sent; get it again`,
  );
}

/**
 * How long ago a file must have last changed before its digest is kept, in
 * ns. Deno reports the change time in whole seconds (and the modification
 * time in ms), and the kernel stamps both from a coarse clock, so two writes
 * close together can leave the same stamp; a change made after an entry was
 * kept comes at least a second later, which no truncation hides. Git's
 * "racily clean" rule, for the same reason.
 */
const SETTLED_NS = 2_000_000_000n;

/** Options for {@linkcode DigestCache}. */
export interface DigestCacheOptions {
  /** Entries kept (oldest dropped first). @default {256} */
  limit?: number;
  /** The clock, ms since the epoch. @default {Date.now} */
  now?: () => number;
}

/**
 * Remembers the digests of files already sent, keyed by digest name and the
 * whole {@linkcode FileStamp}, so that serving the same file again does not
 * hash it again (it matters for SHA-256; CRC-32 is nearly free). Only files
 * whose last change is {@linkcode SETTLED_NS} old are kept: a file rewritten
 * in place, even with the same size and its modification time put back, gets
 * a new change time, so it misses and is hashed afresh.
 */
export class DigestCache {
  #map = new Map<string, string>();
  #limit: number;
  #now: () => number;

  /**
   * @param options Size and clock.
   */
  constructor(options: DigestCacheOptions = {}) {
    this.#limit = options.limit ?? 256;
    this.#now = options.now ?? Date.now;
  }

  #key(stamp: FileStamp, name: DigestName): string {
    const { dev, ino, size, mtimeNs, ctimeNs } = stamp;
    return `${name}:${dev}:${ino}:${size}:${mtimeNs}:${ctimeNs}`;
  }

  /**
   * @param stamp An open file's stamp.
   * @param name Which digest.
   * @returns Its cached hex digest, if any.
   */
  get(stamp: FileStamp, name: DigestName): string | undefined {
    return this.#map.get(this.#key(stamp, name));
  }

  /**
   * Keeps a digest, unless the file changed too recently to trust its stamp.
   *
   * @param stamp The stamp the file had before and after it was hashed.
   * @param name Which digest.
   * @param digest Its hex digest.
   */
  set(stamp: FileStamp, name: DigestName, digest: string): void {
    const age = BigInt(Math.floor(this.#now())) * 1_000_000n - stamp.ctimeNs;
    if (stamp.ctimeNs <= 0n || age < SETTLED_NS) return;
    const key = this.#key(stamp, name);
    this.#map.delete(key);
    this.#map.set(key, digest);
    if (this.#map.size > this.#limit) {
      const oldest = this.#map.keys().next().value;
      if (oldest !== undefined) this.#map.delete(oldest);
    }
  }
}

/**
 * The first send buffer of a transfer that takes its buffers from a budget:
 * no connection gets a 1 MiB buffer before its peer has taken anything.
 */
export const FIRST_CHUNK_SIZE = 65_536;

/**
 * Where {@linkcode sendFile} takes its send buffer from: a budget shared by
 * every transfer (the server's `SendBudget`), so that many peers that stop
 * reading cannot make it hold a chunk each without bound.
 */
export interface SendBuffers {
  /** Grants at most `max` payload bytes (at least 1), waiting while the budget is spent. */
  take(max: number): Promise<number>;
  /** Grows a grant of `held` bytes toward `max` without waiting; returns the new grant. */
  grow(held: number, max: number): number;
  /** Returns the last grant. */
  give(grant: number): void;
}

/** Options for {@linkcode sendFile}. */
export interface SendFileOptions {
  /** First byte to send. @default {0} */
  offset?: number;
  /** Payload bytes per frame. @default {1_048_576} */
  chunkSize?: number;
  /** Frame the data (FileMeta, FileData…, FileEnd) or send raw bytes. @default {true} */
  framed?: boolean;
  /** The digest FileEnd carries. @default {"sha256"} (what a Get without the field asks for) */
  digest?: DigestName;
  /** Digests of files sent before. */
  cache?: DigestCache;
  /** Called after each chunk is accepted by the socket. */
  onProgress?: (sent: number) => void;
  /**
   * Take the send buffer from this budget: the first is at most
   * {@linkcode FIRST_CHUNK_SIZE}, and it doubles toward `chunkSize` after
   * each chunk the socket took, as far as the budget has room. Without it,
   * one `chunkSize` buffer is allocated.
   */
  buffers?: SendBuffers;
}

/** What {@linkcode sendFile} did. */
export interface SendResult {
  /** Bytes of file content sent (from the offset). */
  bytes: number;
  /** Which digest was sent. */
  digestName: DigestName;
  /** Hex digest of the whole file ("" for raw sends). */
  digest: string;
}

function readAt(fd: number, buf: Uint8Array, len: number, pos: number) {
  return fs.readSync(fd, buf, PAYLOAD_OFFSET, len, pos);
}

/**
 * Hashes `[0, end)` of an open file into `hash`, reusing `buf`.
 */
function hashPrefix(fd: number, buf: Uint8Array, end: number, hash: Digest) {
  let pos = 0;
  const chunk = buf.length - PAYLOAD_OFFSET;
  while (pos < end) {
    const n = readAt(fd, buf, Math.min(chunk, end - pos), pos);
    if (n === 0) {
      throw new MoatError(
        Code.ERR_FILE_CHANGED,
        "File shrank while being read",
      );
    }
    hash.update(buf.subarray(PAYLOAD_OFFSET, PAYLOAD_OFFSET + n));
    pos += n;
  }
}

/**
 * Sends `file` from `offset` to its size at open time. Framed sends write a
 * FileMeta frame, FileData frames and a FileEnd frame carrying the digest of
 * the whole file; raw sends write the bytes alone.
 *
 * The file must not change while it is sent: its {@linkcode FileStamp} is
 * read before the first byte and again after the last one is accepted, and
 * if the two differ (or differ from what the jail opened) no FileEnd is
 * written, so the receiver never takes a file that is part one version and
 * part another. When only the change time moved (a rename or chmod during
 * the send moves it too, as does a write that puts the mtime back), a framed
 * send reads the file again and goes on only if it still hashes to the
 * digest being sent; a raw send, which has no digest, counts it as a change.
 *
 * @param sink The connection.
 * @param file An opened regular file.
 * @param options Offset, chunk size, framing, digest cache, progress.
 * @returns Bytes sent and the digest.
 * @throws {MoatError} `ERR_FILE_CHANGED` when the file changes or shrinks
 * while sent; the caller sends it to the peer in place of FileEnd.
 * @throws {ConnectionClosedError} When the peer goes away.
 */
export async function sendFile(
  sink: ByteSink,
  file: OpenedFile,
  options: SendFileOptions = {},
): Promise<SendResult> {
  const offset = options.offset ?? 0;
  const want = Math.max(
    1,
    Math.min(options.chunkSize ?? DEFAULT_CHUNK_SIZE, file.size - offset || 1),
  );
  const buffers = options.buffers;
  const grant: Grant = {
    want,
    chunk: buffers === undefined
      ? want
      : await buffers.take(Math.min(want, FIRST_CHUNK_SIZE)),
  };
  try {
    return await sendChunks(sink, file, { ...options, grant });
  } finally {
    buffers?.give(grant.chunk);
  }
}

/** The payload bytes a send wants per chunk, and those it holds now. */
interface Grant {
  readonly want: number;
  chunk: number;
}

/** {@linkcode sendFile} once its first buffer is granted; records what it grows to in `grant`. */
async function sendChunks(
  sink: ByteSink,
  file: OpenedFile,
  options: SendFileOptions & { grant: Grant },
): Promise<SendResult> {
  const offset = options.offset ?? 0;
  const framed = options.framed ?? true;
  const { buffers, grant } = options;
  let buf = new Uint8Array(PAYLOAD_OFFSET + grant.chunk);
  const digestName = options.digest ?? "sha256";
  const before = readStamp(file.fd);
  if (!matchesOpened(before, file)) throw fileChanged(file);
  const cached = framed ? options.cache?.get(before, digestName) : undefined;
  const hash = framed && cached === undefined
    ? createDigest(digestName)
    : undefined;
  if (hash && offset > 0) hashPrefix(file.fd, buf, offset, hash);

  if (framed) {
    const meta = new TextEncoder().encode(JSON.stringify(
      {
        path: file.path,
        size: file.size,
        offset,
        mtimeMs: file.mtimeMs,
        digest: digestName,
      } satisfies FileMeta,
    ));
    const head = new Uint8Array(HEADER_SIZE + meta.length);
    encodeHeader(Kind.FileMeta, meta.length, head, 0);
    head.set(meta, HEADER_SIZE);
    await sink.write(head);
  }

  let pos = offset;
  const start = framed ? PAYLOAD_OFFSET - HEADER_SIZE : PAYLOAD_OFFSET;
  while (pos < file.size) {
    const n = readAt(file.fd, buf, Math.min(grant.chunk, file.size - pos), pos);
    if (n === 0) throw fileChanged(file, "shrank");
    const payload = buf.subarray(PAYLOAD_OFFSET, PAYLOAD_OFFSET + n);
    hash?.update(payload);
    if (framed) encodeHeader(Kind.FileData, n, buf, start);
    await sink.write(buf.subarray(start, PAYLOAD_OFFSET + n));
    pos += n;
    options.onProgress?.(pos - offset);
    if (buffers !== undefined && grant.chunk < grant.want && pos < file.size) {
      // The socket took a chunk: a larger one, if the budget has room.
      const grown = buffers.grow(
        grant.chunk,
        Math.min(grant.want, grant.chunk * 2),
      );
      if (grown > grant.chunk) {
        grant.chunk = grown;
        buf = new Uint8Array(PAYLOAD_OFFSET + grown);
      }
    }
  }

  // Every byte was read: the file must be the one it was at the start.
  const after = readStamp(file.fd);
  const same = sameStamp(before, after);
  if (!same && !(framed && onlyCtimeMoved(before, after))) {
    throw fileChanged(file);
  }
  let digest = "";
  if (framed) {
    digest = cached ?? hash!.hex();
    if (!same && !hashesTo(file, buf, digestName, digest)) {
      throw fileChanged(file);
    }
    if (same && cached === undefined) {
      options.cache?.set(before, digestName, digest);
    }
    const bytes = Uint8Array.fromHex(digest);
    const end = new Uint8Array(HEADER_SIZE + bytes.length);
    encodeHeader(Kind.FileEnd, bytes.length, end, 0);
    end.set(bytes, HEADER_SIZE);
    await sink.write(end);
  }
  return { bytes: pos - offset, digestName, digest };
}

/** Options for {@linkcode prepareDownload}. */
export interface PrepareDownloadOptions {
  /** Replace an existing target. @default {false} */
  force?: boolean;
  /** Continue from what the temporary file holds. @default {false} */
  resume?: boolean;
  /** The digest to ask for and check. @default {"crc32"} */
  digest?: DigestName;
}

/**
 * A download target: the temporary file being written and its state. Own it
 * with `await using`: disposing closes the temporary file and removes it
 * unless it was committed or kept.
 */
export interface Download extends AsyncDisposable {
  /** Final path. */
  readonly target: string;
  /** Temporary path beside it ({@linkcode partPathOf}). */
  readonly partPath: string;
  /** Bytes already present (resume), where the request starts. */
  readonly offset: number;
  /** Receives the file; see {@linkcode receiveFile}. */
  readonly fd: number;
  /** Fed the part's existing bytes (resume), then everything received. */
  readonly digest: Digest;
  /** Whether {@linkcode Download.commit} renamed the part over the target. */
  readonly committed: boolean;
  /** Closes the temporary file. Idempotent. */
  close(): void;
  /** Closes and removes the temporary file. */
  discard(): void;
  /** Leaves the temporary file for `--resume` when disposed. */
  keep(): void;
  /** Fsyncs, closes, renames the part over the target and fsyncs the directory. */
  commit(): void;
  /** Closes; removes the temporary file unless committed or kept. */
  [Symbol.asyncDispose](): Promise<void>;
}

class PartFile implements Download {
  readonly target: string;
  readonly partPath: string;
  readonly offset: number;
  readonly fd: number;
  readonly digest: Digest;
  #open = true;
  #committed = false;
  #kept = false;

  constructor(
    target: string,
    part: { fd: number; offset: number; digest: Digest },
  ) {
    this.target = target;
    this.partPath = partPathOf(target);
    this.fd = part.fd;
    this.offset = part.offset;
    this.digest = part.digest;
  }

  get committed(): boolean {
    return this.#committed;
  }

  close(): void {
    if (!this.#open) return;
    this.#open = false;
    fs.closeSync(this.fd);
  }

  discard(): void {
    this.close();
    this.#kept = false;
    fs.rmSync(this.partPath, { force: true });
  }

  keep(): void {
    this.#kept = true;
  }

  commit(): void {
    fs.fsyncSync(this.fd);
    this.close();
    fs.renameSync(this.partPath, this.target);
    this.#committed = true;
    fsyncDir(path.dirname(this.target));
  }

  async [Symbol.asyncDispose](): Promise<void> {
    this.close();
    if (this.#committed || this.#kept) return;
    await fs.promises.rm(this.partPath, { force: true });
  }
}

/**
 * Opens the temporary file beside `target`, refusing to replace an existing
 * file without `force`. With `resume`, keeps the bytes already there and
 * hashes them, so the final check still covers the whole file.
 *
 * @param target Where the file will end up.
 * @param options Force and resume.
 * @returns The prepared download; dispose of it (`await using`).
 * @throws {MoatError} `ERR_EXISTS` when the target exists and `force` is off,
 * or is not a regular file; `ERR_IO` when the part cannot be opened.
 */
export function prepareDownload(
  target: string,
  options: PrepareDownloadOptions = {},
): Download {
  let existing: fs.Stats | undefined;
  try {
    existing = fs.lstatSync(target);
  } catch {
    // Nothing there yet.
  }
  if (existing && !existing.isFile()) {
    // --force replaces files, never a device, FIFO, link or directory
    // (an atomic rename over /dev/null would replace the device itself).
    throw new MoatError(
      Code.ERR_EXISTS,
      `Refusing to replace "${target}": it is not a regular file`,
    );
  }
  if (existing && !options.force) {
    throw new MoatError(
      Code.ERR_EXISTS,
      `Refusing to overwrite "${target}": it exists (use --force)`,
    );
  }
  const partPath = partPathOf(target);
  const digest = createDigest(options.digest ?? DEFAULT_DIGEST);
  let fd: number;
  let offset = 0;
  try {
    if (options.resume && fs.existsSync(partPath)) {
      fd = fs.openSync(partPath, "r+");
      offset = fs.fstatSync(fd).size;
      const buf = new Uint8Array(PAYLOAD_OFFSET + DEFAULT_CHUNK_SIZE);
      hashPrefix(fd, buf, offset, digest);
    } else {
      fd = fs.openSync(partPath, "w", 0o600);
    }
  } catch (err) {
    throw new MoatError(
      Code.ERR_IO,
      `Cannot write "${partPath}": ${(err as Error).message}`,
      undefined,
      { cause: err },
    );
  }
  return new PartFile(target, { fd, offset, digest });
}

/** Options for {@linkcode receiveFile}. */
export interface ReceiveFileOptions {
  /** Called as bytes arrive, with the bytes of this run and the total expected in it. */
  onProgress?: (received: number, expected: number) => void;
}

/** What {@linkcode receiveFile} did. */
export interface ReceiveResult {
  /** Bytes received in this run. */
  bytes: number;
  /** Size of the whole file. */
  size: number;
  /** Which digest was checked. */
  digestName: DigestName;
  /** Hex digest of the whole file, verified. */
  digest: string;
}

/** Writes all of `bytes` at file position `pos` (pwrite: the fd's offset is not used). */
function writeAllAt(fd: number, bytes: Uint8Array, pos: number) {
  let off = 0;
  while (off < bytes.length) {
    off += fs.writeSync(fd, bytes, off, bytes.length - off, pos + off);
  }
}

/** Where {@linkcode receiveFileData} passes the file's bytes. */
export interface FileDataSink {
  /**
   * Takes each piece of the file in order; the piece is only valid until
   * this returns or its promise settles.
   *
   * @param bytes The piece.
   * @param at Bytes of this run before it.
   */
  write(bytes: Uint8Array, at: number): void | Promise<void>;
  /** Called after each frame header arrives. */
  onFrame?: () => void;
  /** Called as bytes arrive, with the bytes of this run and the total expected in it. */
  onProgress?: ((received: number, expected: number) => void) | undefined;
}

/**
 * The body of a download, after FileMeta: FileData frames passed to `sink`
 * up to FileEnd, whose digest must be the one `hash` computes over exactly
 * `meta.size - meta.offset` bytes. Shared by {@linkcode receiveFile} (into a
 * part file) and the client's `getStream` (into a sink such as stdout).
 *
 * @param reader The connection's frame reader, positioned after FileMeta.
 * @param meta The FileMeta the server sent.
 * @param hash A fresh digest of the kind FileMeta names.
 * @param sink Where the bytes go.
 * @returns Bytes received and the verified digest (hex).
 * @throws {IntegrityError} On a size or digest mismatch.
 * @throws {ConnectionClosedError} When the connection ends early.
 * @throws {ProtocolError} On an unexpected frame or a FileEnd of the wrong size.
 * @throws {MoatError} The server's error (see `errorFromFrame`).
 */
export async function receiveFileData(
  reader: FrameReader,
  meta: FileMeta,
  hash: Digest,
  sink: FileDataSink,
): Promise<{ bytes: number; digest: string }> {
  const expected = meta.size - meta.offset;
  let received = 0;
  for (;;) {
    const header = await reader.readHeader();
    if (header === null) {
      throw new ConnectionClosedError(
        `Connection closed after ${received} of ${expected} bytes`,
      );
    }
    sink.onFrame?.();
    if (header.type === Kind.FileData) {
      if (received + header.length > expected) {
        throw new IntegrityError(
          `Server sent more than the announced ${meta.size} bytes`,
        );
      }
      let frag: Uint8Array | null;
      while ((frag = await reader.readFragment()) !== null) {
        hash.update(frag);
        // Awaited only when it is a promise: the part file's writes are
        // synchronous and this is the bulk data path.
        const wrote = sink.write(frag, received);
        if (wrote !== undefined) await wrote;
        received += frag.length;
        // Per read, not per frame: a frame is up to 1 MiB, which a slow
        // link takes minutes to carry, and the client's stall timeout
        // listens here.
        sink.onProgress?.(received, expected);
      }
    } else if (header.type === Kind.FileEnd) {
      const sent = await reader.readPayload();
      if (sent.length !== hash.size) {
        throw new ProtocolError(
          `File end carries ${sent.length} bytes, a ${hash.name} digest has ${hash.size}`,
        );
      }
      if (received !== expected) {
        throw new IntegrityError(
          `Size mismatch: received ${received} of ${expected} bytes`,
        );
      }
      const digest = sent.toHex();
      const actual = hash.hex();
      if (actual !== digest) {
        throw new IntegrityError(
          `${hash.name} mismatch: server sent ${digest}, file hashes to ${actual}`,
        );
      }
      return { bytes: received, digest: actual };
    } else if (header.type === Kind.Error) {
      throw errorFromFrame(decodeError(await reader.readPayload()));
    } else {
      throw new ProtocolError(
        `Unexpected frame type 0x${header.type.toString(16)} during transfer`,
      );
    }
  }
}

/** Whether a failed download's part is worthless: damaged, or of a file that changed. */
function spoils(err: unknown): boolean {
  return err instanceof IntegrityError || err instanceof ProtocolError ||
    (err instanceof MoatError && err.code === Code.ERR_FILE_CHANGED);
}

/**
 * Receives FileData frames into `download` after its FileMeta was read, checks
 * the byte count and the digest from FileEnd, and commits the download
 * (fsync, rename over the target). The digest is the one FileMeta names, which
 * must be the one the download asked for. On a mismatch, or an Error frame
 * saying the file changed while sent, the temporary file is removed; on an
 * interrupted connection it is kept for `--resume`. Either way the target
 * never appears unless the whole file checked out.
 *
 * @param reader The connection's frame reader, positioned after FileMeta.
 * @param download From {@linkcode prepareDownload}.
 * @param meta The FileMeta the server sent.
 * @param options Progress callback.
 * @returns Sizes and the verified digest.
 * @throws {IntegrityError} On a size or digest mismatch.
 * @throws {ConnectionClosedError} When the connection ends early.
 * @throws {ProtocolError} On an unexpected frame.
 * @throws {MoatError} The server's error (see `errorFromFrame`), e.g.
 * `ERR_FILE_CHANGED`.
 */
export async function receiveFile(
  reader: FrameReader,
  download: Download,
  meta: FileMeta,
  options: ReceiveFileOptions = {},
): Promise<ReceiveResult> {
  const { fd, digest: hash } = download;
  try {
    if (meta.offset !== download.offset) {
      throw new ProtocolError(
        `Server started at byte ${meta.offset}, expected ${download.offset}`,
      );
    }
    if (meta.digest !== hash.name) {
      throw new ProtocolError(
        `Server announced a ${meta.digest} digest, ${hash.name} was asked for`,
      );
    }
    if (download.offset > 0) fs.ftruncateSync(fd, download.offset);
    const { bytes, digest } = await receiveFileData(reader, meta, hash, {
      write: (frag, at) => writeAllAt(fd, frag, download.offset + at),
      onProgress: options.onProgress,
    });
    download.commit();
    return { bytes, size: meta.size, digestName: hash.name, digest };
  } catch (err) {
    // A corrupt part is worthless; an interrupted one is kept for --resume.
    if (spoils(err)) download.discard();
    else {
      download.keep();
      download.close();
    }
    throw err;
  }
}

function fsyncDir(dir: string) {
  try {
    const dfd = fs.openSync(dir, "r");
    try {
      fs.fsyncSync(dfd);
    } finally {
      fs.closeSync(dfd);
    }
  } catch {
    // Some platforms cannot fsync a directory; the rename itself is atomic.
  }
}
