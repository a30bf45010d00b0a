/**
 * The path jail: turns a client's request path into an open file descriptor
 * for a regular file inside the served root, or refuses with a
 * {@linkcode PathError}.
 *
 * Request paths are relative POSIX paths, taken literally: nothing is
 * percent-decoded or Unicode-normalised, so `%2e%2e`, `\uFF0E\uFF0E` (full-width
 * dots) or `\u2024\u2024` (one-dot leaders) are ordinary file names. Policy:
 *
 * - `ERR_BAD_PATH`: not a string; empty; longer than {@linkcode MAX_PATH_BYTES}
 *   UTF-8 bytes or with a segment longer than {@linkcode MAX_SEGMENT_BYTES};
 *   NUL, other C0 controls, DEL or C1 controls (U+0080 to U+009F); lone UTF-16
 *   surrogates; a backslash anywhere; a leading `/` (absolute) or `//`
 *   (UNC-style); a leading Windows drive letter (`C:`, `c:foo`); an empty
 *   segment (`a//b`, trailing `/`); a segment made only of dots and/or spaces
 *   (`...`, `. `, `  `) other than `.` and `..`; any `..` segment that stays
 *   inside the root (`a/../b`), because a symbolic link can make such a path
 *   climb out; a path that names the root itself (`.`).
 * - A single `.` segment is dropped (`./a/./b` is `a/b`).
 * - `ERR_OUTSIDE_ROOT`: a `..` that climbs above the root (`../x`,
 *   `a/../../x`); a path that resolves, through symbolic links, outside the
 *   root, including dangling links that point outside; a file that changed
 *   while it was being opened (the jail cannot prove it is inside).
 * - `ERR_NOT_FOUND`: missing, a file used as a directory, a symbolic link loop.
 * - `ERR_NOT_FILE`: a directory, FIFO, socket or device, including when reached
 *   through a symbolic link that stays inside the root.
 * - `ERR_PERMISSION`: the operating system denied access (EACCES, EPERM).
 *
 * Segments with trailing dots or spaces (`a.txt.`, `a.txt `) and dot files
 * (`.env`) are literal names and are served if they exist.
 *
 * Opening is TOCTOU-safe on Linux: the path is resolved with `realpath`, its
 * containment checked segment by segment (`/srv/root2` is not inside
 * `/srv/root`), its type checked with `lstat` (so FIFOs and devices are never
 * opened), then it is opened read-only with `O_NOFOLLOW | O_NONBLOCK`, and the
 * descriptor is verified: `fstat` must show a regular file with the checked
 * device and inode, and `/proc/self/fd/N` must name a path inside the root.
 * The last check catches a directory of the path being swapped for a symbolic
 * link between the check and the open, which `O_NOFOLLOW` (final component
 * only) cannot. Without a usable `/proc` (not Linux, or Deno without `-A`:
 * Deno demands `--allow-all` to read `/proc/self/fd`), the descriptor is
 * re-checked by resolving the path again, which narrows the race but cannot
 * close it.
 *
 * Error messages quote the request path (control and invisible characters
 * escaped, long paths shortened) and never contain the server's root path.
 * {@linkcode PathError}s carry no `cause`, so no file-system message reaches a
 * peer through an error chain.
 *
 * @module
 */

import { Buffer } from "node:buffer";
import {
  closeSync,
  constants,
  fstatSync,
  lstatSync,
  openSync,
  readlinkSync,
  realpathSync,
  statSync,
} from "node:fs";
import type { BigIntStats, Stats } from "node:fs";
import { dirname, isAbsolute, join, sep } from "node:path";
import { ExitCode, MoatError, PathError, UsageError } from "./errors.ts";
import { stringifySafe } from "./text.ts";

/** Longest request path accepted, in UTF-8 bytes (Linux `PATH_MAX`). */
export const MAX_PATH_BYTES = 4096;

/** Longest path segment accepted, in UTF-8 bytes (Linux `NAME_MAX`). */
export const MAX_SEGMENT_BYTES = 255;

/** Most symbolic links followed while classifying a failed resolution (Linux `MAXSYMLINKS`). */
const MAX_LINKS = 40;

/** Longest part of a request path quoted in an error message, in UTF-16 units. */
const MAX_QUOTED = 96;

/** Read-only; never follow a final symbolic link; never block on a FIFO. */
const OPEN_FLAGS = constants.O_RDONLY | (constants.O_NOFOLLOW ?? 0) |
  (constants.O_NONBLOCK ?? 0) | (constants.O_NOCTTY ?? 0);

/** A file opened by {@linkcode Jail.open}: a descriptor plus its `fstat` facts. */
export interface OpenedFile {
  /** Descriptor opened read-only; read it with `fs.readSync(fd, buf, 0, len, position)`. */
  readonly fd: number;
  /** Size in bytes at open time. */
  readonly size: number;
  /** Device number of the opened file. */
  readonly dev: number;
  /** Inode number of the opened file. */
  readonly ino: number;
  /** Modification time at open time, in milliseconds since the epoch. */
  readonly mtimeMs: number;
  /** The normalised relative request path, e.g. `"a/b.txt"`. */
  readonly path: string;
  /** Closes the descriptor. Safe to call more than once. */
  close(): void;
}

/** A root directory that files are served from. */
export interface Jail {
  /** The root's real path (symbolic links resolved once, at creation). */
  readonly root: string;
  /**
   * Opens a regular file inside the root for reading.
   *
   * @param requestPath The path the client sent, relative to the root.
   * @returns The opened file; the caller must `close()` it.
   * @throws {PathError} `ERR_BAD_PATH`, `ERR_OUTSIDE_ROOT`, `ERR_NOT_FOUND`,
   * `ERR_NOT_FILE` or `ERR_PERMISSION`.
   * @throws {MoatError} `ERR_IO` for an unexpected system error (for example
   * EMFILE); its `cause` holds the original error, for server logs only.
   */
  open(requestPath: string): Promise<OpenedFile>;
}

/**
 * Hooks for tests. Not part of the API.
 *
 * @internal
 */
export const _internals: {
  /** Called with the real path once it passed containment, before `lstat`. */
  afterResolve: ((realPath: string) => void) | undefined;
  /** Called with the checked real path just before it is opened. */
  beforeOpen: ((realPath: string) => void) | undefined;
  /** Set to `false` to make new jails skip `/proc/self/fd` verification. */
  useProcFd: boolean;
} = { afterResolve: undefined, beforeOpen: undefined, useProcFd: true };

/**
 * Checks a request path and normalises it, without touching the file system.
 *
 * @example Usage
 * ```ts
 * import { validateRequestPath } from "./jail.ts";
 * import assert from "node:assert/strict";
 *
 * assert.equal(validateRequestPath("./docs/a.txt"), "docs/a.txt");
 * assert.throws(() => validateRequestPath("../etc/passwd"), {
 *   code: "ERR_OUTSIDE_ROOT",
 * });
 * assert.throws(() => validateRequestPath("a\\b"), { code: "ERR_BAD_PATH" });
 * ```
 *
 * @param path The path the client sent.
 * @returns The normalised relative POSIX path, e.g. `"a/b.txt"`: `.` segments
 * dropped, otherwise unchanged.
 * @throws {PathError} `ERR_BAD_PATH` for a malformed path (see the module
 * documentation), `ERR_OUTSIDE_ROOT` for a `..` that climbs above the root.
 */
export function validateRequestPath(path: string): string {
  if (typeof path !== "string") {
    throw new PathError("ERR_BAD_PATH", "Invalid path: not a string");
  }
  if (path.length === 0) {
    throw new PathError("ERR_BAD_PATH", 'Invalid path: "" is empty');
  }
  // Every UTF-16 unit is at least one UTF-8 byte: bound the work first.
  if (
    path.length > MAX_PATH_BYTES || Buffer.byteLength(path) > MAX_PATH_BYTES
  ) {
    throw _badPath(path, `is longer than ${MAX_PATH_BYTES} bytes`);
  }
  for (let i = 0; i < path.length; i++) {
    const c = path.charCodeAt(i);
    if (c === 0) throw _badPath(path, "contains a NUL byte");
    if (c < 0x20 || (c >= 0x7f && c <= 0x9f)) {
      throw _badPath(path, `contains the control character ${_codePoint(c)}`);
    }
    if (c >= 0xd800 && c <= 0xdfff) {
      const next = path.charCodeAt(i + 1);
      if (c > 0xdbff || !(next >= 0xdc00 && next <= 0xdfff)) {
        throw _badPath(path, "is not well-formed Unicode (lone surrogate)");
      }
      i++;
    }
  }
  if (path.includes("\\")) throw _badPath(path, "contains a backslash");
  if (path.startsWith("//")) throw _badPath(path, "is a UNC-style path");
  if (path.startsWith("/")) throw _badPath(path, "is absolute");
  if (/^[A-Za-z]:/.test(path)) {
    throw _badPath(path, "starts with a Windows drive letter");
  }
  const kept: string[] = [];
  let depth = 0;
  let sawParent = false;
  for (const segment of path.split("/")) {
    if (segment === "") throw _badPath(path, "contains an empty segment");
    if (segment === ".") continue;
    if (segment === "..") {
      if (depth === 0) {
        throw new PathError(
          "ERR_OUTSIDE_ROOT",
          `Refused path: ${_quote(path)} climbs above the root`,
        );
      }
      depth--;
      sawParent = true;
      continue;
    }
    if (/^[. ]+$/.test(segment)) {
      throw _badPath(path, "has a segment made only of dots and spaces");
    }
    if (Buffer.byteLength(segment) > MAX_SEGMENT_BYTES) {
      throw _badPath(
        path,
        `has a segment longer than ${MAX_SEGMENT_BYTES} bytes`,
      );
    }
    kept.push(segment);
    depth++;
  }
  if (sawParent) throw _badPath(path, 'contains a ".." segment');
  if (kept.length === 0) throw _badPath(path, "names the root, not a file");
  return kept.join("/");
}

/**
 * Creates a jail over `root`, resolving `root` once with `realpath`.
 *
 * @example Usage
 * ```ts ignore
 * import { createJail } from "./jail.ts";
 * import { readSync } from "node:fs";
 *
 * const jail = await createJail("./public");
 * const file = await jail.open("docs/readme.txt");
 * try {
 *   const buf = new Uint8Array(file.size);
 *   readSync(file.fd, buf, 0, buf.length, 0);
 * } finally {
 *   file.close();
 * }
 * ```
 *
 * @param root The directory to serve; may be relative or a symbolic link.
 * @returns The jail.
 * @throws {UsageError} If `root` is missing, unreadable or not a directory.
 */
export function createJail(root: string): Promise<Jail> {
  try {
    return Promise.resolve(_createJailSync(root));
  } catch (err) {
    return Promise.reject(err);
  }
}

function _createJailSync(root: string): Jail {
  if (typeof root !== "string" || root === "") {
    throw new UsageError("Invalid root: expected a directory path");
  }
  let real: string;
  try {
    real = realpathSync(root);
  } catch (err) {
    const code = _errnoCode(err);
    const reason = code === "ENOENT" || code === "ENOTDIR"
      ? "does not exist"
      : `cannot be resolved (${code ?? "unknown error"})`;
    throw new UsageError(`Invalid root: ${JSON.stringify(root)} ${reason}`);
  }
  let stats: Stats;
  try {
    stats = statSync(real);
  } catch (err) {
    throw new UsageError(
      `Invalid root: ${JSON.stringify(root)} cannot be read (${
        _errnoCode(err) ?? "unknown error"
      })`,
    );
  }
  if (!stats.isDirectory()) {
    throw new UsageError(
      `Invalid root: ${JSON.stringify(root)} is not a directory`,
    );
  }
  return new FileJail(real, _internals.useProcFd && _probeProcFd(real));
}

class FileJail implements Jail {
  readonly #root: string;
  /** `#root` followed by exactly one separator: the prefix of every inside path. */
  readonly #prefix: string;
  readonly #procFd: boolean;

  constructor(root: string, procFd: boolean) {
    this.#root = root;
    this.#prefix = root.endsWith(sep) ? root : root + sep;
    this.#procFd = procFd;
  }

  get root(): string {
    return this.#root;
  }

  open(requestPath: string): Promise<OpenedFile> {
    try {
      return Promise.resolve(this.#openSync(requestPath));
    } catch (err) {
      return Promise.reject(err);
    }
  }

  /** True if `p` is strictly below the root (segment-aware). */
  #isInside(p: string): boolean {
    return p !== this.#root && p.startsWith(this.#prefix);
  }

  #openSync(requestPath: string): OpenedFile {
    const rel = validateRequestPath(requestPath);
    let real: string;
    try {
      real = realpathSync(join(this.#root, rel));
    } catch (err) {
      throw this.#classifyUnresolved(rel, requestPath, err);
    }
    if (real === this.#root) throw _notFile(requestPath, "the root directory");
    if (!this.#isInside(real)) {
      throw _outside(requestPath, "resolves outside the root");
    }
    _internals.afterResolve?.(real);
    let checked: BigIntStats;
    try {
      checked = lstatSync(real, { bigint: true });
    } catch (err) {
      throw _fromErrno(err, requestPath, "stat");
    }
    if (checked.isSymbolicLink()) throw _changed(requestPath);
    if (!checked.isFile()) throw _notFile(requestPath, _describe(checked));
    _internals.beforeOpen?.(real);
    let fd: number;
    try {
      fd = openSync(real, OPEN_FLAGS);
    } catch (err) {
      // ELOOP: the final component became a symbolic link after the check.
      if (_errnoCode(err) === "ELOOP") throw _changed(requestPath);
      throw _fromErrno(err, requestPath, "open");
    }
    try {
      const stats = fstatSync(fd, { bigint: true });
      if (!stats.isFile()) throw _notFile(requestPath, _describe(stats));
      if (stats.dev !== checked.dev || stats.ino !== checked.ino) {
        throw _changed(requestPath);
      }
      this.#verifyDescriptor(fd, real, stats, requestPath);
      return _openedFile(fd, stats, rel);
    } catch (err) {
      closeSync(fd);
      throw err;
    }
  }

  /** Proves that the open descriptor is a file inside the root. */
  #verifyDescriptor(
    fd: number,
    real: string,
    stats: BigIntStats,
    requestPath: string,
  ): void {
    if (this.#procFd) {
      let opened: string | undefined;
      try {
        opened = readlinkSync(`/proc/self/fd/${fd}`);
      } catch {
        opened = undefined;
      }
      if (opened !== undefined) {
        if (!this.#isInside(opened)) throw _changed(requestPath);
        return;
      }
    }
    // Best effort without /proc: the path must still resolve, inside the
    // root, to the very file that was opened.
    let again: string;
    let againStats: BigIntStats;
    try {
      again = realpathSync(real);
      againStats = lstatSync(again, { bigint: true });
    } catch {
      throw _changed(requestPath);
    }
    if (
      !this.#isInside(again) || againStats.dev !== stats.dev ||
      againStats.ino !== stats.ino
    ) {
      throw _changed(requestPath);
    }
  }

  /**
   * Explains why `realpath` failed, walking the path one segment at a time
   * with `lstat`/`readlink` and stopping as soon as it would leave the root,
   * so a link pointing outside is reported as such even when its target is
   * missing or unreadable, and nothing outside the root is examined.
   */
  #classifyUnresolved(
    rel: string,
    requestPath: string,
    cause: unknown,
  ): Error {
    const pending = rel.split("/").reverse();
    let current = this.#root;
    let links = 0;
    while (pending.length > 0) {
      const segment = pending.pop() as string;
      if (segment === "" || segment === ".") continue;
      if (segment === "..") {
        if (current === this.#root) {
          return _outside(requestPath, "resolves outside the root");
        }
        current = dirname(current);
        continue;
      }
      const next = join(current, segment);
      let stats: Stats;
      try {
        stats = lstatSync(next);
      } catch (err) {
        return _fromErrno(err, requestPath, "resolve");
      }
      if (stats.isSymbolicLink()) {
        if (++links > MAX_LINKS) return _notFound(requestPath, "link loop");
        let target: string;
        try {
          target = readlinkSync(next);
        } catch (err) {
          // EINVAL: no longer a link since the lstat a moment ago.
          if (_errnoCode(err) === "EINVAL") return _changed(requestPath);
          return _fromErrno(err, requestPath, "resolve");
        }
        if (isAbsolute(target)) {
          if (target !== this.#root && !target.startsWith(this.#prefix)) {
            return _outside(requestPath, "resolves outside the root");
          }
          current = this.#root;
          target = target.slice(this.#prefix.length);
        }
        pending.push(...target.split(sep).reverse());
        continue;
      }
      if (pending.length > 0 && !stats.isDirectory()) {
        return _notFound(requestPath);
      }
      current = next;
    }
    // The walk succeeded where realpath failed: report realpath's reason.
    return _fromErrno(cause, requestPath, "resolve");
  }
}

/** Opens the root and checks that `/proc/self/fd/N` names it exactly. */
function _probeProcFd(root: string): boolean {
  let fd: number;
  try {
    fd = openSync(root, constants.O_RDONLY | (constants.O_DIRECTORY ?? 0));
  } catch {
    return false;
  }
  try {
    return readlinkSync(`/proc/self/fd/${fd}`) === root;
  } catch {
    return false;
  } finally {
    closeSync(fd);
  }
}

function _openedFile(fd: number, stats: BigIntStats, rel: string): OpenedFile {
  let open = true;
  return {
    fd,
    size: Number(stats.size),
    dev: Number(stats.dev),
    ino: Number(stats.ino),
    mtimeMs: Number(stats.mtimeNs) / 1e6,
    path: rel,
    close(): void {
      if (!open) return;
      open = false;
      closeSync(fd);
    },
  };
}

function _errnoCode(err: unknown): string | undefined {
  const code = (err as { code?: unknown } | null)?.code;
  return typeof code === "string" ? code : undefined;
}

/** Maps a file-system error to a {@linkcode PathError}, or wraps it as `ERR_IO`. */
function _fromErrno(err: unknown, requestPath: string, step: string): Error {
  const code = _errnoCode(err);
  switch (code) {
    case "ENOENT":
    case "ENOTDIR":
    case "ENAMETOOLONG":
      return _notFound(requestPath);
    case "ELOOP":
      return _notFound(requestPath, "link loop");
    case "EACCES":
    case "EPERM":
      return new PathError(
        "ERR_PERMISSION",
        `Permission denied: ${_quote(requestPath)}`,
      );
    case "ENXIO":
    case "ENODEV":
    case "EISDIR":
      return _notFile(requestPath, "not a regular file");
    default:
      return new MoatError(
        "ERR_IO",
        `Cannot ${step} ${_quote(requestPath)}: ${code ?? "unknown error"}`,
        ExitCode.Failure,
        { cause: err },
      );
  }
}

function _badPath(path: string, reason: string): PathError {
  return new PathError(
    "ERR_BAD_PATH",
    `Invalid path: ${_quote(path)} ${reason}`,
  );
}

function _outside(path: string, reason: string): PathError {
  return new PathError(
    "ERR_OUTSIDE_ROOT",
    `Refused path: ${_quote(path)} ${reason}`,
  );
}

function _changed(path: string): PathError {
  return _outside(path, "changed while it was being opened");
}

function _notFound(path: string, detail?: string): PathError {
  const suffix = detail === undefined ? "" : ` (${detail})`;
  return new PathError("ERR_NOT_FOUND", `Not found: ${_quote(path)}${suffix}`);
}

function _notFile(path: string, what: string): PathError {
  return new PathError(
    "ERR_NOT_FILE",
    `Not a regular file: ${_quote(path)} is ${what}`,
  );
}

function _describe(stats: BigIntStats): string {
  if (stats.isDirectory()) return "a directory";
  if (stats.isFIFO()) return "a FIFO";
  if (stats.isSocket()) return "a socket";
  if (stats.isCharacterDevice()) return "a character device";
  if (stats.isBlockDevice()) return "a block device";
  if (stats.isSymbolicLink()) return "a symbolic link";
  return "not a regular file";
}

function _codePoint(c: number): string {
  return "U+" + c.toString(16).toUpperCase().padStart(4, "0");
}

/**
 * Quotes a request path for a one-line message: JSON string syntax with every
 * control, bidirectional and invisible format character escaped, shortened
 * to {@linkcode MAX_QUOTED} units with a trailing `…`.
 */
function _quote(path: string): string {
  const short = path.length > MAX_QUOTED;
  const quoted = stringifySafe(short ? path.slice(0, MAX_QUOTED) : path);
  return short ? `${quoted}…` : quoted;
}
