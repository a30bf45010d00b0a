/**
 * Helpers for end-to-end tests: run moat as a separate process — the script
 * on the runtime running the tests, or the compiled binary named by MOAT_BIN.
 *
 * @module
 */

import { type ChildProcess, spawn } from "node:child_process";
import * as fs from "node:fs";
import * as os from "node:os";
import * as path from "node:path";
import process from "node:process";
import { setTimeout as sleep } from "node:timers/promises";

const ROOT = path.resolve(import.meta.dirname ?? ".", "..");

/** argv prefix that runs moat. */
export function moatCommand(): string[] {
  const bin = process.env.MOAT_BIN;
  if (bin) return [path.resolve(ROOT, bin)];
  const main = path.join(ROOT, "main.ts");
  if (navigator.userAgent.startsWith("Deno")) {
    return [process.execPath, "run", "-A", main];
  }
  return [process.execPath, main];
}

/** Which moat the tests run: "deno", "bun" or "binary". */
export function moatFlavor(): string {
  if (process.env.MOAT_BIN) return "binary";
  return navigator.userAgent.startsWith("Deno") ? "deno" : "bun";
}

/** A fresh temporary directory, removed by the returned dispose. */
export function tempDir(
  prefix = "moat-e2e-",
): { dir: string; [Symbol.dispose](): void } {
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), prefix));
  return {
    dir,
    [Symbol.dispose]: () => fs.rmSync(dir, { recursive: true, force: true }),
  };
}

/** Result of a finished moat process. */
export interface RunResult {
  code: number | null;
  signal: string | null;
  stdout: string;
  stderr: string;
}

/** Spawns moat with args. */
export function spawnMoat(
  args: string[],
  options: { cwd?: string; env?: Record<string, string> } = {},
): ChildProcess {
  const [cmd, ...pre] = moatCommand();
  return spawn(cmd!, [...pre, ...args], {
    cwd: options.cwd ?? ROOT,
    env: { ...process.env, NO_COLOR: "1", ...options.env },
    stdio: ["pipe", "pipe", "pipe"],
  });
}

/** Collects a child's output and exit. */
export function finished(
  child: ChildProcess,
  timeoutMs = 60_000,
): Promise<RunResult> {
  let stdout = "";
  let stderr = "";
  child.stdout?.setEncoding("utf8").on("data", (d: string) => (stdout += d));
  child.stderr?.setEncoding("utf8").on("data", (d: string) => (stderr += d));
  return new Promise((resolve, reject) => {
    const timer = setTimeout(() => {
      child.kill("SIGKILL");
      reject(
        new Error(
          `moat did not exit within ${timeoutMs} ms; stderr: ${stderr}`,
        ),
      );
    }, timeoutMs);
    child.on("close", (code, signal) => {
      clearTimeout(timer);
      resolve({ code, signal, stdout, stderr });
    });
  });
}

/** Runs moat to completion. */
export function runMoat(
  args: string[],
  options: {
    cwd?: string;
    input?: string;
    timeoutMs?: number;
    env?: Record<string, string>;
  } = {},
): Promise<RunResult> {
  const child = spawnMoat(args, options);
  const done = finished(child, options.timeoutMs);
  child.stdin?.end(options.input ?? "");
  return done;
}

/** Reads a process's stream line by line into an array, with waiters. */
export class LineWatcher {
  lines: string[] = [];
  #waiters: { pred: (l: string) => boolean; resolve: (l: string) => void }[] =
    [];
  #buf = "";

  constructor(stream: NodeJS.ReadableStream) {
    stream.setEncoding("utf8");
    stream.on("data", (d: string) => {
      this.#buf += d;
      let i;
      while ((i = this.#buf.indexOf("\n")) >= 0) {
        const line = this.#buf.slice(0, i);
        this.#buf = this.#buf.slice(i + 1);
        this.lines.push(line);
        this.#waiters = this.#waiters.filter((w) => {
          if (w.pred(line)) {
            w.resolve(line);
            return false;
          }
          return true;
        });
      }
    });
  }

  /** Resolves with the first line (past or future) matching pred. */
  waitFor(
    pred: (line: string) => boolean,
    timeoutMs = 15_000,
    what = "line",
  ): Promise<string> {
    const seen = this.lines.find(pred);
    if (seen !== undefined) return Promise.resolve(seen);
    return new Promise((resolve, reject) => {
      const timer = setTimeout(() => {
        reject(
          new Error(
            `Timed out waiting for ${what}; got:\n${this.lines.join("\n")}`,
          ),
        );
      }, timeoutMs);
      this.#waiters.push({
        pred,
        resolve: (l) => {
          clearTimeout(timer);
          resolve(l);
        },
      });
    });
  }
}

/** A running `moat serve`. */
export interface RunningServer {
  port: number;
  child: ChildProcess;
  /** Audit log lines (stderr), parsed lazily. */
  audit: LineWatcher;
  stdout: LineWatcher;
  /** Parsed audit events so far. */
  events(): Record<string, unknown>[];
  waitEvent(
    pred: (e: Record<string, unknown>) => boolean,
    what?: string,
    timeoutMs?: number,
  ): Promise<Record<string, unknown>>;
  /** SIGTERM, then wait for exit. */
  stop(): Promise<number | null>;
  [Symbol.asyncDispose](): Promise<void>;
}

function parseEvent(line: string): Record<string, unknown> | undefined {
  try {
    const v = JSON.parse(line);
    return typeof v === "object" && v !== null ? v : undefined;
  } catch {
    return undefined;
  }
}

/**
 * Starts `moat serve --host 127.0.0.1 --port 0 …` and waits for "listening".
 * With `defaultHost`, no `--host` is given: moat picks its hosts itself, and
 * `port` is that of the first address it reports.
 */
export async function startServer(
  args: string[],
  options: { cwd?: string; defaultHost?: boolean } = {},
): Promise<RunningServer> {
  const host = options.defaultHost ? [] : ["--host", "127.0.0.1"];
  const child = spawnMoat([
    "serve",
    ...host,
    "--port",
    "0",
    ...args,
  ], { ...(options.cwd !== undefined && { cwd: options.cwd }) });
  const audit = new LineWatcher(child.stderr!);
  const stdout = new LineWatcher(child.stdout!);
  const exited = new Promise<number | null>((resolve) =>
    child.on("close", (code) => resolve(code))
  );
  let listening: string;
  try {
    listening = await Promise.race([
      audit.waitFor(
        (l) => parseEvent(l)?.event === "listening",
        20_000,
        "listening",
      ),
      exited.then((code) => {
        throw new Error(
          `moat serve exited with ${code}: ${audit.lines.join("\n")}`,
        );
      }),
    ]);
  } catch (err) {
    child.kill("SIGKILL");
    throw err;
  }
  const addr = (parseEvent(listening)!.addrs as string[])[0]!;
  const port = Number(addr.slice(addr.lastIndexOf(":") + 1));
  const events = () =>
    audit.lines.map(parseEvent).filter((e): e is Record<string, unknown> =>
      e !== undefined
    );
  const stop = async () => {
    // process.kill, not child.kill: Deno reports a child it signalled through
    // child.kill as killed by that signal even when the child exited 0.
    if (child.exitCode === null && child.signalCode === null) {
      process.kill(child.pid!, "SIGTERM");
    }
    const timer = setTimeout(() => child.kill("SIGKILL"), 10_000);
    const code = await exited;
    clearTimeout(timer);
    return code;
  };
  return {
    port,
    child,
    audit,
    stdout,
    events,
    async waitEvent(pred, what = "audit event", timeoutMs = 15_000) {
      const line = await audit.waitFor(
        (l) => {
          const e = parseEvent(l);
          return e !== undefined && pred(e);
        },
        timeoutMs,
        what,
      );
      return parseEvent(line)!;
    },
    stop,
    async [Symbol.asyncDispose]() {
      await stop();
    },
  };
}

/** Writes a file of `size` pseudo-random bytes (fast, deterministic per seed). */
export function writeRandomFile(file: string, size: number, seed = 1): void {
  const fd = fs.openSync(file, "w");
  const chunk = new Uint8Array(1 << 20);
  const words = new Uint32Array(chunk.buffer);
  let x = seed >>> 0 || 1;
  let left = size;
  while (left > 0) {
    for (let i = 0; i < words.length; i++) {
      x ^= x << 13;
      x ^= x >>> 17;
      x ^= x << 5;
      words[i] = x >>> 0;
    }
    const n = Math.min(left, chunk.length);
    fs.writeSync(fd, chunk, 0, n);
    left -= n;
  }
  fs.closeSync(fd);
}

/** SHA-256 of a file, hex. */
export async function sha256File(file: string): Promise<string> {
  const { createHash } = await import("node:crypto");
  const hash = createHash("sha256");
  const fd = fs.openSync(file, "r");
  const buf = new Uint8Array(1 << 20);
  let n;
  while ((n = fs.readSync(fd, buf, 0, buf.length, null)) > 0) {
    hash.update(buf.subarray(0, n));
  }
  fs.closeSync(fd);
  return hash.digest("hex");
}

/**
 * Matches a chat join or leave line: the server naming a member, or the
 * summary that counts them when more come and go in a second than the hub
 * names (`[server] 110 more joined, 3 more left (/who lists the members)`).
 *
 * @param member A regex source for the member: by default a connection
 * name (`k3f9-c7`) and a loopback address, as the tests' clients have.
 * @returns The pattern, anchored at both ends.
 */
export function presencePattern(
  member = String.raw`[0-9a-z]{4}-c\d+ \(127\.0\.0\.1:\d+\)`,
): RegExp {
  const summary = String
    .raw`(\d+ more joined(, \d+ more left)?|\d+ more left) \(/who lists the members\)`;
  return new RegExp(
    String.raw`^\[server\] (${member} (joined|left)|${summary})$`,
  );
}

/** A join or leave line of a test's client: see {@linkcode presencePattern}. */
export const PRESENCE: RegExp = presencePattern();

/**
 * The rows of `moat vault ls`, split into fields (label, first and last
 * record numbers, records, …).
 *
 * @param dir The vault.
 * @returns The rows, or undefined when the listing failed.
 */
export async function vaultLs(dir: string): Promise<string[][] | undefined> {
  const r = await runMoat(["vault", "ls", dir]);
  if (r.code !== 0) return undefined;
  return r.stdout.trim().split("\n").slice(1).map((row) => row.split("\t"));
}

/**
 * @param dir The vault.
 * @returns How many records `moat vault ls` counts in it, -1 when it fails.
 */
export async function vaultCount(dir: string): Promise<number> {
  const rows = await vaultLs(dir);
  return rows === undefined
    ? -1
    : rows.reduce((n, row) => n + Number(row[2]), 0);
}

/**
 * Asks {@linkcode vaultCount} every 200 ms until it reaches `want` or
 * `timeoutMs` has passed.
 *
 * @param dir The vault.
 * @param want Records to wait for.
 * @param timeoutMs How long to keep asking.
 * @returns The last count.
 */
export async function waitVaultCount(
  dir: string,
  want: number,
  timeoutMs: number,
): Promise<number> {
  const deadline = Date.now() + timeoutMs;
  let n = -1;
  while (Date.now() < deadline) {
    n = await vaultCount(dir);
    if (n >= want) return n;
    await sleep(200);
  }
  return n;
}
