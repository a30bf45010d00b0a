// deno-lint-ignore-file no-console
/**
 * Syslog ingestion benchmark (a section of `npm run bench`; also runs alone):
 * records per second from a TCP syslog sender until every record is stored,
 * moat's syslog port (each record sealed with its checksum and fsync'd before
 * `syslog_finished` is logged) against rsyslog imtcp → omfile, in the same
 * run, contenders interleaved round by round:
 *
 * - `moat serve --vault DIR --syslog-port 0`, the binary and on Bun and Deno:
 *   done when the audit log says `syslog_finished` with every record (all
 *   appends durable);
 * - rsyslog 8 imtcp → omfile with the tuned configuration of `rsyslogConf`
 *   in `./_util.ts` (the ship bench's), without fsync and with `sync="on"`:
 *   done when the file holds every line.
 *
 * The sender is one connection writing pre-built newline-framed 120-byte
 * RFC 5424 messages in 1 MiB writes. Timing starts at connect. The work area
 * is on a disk (/var/tmp or /tmp), never tmpfs: fsync is the point.
 *
 * Usage: bun bench/syslog.ts [--messages N] [--rounds R]
 *
 * @module
 */

import { type ChildProcess, spawn } from "node:child_process";
import * as fs from "node:fs";
import * as net from "node:net";
import * as path from "node:path";
import process from "node:process";
import { parseArgs } from "node:util";
import {
  freePort,
  killAll,
  median,
  rsyslogConf,
  sleep,
  spread,
  table,
  track,
} from "./_util.ts";

const ROOT = path.resolve(import.meta.dirname ?? ".", "..");
const BIN_DIR = path.join(ROOT, "node_modules", ".bin");
const MAIN = path.join(ROOT, "main.ts");
const LINE = 120;
/** rsyslog runs as this user when the bench runs as root (nobody). */
const UNPRIVILEGED = 65534;

/** `count` newline-framed RFC 5424 messages of exactly LINE bytes each (LF included). */
function buildPayload(count: number): Buffer {
  const buf = Buffer.alloc(count * LINE);
  const head = "<134>1 2024-01-02T03:04:05.000Z benchhost bench - - - seq=";
  for (let i = 0; i < count; i++) {
    const text = `${head}${i} `;
    buf.write(text.padEnd(LINE - 1, "x") + "\n", i * LINE, "latin1");
  }
  return buf;
}

/** Sends the payload on one connection; resolves the connect time (ms, performance clock). */
async function send(port: number, payload: Buffer): Promise<number> {
  const sock = net.connect({ port, host: "127.0.0.1" });
  await new Promise<void>((resolve, reject) => {
    sock.once("connect", () => resolve());
    sock.once("error", reject);
  });
  const started = performance.now();
  for (let at = 0; at < payload.length; at += 1 << 20) {
    if (!sock.write(payload.subarray(at, at + (1 << 20)))) {
      await new Promise<void>((r) => sock.once("drain", () => r()));
    }
  }
  await new Promise<void>((r) => sock.end(() => r()));
  return started;
}

interface Contender {
  name: string;
  /** Starts the receiver; returns its port, a completion waiter, and a stop. */
  start(
    dir: string,
    messages: number,
  ): Promise<
    { port: number; done: () => Promise<void>; stop: () => Promise<void> }
  >;
}

function stopChild(child: ChildProcess): Promise<void> {
  return new Promise((resolve) => {
    if (child.exitCode !== null || child.signalCode !== null) return resolve();
    const t = setTimeout(() => child.kill("SIGKILL"), 10_000);
    child.on("close", () => {
      clearTimeout(t);
      resolve();
    });
    process.kill(child.pid!, "SIGTERM");
  });
}

/** A moat to measure: its name and the argv prefix that runs it. */
export interface SyslogFlavor {
  name: string;
  argv: string[];
}

function moat(flavor: SyslogFlavor): Contender {
  return {
    name: `${flavor.name} (vault, fsync)`,
    async start(dir, messages) {
      const child = track(spawn(flavor.argv[0]!, [
        ...flavor.argv.slice(1),
        "serve",
        "--host",
        "127.0.0.1",
        "--port",
        "0",
        "--vault",
        path.join(dir, "vault"),
        "--syslog-port",
        "0",
      ], { stdio: ["pipe", "ignore", "pipe"] }));
      let err = "";
      const waiters: {
        pred: (e: Record<string, unknown>) => boolean;
        resolve: (e: Record<string, unknown>) => void;
      }[] = [];
      const seen: Record<string, unknown>[] = [];
      child.stderr!.setEncoding("utf8").on("data", (d: string) => {
        err += d;
        let i;
        while ((i = err.indexOf("\n")) >= 0) {
          const line = err.slice(0, i);
          err = err.slice(i + 1);
          try {
            const e = JSON.parse(line);
            seen.push(e);
            for (const w of waiters.splice(0)) {
              w.pred(e) ? w.resolve(e) : waiters.push(w);
            }
          } catch {
            // Not an audit line.
          }
        }
      });
      const wait = (pred: (e: Record<string, unknown>) => boolean) =>
        new Promise<Record<string, unknown>>((resolve, reject) => {
          const found = seen.find(pred);
          if (found) return resolve(found);
          const t = setTimeout(
            () => reject(new Error(`${flavor.name} timed out: ${err}`)),
            300_000,
          );
          waiters.push({
            pred,
            resolve: (e) => {
              clearTimeout(t);
              resolve(e);
            },
          });
        });
      const listening = await wait((e) => e.event === "listening");
      const addr = (listening.syslog as string[])[0]!;
      const port = Number(addr.slice(addr.lastIndexOf(":") + 1));
      return {
        port,
        done: async () => {
          const e = await wait((e) => e.event === "syslog_finished");
          if (e.records !== messages) {
            throw new Error(
              `${flavor.name} stored ${e.records} of ${messages}`,
            );
          }
        },
        stop: () => stopChild(child),
      };
    },
  };
}

function rsyslog(sync: boolean): Contender {
  return {
    name: `rsyslog imtcp → omfile (${sync ? 'sync="on"' : "no fsync"})`,
    async start(dir, messages) {
      const port = await freePort();
      const out = path.join(dir, "out.log");
      const conf = path.join(dir, "rsyslog.conf");
      fs.writeFileSync(conf, rsyslogConf(dir, port, out, sync));
      const root = process.getuid?.() === 0;
      if (root) fs.chownSync(dir, UNPRIVILEGED, UNPRIVILEGED);
      const child = track(
        spawn("rsyslogd", ["-n", "-f", conf, "-i", path.join(dir, "pid")], {
          stdio: ["ignore", "ignore", "inherit"],
          ...(root && { uid: UNPRIVILEGED, gid: UNPRIVILEGED }),
        }),
      );
      // Wait until imtcp accepts.
      for (let i = 0; i < 200; i++) {
        const ok = await new Promise<boolean>((resolve) => {
          const s = net.connect({ port, host: "127.0.0.1" }, () => {
            s.destroy();
            resolve(true);
          });
          s.on("error", () => resolve(false));
        });
        if (ok) break;
        await sleep(25);
      }
      const want = messages * LINE;
      return {
        port,
        done: async () => {
          const deadline = Date.now() + 300_000;
          while (Date.now() < deadline) {
            const size = fs.existsSync(out) ? fs.statSync(out).size : 0;
            if (size >= want) return;
            await sleep(5);
          }
          throw new Error("rsyslog timed out");
        },
        stop: () => stopChild(child),
      };
    },
  };
}

/** Options for {@linkcode benchSyslog}. */
export interface SyslogBenchOptions {
  /** Where work folders are made: a disk, not tmpfs. */
  dir: string;
  messages: number;
  rounds: number;
  flavors: SyslogFlavor[];
  /** Also measure rsyslog (skipped when rsyslogd is missing). */
  rsyslog: boolean;
  log: (message: string) => void;
}

/** A receiver's records per second, one per round, and its ratios. */
export interface SyslogRow {
  name: string;
  rates: number[];
  /** Per round: × rsyslog without fsync, × rsyslog with `sync="on"`. */
  ratios: { nofsync: number[]; sync: number[] };
}

/**
 * Runs the syslog ingest section.
 *
 * @param o Work area, size, rounds, contenders.
 * @returns Rows and a Markdown table.
 */
export async function benchSyslog(
  o: SyslogBenchOptions,
): Promise<{ rows: SyslogRow[]; markdown: string }> {
  const payload = buildPayload(o.messages);
  const contenders = [
    ...o.flavors.map(moat),
    ...(o.rsyslog ? [rsyslog(false), rsyslog(true)] : []),
  ];
  const rows: SyslogRow[] = contenders.map((c) => ({
    name: c.name,
    rates: [],
    ratios: { nofsync: [], sync: [] },
  }));
  for (let round = 1; round <= o.rounds; round++) {
    for (const [i, c] of contenders.entries()) {
      const dir = fs.mkdtempSync(path.join(o.dir, "moat-bench-syslog-"));
      try {
        const r = await c.start(dir, o.messages);
        const started = await send(r.port, payload);
        await r.done();
        const secs = (performance.now() - started) / 1000;
        await r.stop();
        rows[i]!.rates.push(o.messages / secs);
      } finally {
        fs.rmSync(dir, { recursive: true, force: true });
      }
    }
    const nofsync = rows.find((r) => r.name.includes("no fsync"));
    const sync = rows.find((r) => r.name.includes('sync="on"'));
    for (const row of rows) {
      const rate = row.rates[round - 1]!;
      row.ratios.nofsync.push(nofsync ? rate / nofsync.rates[round - 1]! : NaN);
      row.ratios.sync.push(sync ? rate / sync.rates[round - 1]! : NaN);
    }
    o.log(
      `  round ${round}/${o.rounds}: ${
        rows.map((r) => `${r.name} ${Math.round(r.rates[round - 1]! / 1000)}k`)
          .join(", ")
      } records/s`,
    );
  }
  const markdown = table(
    [
      "receiver",
      "records/s median (min–max)",
      "× rsyslog, no fsync",
      '× rsyslog sync="on"',
    ],
    rows.map((r) => [
      r.name,
      `${Math.round(median(r.rates)).toLocaleString("en-US")} (${
        Math.round(Math.min(...r.rates) / 1000)
      }k–${Math.round(Math.max(...r.rates) / 1000)}k)`,
      spread(r.ratios.nofsync),
      spread(r.ratios.sync),
    ]),
  );
  return { rows, markdown };
}

async function main(): Promise<void> {
  const { values } = parseArgs({
    options: { messages: { type: "string" }, rounds: { type: "string" } },
  });
  const bin = path.join(ROOT, "dist", "moat-linux-x64");
  const flavors: SyslogFlavor[] = [
    ...(fs.existsSync(bin) ? [{ name: "moat binary", argv: [bin] }] : []),
    { name: "moat on Bun", argv: [path.join(BIN_DIR, "bun"), MAIN] },
    {
      name: "moat on Deno",
      argv: [path.join(BIN_DIR, "deno"), "run", "-A", MAIN],
    },
  ];
  const dir = fs.existsSync("/var/tmp") ? "/var/tmp" : "/tmp";
  const { markdown } = await benchSyslog({
    dir,
    messages: Number(values.messages ?? 500_000),
    rounds: Number(values.rounds ?? 3),
    flavors,
    rsyslog: true,
    log: (m) => console.error(m),
  });
  console.log(
    `\n${
      values.messages ?? 500_000
    } messages of ${LINE} bytes, 1 connection (${dir})\n`,
  );
  console.log(markdown);
}

if (import.meta.main) {
  process.on("exit", killAll);
  try {
    await main();
    process.exit(0);
  } catch (err) {
    console.error(
      `bench: ${err instanceof Error ? err.stack ?? err.message : String(err)}`,
    );
    killAll();
    process.exit(1);
  }
}
