/**
 * What every benchmark needs: child processes that are killed when a run is
 * abandoned, loopback ports, small statistics and a Markdown table.
 *
 * @module
 */

import { type ChildProcess, spawnSync } from "node:child_process";
import * as fs from "node:fs";
import * as fsp from "node:fs/promises";
import * as net from "node:net";
import process from "node:process";

// ---------------------------------------------------------------------------
// Child processes

const children = new Set<ChildProcess>();

/** Remembers `child` until it exits, so that {@linkcode killAll} can reach it. */
export function track(child: ChildProcess): ChildProcess {
  children.add(child);
  // On exit, not close: a pid whose process is gone may be reused.
  child.on("exit", () => children.delete(child));
  return child;
}

/** Kills every tracked child still running, and the processes under it, by pid. */
export function killAll(): void {
  for (const child of children) {
    if (
      child.pid === undefined || child.exitCode !== null ||
      child.signalCode !== null
    ) continue;
    for (const pid of descendants(child.pid)) tryKill(pid, "SIGKILL");
    tryKill(child.pid, "SIGKILL");
  }
}

/** Sends `signal` to `pid`, if there is such a process. */
export function tryKill(pid: number | undefined, signal: NodeJS.Signals): void {
  if (pid === undefined) return;
  try {
    process.kill(pid, signal);
  } catch {
    // Already gone.
  }
}

/** Direct children of `pid` (Linux). */
export function childPids(pid: number): number[] {
  try {
    return fs.readFileSync(`/proc/${pid}/task/${pid}/children`, "utf8")
      .trim().split(/\s+/).filter((s) => s !== "").map(Number);
  } catch {
    return [];
  }
}

/** Processes under `pid`, four levels deep (a runtime under time under sh). */
export function descendants(pid: number): number[] {
  const out: number[] = [];
  let frontier = [pid];
  for (let depth = 0; depth < 4 && frontier.length > 0; depth++) {
    frontier = frontier.flatMap(childPids);
    out.push(...frontier);
  }
  return out;
}

export function sleep(ms: number): Promise<void> {
  return new Promise((resolve) => setTimeout(resolve, ms));
}

/** Runs a command to completion, output captured (setup steps only). */
export function sh(
  cmd: string,
  args: string[],
  timeoutMs = 600_000,
): { code: number; out: string } {
  const r = spawnSync(cmd, args, { encoding: "utf8", timeout: timeoutMs });
  return { code: r.status ?? -1, out: `${r.stdout ?? ""}${r.stderr ?? ""}` };
}

/** Whether `command` is on the PATH. */
export function has(command: string): boolean {
  return sh("sh", ["-c", `command -v ${command}`]).code === 0;
}

/** User + system CPU seconds a live process has used, all its threads (NaN once gone). */
export function cpuSeconds(pid: number | undefined): number {
  if (pid === undefined) return NaN;
  try {
    const stat = fs.readFileSync(`/proc/${pid}/stat`, "utf8");
    // After the command name, which may hold spaces: utime and stime.
    const fields = stat.slice(stat.lastIndexOf(")") + 2).split(" ");
    return (Number(fields[11]) + Number(fields[12])) / clockTicks();
  } catch {
    return NaN;
  }
}

let ticks: number | undefined;

/** Clock ticks per second of /proc/PID/stat (asked once, when first needed). */
function clockTicks(): number {
  return ticks ??= Number(sh("getconf", ["CLK_TCK"]).out.trim()) || 100;
}

// ---------------------------------------------------------------------------
// Ports

/** A free loopback port (bound and released at once). */
export function freePort(): Promise<number> {
  return new Promise((resolve, reject) => {
    const server = net.createServer();
    server.on("error", reject);
    server.listen(0, "127.0.0.1", () => {
      const port = (server.address() as net.AddressInfo).port;
      server.close(() => resolve(port));
    });
  });
}

/** `true` once something listens on `port` over IPv4 or IPv6 (/proc/net/tcp*). */
export async function listening(port: number): Promise<boolean> {
  const hex = port.toString(16).toUpperCase().padStart(4, "0");
  for (const file of ["/proc/net/tcp", "/proc/net/tcp6"]) {
    const text = await fsp.readFile(file, "utf8").catch(() => "");
    for (const line of text.split("\n")) {
      const f = line.trim().split(/\s+/);
      if (f[3] === "0A" && f[1]?.endsWith(`:${hex}`)) return true;
    }
  }
  return false;
}

/**
 * Waits up to 30 s for `child` to listen on `port`; throws if it exits
 * first, with `detail()` (e.g. its stderr) in the message.
 */
export async function waitListening(
  port: number,
  child: ChildProcess,
  what: string,
  detail: () => string = () => "",
): Promise<void> {
  const until = performance.now() + 30_000;
  const more = () => {
    const d = detail();
    return d === "" ? "" : `: ${d}`;
  };
  while (performance.now() < until) {
    if (await listening(port)) return;
    if (child.exitCode !== null || child.signalCode !== null) {
      throw new Error(
        `${what} exited (${
          child.exitCode ?? child.signalCode
        }) before listening${more()}`,
      );
    }
    await sleep(2);
  }
  throw new Error(`${what} did not listen on ${port} within 30 s${more()}`);
}

// ---------------------------------------------------------------------------
// Statistics and report

/** Median of the finite values (NaN when there are none). */
export function median(xs: readonly number[]): number {
  const s = xs.filter((x) => Number.isFinite(x)).sort((a, b) => a - b);
  if (s.length === 0) return NaN;
  const mid = s.length >> 1;
  return s.length % 2 ? s[mid]! : (s[mid - 1]! + s[mid]!) / 2;
}

/** `x` with `digits` decimals, or "—" when it is not a number. */
export function fmt(x: number, digits = 2): string {
  return Number.isFinite(x) ? x.toFixed(digits) : "—";
}

/** A Markdown table. */
export function table(head: string[], rows: string[][]): string {
  const line = (cells: string[]) => `| ${cells.join(" | ")} |`;
  return [line(head), line(head.map(() => "---")), ...rows.map(line)].join(
    "\n",
  );
}
