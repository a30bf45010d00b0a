/**
 * Follows a log file like `tail -F`, by polling: yields complete lines with
 * the file's identity and the byte offset after each line, so a shipper can
 * save its position and resume exactly there.
 *
 * Policy:
 *
 * - A line ends at `\n`; the newline is not part of the line (a `\r` before
 *   it is kept). A last line without its newline is held back until the
 *   newline arrives.
 * - A line longer than `maxLineBytes` is split into pieces of exactly
 *   `maxLineBytes`; every piece but the last has `partial: true`. Nothing is
 *   dropped.
 * - Rotation by rename (the path now names another file): the old file is
 *   read to its end, polled once more one interval later, and read to its end
 *   again; then following switches to the new file from its start. Bytes
 *   after the old file's last newline are yielded as a final line. A file
 *   rotated away before the follower reached it (the path was rotated twice
 *   while the old file was still being read) is not read; a `skipped` event
 *   names the rotation-named files written after the old one, so the loss
 *   is loud.
 * - Truncation (copytruncate: the file got shorter than the offset read):
 *   held-back bytes are yielded as a line, then reading restarts at offset 0.
 *   A file truncated and regrown past the old offset between two polls is
 *   not detected (as with `tail -F`).
 * - A missing file is waited for; when it appears it is read from its start.
 *   A deleted file is read to its end and then the path is waited for.
 * - Resuming from a saved position: if the path still names the saved file
 *   (same device and inode) reading continues at the saved offset (from 0 if
 *   the file is now shorter). Otherwise the file was rotated while nobody
 *   followed it: a file with the saved identity, named like a rotation of
 *   the path (`app.log.1`, `app.log-20250101`) and at least as long as the
 *   saved offset, is read from the saved offset to its end first. If none is
 *   found (deleted, or compressed), its unread rest is lost, a `lost` event
 *   says so, and the current file is read from its start. Identity is device
 *   and inode: a file system that reuses the inode number of a deleted file
 *   for a new rotation-named file can fool this check.
 *
 * @module
 */

import { open, readdir, stat } from "node:fs/promises";
import type { FileHandle } from "node:fs/promises";
import { basename, dirname, join } from "node:path";
import { systemErrorCode } from "../segment/fs.ts";

/** Where a follower stands in a file. */
export interface FilePosition {
  /** Device number of the file. */
  dev: number;
  /** Inode number of the file. */
  ino: number;
  /** Byte offset just after the last line consumed. */
  offset: number;
}

/** One line read from a followed file. */
export interface FollowedLine extends FilePosition {
  /** The line, without its newline. May be kept: it is not reused. */
  line: Uint8Array;
  /** True for a piece of an overlong line that the next piece continues. */
  partial: boolean;
}

/** What the follower noticed; for the shipper to report. */
export type FollowEvent =
  | { type: "waiting"; path: string }
  | { type: "opened"; path: string; dev: number; ino: number; offset: number }
  | { type: "rotated"; path: string; dev: number; ino: number }
  | {
    type: "truncated";
    path: string;
    dev: number;
    ino: number;
    offset: number;
  }
  | {
    type: "found";
    path: string;
    file: string;
    dev: number;
    ino: number;
    offset: number;
  }
  | { type: "lost"; path: string; dev: number; ino: number; offset: number }
  | { type: "skipped"; path: string; files: string[] }
  | { type: "split"; path: string; bytes: number };

/** Options for {@linkcode follow}. */
export interface FollowOptions {
  /** Ends the iteration (it returns normally and closes the file). */
  signal?: AbortSignal;
  /** Milliseconds between polls at end of file, 1 to 1000. @default {200} */
  pollMs?: number;
  /** Resume here (from a saved {@linkcode FollowedLine}). */
  start?: FilePosition;
  /**
   * Without `start`: begin after the last complete line of the file as it is
   * now (like `tail -n 0 -F`), instead of at its start.
   * @default {false}
   */
  fromEnd?: boolean;
  /** Longest line yielded whole; longer lines are split. @default {1048576} */
  maxLineBytes?: number;
  /** Bytes read per call (one batch per read). @default {262144} */
  readBytes?: number;
  /** Told about rotation, truncation, waiting, splitting. */
  onEvent?: (event: FollowEvent) => void;
}

/** Default longest line: 1 MiB. */
export const DEFAULT_MAX_LINE_BYTES: number = 1024 * 1024;
/** Most directory entries examined when looking for a rotated file. */
const MAX_SIBLINGS = 10_000;

/**
 * Splits bytes into lines and tracks the offset after each. Shared by the
 * file follower and {@linkcode readLines}.
 */
class _LineSplitter {
  #held: Uint8Array[] = [];
  #heldBytes = 0;
  /** Offset just after the last byte handed out as (part of) a line. */
  offset: number;
  #max: number;
  #onSplit: (bytes: number) => void;

  constructor(offset: number, max: number, onSplit: (bytes: number) => void) {
    this.offset = offset;
    this.#max = max;
    this.#onSplit = onSplit;
  }

  /** Bytes held back (no newline yet). */
  get held(): number {
    return this.#heldBytes;
  }

  /** Drops held bytes (their file is being re-read from elsewhere). */
  reset(offset: number): void {
    this.#held = [];
    this.#heldBytes = 0;
    this.offset = offset;
  }

  /** Splits `chunk`, which follows the held bytes in the file. */
  push(
    chunk: Uint8Array,
    id: { dev: number; ino: number },
    out: FollowedLine[],
  ): void {
    let start = 0;
    while (start < chunk.length) {
      const nl = chunk.indexOf(0x0a, start);
      const end = nl === -1 ? chunk.length : nl;
      // Split an overlong line into maxLineBytes pieces.
      while (this.#heldBytes + (end - start) > this.#max) {
        const take = this.#max - this.#heldBytes;
        this.#emit(chunk.subarray(start, start + take), 0, true, id, out);
        start += take;
      }
      if (nl === -1) {
        if (start < chunk.length) {
          this.#held.push(chunk.subarray(start));
          this.#heldBytes += chunk.length - start;
        }
        return;
      }
      this.#emit(chunk.subarray(start, nl), 1, false, id, out);
      start = nl + 1;
    }
  }

  /** Yields held bytes as a final line (file ended without a newline). */
  flush(id: { dev: number; ino: number }, out: FollowedLine[]): void {
    if (this.#heldBytes > 0) this.#emit(new Uint8Array(0), 0, false, id, out);
  }

  #emit(
    tail: Uint8Array,
    newline: number,
    partial: boolean,
    id: { dev: number; ino: number },
    out: FollowedLine[],
  ): void {
    let line = tail;
    if (this.#heldBytes > 0) {
      line = new Uint8Array(this.#heldBytes + tail.length);
      let at = 0;
      for (const part of this.#held) {
        line.set(part, at);
        at += part.length;
      }
      line.set(tail, at);
      this.#held = [];
      this.#heldBytes = 0;
    }
    if (partial) this.#onSplit(line.length);
    this.offset += line.length + newline;
    out.push({ line, dev: id.dev, ino: id.ino, offset: this.offset, partial });
  }
}

interface _Open {
  handle: FileHandle;
  dev: number;
  ino: number;
  /** The path it was opened by (a rotated sibling, or the followed path). */
  file: string;
}

async function _open(file: string): Promise<_Open | undefined> {
  let handle: FileHandle;
  try {
    handle = await open(file, "r");
  } catch (error) {
    const code = systemErrorCode(error);
    if (code === "ENOENT" || code === "ENOTDIR") return undefined;
    throw error;
  }
  const st = await handle.stat();
  return { handle, dev: st.dev, ino: st.ino, file };
}

async function _statId(
  file: string,
): Promise<{ dev: number; ino: number } | undefined> {
  try {
    const st = await stat(file);
    return { dev: st.dev, ino: st.ino };
  } catch (error) {
    const code = systemErrorCode(error);
    if (code === "ENOENT" || code === "ENOTDIR") return undefined;
    throw error;
  }
}

/**
 * Regular files in `path`'s directory named like a rotation of it
 * (`app.log.1`, `app.log-20250101`, `app.log_old`), at most
 * {@linkcode MAX_SIBLINGS} names examined.
 */
async function _rotatedSiblings(
  path: string,
): Promise<
  { file: string; dev: number; ino: number; size: number; mtimeMs: number }[]
> {
  const dir = dirname(path);
  const prefix = basename(path);
  let names: string[];
  try {
    names = await readdir(dir);
  } catch {
    return [];
  }
  const out = [];
  for (const name of names.slice(0, MAX_SIBLINGS)) {
    if (
      !name.startsWith(prefix) || !".-_".includes(name[prefix.length] ?? "/")
    ) {
      continue;
    }
    const file = join(dir, name);
    try {
      const st = await stat(file);
      if (st.isFile()) {
        out.push({
          file,
          dev: st.dev,
          ino: st.ino,
          size: st.size,
          mtimeMs: st.mtimeMs,
        });
      }
    } catch {
      // Vanished meanwhile.
    }
  }
  return out;
}

/**
 * Finds the rotated file to resume: a rotation-named sibling with the saved
 * identity, at least as long as the saved offset. The name and size checks
 * keep an unrelated file that reused the inode number from being read.
 */
async function _findSibling(
  path: string,
  saved: FilePosition,
): Promise<string | undefined> {
  const found = (await _rotatedSiblings(path)).find((s) =>
    s.dev === saved.dev && s.ino === saved.ino && s.size >= saved.offset
  );
  return found?.file;
}

/**
 * Names rotated files written after the file being left was last written,
 * other than it and the new file: files rotated away before the follower
 * reached them, whose lines will not be read.
 */
async function _findSkipped(
  path: string,
  left: { dev: number; ino: number; mtimeMs: number },
  next: { dev: number; ino: number } | undefined,
): Promise<string[]> {
  return (await _rotatedSiblings(path))
    .filter((s) =>
      s.mtimeMs > left.mtimeMs &&
      !(s.dev === left.dev && s.ino === left.ino) &&
      !(next && s.dev === next.dev && s.ino === next.ino)
    )
    .map((s) => s.file)
    .sort();
}

function _sleep(ms: number, signal: AbortSignal | undefined): Promise<void> {
  return new Promise((resolve) => {
    if (signal?.aborted) return resolve();
    const done = () => {
      clearTimeout(timer);
      signal?.removeEventListener("abort", done);
      resolve();
    };
    const timer = setTimeout(done, ms);
    signal?.addEventListener("abort", done, { once: true });
  });
}

/** Finds the offset after the last newline in the file's final 64 KiB. */
async function _endOfLastLine(handle: FileHandle): Promise<number> {
  const size = (await handle.stat()).size;
  const from = Math.max(0, size - 65536);
  const buf = new Uint8Array(size - from);
  const { bytesRead } = await handle.read(buf, 0, buf.length, from);
  const nl = buf.subarray(0, bytesRead).lastIndexOf(0x0a);
  return nl === -1 ? (from === 0 ? 0 : size) : from + nl + 1;
}

/**
 * Follows `path` like `tail -F`, yielding batches of complete lines (one
 * batch per read). See the module documentation for the exact policy on
 * rotation, truncation, missing files, partial and overlong lines.
 *
 * @example Ship lines, saving the position after each batch
 * ```ts ignore
 * import { follow } from "./follow.ts";
 * const ac = new AbortController();
 * for await (const batch of follow("/var/log/app.log", { signal: ac.signal })) {
 *   const last = batch.at(-1)!;
 *   console.log(batch.length, "lines; resume at", last.dev, last.ino, last.offset);
 * }
 * ```
 *
 * @param path The file to follow.
 * @param options Poll interval, resume position, limits, abort signal.
 * @returns Batches of lines; never an empty batch. Breaking out of the loop
 * or aborting closes the file.
 * @throws {RangeError} For a bad option.
 * @throws {Error} A system error other than the file being missing.
 */
export async function* follow(
  path: string,
  options: FollowOptions = {},
): AsyncGenerator<FollowedLine[]> {
  const { signal, onEvent, start } = options;
  const pollMs = options.pollMs ?? 200;
  const max = options.maxLineBytes ?? DEFAULT_MAX_LINE_BYTES;
  const readBytes = options.readBytes ?? 262144;
  if (!(pollMs >= 1 && pollMs <= 1000)) {
    throw new RangeError(`Invalid pollMs: ${pollMs} is not from 1 to 1000`);
  }
  if (!Number.isSafeInteger(max) || max < 1) {
    throw new RangeError(
      `Invalid maxLineBytes: ${max} is not a positive integer`,
    );
  }
  if (!Number.isSafeInteger(readBytes) || readBytes < 1) {
    throw new RangeError(
      `Invalid readBytes: ${readBytes} is not a positive integer`,
    );
  }
  const splitter = new _LineSplitter(
    0,
    max,
    (bytes) => onEvent?.({ type: "split", path, bytes }),
  );
  let current: _Open | undefined;
  /** When the path was first seen naming another file, or undefined. */
  let rotatedAt: number | undefined;
  let waiting = false;
  let buf: Uint8Array | undefined;
  try {
    if (start !== undefined) {
      current = await _resume(path, start, splitter, onEvent);
      // A rotated sibling is drained and then left at once.
      if (current && current.file !== path) rotatedAt = -Infinity;
    } else {
      current = await _open(path);
      if (current) {
        const offset = options.fromEnd
          ? await _endOfLastLine(current.handle)
          : 0;
        splitter.reset(offset);
        onEvent?.({
          type: "opened",
          path,
          dev: current.dev,
          ino: current.ino,
          offset,
        });
      }
    }
    while (!signal?.aborted) {
      if (current === undefined) {
        current = await _open(path);
        if (current === undefined) {
          if (!waiting) onEvent?.({ type: "waiting", path });
          waiting = true;
          await _sleep(pollMs, signal);
          continue;
        }
        waiting = false;
        splitter.reset(0);
        onEvent?.({
          type: "opened",
          path,
          dev: current.dev,
          ino: current.ino,
          offset: 0,
        });
      }
      // Lines are views into the buffer: a new one after each read that
      // returned data, the same one while polling at the end.
      buf ??= new Uint8Array(readBytes);
      const position = splitter.offset + splitter.held;
      const { bytesRead } = await current.handle.read(
        buf,
        0,
        readBytes,
        position,
      );
      if (bytesRead > 0) {
        const out: FollowedLine[] = [];
        splitter.push(buf.subarray(0, bytesRead), current, out);
        buf = undefined;
        if (out.length > 0) yield out;
        continue;
      }
      // At end of file: truncated, rotated, or just quiet?
      const size = (await current.handle.stat()).size;
      if (size < position) {
        const out: FollowedLine[] = [];
        splitter.flush(current, out);
        onEvent?.({
          type: "truncated",
          path,
          dev: current.dev,
          ino: current.ino,
          offset: position,
        });
        splitter.reset(0);
        if (out.length > 0) yield out;
        continue;
      }
      const now = await _statId(path);
      const moved = now === undefined || now.dev !== current.dev ||
        now.ino !== current.ino;
      if (moved && now !== undefined) {
        if (rotatedAt === undefined) {
          rotatedAt = Date.now();
        } else if (Date.now() - rotatedAt >= pollMs) {
          // The old file stayed quiet for a whole interval: switch.
          const out: FollowedLine[] = [];
          splitter.flush(current, out);
          onEvent?.({
            type: "rotated",
            path,
            dev: current.dev,
            ino: current.ino,
          });
          const { mtimeMs } = await current.handle.stat();
          const skipped = await _findSkipped(
            path,
            { ...current, mtimeMs },
            now,
          );
          if (skipped.length > 0) {
            onEvent?.({ type: "skipped", path, files: skipped });
          }
          await current.handle.close();
          current = undefined;
          rotatedAt = undefined;
          if (out.length > 0) yield out;
          continue;
        }
      } else if (!moved) {
        rotatedAt = undefined;
      }
      await _sleep(pollMs, signal);
    }
  } finally {
    await current?.handle.close().catch(() => {});
  }
}

/** Opens the file to resume from, per the module's resume policy. */
async function _resume(
  path: string,
  start: FilePosition,
  splitter: _LineSplitter,
  onEvent: ((event: FollowEvent) => void) | undefined,
): Promise<_Open | undefined> {
  let current = await _open(path);
  if (current && (current.dev !== start.dev || current.ino !== start.ino)) {
    const sibling = await _findSibling(path, start);
    if (sibling !== undefined) {
      const old = await _open(sibling);
      if (old && old.dev === start.dev && old.ino === start.ino) {
        await current.handle.close();
        current = old;
        onEvent?.({ type: "found", path, file: sibling, ...start });
      } else {
        await old?.handle.close();
      }
    }
  } else if (current === undefined) {
    const sibling = await _findSibling(path, start);
    if (sibling !== undefined) {
      current = await _open(sibling);
      if (current) onEvent?.({ type: "found", path, file: sibling, ...start });
    }
  }
  if (current === undefined) {
    // Neither the path nor a rotated file: the saved file is gone.
    onEvent?.({ type: "lost", path, ...start });
    return undefined;
  }
  if (current.dev !== start.dev || current.ino !== start.ino) {
    onEvent?.({ type: "lost", path, ...start });
    splitter.reset(0);
    onEvent?.({
      type: "opened",
      path,
      dev: current.dev,
      ino: current.ino,
      offset: 0,
    });
    return current;
  }
  const size = (await current.handle.stat()).size;
  if (size < start.offset) {
    onEvent?.({
      type: "truncated",
      path,
      dev: current.dev,
      ino: current.ino,
      offset: start.offset,
    });
    splitter.reset(0);
  } else {
    splitter.reset(start.offset);
  }
  onEvent?.({
    type: "opened",
    path,
    dev: current.dev,
    ino: current.ino,
    offset: splitter.offset,
  });
  return current;
}

/**
 * Splits a byte stream (e.g. standard input) into lines with the same rules
 * as {@linkcode follow}. Positions carry `dev` and `ino` 0; `offset` counts
 * bytes from the start of the stream. A last line without a newline is
 * yielded when the stream ends.
 *
 * @example Usage
 * ```ts
 * import { readLines } from "./follow.ts";
 * import assert from "node:assert/strict";
 * const te = new TextEncoder();
 * const batches = await Array.fromAsync(readLines([te.encode("a\nb"), te.encode("c\nd")]));
 * const lines = batches.flat().map((l) => new TextDecoder().decode(l.line));
 * assert.deepEqual(lines, ["a", "bc", "d"]);
 * ```
 *
 * @param source Chunks of bytes.
 * @param options Longest line and split notice.
 * @returns Batches of lines, one batch per chunk that completed a line.
 */
export async function* readLines(
  source: AsyncIterable<Uint8Array> | Iterable<Uint8Array>,
  options: Pick<FollowOptions, "maxLineBytes" | "onEvent"> = {},
): AsyncGenerator<FollowedLine[]> {
  const id = { dev: 0, ino: 0 };
  const splitter = new _LineSplitter(
    0,
    options.maxLineBytes ?? DEFAULT_MAX_LINE_BYTES,
    (bytes) => options.onEvent?.({ type: "split", path: "-", bytes }),
  );
  for await (const chunk of source) {
    const out: FollowedLine[] = [];
    // Copy: a stream may reuse its chunk buffers.
    splitter.push(chunk.slice(), id, out);
    if (out.length > 0) yield out;
  }
  const out: FollowedLine[] = [];
  splitter.flush(id, out);
  if (out.length > 0) yield out;
}
