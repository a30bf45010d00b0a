/**
 * File-system helpers shared by segment logs, the vault and the shipper:
 * directory fsync, atomic file replacement, reading a file that may be
 * absent, the `code` of a system error, and a best-effort single-writer lock.
 *
 * @module
 */

import {
  mkdir,
  open,
  readdir,
  readFile,
  rename,
  rm,
  unlink,
} from "node:fs/promises";
import { basename, dirname, join } from "node:path";
import process from "node:process";
import { MoatError } from "../errors.ts";

/**
 * Fsyncs a directory, so that entries created, renamed or removed in it
 * survive a crash.
 *
 * @param dir The directory.
 * @returns Resolves once the directory is on disk.
 * @throws {Error} The system error (for example EIO).
 */
export async function syncDir(dir: string): Promise<void> {
  const handle = await open(dir, "r");
  try {
    await handle.sync();
  } finally {
    await handle.close();
  }
}

/**
 * Creates a directory and any missing parents, and fsyncs the parent of
 * each directory created, so that the new directories survive a crash.
 *
 * @param path The directory.
 * @param mode Mode for new directories.
 * @returns When the directory exists durably.
 * @throws {Error} A system error.
 */
export async function makeDir(path: string, mode = 0o777): Promise<void> {
  const first = await mkdir(path, { recursive: true, mode });
  if (first === undefined) return;
  for (let dir = path;; dir = dirname(dir)) {
    await syncDir(dirname(dir));
    if (dir === first || dirname(dir) === dir) break;
  }
}

/**
 * Replaces `path` with `bytes` atomically: writes a temporary file beside it,
 * fsyncs it, renames it over `path`, and fsyncs the directory. After a crash
 * the file holds either the old or the new contents, never a mix.
 *
 * @param path The file to replace.
 * @param bytes The new contents.
 * @returns Resolves once the new contents are durable.
 * @throws {Error} The system error; the old contents are then untouched.
 */
export async function writeFileAtomic(
  path: string,
  bytes: Uint8Array,
): Promise<void> {
  const temp = join(
    dirname(path),
    `.${basename(path)}.tmp-${process.pid}-${_randomSuffix()}`,
  );
  const handle = await open(temp, "wx", 0o600);
  try {
    try {
      await handle.write(bytes, 0, bytes.length, 0);
      await handle.sync();
    } finally {
      await handle.close();
    }
    await rename(temp, path);
  } catch (error) {
    await rm(temp, { force: true }).catch(() => {});
    throw error;
  }
  await syncDir(dirname(path));
}

/**
 * Removes temporary files that {@linkcode writeFileAtomic} left beside `path`
 * when a crash interrupted it. Call only while holding the lock.
 *
 * @param path The file whose temporaries to remove.
 * @returns When done.
 */
export async function removeTempFiles(path: string): Promise<void> {
  const prefix = `.${basename(path)}.tmp-`;
  let names: string[];
  try {
    names = await readdir(dirname(path));
  } catch {
    return;
  }
  for (const name of names) {
    if (name.startsWith(prefix)) {
      await rm(join(dirname(path), name), { force: true });
    }
  }
}

/** A held lock; {@linkcode Lock.release} removes the lock file. */
export interface Lock {
  /** Removes the lock file. Safe to call more than once. */
  release(): Promise<void>;
}

/**
 * Takes a single-writer lock by creating `path` exclusively with this process
 * id inside. A lock file left by a process that no longer exists is taken
 * over. Best effort: two processes that find the same stale lock at the same
 * instant can both win, and a reused process id keeps a stale lock alive.
 *
 * @param path The lock file.
 * @param what What is being locked, for the error message (e.g. `Vault "/srv/v"`).
 * @returns The held lock.
 * @throws {MoatError} `ERR_LOCKED` if a live process holds the lock.
 */
export async function acquireLock(path: string, what: string): Promise<Lock> {
  for (let attempt = 0; attempt < 2; attempt++) {
    try {
      const handle = await open(path, "wx", 0o600);
      try {
        await handle.write(new TextEncoder().encode(`${process.pid}\n`));
      } finally {
        await handle.close();
      }
      let held = true;
      return {
        async release() {
          if (!held) return;
          held = false;
          await unlink(path).catch(() => {});
        },
      };
    } catch (error) {
      if (systemErrorCode(error) !== "EEXIST") throw error;
    }
    const text = await readFile(path, "utf8").catch(() => "");
    const pid = Number.parseInt(text, 10);
    if (Number.isSafeInteger(pid) && pid > 0 && _alive(pid)) {
      throw new MoatError(
        "ERR_LOCKED",
        `${what} is in use by process ${pid} (lock file "${path}")`,
      );
    }
    await unlink(path).catch(() => {});
  }
  throw new MoatError(
    "ERR_LOCKED",
    `${what} is being locked by another process`,
  );
}

/**
 * Reads a whole file that may not exist.
 *
 * @param path The file.
 * @returns Its bytes, or undefined if it does not exist (ENOENT).
 * @throws {Error} Any other system error.
 */
export async function readIfExists(
  path: string,
): Promise<Uint8Array | undefined> {
  try {
    const buf = await readFile(path);
    return new Uint8Array(buf.buffer, buf.byteOffset, buf.byteLength);
  } catch (error) {
    if (systemErrorCode(error) === "ENOENT") return undefined;
    throw error;
  }
}

/**
 * Reads a whole UTF-8 text file that may not exist.
 *
 * @param path The file.
 * @returns Its text, or undefined if it does not exist (ENOENT).
 * @throws {Error} Any other system error.
 */
export async function readTextIfExists(
  path: string,
): Promise<string | undefined> {
  const bytes = await readIfExists(path);
  // ignoreBOM keeps a BOM in the text, as readFile(path, "utf8") does.
  return bytes === undefined
    ? undefined
    : new TextDecoder("utf-8", { ignoreBOM: true }).decode(bytes);
}

/**
 * The `code` of a system error, or undefined.
 *
 * @param error Anything thrown.
 * @returns For example `"ENOENT"`.
 */
export function systemErrorCode(error: unknown): string | undefined {
  if (typeof error !== "object" || error === null) return undefined;
  const code = (error as { code?: unknown }).code;
  return typeof code === "string" ? code : undefined;
}

function _alive(pid: number): boolean {
  if (pid === process.pid) return true;
  try {
    process.kill(pid, 0);
    return true;
  } catch (error) {
    return systemErrorCode(error) === "EPERM";
  }
}

function _randomSuffix(): string {
  return Math.floor(Math.random() * 0x100000000).toString(16);
}
