// deno-lint-ignore-file no-console
/**
 * TLS get benchmark (a section of `npm run bench`; also runs alone): one file
 * from a moat server with `--tls-cert` to `moat get --tls --pin` on the same
 * runtime, against `socat OPENSSL-LISTEN` → `socat OPENSSL` (TLS 1.3 only),
 * interleaved round by round, from a directory on /dev/shm to a file beside
 * it.
 *
 * Same cipher: moat's servers follow the client's preference, and the
 * clients differ (Bun's BoringSSL offers AES-128-GCM first, Deno's node:tls
 * AES-256-GCM). socat runs twice per round, once with each suite (set
 * through `OPENSSL_CONF`), and every moat is compared with the socat of its
 * own suite in the same round. The suites are not assumed: one get per
 * contender goes through a relay here that reads the ServerHello.
 *
 * Usage: bun bench/tls.ts [--rounds N] [--size MIB]
 *
 * @module
 */

import { spawnSync } from "node:child_process";
import * as fs from "node:fs";
import * as fsp from "node:fs/promises";
import * as net from "node:net";
import * as path from "node:path";
import process from "node:process";
import { parseArgs } from "node:util";
import {
  checkSize,
  descendants,
  exited,
  fmt,
  freePort,
  innerPid,
  killAll,
  median,
  spawnTimed,
  spread,
  table,
  timeReport,
  tryKill,
  waitListening,
} from "./_util.ts";

const ROOT = path.resolve(import.meta.dirname ?? ".", "..");
const GIB = 2 ** 30;
/** socat's buffer, as in the plain get. */
const SOCAT_BUFFER = 262144;

/** The TLS 1.3 suites the contenders may negotiate, by IANA number. */
const SUITES: Record<number, string> = {
  0x1301: "TLS_AES_128_GCM_SHA256",
  0x1302: "TLS_AES_256_GCM_SHA384",
  0x1303: "TLS_CHACHA20_POLY1305_SHA256",
};

/** A moat to measure: its name and the argv prefix that runs it. */
export interface TlsFlavor {
  name: string;
  argv: string[];
}

/** Options for {@linkcode benchTls}. */
export interface TlsBenchOptions {
  /** Work area on /dev/shm; the certificate and outputs go here. */
  dir: string;
  /** The file to send (its folder is the moat server's root). */
  file: string;
  /** Its size in bytes. */
  size: number;
  /** Rounds, each running every contender once. */
  rounds: number;
  flavors: TlsFlavor[];
  log: (message: string) => void;
}

/** One timed get. */
export interface TlsRun {
  gibps: number;
  wallMs: number;
  /** The receiving client's user + system CPU seconds. */
  cpuSec: number;
  clientKiB: number;
}

/** A contender's runs and its ratios to the same-suite socat of each round. */
export interface TlsRow {
  name: string;
  /** The suite seen in the ServerHello. */
  suite: string;
  runs: TlsRun[];
  /** Per round: GiB/s over the same-suite socat's GiB/s. */
  ratios: number[];
}

// ---------------------------------------------------------------------------
// Certificate and suites

function run(cmd: string, args: string[], cwd: string): string {
  const r = spawnSync(cmd, args, { cwd, encoding: "utf8" });
  if (r.status !== 0) throw new Error(`${cmd} ${args.join(" ")}: ${r.stderr}`);
  return r.stdout;
}

/** A P-256 certificate for 127.0.0.1 in `dir`; returns its pin. */
function makeCertificate(dir: string): string {
  run("openssl", [
    "req",
    "-x509",
    "-newkey",
    "ec",
    "-pkeyopt",
    "ec_paramgen_curve:P-256",
    "-nodes",
    "-keyout",
    "k.pem",
    "-out",
    "c.pem",
    "-days",
    "2",
    "-subj",
    "/CN=127.0.0.1",
    "-addext",
    "basicConstraints=critical,CA:FALSE",
    "-addext",
    "subjectAltName=IP:127.0.0.1",
  ], dir);
  const fp = run("openssl", [
    "x509",
    "-in",
    "c.pem",
    "-noout",
    "-fingerprint",
    "-sha256",
  ], dir).trim().split("=")[1]!;
  return "sha256:" + fp.replaceAll(":", "").toLowerCase();
}

/** An OpenSSL configuration that allows TLS 1.3 with `suite` only. */
function opensslConf(dir: string, suite: string): string {
  const file = path.join(dir, `openssl-${suite}.cnf`);
  fs.writeFileSync(
    file,
    [
      "openssl_conf = default_conf",
      "[default_conf]",
      "ssl_conf = ssl_sect",
      "[ssl_sect]",
      "system_default = system_default_sect",
      "[system_default_sect]",
      "MinProtocol = TLSv1.3",
      `Ciphersuites = ${suite}`,
      "",
    ].join("\n"),
  );
  return file;
}

/**
 * A one-connection relay on a free port to `port` that reports the suite of
 * the first TLS ServerHello it forwards.
 */
async function suiteRelay(
  port: number,
): Promise<{ port: number; suite: Promise<string>; close: () => void }> {
  let report!: (suite: string) => void;
  const suite = new Promise<string>((resolve) => (report = resolve));
  const sockets: net.Socket[] = [];
  const server = net.createServer((client) => {
    const upstream = net.connect({ host: "127.0.0.1", port });
    sockets.push(client, upstream);
    client.pipe(upstream);
    let head = Buffer.alloc(0);
    let done = false;
    upstream.on("data", (chunk: Buffer) => {
      if (!done) {
        head = Buffer.concat([head, chunk]);
        // Record header 5, handshake header 4, version 2, random 32, session id.
        const at = head.indexOf(Buffer.from([0x16, 0x03]));
        if (at >= 0 && head.length >= at + 44) {
          const sid = head[at + 43]!;
          if (head.length >= at + 44 + sid + 2) {
            done = true;
            const id = head.readUInt16BE(at + 44 + sid);
            report(SUITES[id] ?? `0x${id.toString(16)}`);
          }
        }
      }
      client.write(chunk);
    });
    upstream.on("end", () => client.end());
    client.on("error", () => upstream.destroy());
    upstream.on("error", () => client.destroy());
  });
  const relayPort = await new Promise<number>((resolve) =>
    server.listen(
      0,
      "127.0.0.1",
      () => resolve((server.address() as net.AddressInfo).port),
    )
  );
  return {
    port: relayPort,
    suite,
    close: () => {
      for (const s of sockets) s.destroy();
      server.close();
    },
  };
}

// ---------------------------------------------------------------------------
// Contenders

interface Contender {
  name: string;
  /** Which suite it must use (socat), or undefined (moat: whatever it picks). */
  suite?: string;
  /**
   * One get of `name` (relative to the root) through `via` (a relay port) or
   * directly; returns the run, and checks the output.
   */
  get(via?: (port: number) => Promise<number>): Promise<TlsRun>;
}

function moatContender(
  flavor: TlsFlavor,
  o: TlsBenchOptions,
  pin: string,
): Contender {
  const root = path.dirname(o.file);
  const name = path.basename(o.file);
  const out = path.join(o.dir, "tls-out.bin");
  return {
    name: flavor.name,
    async get(via) {
      const port = await freePort();
      await fsp.rm(out, { force: true });
      const server = spawnTimed(o.dir, [
        ...flavor.argv,
        "serve",
        "--host",
        "127.0.0.1",
        "--port",
        String(port),
        "--root",
        root,
        "--tls-cert",
        path.join(o.dir, "c.pem"),
        "--tls-key",
        path.join(o.dir, "k.pem"),
      ]);
      try {
        await waitListening(port, server.child, `${flavor.name} TLS server`);
        const target = via ? await via(port) : port;
        const client = spawnTimed(o.dir, [
          ...flavor.argv,
          "get",
          `FILE:${name}`,
          "--server",
          `127.0.0.1:${target}`,
          "--tls",
          "--pin",
          pin,
          "-o",
          out,
          "--force",
        ], { stderr: "pipe" });
        let err = "";
        client.child.stderr!.setEncoding("utf8").on("data", (d: string) => {
          err += d;
        });
        const code = await exited(client.child, 300_000, `${flavor.name} get`);
        const wallMs = performance.now() - client.started;
        if (code !== 0) {
          throw new Error(`${flavor.name} TLS get failed (${code}): ${err}`);
        }
        await checkSize(out, o.size, `${flavor.name} TLS get`);
        const t = await timeReport(client.report);
        return {
          gibps: o.size / GIB / (wallMs / 1000),
          wallMs,
          cpuSec: t.userSec + t.sysSec,
          clientKiB: t.peakKiB,
        };
      } finally {
        const pid = await innerPid(server).catch(() => undefined);
        tryKill(pid, "SIGTERM");
        await exited(server.child, 20_000, `${flavor.name} TLS server`).catch(
          () => {
            for (const p of descendants(server.child.pid!)) {
              tryKill(p, "SIGKILL");
            }
          },
        );
      }
    },
  };
}

function socatContender(o: TlsBenchOptions, suite: string): Contender {
  const conf = opensslConf(o.dir, suite);
  const out = path.join(o.dir, "tls-out.bin");
  const env = { ...process.env, OPENSSL_CONF: conf };
  return {
    name: `socat -b ${SOCAT_BUFFER} OPENSSL, ${suite}`,
    suite,
    async get(via) {
      const port = await freePort();
      await fsp.rm(out, { force: true });
      const server = spawnTimed(o.dir, [
        "socat",
        "-b",
        String(SOCAT_BUFFER),
        "-u",
        `OPEN:${o.file}`,
        `OPENSSL-LISTEN:${port},reuseaddr,bind=127.0.0.1,cert=c.pem,key=k.pem,verify=0`,
      ], { env });
      try {
        await waitListening(port, server.child, "socat OPENSSL-LISTEN");
        const target = via ? await via(port) : port;
        const client = spawnTimed(o.dir, [
          "socat",
          "-b",
          String(SOCAT_BUFFER),
          "-u",
          `OPENSSL:127.0.0.1:${target},verify=0`,
          `CREATE:${out}`,
        ], { env });
        const code = await exited(client.child, 300_000, "socat OPENSSL");
        const wallMs = performance.now() - client.started;
        if (code !== 0) throw new Error(`socat OPENSSL failed (${code})`);
        await exited(server.child, 20_000, "socat OPENSSL-LISTEN");
        await checkSize(out, o.size, "socat OPENSSL");
        const t = await timeReport(client.report);
        return {
          gibps: o.size / GIB / (wallMs / 1000),
          wallMs,
          cpuSec: t.userSec + t.sysSec,
          clientKiB: t.peakKiB,
        };
      } finally {
        if (server.child.exitCode === null) {
          for (const p of descendants(server.child.pid!)) {
            tryKill(p, "SIGKILL");
          }
        }
      }
    },
  };
}

/** The suite one get of `c` negotiates, read off the wire by a relay. */
async function suiteOf(c: Contender): Promise<string> {
  let relay: Awaited<ReturnType<typeof suiteRelay>> | undefined;
  try {
    await c.get(async (port) => {
      relay = await suiteRelay(port);
      return relay.port;
    });
    return await relay!.suite;
  } finally {
    relay?.close();
  }
}

// ---------------------------------------------------------------------------
// The section

/**
 * Runs the TLS section: suites first (one get each through a relay), then
 * `rounds` interleaved rounds of timed gets.
 *
 * @param o Work area, file, rounds, the moats to measure.
 * @returns Each contender's runs and same-suite ratios, and a Markdown table.
 */
export async function benchTls(
  o: TlsBenchOptions,
): Promise<{ rows: TlsRow[]; markdown: string }> {
  const pin = makeCertificate(o.dir);
  const socats = Object.values(SUITES).slice(0, 2).map((s) =>
    socatContender(o, s)
  );
  const moats = o.flavors.map((f) => moatContender(f, o, pin));
  const all = [...moats, ...socats];
  const rows: TlsRow[] = [];
  for (const c of all) {
    const suite = await suiteOf(c);
    if (c.suite !== undefined && suite !== c.suite) {
      throw new Error(`${c.name} negotiated ${suite}, not ${c.suite}`);
    }
    o.log(`  ${c.name}: ${suite}`);
    rows.push({ name: c.name, suite, runs: [], ratios: [] });
  }
  for (let r = 0; r < o.rounds; r++) {
    for (const [i, c] of all.entries()) rows[i]!.runs.push(await c.get());
    for (const row of rows) {
      const base = rows.find((b) =>
        b.name.startsWith("socat") && b.suite === row.suite
      );
      row.ratios.push(
        base ? row.runs[r]!.gibps / base.runs[r]!.gibps : NaN,
      );
    }
    o.log(
      `  round ${r + 1}/${o.rounds}: ${
        rows.map((row) => `${row.name} ${fmt(row.runs[r]!.gibps)}`).join(", ")
      } GiB/s`,
    );
  }
  const markdown = table(
    [
      "receiver (TLS 1.3)",
      "suite",
      "GiB/s median (min–max)",
      "× socat OPENSSL, same suite, median (min–max)",
      "client CPU s/GiB",
      "client peak RSS MiB",
    ],
    rows.map((row) => [
      row.name,
      row.suite,
      spread(row.runs.map((t) => t.gibps)),
      spread(row.ratios),
      fmt(median(row.runs.map((t) => t.cpuSec / (o.size / GIB)))),
      fmt(median(row.runs.map((t) => t.clientKiB / 1024)), 0),
    ]),
  );
  return { rows, markdown };
}

async function main(): Promise<void> {
  const { values } = parseArgs({
    args: process.argv.slice(2),
    options: { rounds: { type: "string" }, size: { type: "string" } },
  });
  const size = Number(values.size ?? 1024) * 2 ** 20;
  const dir = fs.mkdtempSync("/dev/shm/moat-tls-bench-");
  process.on("exit", () => {
    killAll();
    fs.rmSync(dir, { recursive: true, force: true });
  });
  const root = path.join(dir, "root");
  fs.mkdirSync(root);
  const file = path.join(root, "big.bin");
  const block = new Uint8Array(16 * 2 ** 20);
  crypto.getRandomValues(block.subarray(0, 65536));
  for (let i = 1; i < 256; i++) block.copyWithin(i * 65536, 0, 65536);
  const fd = fs.openSync(file, "w");
  for (let done = 0; done < size; done += block.length) {
    fs.writeSync(fd, block, 0, Math.min(block.length, size - done));
  }
  fs.closeSync(fd);
  const bin = path.join(ROOT, "node_modules", ".bin");
  const flavors: TlsFlavor[] = [
    { name: "moat binary", argv: [path.join(ROOT, "dist", "moat-linux-x64")] },
    {
      name: "moat on Deno",
      argv: [path.join(bin, "deno"), "run", "-A", path.join(ROOT, "main.ts")],
    },
    {
      name: "moat on Bun",
      argv: [path.join(bin, "bun"), path.join(ROOT, "main.ts")],
    },
  ].filter((f) => fs.existsSync(f.argv[0]!));
  const { markdown } = await benchTls({
    dir,
    file,
    size,
    rounds: Number(values.rounds ?? 3),
    flavors,
    log: (m) => console.error(m),
  });
  console.log(markdown);
}

if (import.meta.main) {
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
