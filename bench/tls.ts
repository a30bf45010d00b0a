// deno-lint-ignore-file no-console
/**
 * TLS benchmark (standalone; not part of the tests): a 1 GiB `moat get` over
 * TLS 1.3 from /dev/shm to /dev/shm, the moat binary and moat on Deno and Bun,
 * against `socat -b 262144` with OPENSSL-LISTEN/OPENSSL in the same run,
 * interleaved round by round; then the handshake time (connect until the
 * Welcome) with TLS and without, measured in-process with the library.
 *
 * Usage: bun bench/tls.ts [--rounds N] [--size MIB]
 *
 * @module
 */

import { spawn, spawnSync } from "node:child_process";
import * as fs from "node:fs";
import * as path from "node:path";
import process from "node:process";
import { parseArgs } from "node:util";
import { getNet } from "../lib/net/mod.ts";
import { openSession } from "../lib/client.ts";
import { median, sleep } from "./_util.ts";

const ROOT = path.resolve(import.meta.dirname ?? ".", "..");
const BIN = path.join(ROOT, "node_modules", ".bin");
const { values } = parseArgs({
  args: process.argv.slice(2),
  options: { rounds: { type: "string" }, size: { type: "string" } },
});
const ROUNDS = Number(values.rounds ?? 3);
const SIZE = Number(values.size ?? 1024) * 2 ** 20;
const DIR = fs.mkdtempSync("/dev/shm/moat-tls-bench-");
const BIG = path.join(DIR, "big.bin");
const OUT = path.join(DIR, "out.bin");

function run(cmd: string, args: string[]): string {
  const r = spawnSync(cmd, args, { cwd: DIR, encoding: "utf8" });
  if (r.status !== 0) throw new Error(`${cmd} ${args.join(" ")}: ${r.stderr}`);
  return r.stdout;
}

/** Starts a process and waits until a TCP port accepts; returns it and the port. */
async function startServer(argv: string[], port: number) {
  const child = spawn(argv[0]!, argv.slice(1), {
    cwd: DIR,
    stdio: ["pipe", "ignore", "ignore"],
  });
  for (let i = 0; i < 200; i++) {
    const ok = await new Promise<boolean>((resolve) => {
      const s = spawnSync("bash", ["-c", `exec 3<>/dev/tcp/127.0.0.1/${port}`]);
      resolve(s.status === 0);
    });
    if (ok) return child;
    await sleep(50);
  }
  child.kill("SIGKILL");
  throw new Error(`${argv.join(" ")} did not listen`);
}

/** Wall time of a command. */
function timed(argv: string[]): Promise<number> {
  const t0 = performance.now();
  const child = spawn(argv[0]!, argv.slice(1), {
    cwd: DIR,
    stdio: ["ignore", "ignore", "pipe"],
  });
  let err = "";
  child.stderr!.on("data", (d) => (err += d));
  return new Promise((resolve, reject) =>
    child.on("close", (code) => {
      if (code !== 0) {
        reject(new Error(`${argv.join(" ")} exited ${code}: ${err}`));
      } else resolve((performance.now() - t0) / 1000);
    })
  );
}

let nextPort = 41000 + Math.floor(Math.random() * 10000);

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
]);
const FP = "sha256:" +
  run("openssl", ["x509", "-in", "c.pem", "-noout", "-fingerprint", "-sha256"])
    .trim().split("=")[1]!.replaceAll(
      ":",
      "",
    ).toLowerCase();
{
  const fd = fs.openSync(BIG, "w");
  const chunk = new Uint8Array(2 ** 20);
  crypto.getRandomValues(chunk.subarray(0, 65536));
  for (let i = 1; i < 16; i++) chunk.copyWithin(i * 65536, 0, 65536);
  for (let done = 0; done < SIZE; done += chunk.length) {
    fs.writeSync(fd, chunk, 0, Math.min(chunk.length, SIZE - done));
  }
  fs.closeSync(fd);
}

const flavors: [string, string[]][] = [
  ["moat binary", [path.join(ROOT, "dist", "moat-linux-x64")]],
  ["moat on Deno", [
    path.join(BIN, "deno"),
    "run",
    "-A",
    path.join(ROOT, "main.ts"),
  ]],
  ["moat on Bun", [path.join(BIN, "bun"), path.join(ROOT, "main.ts")]],
].filter(([name, argv]) =>
  name !== "moat binary" || fs.existsSync(argv![0]!)
) as [string, string[]][];

const results = new Map<string, number[]>();
const ratios = new Map<string, number[]>();
for (let round = 0; round < ROUNDS; round++) {
  const times = new Map<string, number>();
  for (const [name, argv] of flavors) {
    const port = nextPort++;
    const server = await startServer(
      [
        ...argv,
        "serve",
        "--host",
        "127.0.0.1",
        "--port",
        String(port),
        "--root",
        DIR,
        "--tls-cert",
        "c.pem",
        "--tls-key",
        "k.pem",
      ],
      port,
    );
    try {
      const secs = await timed([
        ...argv,
        "get",
        "FILE:big.bin",
        "--server",
        `127.0.0.1:${port}`,
        "--tls",
        "--pin",
        FP,
        "-o",
        OUT,
        "--force",
      ]);
      if (fs.statSync(OUT).size !== SIZE) {
        throw new Error(`${name}: short file`);
      }
      times.set(name, secs);
    } finally {
      server.kill("SIGTERM");
      await sleep(200);
    }
  }
  {
    // socat's listener accepts once: no readiness probe, a short wait instead.
    const port2 = nextPort++;
    const s2 = spawn("socat", [
      "-b",
      "262144",
      "-u",
      `OPEN:${BIG}`,
      `OPENSSL-LISTEN:${port2},reuseaddr,bind=127.0.0.1,cert=c.pem,key=k.pem,verify=0`,
    ], { cwd: DIR, stdio: "ignore" });
    await sleep(300);
    const secs = await timed([
      "socat",
      "-b",
      "262144",
      "-u",
      `OPENSSL:127.0.0.1:${port2},verify=0`,
      `OPEN:${OUT},creat,trunc`,
    ]);
    s2.kill("SIGKILL");
    if (fs.statSync(OUT).size !== SIZE) throw new Error("socat: short file");
    times.set("socat -b 262144 OPENSSL", secs);
  }
  const socat = times.get("socat -b 262144 OPENSSL")!;
  for (const [name, secs] of times) {
    results.set(name, [...(results.get(name) ?? []), SIZE / 2 ** 30 / secs]);
    ratios.set(name, [...(ratios.get(name) ?? []), socat / secs]);
  }
  console.error(`round ${round + 1}/${ROUNDS} done`);
}

console.log(
  `\n### ${
    SIZE / 2 ** 20
  } MiB get over TLS 1.3, 127.0.0.1, /dev/shm → /dev/shm (${ROUNDS} rounds, medians)\n`,
);
console.log("| path | GiB/s | × socat OPENSSL |");
console.log("|---|---|---|");
for (const [name, xs] of results) {
  console.log(
    `| ${name} | ${median(xs).toFixed(2)} | ${
      median(ratios.get(name)!).toFixed(2)
    } |`,
  );
}

// Handshake: connect → Welcome, in this process (the runtime running the bench).
const HANDSHAKES = 50;
const argv = flavors[0]![1];
const hsPort = nextPort++;
const hsServer = await startServer(
  [
    ...argv,
    "serve",
    "--host",
    "127.0.0.1",
    "--port",
    String(hsPort),
    "--root",
    DIR,
    "--tls-cert",
    "c.pem",
    "--tls-key",
    "k.pem",
  ],
  hsPort,
);
const plainPort = nextPort++;
const plainServer = await startServer([
  ...argv,
  "serve",
  "--host",
  "127.0.0.1",
  "--port",
  String(plainPort),
  "--root",
  DIR,
], plainPort);
const hs: Record<string, number[]> = { tls: [], plain: [] };
for (let i = 0; i < HANDSHAKES; i++) {
  for (const mode of ["tls", "plain"] as const) {
    const t0 = performance.now();
    const session = await openSession({
      net: getNet(),
      server: {
        hostname: "127.0.0.1",
        port: mode === "tls" ? hsPort : plainPort,
      },
      version: "bench",
      ...(mode === "tls" && { tls: { trust: { kind: "pin", pins: [FP] } } }),
    }, "get");
    hs[mode]!.push(performance.now() - t0);
    session.conn.close();
  }
}
hsServer.kill("SIGTERM");
plainServer.kill("SIGTERM");
console.log(
  `\n### Handshake, connect → Welcome (${HANDSHAKES} each, client ${getNet().runtime} in-process, server ${
    flavors[0]![0]
  })\n`,
);
console.log("| | median ms | p90 ms |");
console.log("|---|---|---|");
for (const [mode, xs] of Object.entries(hs)) {
  const s = [...xs].sort((a, b) => a - b);
  console.log(
    `| ${mode === "tls" ? "TLS 1.3 (P-256, pinned)" : "plain TCP"} | ${
      median(xs).toFixed(2)
    } | ${s[Math.floor(s.length * 0.9)]!.toFixed(2)} |`,
  );
}
fs.rmSync(DIR, { recursive: true, force: true });
process.exit(0);
