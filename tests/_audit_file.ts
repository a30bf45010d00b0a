/**
 * Helpers for end-to-end tests of `moat serve --log FILE`: start it with its
 * audit log in a file, wait for audit events in that file, and connect
 * plain clients from a chosen loopback address.
 *
 * @module
 */

import { type ChildProcess, spawn } from "node:child_process";
import * as fs from "node:fs";
import * as net from "node:net";
import process from "node:process";
import { LineWatcher, spawnMoat } from "./_e2e.ts";

/** One parsed audit line. */
export type AuditEvent = Record<string, unknown> & { event: string };

/** Longest any wait here may take before it fails the test. */
const WAIT_MS = 20_000;
/** How often a file is read again while waiting. */
const POLL_MS = 20;

/**
 * The audit events in `file`, in order (none if it does not exist). A line
 * that is not JSON fails the test: the log must hold nothing else.
 */
export function readAudit(file: string): AuditEvent[] {
  let text: string;
  try {
    text = fs.readFileSync(file, "utf8");
  } catch {
    return [];
  }
  return text.split("\n").filter((l) => l !== "").map((l) => {
    try {
      return JSON.parse(l) as AuditEvent;
    } catch {
      throw new Error(`Not a JSON audit line in ${file}: ${l}`);
    }
  });
}

/**
 * Waits until `check` returns something other than undefined, reading
 * again every 20 ms, for at most 20 s.
 */
export async function waitUntil<T>(
  check: () => T | undefined,
  what: string,
): Promise<T> {
  for (let waited = 0; waited <= WAIT_MS; waited += POLL_MS) {
    const found = check();
    if (found !== undefined) return found;
    await new Promise((r) => setTimeout(r, POLL_MS));
  }
  throw new Error(`Timed out waiting for ${what}`);
}

/** Waits for the `n`-th event in `file` that matches `pred`. */
export function waitAudit(
  file: string,
  pred: (e: AuditEvent) => boolean,
  what: string,
  n = 1,
): Promise<AuditEvent> {
  return waitUntil(() => readAudit(file).filter(pred)[n - 1], what);
}

/** A `moat serve` whose audit log is a file. */
export interface LoggedServer {
  child: ChildProcess;
  port: number;
  stderr: LineWatcher;
  stdout: LineWatcher;
  /** Resolves with the exit code. */
  exited: Promise<number | null>;
  /** Sends a signal (through process.kill: see `_e2e.ts` `stop`). */
  signal(name: NodeJS.Signals): void;
  /** SIGTERM, then the exit code. */
  stop(): Promise<number | null>;
  [Symbol.asyncDispose](): Promise<void>;
}

/**
 * Starts `moat serve --host 127.0.0.1 --port 0 --log <log> …` in `cwd` and
 * waits for its `listening` line in the log.
 *
 * @param command What runs moat, instead of the moat under test.
 */
export async function startLogged(
  log: string,
  args: string[],
  cwd: string,
  command?: string[],
): Promise<LoggedServer> {
  const serveArgs = [
    "serve",
    "--host",
    "127.0.0.1",
    "--port",
    "0",
    "--log",
    log,
    ...args,
  ];
  const child = command === undefined
    ? spawnMoat(serveArgs, { cwd })
    : spawn(command[0]!, [...command.slice(1), ...serveArgs], {
      cwd,
      env: { ...process.env, NO_COLOR: "1" },
      stdio: ["pipe", "pipe", "pipe"],
    });
  const stderr = new LineWatcher(child.stderr!);
  const stdout = new LineWatcher(child.stdout!);
  const exited = new Promise<number | null>((resolve) =>
    child.on("close", (code) => resolve(code))
  );
  let gone = false;
  void exited.then(() => (gone = true));
  const listening = await waitUntil(() => {
    if (gone) throw new Error(`moat serve exited: ${stderr.lines.join("\n")}`);
    return readAudit(log).find((e) => e.event === "listening");
  }, "listening");
  const addr = (listening.addrs as string[])[0]!;
  const signal = (name: NodeJS.Signals) => {
    if (child.exitCode === null && child.signalCode === null) {
      process.kill(child.pid!, name);
    }
  };
  const stop = async () => {
    signal("SIGTERM");
    const timer = setTimeout(() => child.kill("SIGKILL"), 10_000);
    const code = await exited;
    clearTimeout(timer);
    return code;
  };
  return {
    child,
    port: Number(addr.slice(addr.lastIndexOf(":") + 1)),
    stderr,
    stdout,
    exited,
    signal,
    stop,
    async [Symbol.asyncDispose]() {
      await stop();
    },
  };
}

/** A plain TCP client from a chosen loopback address. */
export interface PlainClient {
  socket: net.Socket;
  /** Its port, as the server's audit log shows it. */
  port: number;
  /** Everything received so far. */
  received(): string;
  /** Resolves with everything received once the server closed. */
  ended: Promise<string>;
}

/** Connects a plain client from `from` to 127.0.0.1:`port`. */
export async function connectFrom(
  port: number,
  from: string,
): Promise<PlainClient> {
  const socket = net.connect({ host: "127.0.0.1", port, localAddress: from });
  let text = "";
  socket.setEncoding("utf8").on("data", (d: string) => (text += d));
  const ended = new Promise<string>((resolve) => {
    socket.on("close", () => resolve(text));
    socket.on("error", () => {});
  });
  await new Promise<void>((resolve, reject) => {
    socket.once("connect", resolve);
    socket.once("error", reject);
  });
  return { socket, port: socket.localPort!, received: () => text, ended };
}

/**
 * The TCP ports a process listens on (from /proc: its socket descriptors
 * matched against the kernel's tables of listening sockets).
 */
export function listeningPorts(pid: number): number[] {
  const inodes = new Set<string>();
  for (const fd of fs.readdirSync(`/proc/${pid}/fd`)) {
    try {
      const m = /^socket:\[(\d+)\]$/.exec(
        fs.readlinkSync(`/proc/${pid}/fd/${fd}`),
      );
      if (m) inodes.add(m[1]!);
    } catch {
      // Closed while listed.
    }
  }
  const ports = new Set<number>();
  for (const table of ["/proc/net/tcp", "/proc/net/tcp6"]) {
    let text = "";
    try {
      text = fs.readFileSync(table, "utf8");
    } catch {
      continue;
    }
    for (const line of text.split("\n").slice(1)) {
      const f = line.trim().split(/\s+/);
      // local_address is f[1] ("0100007F:1F90"), st f[3] (0A: LISTEN), inode f[9].
      if (f.length < 10 || f[3] !== "0A" || !inodes.has(f[9]!)) continue;
      ports.add(parseInt(f[1]!.split(":")[1]!, 16));
    }
  }
  return [...ports].sort((a, b) => a - b);
}

/** True when something on this host listens on 127.0.0.1:`port` (or 0.0.0.0). */
export function portTaken(port: number): boolean {
  const hex = port.toString(16).toUpperCase().padStart(4, "0");
  const at = [`0100007F:${hex}`, `00000000:${hex}`];
  try {
    return fs.readFileSync("/proc/net/tcp", "utf8").split("\n").some((l) => {
      const f = l.trim().split(/\s+/);
      return at.includes(f[1]!) && f[3] === "0A";
    });
  } catch {
    return false;
  }
}
