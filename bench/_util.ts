/**
 * What every benchmark needs: child processes that are killed when a run is
 * abandoned, loopback ports, small statistics and a Markdown table.
 *
 * @module
 */

import { type ChildProcess, spawn, spawnSync } from "node:child_process";
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

// ---------------------------------------------------------------------------
// Measured processes

/** Waits for `child` to exit; kills everything tracked and rejects after `timeoutMs`. */
export function exited(
  child: ChildProcess,
  timeoutMs: number,
  what: string,
): Promise<number | null> {
  return new Promise<number | null>((resolve, reject) => {
    if (child.exitCode !== null || child.signalCode !== null) {
      return resolve(child.exitCode);
    }
    const timer = setTimeout(() => {
      killAll();
      reject(new Error(`${what} did not exit within ${timeoutMs} ms`));
    }, timeoutMs);
    child.on("close", (code) => {
      clearTimeout(timer);
      resolve(code);
    });
  });
}

/** A process run under `/usr/bin/time -v`. */
export interface Timed {
  child: ChildProcess;
  /** Where `time` writes its report. */
  report: string;
  /** performance.now() at spawn. */
  started: number;
}

let timedCount = 0;

/** Spawns `argv` under `/usr/bin/time -v` (report in `dir`), stdio as given. */
export function spawnTimed(
  dir: string,
  argv: string[],
  options: {
    cwd?: string;
    stdin?: number | "ignore" | "pipe";
    stdout?: number | "ignore" | "pipe";
    stderr?: number | "ignore" | "pipe";
    env?: Record<string, string | undefined>;
  } = {},
): Timed {
  const report = `${dir}/time-${++timedCount}.txt`;
  const started = performance.now();
  const child = track(
    spawn("/usr/bin/time", ["-v", "-o", report, ...argv], {
      cwd: options.cwd ?? dir,
      stdio: [
        options.stdin ?? "ignore",
        options.stdout ?? "ignore",
        options.stderr ?? "ignore",
      ],
      ...(options.env && { env: options.env }),
    }),
  );
  return { child, report, started };
}

/** What `time -v` reported: peak RSS (KiB) and CPU seconds. */
export async function timeReport(
  report: string,
): Promise<{ peakKiB: number; userSec: number; sysSec: number }> {
  const text = await fsp.readFile(report, "utf8");
  const num = (re: RegExp) => {
    const m = re.exec(text);
    if (!m) throw new Error(`${re} not in ${report}: ${text}`);
    return Number(m[1]);
  };
  return {
    peakKiB: num(/Maximum resident set size \(kbytes\): (\d+)/),
    userSec: num(/User time \(seconds\): ([\d.]+)/),
    sysSec: num(/System time \(seconds\): ([\d.]+)/),
  };
}

/** The measured process under `time` (its only child). */
export async function innerPid(timed: Timed): Promise<number> {
  for (let i = 0; i < 500; i++) {
    const pids = childPids(timed.child.pid!);
    if (pids.length === 1) return pids[0]!;
    await sleep(2);
  }
  throw new Error("cannot find the process under time");
}

/** Throws unless `file` holds exactly `size` bytes. */
export async function checkSize(
  file: string,
  size: number,
  what: string,
): Promise<void> {
  const st = await fsp.stat(file).catch(() => undefined);
  if (st?.size !== size) {
    throw new Error(
      `${what}: received ${st?.size ?? "no"} bytes, expected ${size}`,
    );
  }
}

/** Minimum, median and maximum, as "median (min–max)". */
export function spread(xs: readonly number[], digits = 2): string {
  const ok = xs.filter((x) => Number.isFinite(x));
  if (ok.length === 0) return "—";
  return `${fmt(median(ok), digits)} (${fmt(Math.min(...ok), digits)}–${
    fmt(Math.max(...ok), digits)
  })`;
}

// ---------------------------------------------------------------------------
// rsyslog

/**
 * The one rsyslog configuration both the ship and the syslog bench use:
 * imtcp on `port` → omfile `out`, raw messages, tuned for throughput (room
 * for 2,000 sessions, batches of up to 1024 messages from the main queue, a
 * 256 KiB write buffer: with
 * the default 4 KiB buffer rsyslog 8.2302 writes, and with `sync`, fsyncs,
 * every 4 KiB, about 34 lines). `sync`: `sync="on"`, fsync of file and
 * directory after each batch; otherwise the page cache only.
 */
export function rsyslogConf(
  workDir: string,
  port: number,
  out: string,
  sync: boolean,
): string {
  return [
    `global(workDirectory="${workDir}")`,
    'main_queue(queue.dequeueBatchSize="1024")',
    // rsyslog listens with a backlog of a tenth of MaxSessions (200 by
    // default): 100 feeders connecting at once overflowed it, and lines of
    // the connections left waiting arrived after the run's deadline.
    `module(load="imtcp" MaxSessions="2000")`,
    `input(type="imtcp" address="127.0.0.1" port="${port}" ruleset="bench")`,
    `template(name="raw" type="string" string="%rawmsg%\\n")`,
    `ruleset(name="bench") {`,
    `  action(type="omfile" file="${out}" template="raw" ioBufferSize="256k"${
      sync ? ' sync="on"' : ""
    })`,
    `}`,
    "",
  ].join("\n");
}
