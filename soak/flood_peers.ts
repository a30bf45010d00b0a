/**
 * The contenders of `npm run soak`'s refused-flood rows: moat and the peers
 * it is measured against in the same run, each serving one file to allowed
 * gets from 127.0.0.1 and refusing everyone else.
 *
 * - `ncat -l -k --allow 127.0.0.1 --exec "/bin/cat FILE"`: `--send-only`
 *   with the file on stdin sends it to the first connection only, so each
 *   allowed connection forks a `cat` (ncat relays between it and the socket).
 * - `socat -U TCP-LISTEN:…,fork,range=127.0.0.1/32 OPEN:FILE`: a forked
 *   child per allowed connection reads the file; refused peers are closed by
 *   the listening parent.
 * - `soak/refuse.c`: accept, check the address, write the refusal line,
 *   close; the floor a refusal costs in user space on this machine.
 *
 * The gets of the peers are `socat -u TCP:… CREATE:out`, a plain client
 * writing to a file; moat's are `moat get`.
 *
 * @module
 */

import { type ChildProcess, spawn, spawnSync } from "node:child_process";
import * as fs from "node:fs";
import * as os from "node:os";
import * as path from "node:path";
import process from "node:process";
import { freePort, has, waitListening } from "../bench/_util.ts";
import { spawnMoat } from "../tests/_e2e.ts";

/** The socket buffer socat is given, as in bench/run.ts. */
const SOCAT_BUFFER = 262_144;

/** A server under flood, and how to fetch its file. */
export interface Contender {
  name: string;
  /** The process whose CPU time is the server's. */
  pid: number;
  port: number;
  /** Where a get writes the file. */
  out: string;
  /** Starts one get of the whole file into the output path. */
  get(): ChildProcess;
  /** Bytes the get in progress has written so far (0 when none). */
  partial(): number;
  /** Bytes a finished get left (-1 when there is no file). */
  got(): number;
  stop(): Promise<void>;
}

/** Kills `child` by pid and waits for it. */
function stopChild(child: ChildProcess): Promise<void> {
  if (child.exitCode !== null || child.signalCode !== null) {
    return Promise.resolve();
  }
  const closed = new Promise<void>((r) => child.on("close", () => r()));
  child.kill("SIGKILL");
  return closed;
}

function sizeOf(file: string): number {
  try {
    return fs.statSync(file).size;
  } catch {
    return -1;
  }
}

/** A plain socat client fetching everything the server sends into `out`. */
function plainGet(port: number, out: string): Contender["get"] {
  return () =>
    spawn("socat", [
      "-u",
      "-b",
      String(SOCAT_BUFFER),
      `TCP:127.0.0.1:${port}`,
      `CREATE:${out}`,
    ], { stdio: ["ignore", "ignore", "pipe"] });
}

async function startPeer(
  name: string,
  argv: (port: number) => string[],
  out: string,
): Promise<Contender> {
  const port = await freePort();
  const [cmd, ...args] = argv(port);
  const child = spawn(cmd!, args, { stdio: ["ignore", "ignore", "pipe"] });
  let stderr = "";
  child.stderr!.setEncoding("utf8").on("data", (d: string) => {
    if (stderr.length < 4096) stderr += d;
  });
  await waitListening(port, child, name, () => stderr.trim());
  return {
    name,
    pid: child.pid!,
    port,
    out,
    get: plainGet(port, out),
    partial: () => Math.max(0, sizeOf(out)),
    got: () => sizeOf(out),
    stop: () => stopChild(child),
  };
}

/**
 * `ncat -l -k --allow 127.0.0.1 --exec "/bin/cat FILE" 127.0.0.1 PORT`.
 *
 * @param file The file to serve (a path without spaces: --exec splits on them).
 * @param out Where the gets write.
 */
export function startNcat(file: string, out: string): Promise<Contender> {
  return startPeer("ncat", (port) => [
    "ncat",
    "-l",
    "-k",
    "--allow",
    "127.0.0.1",
    "--exec",
    `/bin/cat ${file}`,
    "127.0.0.1",
    String(port),
  ], out);
}

/**
 * `socat -U -b 262144 TCP-LISTEN:PORT,bind=127.0.0.1,fork,reuseaddr,backlog=4096,range=127.0.0.1/32 OPEN:FILE,rdonly`
 * (socat's own backlog is 5: the kernel would drop most of the flood's SYNs
 * before socat saw them).
 *
 * @param file The file to serve.
 * @param out Where the gets write.
 */
export function startSocat(file: string, out: string): Promise<Contender> {
  return startPeer("socat", (port) => [
    "socat",
    "-U",
    "-b",
    String(SOCAT_BUFFER),
    `TCP-LISTEN:${port},bind=127.0.0.1,fork,reuseaddr,backlog=4096,range=127.0.0.1/32`,
    `OPEN:${file},rdonly`,
  ], out);
}

/**
 * `moat get FILE:<name> -o <out> --force` against an already running moat.
 *
 * @param server The `moat serve` process and its port.
 * @param name The file's name under the server's root.
 * @param out Where the gets write.
 */
export function moatContender(
  server: { child: ChildProcess; port: number },
  name: string,
  out: string,
): Contender {
  const part = out + ".moat-part";
  return {
    name: "moat",
    pid: server.child.pid!,
    port: server.port,
    out,
    get: () =>
      spawnMoat([
        "get",
        `FILE:${name}`,
        "-o",
        out,
        "--force",
        "--server",
        `127.0.0.1:${server.port}`,
      ]),
    partial: () => Math.max(0, sizeOf(part)),
    got: () => sizeOf(out),
    stop: () => Promise.resolve(),
  };
}

/** Whether ncat and socat are here to be measured against. */
export function peersAvailable(): { ncat: boolean; socat: boolean } {
  return { ncat: has("ncat"), socat: has("socat") };
}

/** A server that refuses everyone, started on a free loopback port. */
export interface Refuser {
  pid: number;
  port: number;
  stop(): Promise<void>;
}

/** Starts `argv`, which prints the port it listens on as its first line. */
async function startPrintingPort(
  argv: string[],
  cleanup: () => void,
): Promise<Refuser> {
  const [cmd, ...args] = argv;
  const child = spawn(cmd!, args, { stdio: ["ignore", "pipe", "pipe"] });
  let stderr = "";
  child.stderr!.setEncoding("utf8").on("data", (d: string) => {
    if (stderr.length < 4096) stderr += d;
  });
  const port = await new Promise<number>((resolve, reject) => {
    let out = "";
    child.stdout!.setEncoding("utf8").on("data", (d: string) => {
      out += d;
      if (out.includes("\n")) resolve(Number(out.trim()));
    });
    child.on("close", (code) => {
      reject(new Error(`${cmd} exited ${code}: ${stderr.trim()}`));
    });
  }).catch((e) => {
    cleanup();
    throw e;
  });
  return {
    pid: child.pid!,
    port,
    stop: async () => {
      await stopChild(child);
      cleanup();
    },
  };
}

/**
 * Compiles `soak/refuse.c` with `cc -O2` into a temporary folder and starts
 * it on a free loopback port.
 *
 * @returns The server, or undefined when there is no C compiler.
 */
export function startRefuser(): Promise<Refuser | undefined> {
  const source = path.join(import.meta.dirname ?? ".", "refuse.c");
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), "moat-refuse-"));
  const exe = path.join(dir, "refuse");
  const r = spawnSync("cc", ["-O2", "-o", exe, source], {
    encoding: "utf8",
    timeout: 60_000,
  });
  const cleanup = () => fs.rmSync(dir, { recursive: true, force: true });
  if (r.status !== 0) {
    cleanup();
    return Promise.resolve(undefined);
  }
  return startPrintingPort([exe, "0"], cleanup);
}

/**
 * Starts `soak/refuse_net.ts` on the runtime running this: moat's socket
 * layer refusing as the server does, without the server.
 */
export function startNetRefuser(): Promise<Refuser> {
  const script = path.join(import.meta.dirname ?? ".", "refuse_net.ts");
  const argv = navigator.userAgent.startsWith("Deno")
    ? [process.execPath, "run", "-A", script]
    : [process.execPath, script];
  return startPrintingPort(argv, () => {});
}
