/**
 * End-to-end tests of TLS and client authentication: real `moat serve` and
 * `moat get`/`moat chat` processes, certificates made by the `openssl` CLI
 * (and one by `moat cert`), and `openssl s_client`/`s_server` as real peers.
 *
 * @module
 */

import { test } from "node:test";
import assert from "node:assert/strict";
import { type ChildProcess, spawn, spawnSync } from "node:child_process";
import { Buffer } from "node:buffer";
import * as fs from "node:fs";
import * as net from "node:net";
import * as path from "node:path";
import { createHmac } from "node:crypto";
import { EC, issued, openssl } from "./_certs.ts";
import {
  LineWatcher,
  runMoat,
  type RunningServer,
  startServer,
  tempDir,
} from "./_e2e.ts";

/** A self-signed certificate `<name>.pem` / `<name>.key` for 127.0.0.1. */
function selfSigned(
  dir: string,
  name: string,
  opts: { ca?: boolean; days?: number } = {},
): void {
  const ext = opts.ca
    ? "basicConstraints=critical,CA:TRUE"
    : "basicConstraints=critical,CA:FALSE";
  if (opts.days !== undefined && opts.days < 0) {
    // `req -x509` refuses negative days; `x509 -req` makes an expired one.
    signedCert(dir, name, {
      ext: `${ext}\nsubjectAltName=IP:127.0.0.1\n`,
      signer: ["-signkey", `${name}.key`],
      days: opts.days,
    });
    return;
  }
  openssl([
    "req",
    "-x509",
    ...EC,
    "-keyout",
    `${name}.key`,
    "-out",
    `${name}.pem`,
    "-days",
    String(opts.days ?? 2),
    "-subj",
    "/CN=127.0.0.1",
    "-addext",
    ext,
    "-addext",
    "subjectAltName=IP:127.0.0.1,DNS:localhost",
  ], dir);
}

/**
 * `<name>.key` and a request for CN 127.0.0.1, then `<name>.pem` signed by
 * `signer` (openssl x509 arguments) with the extensions `ext`.
 */
function signedCert(
  dir: string,
  name: string,
  opts: { ext: string; signer: string[]; days: number },
): void {
  openssl([
    "req",
    "-new",
    ...EC,
    "-keyout",
    `${name}.key`,
    "-subj",
    "/CN=127.0.0.1",
    "-out",
    `${name}.csr`,
  ], dir);
  fs.writeFileSync(path.join(dir, `${name}.ext`), opts.ext);
  openssl([
    "x509",
    "-req",
    "-in",
    `${name}.csr`,
    ...opts.signer,
    "-days",
    String(opts.days),
    "-extfile",
    `${name}.ext`,
    "-out",
    `${name}.pem`,
  ], dir);
}

/** openssl's colon form, e.g. `AB:CD:…`. */
function colonFp(dir: string, pem: string): string {
  return openssl(["x509", "-in", pem, "-noout", "-fingerprint", "-sha256"], dir)
    .trim().split("=")[1]!;
}

function hexFp(dir: string, pem: string): string {
  return "sha256:" + colonFp(dir, pem).replaceAll(":", "").toLowerCase();
}

/** Starts a TLS server on the fixture root with the given cert and extra args. */
function tlsServer(
  dir: string,
  cert: string,
  extra: string[] = [],
): Promise<RunningServer> {
  return startServer([
    "--root",
    dir,
    "--tls-cert",
    path.join(dir, `${cert}.pem`),
    "--tls-key",
    path.join(dir, `${cert}.key`),
    ...extra,
  ]);
}

/** `moat get FILE:hello.txt` against a server, with a private config dir. */
function getHello(
  dir: string,
  port: number,
  args: string[],
  env: Record<string, string> = {},
) {
  const out = path.join(dir, `got-${Math.random().toString(36).slice(2)}.txt`);
  return runMoat([
    "get",
    "FILE:hello.txt",
    "--server",
    `127.0.0.1:${port}`,
    "-o",
    out,
    ...args,
  ], {
    cwd: dir,
    env: { MOAT_CONFIG_DIR: path.join(dir, "config"), ...env },
  }).then((r) => ({
    ...r,
    saved: fs.existsSync(out) ? fs.readFileSync(out, "utf8") : undefined,
  }));
}

/** The one `moat: …` line a refused client prints. */
function oneLine(stderr: string): string {
  const lines = stderr.trim().split("\n");
  assert.equal(lines.length, 1, `expected one line, got:\n${stderr}`);
  return lines[0]!;
}

function fixture(): { dir: string; [Symbol.dispose](): void } {
  const t = tempDir("moat-tls-");
  fs.writeFileSync(path.join(t.dir, "hello.txt"), "hello over tls\n");
  return t;
}

test("serve --tls-cert: get --tls trusts on first use, then refuses a changed fingerprint", async () => {
  using t = fixture();
  selfSigned(t.dir, "a");
  selfSigned(t.dir, "b");
  {
    await using server = await tlsServer(t.dir, "a");
    const port = server.port;
    const first = await getHello(t.dir, port, ["--tls"]);
    assert.equal(first.code, 0, first.stderr);
    assert.equal(first.saved, "hello over tls\n");
    assert.match(
      first.stderr,
      new RegExp(
        `trusting 127\\.0\\.0\\.1:${port} on first use: ${
          hexFp(t.dir, "a.pem")
        }`,
      ),
    );
    const known = fs.readFileSync(
      path.join(t.dir, "config", "known_hosts"),
      "utf8",
    );
    assert.equal(known, `127.0.0.1:${port} ${hexFp(t.dir, "a.pem")}\n`);
    const again = await getHello(t.dir, port, ["--tls"]);
    assert.equal(again.code, 0, again.stderr);
    assert.doesNotMatch(again.stderr, /trusting/);
  }
  // Another certificate where a different one is remembered: fail closed, name file and line.
  await using other = await tlsServer(t.dir, "b");
  const file = path.join(t.dir, "config", "known_hosts");
  fs.appendFileSync(
    file,
    `# moat\n127.0.0.1:${other.port} ${hexFp(t.dir, "a.pem")}\n`,
  );
  const changed = await getHello(t.dir, other.port, ["--tls"]);
  assert.equal(changed.code, 3);
  assert.equal(changed.saved, undefined);
  const line = oneLine(changed.stderr);
  assert.match(
    line,
    new RegExp(
      `has CHANGED \\(now ${hexFp(t.dir, "b.pem")}, known ${
        hexFp(t.dir, "a.pem")
      }\\)`,
    ),
  );
  assert.match(line, /remove line 3 of ".*known_hosts"$/);
  await other.waitEvent((e) =>
    e.event === "closed" && e.reason === "peer closed before sending anything"
  );
});

test("get --tls --pin accepts openssl's colon form and moat cert's output, refuses a wrong pin", async () => {
  using t = fixture();
  const made = await runMoat([
    "cert",
    "--out",
    path.join(t.dir, "made"),
    "--name",
    "127.0.0.1",
  ], { cwd: t.dir });
  assert.equal(made.code, 0, made.stderr);
  const certPem = path.join(t.dir, "made", "moat-cert.pem");
  const text = openssl(["x509", "-in", certPem, "-noout", "-text"], t.dir);
  assert.match(text, /CA:FALSE/);
  assert.match(text, /IP Address:127\.0\.0\.1/);
  assert.match(text, /ecdsa-with-SHA256/);
  assert.equal(made.stdout.trim(), hexFp(t.dir, certPem));
  assert.equal(
    (fs.statSync(path.join(t.dir, "made", "moat-key.pem")).mode & 0o777)
      .toString(8),
    "600",
  );
  await using server = await startServer([
    "--root",
    t.dir,
    "--tls-cert",
    certPem,
    "--tls-key",
    path.join(t.dir, "made", "moat-key.pem"),
  ]);
  const good = await getHello(t.dir, server.port, [
    "--tls",
    "--pin",
    `sha256:${colonFp(t.dir, certPem)}`,
  ]);
  assert.equal(good.code, 0, good.stderr);
  assert.equal(good.saved, "hello over tls\n");
  assert.equal(fs.existsSync(path.join(t.dir, "config", "known_hosts")), false);
  const bad = await getHello(t.dir, server.port, [
    "--tls",
    "--pin",
    `sha256:${"ab".repeat(32)}`,
  ]);
  assert.equal(bad.code, 3);
  assert.match(
    oneLine(bad.stderr),
    /^moat: Server 127\.0\.0\.1:\d+ refused: certificate fingerprint sha256:[0-9a-f]{64} does not match --pin$/,
  );
});

test("get --tls --ca verifies a CA-issued server and refuses one from another CA", async () => {
  using t = fixture();
  issued(t.dir, "ca1", "srv");
  selfSigned(t.dir, "other");
  await using server = await tlsServer(t.dir, "srv");
  const good = await getHello(t.dir, server.port, ["--tls", "--ca", "ca1.pem"]);
  assert.equal(good.code, 0, good.stderr);
  const bad = await getHello(t.dir, server.port, [
    "--tls",
    "--ca",
    "other.pem",
  ]);
  assert.equal(bad.code, 3);
  assert.match(
    oneLine(bad.stderr),
    /refused: its certificate does not verify against --ca/,
  );
});

/** Runs `openssl s_server` with a certificate; resolves its port once listening. */
async function sServer(
  dir: string,
  cert: string,
): Promise<{ port: number; child: ChildProcess }> {
  for (let attempt = 0; attempt < 5; attempt++) {
    const port = 20_000 + Math.floor(Math.random() * 30_000);
    const child = spawn("openssl", [
      "s_server",
      "-accept",
      `127.0.0.1:${port}`,
      "-cert",
      `${cert}.pem`,
      "-key",
      `${cert}.key`,
      "-tls1_3",
      "-quiet",
    ], { cwd: dir, stdio: ["pipe", "pipe", "pipe"] });
    const up = await new Promise<boolean>((resolve) => {
      const timer = setTimeout(() => resolve(true), 5000);
      const probe = () => {
        const s = net.connect(port, "127.0.0.1");
        s.on("connect", () => {
          s.destroy();
          clearTimeout(timer);
          resolve(true);
        });
        s.on(
          "error",
          () => (child.exitCode === null
            ? setTimeout(probe, 50)
            : resolve(false)),
        );
      };
      setTimeout(probe, 100);
      child.on("exit", () => resolve(false));
    });
    if (up) return { port, child };
  }
  throw new Error("openssl s_server did not start");
}

test("get --tls refuses a CA:TRUE or an expired server certificate (openssl s_server as the server)", async () => {
  using t = fixture();
  selfSigned(t.dir, "cacert", { ca: true });
  selfSigned(t.dir, "expired", { days: -1 });
  for (
    const [cert, reason] of [["cacert", /is a CA certificate \(CA:TRUE\)/], [
      "expired",
      /certificate expired on /,
    ]] as const
  ) {
    const s = await sServer(t.dir, cert);
    try {
      const r = await getHello(t.dir, s.port, [
        "--tls",
        "--pin",
        hexFp(t.dir, `${cert}.pem`),
      ]);
      assert.equal(r.code, 3, r.stderr);
      assert.match(oneLine(r.stderr), reason);
      // Trust on first use refuses it too, and remembers nothing.
      const tofu = await getHello(t.dir, s.port, ["--tls"]);
      assert.equal(tofu.code, 3, tofu.stderr);
      assert.equal(
        fs.existsSync(path.join(t.dir, "config", "known_hosts")),
        false,
      );
    } finally {
      s.child.kill("SIGKILL");
    }
  }
  // And moat serve will not start with either.
  for (const cert of ["cacert", "expired"]) {
    const r = await runMoat([
      "serve",
      "--port",
      "0",
      "--tls-cert",
      `${cert}.pem`,
      "--tls-key",
      `${cert}.key`,
    ], {
      cwd: t.dir,
    });
    assert.equal(r.code, 2);
    assert.match(oneLine(r.stderr), /Cannot use --tls-cert/);
  }
});

test("serve --allow-cert and --client-ca: accepted clients are named by fingerprint; missing or wrong ones refused", async () => {
  using t = fixture();
  selfSigned(t.dir, "srv");
  selfSigned(t.dir, "alice");
  selfSigned(t.dir, "mallory");
  issued(t.dir, "clientca", "bob");
  await using server = await tlsServer(t.dir, "srv", [
    "--allow-cert",
    `sha256:${colonFp(t.dir, "alice.pem")}`,
    "--client-ca",
    path.join(t.dir, "clientca.pem"),
  ]);
  const pin = ["--tls", "--pin", hexFp(t.dir, "srv.pem")];
  const alice = await getHello(t.dir, server.port, [
    ...pin,
    "--cert",
    "alice.pem",
    "--key",
    "alice.key",
  ]);
  assert.equal(alice.code, 0, alice.stderr);
  await server.waitEvent((e) =>
    e.event === "accepted" && e.identity === `cert:${hexFp(t.dir, "alice.pem")}`
  );
  const bob = await getHello(t.dir, server.port, [
    ...pin,
    "--cert",
    "bob.pem",
    "--key",
    "bob.key",
  ]);
  assert.equal(bob.code, 0, bob.stderr);
  await server.waitEvent((e) =>
    e.event === "accepted" && e.identity === `cert:${hexFp(t.dir, "bob.pem")}`
  );
  const none = await getHello(t.dir, server.port, pin);
  assert.equal(none.code, 3, none.stderr);
  assert.equal(
    oneLine(none.stderr),
    "moat: Server refused: client certificate required",
  );
  const mallory = await getHello(t.dir, server.port, [
    ...pin,
    "--cert",
    "mallory.pem",
    "--key",
    "mallory.key",
  ]);
  assert.equal(mallory.code, 3, mallory.stderr);
  assert.equal(
    oneLine(mallory.stderr),
    "moat: Server refused: client certificate not trusted",
  );
  await server.waitEvent((e) =>
    e.event === "refused" && e.reason === "client certificate not trusted"
  );
});

test("serve --token-file: the right token passes and names the client; wrong or missing tokens are refused", async () => {
  using t = fixture();
  fs.writeFileSync(
    path.join(t.dir, "server.tokens"),
    "# name secret\nalice s3cret-token-for-alice\nbob bobs-long-secret-token\n",
    { mode: 0o600 },
  );
  fs.writeFileSync(
    path.join(t.dir, "alice.token"),
    "alice s3cret-token-for-alice\n",
    { mode: 0o600 },
  );
  fs.writeFileSync(
    path.join(t.dir, "wrong.token"),
    "alice not-the-right-secret!!\n",
    { mode: 0o600 },
  );
  await using server = await startServer([
    "--root",
    t.dir,
    "--token-file",
    path.join(t.dir, "server.tokens"),
  ]);
  const ok = await getHello(t.dir, server.port, [
    "--token-file",
    "alice.token",
  ]);
  assert.equal(ok.code, 0, ok.stderr);
  await server.waitEvent((e) =>
    e.event === "authenticated" && e.identity === "token:alice"
  );
  const viaEnv = await getHello(t.dir, server.port, [], {
    MOAT_TOKEN: "bob bobs-long-secret-token",
  });
  assert.equal(viaEnv.code, 0, viaEnv.stderr);
  const chat = await runMoat([
    "chat",
    "--server",
    `127.0.0.1:${server.port}`,
    "--token-file",
    "alice.token",
  ], {
    cwd: t.dir,
    input: "hi from alice\n",
  });
  assert.equal(chat.code, 0, chat.stderr);
  const relayed = await server.stdout.waitFor((l) =>
    l.includes("hi from alice")
  );
  assert.match(
    relayed,
    /^\[[0-9a-z]{4}-c\d+ 127\.0\.0\.1:\d+ token:alice\] hi from alice$/,
  );
  const none = await getHello(t.dir, server.port, []);
  assert.equal(none.code, 3, none.stderr);
  assert.match(
    oneLine(none.stderr),
    /Server requires a token: pass --token-file FILE or set MOAT_TOKEN/,
  );
  // The wrong token last: its failure makes this address wait before the
  // next challenge (ERR_AUTH_THROTTLED).
  const wrong = await getHello(t.dir, server.port, [
    "--token-file",
    "wrong.token",
  ]);
  assert.equal(wrong.code, 3);
  assert.equal(
    oneLine(wrong.stderr),
    "moat: Server refused: token authentication failed",
  );
  // Plain text is off on a token port.
  const plain = await rawExchange(server.port, Buffer.from("hello\n"));
  assert.match(plain.toString(), /^ERR PLAIN_DISABLED/);
});

/** Connects, writes `bytes`, and collects what arrives until the server closes (5 s at most). */
function rawExchange(port: number, bytes: Uint8Array): Promise<Buffer> {
  return new Promise((resolve, reject) => {
    const chunks: Buffer[] = [];
    const s = net.connect(port, "127.0.0.1", () => s.write(bytes));
    const timer = setTimeout(() => {
      s.destroy();
      resolve(Buffer.concat(chunks));
    }, 5000);
    s.on("data", (d: Buffer) => chunks.push(d));
    s.on("end", () => s.end());
    s.on("close", () => {
      clearTimeout(timer);
      resolve(Buffer.concat(chunks));
    });
    s.on("error", reject);
  });
}

test("a recorded token handshake cannot be replayed", async () => {
  using t = fixture();
  fs.writeFileSync(path.join(t.dir, "t"), "alice s3cret-token-for-alice\n", {
    mode: 0o600,
  });
  await using server = await startServer([
    "--root",
    t.dir,
    "--token-file",
    path.join(t.dir, "t"),
  ]);
  // A recording relay between a real client and the server.
  const recorded: Buffer[] = [];
  const relay = net.createServer((client) => {
    const upstream = net.connect(server.port, "127.0.0.1");
    client.on("data", (d: Buffer) => {
      recorded.push(d);
      upstream.write(d);
    });
    upstream.on("data", (d: Buffer) => client.write(d));
    client.on("end", () => upstream.end());
    upstream.on("end", () => client.end());
    client.on("error", () => upstream.destroy());
    upstream.on("error", () => client.destroy());
  });
  await new Promise<void>((resolve) => relay.listen(0, "127.0.0.1", resolve));
  try {
    const port = (relay.address() as net.AddressInfo).port;
    const ok = await getHello(t.dir, port, ["--token-file", "t"]);
    assert.equal(ok.code, 0, ok.stderr);
    const bytes = Buffer.concat(recorded);
    assert.ok(
      bytes.includes(Buffer.from('"proof"')),
      "the relay saw the auth frame",
    );
    assert.ok(
      !bytes.includes(Buffer.from("s3cret-token-for-alice")),
      "the token never crossed the wire",
    );
    // Replay everything the client sent, on a fresh connection.
    const answer = await rawExchange(server.port, bytes);
    assert.ok(
      answer.includes(Buffer.from("ERR_AUTH")),
      `expected ERR_AUTH, got ${answer.toString("latin1")}`,
    );
    assert.ok(
      !answer.includes(Buffer.from('"maxFrameSize"')),
      "no Welcome after a replay",
    );
    await server.waitEvent((e) =>
      e.event === "refused" && e.reason === "token authentication failed"
    );
  } finally {
    relay.close();
  }
});

test("TLS and token together, over TLS, bind the token to the server certificate", async () => {
  using t = fixture();
  selfSigned(t.dir, "srv");
  fs.writeFileSync(path.join(t.dir, "t"), "carol carols-long-secret-token\n", {
    mode: 0o600,
  });
  await using server = await tlsServer(t.dir, "srv", [
    "--token-file",
    path.join(t.dir, "t"),
  ]);
  const r = await getHello(t.dir, server.port, [
    "--tls",
    "--pin",
    hexFp(t.dir, "srv.pem"),
    "--token-file",
    "t",
  ]);
  assert.equal(r.code, 0, r.stderr);
  await server.waitEvent((e) =>
    e.event === "authenticated" && e.identity === "token:carol"
  );
  // The proof the server expects covers its fingerprint: one made for plain TCP differs.
  const nonce = "00".repeat(32);
  const tls = createHmac("sha256", "carols-long-secret-token")
    .update(`moat-auth-1\0${nonce}\0get\0carol\0${hexFp(t.dir, "srv.pem")}`)
    .digest("hex");
  const plain = createHmac("sha256", "carols-long-secret-token").update(
    `moat-auth-1\0${nonce}\0get\0carol\0`,
  ).digest("hex");
  assert.notEqual(tls, plain);
});

test("a plain client on a TLS port and a TLS client on a plain port each get one clear line", async () => {
  using t = fixture();
  selfSigned(t.dir, "srv");
  {
    await using server = await tlsServer(t.dir, "srv");
    const r = await getHello(t.dir, server.port, []);
    assert.equal(r.code, 6);
    assert.match(
      oneLine(r.stderr),
      /the server speaks TLS on this port; connect with --tls$/,
    );
    await server.waitEvent((e) =>
      e.event === "refused" && String(e.reason).includes("does not speak TLS")
    );
  }
  await using plain = await startServer(["--root", t.dir]);
  const r = await getHello(t.dir, plain.port, ["--tls"]);
  assert.equal(r.code, 6);
  assert.match(
    oneLine(r.stderr),
    /TLS handshake failed: the peer does not speak TLS$/,
  );
  await plain.waitEvent((e) =>
    e.event === "closed" && e.reason === "TLS client on a plain port"
  );
});

test("openssl s_client: TLS 1.3 with moat's certificate; TLS 1.2 refused; plain FILE: over TLS", async () => {
  using t = fixture();
  selfSigned(t.dir, "srv");
  await using server = await tlsServer(t.dir, "srv");
  const s13 = spawnSync("openssl", [
    "s_client",
    "-connect",
    `127.0.0.1:${server.port}`,
    "-ign_eof",
  ], {
    cwd: t.dir,
    input: "FILE:hello.txt\n",
    encoding: "utf8",
    timeout: 15_000,
  });
  assert.match(s13.stdout, /TLSv1\.3/);
  // A port without tokens speaks plain text inside TLS too: the file's bytes,
  // then the server's close (which ends s_client despite -ign_eof).
  assert.equal(s13.status, 0, s13.stderr);
  assert.match(s13.stdout, /\nhello over tls\n/);
  const pem = s13.stdout.match(
    /-----BEGIN CERTIFICATE-----[\s\S]*?-----END CERTIFICATE-----/,
  )?.[0];
  assert.ok(pem);
  fs.writeFileSync(path.join(t.dir, "seen.pem"), pem + "\n");
  assert.equal(hexFp(t.dir, "seen.pem"), hexFp(t.dir, "srv.pem"));
  const s12 = spawnSync("openssl", [
    "s_client",
    "-connect",
    `127.0.0.1:${server.port}`,
    "-tls1_2",
  ], {
    cwd: t.dir,
    input: "",
    encoding: "utf8",
    timeout: 15_000,
  });
  assert.notEqual(s12.status, 0);
  assert.match(
    s12.stderr + s12.stdout,
    /alert protocol version|no protocols available|unsupported protocol/i,
  );
});

/** `openssl s_client -quiet` (no commands, no certificate dump): stdout, after `input`. */
function sClient(
  dir: string,
  port: number,
  input: string,
  extra: string[] = [],
) {
  return spawnSync("openssl", [
    "s_client",
    "-quiet",
    "-connect",
    `127.0.0.1:${port}`,
    ...extra,
  ], { cwd: dir, input, encoding: "utf8", timeout: 15_000 });
}

/** `socat - OPENSSL:…,verify=0` fed `input`: stdout once the server closes. */
function socatTls(dir: string, port: number, input: string, extra = "") {
  return spawnSync("socat", [
    "-t",
    "10",
    "-",
    `OPENSSL:127.0.0.1:${port},verify=0${extra}`,
  ], { cwd: dir, input, encoding: "utf8", timeout: 15_000 });
}

test("openssl s_client -quiet and socat OPENSSL speak plain text over TLS: FILE: and chat lines", async () => {
  using t = fixture();
  selfSigned(t.dir, "srv");
  await using server = await tlsServer(t.dir, "srv", ["--reply", "PONG"]);
  const viaSClient = sClient(t.dir, server.port, "FILE:hello.txt\n");
  assert.equal(viaSClient.status, 0, viaSClient.stderr);
  assert.equal(viaSClient.stdout, "hello over tls\n");
  const viaSocat = socatTls(t.dir, server.port, "FILE:hello.txt\n");
  assert.equal(viaSocat.status, 0, viaSocat.stderr);
  assert.equal(viaSocat.stdout, "hello over tls\n");

  // socat passes its end of input on; the server answers, then closes.
  const chat = socatTls(t.dir, server.port, "hi from socat\n");
  assert.equal(chat.status, 0, chat.stderr);
  assert.equal(chat.stdout, "[server] PONG\n");
  assert.match(
    await server.stdout.waitFor((l) => l.endsWith("] hi from socat")),
    /^\[[0-9a-z]{4}-c\d+ 127\.0\.0\.1:\d+\] hi from socat$/,
  );
  // s_client -quiet ignores the end of its input: it is ended once answered.
  const child = spawn("openssl", [
    "s_client",
    "-quiet",
    "-connect",
    `127.0.0.1:${server.port}`,
  ], { cwd: t.dir, stdio: ["pipe", "pipe", "ignore"] });
  const exited = new Promise((resolve) => child.on("close", resolve));
  try {
    const out = new LineWatcher(child.stdout!);
    child.stdin!.write("hi from s_client\n");
    assert.equal(
      await out.waitFor((l) => l.includes("PONG"), 15_000, "s_client reply"),
      "[server] PONG",
    );
  } finally {
    child.kill("SIGKILL");
    await exited;
  }
  await server.stdout.waitFor((l) => l.endsWith("] hi from s_client"));

  const gets = server.events().filter((e) => e.event === "get_finished");
  assert.equal(gets.length, 2);
  const started = server.events().filter((e) => e.event === "get_started");
  assert.deepEqual(started.map((e) => [e.mode, e.path]), [
    ["plain", "hello.txt"],
    ["plain", "hello.txt"],
  ]);
  const chats = server.events().filter((e) => e.event === "chat");
  assert.deepEqual(chats.map((e) => e.text).sort(), [
    "hi from s_client",
    "hi from socat",
  ]);
});

test("serve --allow-cert: s_client with the allowed certificate gets FILE: in plain text under its identity; without one it is refused", async () => {
  using t = fixture();
  selfSigned(t.dir, "srv");
  selfSigned(t.dir, "alice");
  const alice = hexFp(t.dir, "alice.pem");
  await using server = await tlsServer(t.dir, "srv", ["--allow-cert", alice]);
  const ok = sClient(t.dir, server.port, "FILE:hello.txt\n", [
    "-cert",
    "alice.pem",
    "-key",
    "alice.key",
  ]);
  assert.equal(ok.status, 0, ok.stderr);
  assert.equal(ok.stdout, "hello over tls\n");
  const accepted = await server.waitEvent((e) =>
    e.event === "accepted" && e.identity === `cert:${alice}`
  );
  const closed = await server.waitEvent((e) =>
    e.event === "closed" && e.name === accepted.name
  );
  assert.equal(closed.reason, "file sent");
  // socat with the same certificate chats under that identity.
  const chat = socatTls(
    t.dir,
    server.port,
    "hi with a certificate\n",
    ",cert=alice.pem,key=alice.key",
  );
  assert.equal(chat.status, 0, chat.stderr);
  assert.match(
    await server.stdout.waitFor((l) => l.endsWith("] hi with a certificate")),
    new RegExp(
      `^\\[[0-9a-z]{4}-c\\d+ 127\\.0\\.0\\.1:\\d+ cert:${alice}\\] hi with a certificate$`,
    ),
  );
  const none = sClient(t.dir, server.port, "FILE:hello.txt\n");
  assert.equal(none.stdout, "ERR CERT_REQUIRED client certificate required\n");
  assert.equal(
    server.events().filter((e) => e.event === "get_finished").length,
    1,
  );
});

test("a token or --no-plain keeps plain text off over TLS: s_client and socat read ERR PLAIN_DISABLED", async () => {
  using t = fixture();
  selfSigned(t.dir, "srv");
  fs.writeFileSync(path.join(t.dir, "t"), "carol carols-long-secret-token\n", {
    mode: 0o600,
  });
  const want = "ERR PLAIN_DISABLED plain-text mode is off on this server\n";
  const rows: [string[], string][] = [
    [
      ["--token-file", path.join(t.dir, "t")],
      "plain-text client refused (token required)",
    ],
    [["--no-plain"], "plain-text client refused (--no-plain)"],
  ];
  for (const [extra, reason] of rows) {
    await using server = await tlsServer(t.dir, "srv", extra);
    const viaSClient = sClient(t.dir, server.port, "FILE:hello.txt\n");
    assert.equal(viaSClient.stdout, want, extra.join(" "));
    const viaSocat = socatTls(t.dir, server.port, "hello\n");
    assert.equal(viaSocat.stdout, want, extra.join(" "));
    // Both refusals are logged (the second once its linger ends).
    const first = await server.waitEvent((e) =>
      e.event === "closed" && e.reason === reason
    );
    await server.waitEvent((e) =>
      e.event === "closed" && e.reason === reason && e.name !== first.name
    );
    assert.ok(!server.events().some((e) => e.event === "chat"));
    assert.ok(!server.events().some((e) => e.event === "get_started"));
  }
});

/** Everything a raw TCP client from `from` reads after sending `bytes`. */
function rawExchangeFrom(
  port: number,
  from: string,
  bytes: Uint8Array,
): Promise<Buffer> {
  return new Promise((resolve, reject) => {
    const chunks: Buffer[] = [];
    const socket = net.connect({ host: "127.0.0.1", port, localAddress: from });
    socket.on("connect", () => socket.write(bytes));
    socket.on("data", (d) => chunks.push(d));
    socket.on("error", reject);
    socket.on("close", () => resolve(Buffer.concat(chunks)));
  });
}

/**
 * A TLS handshake record header and 512 bytes of body: what a ClientHello
 * starts with, enough for a TLS server to begin answering.
 */
function clientHelloBytes(): Uint8Array {
  return Buffer.concat([
    Buffer.from([0x16, 0x03, 0x01, 0x02, 0x00]),
    Buffer.alloc(512, 0),
  ]);
}

test("serve on a TLS port answers a refused peer's ClientHello with the plain ERR ACCESS_DENIED line and no TLS record", async () => {
  using t = fixture();
  selfSigned(t.dir, "srv");
  await using server = await tlsServer(t.dir, "srv", [
    "--allow",
    "127.0.0.1",
  ]);
  const got = await rawExchangeFrom(
    server.port,
    "127.0.0.2",
    clientHelloBytes(),
  );
  assert.equal(
    got.toString("latin1"),
    "ERR ACCESS_DENIED access refused by server\n",
  );
  assert.ok(!got.includes(0x16), "no TLS handshake record");
  await server.waitEvent((e) =>
    e.event === "refused" && String(e.peer).startsWith("127.0.0.2:")
  );
  // The allowed address still gets its file over TLS.
  const fp = hexFp(t.dir, "srv.pem");
  const r = await getHello(t.dir, server.port, ["--tls", "--pin", fp]);
  assert.equal(r.code, 0, r.stderr);
  assert.equal(r.saved, "hello over tls\n");
});

test("serve on a TLS port counts a silent TCP peer against --max-conns and drops it at --handshake-timeout", async () => {
  using t = fixture();
  selfSigned(t.dir, "srv");
  await using server = await tlsServer(t.dir, "srv", [
    "--max-conns",
    "1",
    "--handshake-timeout",
    "1",
  ]);
  const silent = net.connect({ host: "127.0.0.1", port: server.port });
  const silentClosed = new Promise<void>((resolve) =>
    silent.on("close", () => resolve())
  );
  silent.on("error", () => {});
  await new Promise<void>((resolve) => silent.on("connect", () => resolve()));
  // The silent peer holds the one slot: the next one is told it is busy.
  const busy = await rawExchangeFrom(
    server.port,
    "127.0.0.1",
    clientHelloBytes(),
  );
  assert.equal(
    busy.toString("latin1"),
    "ERR BUSY server busy: too many connections\n",
  );
  // At the handshake deadline the silent peer is closed and audited.
  await server.waitEvent((e) =>
    e.event === "refused" && e.reason === "TLS handshake timeout"
  );
  await silentClosed;
  const fp = hexFp(t.dir, "srv.pem");
  const r = await getHello(t.dir, server.port, ["--tls", "--pin", fp]);
  assert.equal(r.code, 0, r.stderr);
});
