// deno-lint-ignore-file no-console
/**
 * Syslog ingestion benchmark (not part of the tests): records per second
 * from a TCP syslog sender until every record is stored, moat's syslog port
 * (each record sealed with its checksum and fsync'd before
 * `syslog_finished` is logged) against rsyslog imtcp → omfile, in the same
 * run, contenders interleaved round by round:
 *
 * - moat serve --vault --syslog-port on Bun and on Deno: done when the audit
 *   log says `syslog_finished` with every record (all appends durable);
 * - rsyslog 8 imtcp → omfile with its defaults (page cache, no fsync) and
 *   with `sync="on"` (fsync per batch): done when the file holds every line.
 *
 * The sender is one connection writing pre-built newline-framed 120-byte
 * RFC 5424 messages in 1 MiB writes (a small batching generator; see
 * PERF.md on loggen). Timing starts at connect.
 *
 * Usage: bun bench/syslog.ts [--messages N] [--rounds R]
 *
 * @module
 */

import { type ChildProcess, spawn } from "node:child_process";
import * as fs from "node:fs";
import * as net from "node:net";
import * as os from "node:os";
import * as path from "node:path";
import process from "node:process";
import { parseArgs } from "node:util";
import { freePort, killAll, median, sleep, track } from "./_util.ts";

const ROOT = path.resolve(import.meta.dirname ?? ".", "..");
const BIN_DIR = path.join(ROOT, "node_modules", ".bin");
const MAIN = path.join(ROOT, "main.ts");
const LINE = 120;

const { values } = parseArgs({
  options: { messages: { type: "string" }, rounds: { type: "string" } },
});
const MESSAGES = Number(values.messages ?? 500_000);
const ROUNDS = Number(values.rounds ?? 3);

process.on("exit", killAll);

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

function moat(runtime: "bun" | "deno"): Contender {
  return {
    name: `moat on ${runtime === "bun" ? "Bun" : "Deno"} (vault, fsync)`,
    async start(dir) {
      const argv = runtime === "bun"
        ? [path.join(BIN_DIR, "bun"), MAIN]
        : [path.join(BIN_DIR, "deno"), "run", "-A", MAIN];
      const child = track(spawn(argv[0]!, [
        ...argv.slice(1),
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
            () => reject(new Error("moat timed out")),
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
          if (e.records !== MESSAGES) {
            throw new Error(`moat stored ${e.records} of ${MESSAGES}`);
          }
        },
        stop: () => stopChild(child),
      };
    },
  };
}

function rsyslog(sync: boolean): Contender {
  return {
    name: `rsyslog imtcp → omfile (${
      sync ? 'sync="on"' : "defaults, no fsync"
    })`,
    async start(dir) {
      const port = await freePort();
      const out = path.join(dir, "out.log");
      fs.mkdirSync(path.join(dir, "work"), { recursive: true });
      const conf = path.join(dir, "rsyslog.conf");
      fs.writeFileSync(
        conf,
        `global(workDirectory="${path.join(dir, "work")}")
module(load="imtcp")
input(type="imtcp" address="127.0.0.1" port="${port}")
template(name="raw" type="string" string="%rawmsg%\\n")
action(type="omfile" file="${out}" template="raw"${sync ? ' sync="on"' : ""})
`,
      );
      const child = track(
        spawn("rsyslogd", ["-n", "-f", conf, "-i", path.join(dir, "pid")], {
          stdio: ["ignore", "ignore", "inherit"],
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
      const want = MESSAGES * LINE;
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

async function main() {
  const payload = buildPayload(MESSAGES);
  const contenders = [moat("bun"), moat("deno"), rsyslog(false), rsyslog(true)];
  const rates = new Map<string, number[]>(contenders.map((c) => [c.name, []]));
  for (let round = 1; round <= ROUNDS; round++) {
    for (const c of contenders) {
      const dir = fs.mkdtempSync(path.join(os.tmpdir(), "moat-bench-syslog-"));
      try {
        const r = await c.start(dir);
        const started = await send(r.port, payload);
        await r.done();
        const secs = (performance.now() - started) / 1000;
        await r.stop();
        rates.get(c.name)!.push(MESSAGES / secs);
        console.error(
          `round ${round}: ${c.name}: ${Math.round(MESSAGES / secs)} records/s`,
        );
      } finally {
        fs.rmSync(dir, { recursive: true, force: true });
      }
    }
  }
  console.log(
    `\n${MESSAGES} messages of ${LINE} bytes, 1 connection, median of ${ROUNDS} rounds (${os.tmpdir()})\n`,
  );
  console.log("| receiver | records/s | runs |");
  console.log("|---|---|---|");
  for (const [name, xs] of rates) {
    console.log(
      `| ${name} | ${Math.round(median(xs)).toLocaleString("en")} | ${
        xs.map((x) => Math.round(x / 1000) + "k").join(", ")
      } |`,
    );
  }
}

await main();
process.exit(0);
