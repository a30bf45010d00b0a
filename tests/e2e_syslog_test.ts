import { test } from "node:test";
import assert from "node:assert/strict";
import { type ChildProcess, spawn } from "node:child_process";
import * as fs from "node:fs";
import * as net from "node:net";
import * as path from "node:path";
import process from "node:process";
import {
  runMoat,
  type RunningServer,
  startServer,
  tempDir,
  vaultLs,
  waitVaultCount,
} from "./_e2e.ts";
import { readRecords } from "../lib/vault/read.ts";
import { parseSyslog } from "../lib/syslog.ts";
import { memoryKiB, syslogFlood } from "../soak/hostile.ts";
import { certIdentity, issued } from "./_certs.ts";

/** The path of a system binary, or undefined if it is not installed. */
function findBinary(name: string): string | undefined {
  const dirs = [
    ...(process.env.PATH ?? "").split(":"),
    "/usr/sbin",
    "/sbin",
    "/usr/bin",
    "/bin",
  ];
  return dirs.filter((d) => d !== "").map((d) => path.join(d, name)).find((p) =>
    fs.existsSync(p)
  );
}

const LOGGER = findBinary("logger");
const RSYSLOGD = findBinary("rsyslogd");
const NO_LOGGER = LOGGER === undefined
  ? "skipped: logger not found (apt-get install bsdutils)"
  : false;
const NO_RSYSLOG = RSYSLOGD === undefined
  ? "skipped: rsyslogd not found (apt-get install rsyslog)"
  : false;

/** The syslog port from the server's "listening" line. */
function syslogPort(server: RunningServer): number {
  const listening = server.events().find((e) => e.event === "listening")!;
  const addr = (listening.syslog as string[])[0]!;
  return Number(addr.slice(addr.lastIndexOf(":") + 1));
}

/**
 * `moat serve --vault <dir>/vault --syslog-port 0 …extra`, with the vault's
 * path and the syslog port it bound.
 */
async function startSyslogServer(dir: string, extra: string[] = []) {
  const vault = path.join(dir, "vault");
  const server = await startServer([
    "--vault",
    vault,
    "--syslog-port",
    "0",
    ...extra,
  ]);
  return Object.assign(server, { vault, syslogPort: syslogPort(server) });
}

/** The vault's rows; none when it cannot be listed. */
async function vaultRows(dir: string): Promise<string[][]> {
  return (await vaultLs(dir)) ?? [];
}

/** Runs a child to exit; rejects after `timeoutMs`. */
function exited(
  child: ChildProcess,
  timeoutMs: number,
): Promise<{ code: number | null; stderr: string }> {
  let stderr = "";
  child.stderr?.setEncoding("utf8").on("data", (d: string) => (stderr += d));
  return new Promise((resolve, reject) => {
    const timer = setTimeout(() => {
      child.kill("SIGKILL");
      reject(
        new Error(
          `${child.spawnfile} did not exit within ${timeoutMs} ms: ${stderr}`,
        ),
      );
    }, timeoutMs);
    child.on("close", (code) => {
      clearTimeout(timer);
      resolve({ code, stderr });
    });
  });
}

function numbered(count: number, tag: string): string {
  let s = "";
  for (let i = 1; i <= count; i++) s += `${tag} ${i} ${"x".repeat(i % 70)}\n`;
  return s;
}

/** Checks that `lines` are exactly messages 1…count, in order, each matching `shape`. */
function assertNumbered(
  lines: readonly string[],
  count: number,
  shape: RegExp,
  tag: string,
) {
  assert.equal(lines.length, count);
  for (let i = 0; i < count; i++) {
    const m = shape.exec(lines[i]!);
    assert.ok(
      m,
      `line ${i + 1} has the wrong shape: ${JSON.stringify(lines[i])}`,
    );
    assert.equal(
      m[1],
      `${tag} ${i + 1} ${"x".repeat((i + 1) % 70)}`,
      `line ${i + 1}`,
    );
  }
}

async function catLines(vault: string): Promise<string[]> {
  const cat = await runMoat(["vault", "cat", vault], { timeoutMs: 60_000 });
  assert.equal(cat.code, 0, cat.stderr);
  return cat.stdout.split("\n").slice(0, -1);
}

/**
 * `rsyslogd -n -f <dir>/rsyslog.conf` with `conf`: no imuxsock, no
 * privileged port, nothing outside `dir`, so it runs unprivileged. `stop`
 * (and disposal) ends it by its PID and waits for the exit.
 */
function startRsyslog(dir: string, conf: string) {
  const file = path.join(dir, "rsyslog.conf");
  fs.writeFileSync(file, conf);
  const child = spawn(RSYSLOGD!, [
    "-n",
    "-f",
    file,
    "-i",
    path.join(dir, "rsyslog.pid"),
  ], {
    stdio: ["ignore", "pipe", "pipe"],
  });
  let output = "";
  child.stdout!.setEncoding("utf8").on("data", (d: string) => (output += d));
  child.stderr!.setEncoding("utf8").on("data", (d: string) => (output += d));
  const gone = new Promise<void>((resolve) =>
    child.on("close", () => resolve())
  );
  const stop = async () => {
    if (child.exitCode === null && child.signalCode === null) {
      process.kill(child.pid!, "SIGTERM");
    }
    const timer = setTimeout(() => child.kill("SIGKILL"), 10_000);
    await gone;
    clearTimeout(timer);
  };
  return {
    /** What rsyslogd printed so far. */
    output: () => output,
    stop,
    [Symbol.asyncDispose]: stop,
  };
}

const LOGGER_CASES = [
  {
    framing: "octet counting",
    flags: ["--octet-count", "--rfc5424"],
    shape: /^<13>1 \S+ \S+ app5424 - - \[timeQuality [^\]]*\] (.*)$/,
    framed: "octet-counting",
  },
  {
    framing: "newline framing",
    flags: ["--rfc3164"],
    shape: /^<13>[A-Z][a-z]{2} [ \d]\d \d\d:\d\d:\d\d \S+ app3164: (.*)$/,
    framed: "newline",
  },
];

for (const c of LOGGER_CASES) {
  test(
    `moat serve --syslog-port stores 10,000 messages from logger (${c.framing})`,
    { skip: NO_LOGGER },
    async () => {
      using dir = tempDir();
      await using server = await startSyslogServer(dir.dir);
      const { vault, syslogPort: port } = server;
      const app = c.flags.includes("--rfc5424") ? "app5424" : "app3164";
      const logger = spawn(LOGGER!, [
        "--tcp",
        ...c.flags,
        "--server",
        "127.0.0.1",
        "--port",
        String(port),
        "-t",
        app,
      ], {
        stdio: ["pipe", "ignore", "pipe"],
      });
      const done = exited(logger, 60_000);
      logger.stdin!.end(numbered(10_000, "msg"));
      const r = await done;
      assert.equal(r.code, 0, r.stderr);
      assert.equal(await waitVaultCount(vault, 10_000, 30_000), 10_000);
      assert.deepEqual((await vaultRows(vault)).map((row) => row.slice(0, 3)), [
        ["127.0.0.1", "syslog", "10000"],
      ]);
      assertNumbered(await catLines(vault), 10_000, c.shape, "msg");

      const finished = await server.waitEvent(
        (e) => e.event === "syslog_finished",
        "syslog_finished",
      );
      assert.equal(finished.listener, "syslog");
      assert.equal(finished.framing, c.framed);
      assert.equal(finished.records, 10_000);
      assert.ok(
        server.events().some((e) =>
          e.event === "accepted" && e.listener === "syslog"
        ),
      );
      await server.waitEvent(
        (e) => e.event === "closed" && e.listener === "syslog",
        "closed",
      );

      // Sequence numbers are the server's, 1…10,000; ts is the message's own time.
      let seq = 0;
      for await (const rec of readRecords(vault)) {
        assert.equal(rec.seq, ++seq);
        const own = parseSyslog(rec.line, { now: rec.recvTs }).ts;
        assert.ok(own !== undefined, "logger's timestamp parses");
        assert.equal(rec.ts, own);
        assert.ok(
          Math.abs(rec.recvTs - rec.ts) < 120_000,
          `ts ${rec.ts} is near recvTs ${rec.recvTs}`,
        );
      }
      assert.equal(seq, 10_000);
    },
  );
}

test(
  "moat serve --syslog-port stores 10,000 messages from rsyslog forwarding with both framings at once",
  { skip: NO_RSYSLOG },
  async () => {
    using dir = tempDir();
    await using server = await startSyslogServer(dir.dir);
    const { vault, syslogPort: port } = server;
    const input = path.join(dir.dir, "app.log");
    fs.writeFileSync(input, numbered(10_000, "rs"));
    fs.mkdirSync(path.join(dir.dir, "work"));
    // imfile reads the file from its start; two omfwd actions forward every
    // line, one RFC 5424 octet-counted, one RFC 3164 with LF.
    await using rsyslog = startRsyslog(
      dir.dir,
      `global(workDirectory="${path.join(dir.dir, "work")}")
module(load="imfile" mode="polling" PollingInterval="1")
input(type="imfile" file="${input}" tag="rsapp:" facility="local3" severity="info" freshStartTail="off")
action(type="omfwd" target="127.0.0.1" port="${port}" protocol="tcp" TCP_Framing="octet-counted" template="RSYSLOG_SyslogProtocol23Format")
action(type="omfwd" target="127.0.0.1" port="${port}" protocol="tcp" TCP_Framing="traditional")
`,
    );
    const n = await waitVaultCount(vault, 20_000, 60_000);
    await rsyslog.stop();
    assert.equal(n, 20_000, `rsyslogd said: ${rsyslog.output()}`);
    const lines = await catLines(vault);
    // Two connections interleave in the one source; each keeps its order.
    assertNumbered(
      lines.filter((l) => l.startsWith("<158>1 ")),
      10_000,
      /^<158>1 \S+ \S+ rsapp - - - (.*)$/,
      "rs",
    );
    assertNumbered(
      lines.filter((l) => !l.startsWith("<158>1 ")),
      10_000,
      /^<158>[A-Z][a-z]{2} [ \d]\d \d\d:\d\d:\d\d \S+ rsapp: ?(.*)$/,
      "rs",
    );
    let seq = 0;
    for await (const rec of readRecords(vault)) assert.equal(rec.seq, ++seq);
    assert.equal(seq, 20_000);
    await server.waitEvent(
      (e) => e.event === "syslog_finished" && e.framing === "octet-counting",
      "5424 finished",
    );
    await server.waitEvent(
      (e) => e.event === "syslog_finished" && e.framing === "newline",
      "3164 finished",
    );
  },
);

/**
 * Connects from `localAddress`, writes `data` (and half-closes if `end`),
 * and resolves what came back once the server closed.
 */
function exchange(
  port: number,
  data: Uint8Array | string,
  { localAddress = "127.0.0.1", end = false } = {},
): Promise<{ received: string; closedBy: "server" | "timeout" }> {
  return new Promise((resolve, reject) => {
    const sock = net.connect({ port, host: "127.0.0.1", localAddress });
    const got: Buffer[] = [];
    const timer = setTimeout(() => {
      sock.destroy();
      resolve({ received: Buffer.concat(got).toString(), closedBy: "timeout" });
    }, 10_000);
    sock.on("data", (d) => got.push(d));
    sock.on(
      "error",
      () => {/* a reset after the server closed: still closed */},
    );
    sock.on("close", () => {
      clearTimeout(timer);
      resolve({ received: Buffer.concat(got).toString(), closedBy: "server" });
    });
    sock.on("connect", () => {
      if (end) sock.end(data);
      else sock.write(data);
    });
    sock.on("timeout", () => reject(new Error("connect timeout")));
  });
}

test("moat serve --syslog-port refuses a peer the allowlist does not allow, before reading it", async () => {
  using dir = tempDir();
  await using server = await startSyslogServer(dir.dir, [
    "--allow",
    "127.0.0.2",
  ]);
  const { vault, syslogPort: port } = server;
  const refused = await exchange(
    port,
    "<13>1 - - - - - - forged 1\n<13>1 - - - - - - forged 2\n",
  );
  assert.equal(refused.closedBy, "server");
  assert.match(refused.received, /^ERR ACCESS_DENIED/);
  const event = await server.waitEvent(
    (e) => e.event === "refused" && e.listener === "syslog",
    "refused",
  );
  assert.match(String(event.peer), /^127\.0\.0\.1:/);
  assert.ok(
    !server.events().some((e) => e.event === "accepted"),
    "never accepted",
  );
  // An allowed peer on the same port is served, under its own address.
  const allowed = net.connect({
    port,
    host: "127.0.0.1",
    localAddress: "127.0.0.2",
  });
  await new Promise<void>((resolve, reject) => {
    allowed.on("error", reject);
    allowed.end(
      "<13>1 - - - - - - kept 1\n<13>1 - - - - - - kept 2\n",
      () => resolve(),
    );
  });
  assert.equal(await waitVaultCount(vault, 2, 10_000), 2);
  assert.deepEqual((await vaultRows(vault)).map((row) => row.slice(0, 3)), [[
    "127.0.0.2",
    "syslog",
    "2",
  ]]);
  assert.deepEqual(await catLines(vault), [
    "<13>1 - - - - - - kept 1",
    "<13>1 - - - - - - kept 2",
  ]);
  allowed.destroy();
});

test("moat serve --syslog-max refuses an oversize message with an audit line and keeps serving", async () => {
  using dir = tempDir();
  await using server = await startSyslogServer(dir.dir, [
    "--syslog-max",
    "1024",
  ]);
  const { vault, syslogPort: port } = server;
  const big = "<13>1 - - - - - - " + "y".repeat(2000);
  // Octet counting: refused from the count alone; the messages before it are kept.
  const counted = await exchange(port, `5 <13>a5 <13>b${big.length} ${big}`);
  assert.equal(counted.closedBy, "server");
  const first = await server.waitEvent(
    (e) => e.event === "refused" && e.listener === "syslog",
    "refused",
  );
  assert.match(
    String(first.reason),
    /Syslog message of at least \d+ bytes exceeds the limit of 1024 bytes/,
  );
  // Newline framing: refused once the line passes the limit, without its LF.
  const lined = await exchange(port, `<13>c\n${big}`);
  assert.equal(lined.closedBy, "server");
  await server.waitEvent(
    (e) => e.event === "refused" && e.listener === "syslog" && e !== first,
    "second refusal",
  );
  // The server is still serving.
  assert.equal(
    (await exchange(port, "<13>d\n", { end: true })).closedBy,
    "server",
  );
  assert.equal(await waitVaultCount(vault, 4, 10_000), 4);
  assert.deepEqual(await catLines(vault), ["<13>a", "<13>b", "<13>c", "<13>d"]);
  const closed = server.events().filter((e) =>
    e.event === "closed" && e.listener === "syslog"
  );
  assert.equal(
    closed.filter((e) => e.reason === "syslog message too large").length,
    2,
  );
});

test("moat serve --syslog-port stays within its memory and keeps serving while 50 senders write as fast as they can", async () => {
  using dir = tempDir();
  const root = path.join(dir.dir, "root");
  fs.mkdirSync(root);
  fs.writeFileSync(path.join(root, "a.txt"), "still serving\n");
  await using server = await startSyslogServer(dir.dir, ["--root", root]);
  const { vault, syslogPort: port } = server;
  const before = memoryKiB(server.child.pid!);
  const flood = await syslogFlood({
    port,
    connections: 50,
    durationMs: 120_000,
    bytesPerConnection: 1 << 20,
    drainMs: 120_000,
  });
  // The soak row (soak/main.ts, "syslog") runs 200 senders for 10 s against
  // a target of 256 MiB; this shorter run has a generous bound that still
  // catches a server holding what it was sent (before the budget, these 50
  // MiB took Deno's server to 480 MiB; with it, 150 MiB).
  const peak = memoryKiB(server.child.pid!).hwm;
  assert.ok(before.rss > 0 && peak > 0, "RSS readable from /proc");
  assert.ok(
    peak < 384 * 1024,
    `server peak RSS ${peak >> 10} MiB after ${
      flood.bytes >> 20
    } MiB of syslog`,
  );
  assert.equal(flood.connected, 50);
  assert.equal(flood.closed, 50, JSON.stringify(flood));
  assert.equal(
    await waitVaultCount(vault, flood.messages, 30_000),
    flood.messages,
  );
  const got = path.join(dir.dir, "got.txt");
  const r = await runMoat([
    "get",
    "FILE:a.txt",
    "-o",
    got,
    "--server",
    `127.0.0.1:${server.port}`,
  ]);
  assert.equal(r.code, 0, r.stderr);
  assert.equal(fs.readFileSync(got, "utf8"), "still serving\n");
});

test("moat serve --syslog-idle-timeout closes a syslog connection that sends nothing", async () => {
  using dir = tempDir();
  await using server = await startSyslogServer(dir.dir, [
    "--syslog-idle-timeout",
    "1",
  ]);
  const silent = await exchange(server.syslogPort, "");
  assert.equal(silent.closedBy, "server");
  const closed = await server.waitEvent(
    (e) => e.event === "closed" && e.listener === "syslog",
    "closed",
  );
  assert.equal(
    closed.reason,
    "syslog idle timeout: no message in 1 s after connecting",
  );
  assert.ok(
    server.events().some((e) =>
      e.event === "listening" && e.syslogMaxConns === 256
    ),
  );
});

test("moat serve --syslog-max-conns and the syslog timeouts without --syslog-port are usage errors", async () => {
  for (const flag of ["--syslog-max-conns", "--syslog-idle-timeout"]) {
    const r = await runMoat([
      "serve",
      "--host",
      "127.0.0.1",
      "--port",
      "0",
      flag,
      "5",
    ]);
    assert.equal(r.code, 2, r.stderr);
    assert.match(r.stderr, new RegExp(`${flag} needs --syslog-port`));
  }
});

test("moat serve --syslog-port without --vault is a usage error", async () => {
  const r = await runMoat([
    "serve",
    "--host",
    "127.0.0.1",
    "--port",
    "0",
    "--syslog-port",
    "0",
  ]);
  assert.equal(r.code, 2);
  assert.match(r.stderr, /--syslog-port needs --vault/);
});

test("moat ship cannot claim the syslog source name", async () => {
  using dir = tempDir();
  await using server = await startSyslogServer(dir.dir);
  const { vault } = server;
  const r = await runMoat(
    [
      "ship",
      "-",
      "--server",
      `127.0.0.1:${server.port}`,
      "--state",
      path.join(dir.dir, "s.json"),
      "--source",
      "syslog",
    ],
    { input: "x\n" },
  );
  assert.notEqual(r.code, 0);
  assert.match(r.stderr, /reserved for the syslog port/);
  assert.deepEqual(await vaultRows(vault), []);
});

/**
 * rsyslog 8.2302's gtls driver offers GnuTLS's "NORMAL" less TLS 1.3 unless
 * told otherwise, and moat speaks only TLS 1.3: this priority string is the
 * setting that makes them meet (docs/SECURITY.md, "Syslog over TLS").
 */
const GTLS_TLS13 = "NORMAL:-VERS-ALL:+VERS-TLS1.3";

/** A CA, `srv` and `cli` issued by it, in `dir`. */
function syslogCerts(dir: string) {
  issued(dir, "ca", "srv");
  issued(dir, "ca", "cli");
  const file = (name: string) => path.join(dir, name);
  return {
    ca: file("ca.pem"),
    cli: { cert: file("cli.pem"), key: file("cli.key") },
    serverArgs: [
      "--syslog-tls",
      "--tls-cert",
      file("srv.pem"),
      "--tls-key",
      file("srv.key"),
    ],
  };
}

/**
 * An rsyslog configuration that reads `count` numbered messages from a file
 * and sends them to 127.0.0.1:`port` with one omfwd action per entry of
 * `actions` (extra parameters of each action).
 */
function forwardingConf(
  dir: string,
  opts: { port: number; count: number; actions: string[] },
): string {
  const input = path.join(dir, "app.log");
  fs.writeFileSync(input, numbered(opts.count, "tls"));
  fs.mkdirSync(path.join(dir, "work"));
  return `global(workDirectory="${path.join(dir, "work")}")
module(load="imfile" mode="polling" PollingInterval="1")
input(type="imfile" file="${input}" tag="rsapp:" facility="local3" severity="info" freshStartTail="off")
${
    opts.actions.map((a) =>
      `action(type="omfwd" target="127.0.0.1" port="${opts.port}" protocol="tcp" TCP_Framing="octet-counted" template="RSYSLOG_SyslogProtocol23Format" StreamDriver="gtls" StreamDriverMode="1" ${a})`
    ).join("\n")
  }
`;
}

const RFC5424_LINE = /^<158>1 \S+ \S+ rsapp - - - (.*)$/;

test(
  "moat serve --syslog-tls stores what rsyslog's gtls driver forwards over TLS 1.3",
  { skip: NO_RSYSLOG },
  async () => {
    using dir = tempDir();
    const certs = syslogCerts(dir.dir);
    await using server = await startSyslogServer(dir.dir, certs.serverArgs);
    const { vault, syslogPort: port } = server;
    const listening = server.events().find((e) => e.event === "listening")!;
    assert.equal(listening.syslogTls, true);
    await using rsyslog = startRsyslog(
      dir.dir,
      forwardingConf(dir.dir, {
        port,
        count: 500,
        actions: [
          `StreamDriverAuthMode="x509/certvalid" StreamDriver.CAFile="${certs.ca}" gnutlsPriorityString="${GTLS_TLS13}"`,
        ],
      }),
    );
    const n = await waitVaultCount(vault, 500, 60_000);
    await rsyslog.stop();
    assert.equal(n, 500, `rsyslogd said: ${rsyslog.output()}`);
    assertNumbered(await catLines(vault), 500, RFC5424_LINE, "tls");
    assert.deepEqual((await vaultRows(vault)).map((row) => row.slice(0, 3)), [
      ["127.0.0.1", "syslog", "500"],
    ]);
    const finished = await server.waitEvent(
      (e) => e.event === "syslog_finished",
      "syslog_finished",
    );
    assert.equal(finished.framing, "octet-counting");
    assert.equal(finished.records, 500);
    const accepted = server.events().find((e) =>
      e.event === "accepted" && e.listener === "syslog"
    )!;
    assert.equal(accepted.identity, undefined, "no client certificate asked");
  },
);

test(
  "moat serve --syslog-tls refuses rsyslog's gtls driver at its default priority string (no TLS 1.3 offered)",
  { skip: NO_RSYSLOG },
  async () => {
    using dir = tempDir();
    const certs = syslogCerts(dir.dir);
    await using server = await startSyslogServer(dir.dir, certs.serverArgs);
    const { vault, syslogPort: port } = server;
    await using rsyslog = startRsyslog(
      dir.dir,
      forwardingConf(dir.dir, {
        port,
        count: 3,
        actions: [
          `StreamDriverAuthMode="x509/certvalid" StreamDriver.CAFile="${certs.ca}"`,
        ],
      }),
    );
    const refused = await server.waitEvent(
      (e) => e.event === "refused" && e.listener === "syslog",
      "refused",
      60_000,
    );
    await rsyslog.stop();
    assert.match(String(refused.reason), /TLS 1\.3/);
    assert.ok(
      !server.events().some((e) => e.event === "accepted"),
      "never accepted",
    );
    assert.deepEqual(await vaultRows(vault), []);
  },
);

test(
  "moat serve --syslog-tls --client-ca takes rsyslog with a client certificate, under its identity, and refuses rsyslog without one",
  { skip: NO_RSYSLOG },
  async () => {
    using dir = tempDir();
    const certs = syslogCerts(dir.dir);
    await using server = await startSyslogServer(dir.dir, [
      ...certs.serverArgs,
      "--client-ca",
      certs.ca,
    ]);
    const { vault, syslogPort: port } = server;
    const identity = certIdentity(dir.dir, certs.cli.cert);
    const tls =
      `StreamDriverAuthMode="x509/certvalid" StreamDriver.CAFile="${certs.ca}" gnutlsPriorityString="${GTLS_TLS13}"`;
    // The same messages go out twice: once with the client certificate,
    // once without it.
    await using rsyslog = startRsyslog(
      dir.dir,
      forwardingConf(dir.dir, {
        port,
        count: 200,
        actions: [
          `${tls} StreamDriver.CertFile="${certs.cli.cert}" StreamDriver.KeyFile="${certs.cli.key}"`,
          tls,
        ],
      }),
    );
    const refused = await server.waitEvent(
      (e) => e.event === "refused" && e.listener === "syslog",
      "refused",
      60_000,
    );
    assert.equal(refused.reason, "client certificate required");
    const n = await waitVaultCount(vault, 200, 60_000);
    await rsyslog.stop();
    assert.equal(n, 200, `rsyslogd said: ${rsyslog.output()}`);
    const accepted = server.events().filter((e) =>
      e.event === "accepted" && e.listener === "syslog"
    );
    assert.ok(accepted.length > 0);
    for (const e of accepted) assert.equal(e.identity, identity);
    // Stored once, in the source of the certificate's identity: nothing
    // from the refused sender.
    assertNumbered(await catLines(vault), 200, RFC5424_LINE, "tls");
    const rows = await vaultRows(vault);
    assert.equal(rows.length, 1, JSON.stringify(rows));
    assert.equal(rows[0]![2], "200");
    assert.ok(
      rows[0]!.join("\t").includes(identity),
      `the source is keyed by ${identity}: ${JSON.stringify(rows)}`,
    );
  },
);

test("moat serve --syslog-tls stores nothing from a plain-TCP sender", async () => {
  using dir = tempDir();
  const certs = syslogCerts(dir.dir);
  await using server = await startSyslogServer(dir.dir, certs.serverArgs);
  const { vault, syslogPort: port } = server;
  const plain = await exchange(
    port,
    "<13>1 - - - - - - plain 1\n<13>1 - - - - - - plain 2\n",
    { end: true },
  );
  assert.equal(plain.closedBy, "server");
  const refused = await server.waitEvent(
    (e) => e.event === "refused" && e.listener === "syslog",
    "refused",
  );
  assert.match(String(refused.reason), /TLS/);
  assert.ok(
    !server.events().some((e) => e.event === "accepted"),
    "never accepted",
  );
  assert.deepEqual(await vaultRows(vault), []);
});

test("moat serve --syslog-tls without --tls-cert or --syslog-port is a usage error", async () => {
  using dir = tempDir();
  const base = ["serve", "--host", "127.0.0.1", "--port", "0"];
  const vault = ["--vault", path.join(dir.dir, "vault")];
  const noCert = await runMoat([
    ...base,
    ...vault,
    "--syslog-port",
    "0",
    "--syslog-tls",
  ]);
  assert.equal(noCert.code, 2);
  assert.match(noCert.stderr.trim(), /^[^\n]*--syslog-tls needs --tls-cert/);
  const noPort = await runMoat([...base, ...vault, "--syslog-tls"]);
  assert.equal(noPort.code, 2);
  assert.match(
    noPort.stderr.trim(),
    /^[^\n]*--syslog-tls needs --syslog-port$/,
  );
});
