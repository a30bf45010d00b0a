/**
 * Unit tests for TLS policy, fingerprints, known_hosts, tokens, and the TLS
 * socket adapter of the running runtime. Certificates come from `moat cert`'s
 * generator (`lib/cert.ts`) and, for CA:TRUE, from the openssl CLI.
 *
 * @module
 */

import { describe, test } from "node:test";
import assert from "node:assert/strict";
import { spawnSync } from "node:child_process";
import * as fs from "node:fs";
import * as nodeNet from "node:net";
import * as path from "node:path";
import * as nodeTls from "node:tls";
import { X509Certificate } from "node:crypto";
import {
  colonFingerprint,
  createSelfSignedCert,
  endEntityProblem,
  fingerprint,
  parseFingerprint,
} from "../lib/cert.ts";
import { addKnownHost, configDir, findKnownHost } from "../lib/known_hosts.ts";
import {
  checkClientCertificate,
  connectSecure,
  verifyServer,
} from "../lib/tls.ts";
import {
  answerChallenge,
  decodeAuth,
  newChallenge,
  parseTokens,
  tokenProof,
  verifyAnswer,
} from "../lib/auth.ts";
import { getNet } from "../lib/net/mod.ts";
import type { Conn, Listener, TlsInfo } from "../lib/net/types.ts";
import { toTlsConnectError } from "../lib/net/_errors.ts";
import { tempDir } from "./_e2e.ts";
import { within } from "./_server.ts";

const made = await createSelfSignedCert({
  names: ["127.0.0.1", "localhost"],
  days: 2,
});
const der = new Uint8Array(new X509Certificate(made.cert).raw);
const FP = fingerprint(der);

function info(cert: Uint8Array | undefined, authorized = false): TlsInfo {
  return {
    protocol: "TLSv1.3",
    peerCertificate: cert,
    authorized,
    authorizationError: undefined,
  };
}

describe("parseFingerprint", () => {
  const hex = FP.slice(7);
  for (
    const [input, expected] of [
      [FP, FP],
      [`sha256:${colonFingerprint(FP)}`, FP],
      [colonFingerprint(FP), FP],
      [`sha256 Fingerprint=${colonFingerprint(FP)}`, FP],
      [hex.toUpperCase(), FP],
    ] as const
  ) {
    test(`parseFingerprint accepts ${input.slice(0, 24)}…`, () =>
      assert.equal(parseFingerprint(input), expected));
  }
  for (
    const bad of [
      "",
      "sha256:abc",
      `md5:${hex}`,
      `sha256:${hex}00`,
      `sha256:${hex.slice(0, 63)}g`,
      "A:BC:" + hex.slice(3),
    ]
  ) {
    test(`parseFingerprint rejects "${bad.slice(0, 20)}"`, () =>
      assert.throws(() => parseFingerprint(bad, "--pin"), /Invalid --pin/));
  }
});

test("createSelfSignedCert makes a CA:FALSE P-256 certificate for the names given", () => {
  const cert = new X509Certificate(made.cert);
  assert.equal(cert.ca, false);
  assert.equal(cert.publicKey.asymmetricKeyDetails?.namedCurve, "prime256v1");
  assert.equal(cert.checkIP("127.0.0.1"), "127.0.0.1");
  assert.equal(cert.checkHost("localhost"), "localhost");
  assert.equal(cert.checkHost("example.com"), undefined);
  assert.equal(made.fingerprint, FP);
  assert.match(made.key, /^-----BEGIN PRIVATE KEY-----\n/);
  assert.equal(endEntityProblem(der), undefined);
  assert.match(
    endEntityProblem(der, new Date(Date.now() + 3 * 86_400_000)) ?? "",
    /^certificate expired on /,
  );
  assert.match(
    endEntityProblem(der, new Date(Date.now() - 86_400_000)) ?? "",
    /^certificate is not valid before /,
  );
});

test("createSelfSignedCert rejects a name that is neither a DNS name nor an IP", async () => {
  await assert.rejects(
    createSelfSignedCert({ names: ["bad name"] }),
    /Invalid --name "bad name"/,
  );
});

test("endEntityProblem refuses a CA:TRUE certificate", () => {
  using t = tempDir("moat-tls-unit-");
  const r = spawnSync("openssl", [
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
    "/CN=ca",
    "-addext",
    "basicConstraints=critical,CA:TRUE",
  ], { cwd: t.dir, encoding: "utf8" });
  assert.equal(r.status, 0, r.stderr);
  const ca = new Uint8Array(
    new X509Certificate(fs.readFileSync(path.join(t.dir, "c.pem"))).raw,
  );
  assert.match(endEntityProblem(ca) ?? "", /CA:TRUE/);
  const verdict = checkClientCertificate(info(ca), {
    allowed: new Set([fingerprint(ca)]),
  });
  assert.equal("code" in verdict && verdict.code, "CERT_REJECTED");
});

describe("verifyServer", () => {
  const server = { hostname: "127.0.0.1", port: 4433 };
  test("verifyServer accepts a matching pin and refuses another", () => {
    assert.equal(
      verifyServer(info(der), server, { trust: { kind: "pin", pins: [FP] } }),
      FP,
    );
    assert.throws(
      () =>
        verifyServer(info(der), server, {
          trust: { kind: "pin", pins: [`sha256:${"0".repeat(64)}`] },
        }),
      { code: "ERR_TLS_VERIFY", message: /does not match --pin/ },
    );
  });
  test("verifyServer in CA mode needs a verified chain and a matching name", () => {
    const ca = { trust: { kind: "ca", ca: made.cert } } as const;
    assert.throws(
      () => verifyServer(info(der, false), server, ca),
      /does not verify against --ca/,
    );
    assert.equal(verifyServer(info(der, true), server, ca), FP);
    assert.throws(
      () =>
        verifyServer(info(der, true), { hostname: "10.0.0.1", port: 1 }, ca),
      /not valid for "10\.0\.0\.1"/,
    );
  });
  test("verifyServer refuses a server that sent no certificate", () => {
    assert.throws(
      () =>
        verifyServer(info(undefined), server, {
          trust: { kind: "pin", pins: [FP] },
        }),
      /sent no TLS certificate/,
    );
  });
  test("verifyServer trusts on first use, then fails closed naming the file and line", () => {
    using t = tempDir("moat-tls-unit-");
    const file = path.join(t.dir, "sub", "known_hosts");
    const seen: string[] = [];
    const tofu = {
      trust: { kind: "tofu", file } as const,
      onNewHost: (h: string) => seen.push(h),
    };
    assert.equal(verifyServer(info(der), server, tofu), FP);
    assert.deepEqual(seen, ["127.0.0.1:4433"]);
    assert.equal(verifyServer(info(der), server, tofu), FP);
    assert.deepEqual(seen, ["127.0.0.1:4433"]);
    assert.equal((fs.statSync(file).mode & 0o777).toString(8), "600");
    fs.writeFileSync(
      file,
      `# a comment\n127.0.0.1:4433 sha256:${"1".repeat(64)}\n`,
    );
    assert.throws(() => verifyServer(info(der), server, tofu), (err: Error) => {
      assert.match(
        err.message,
        /^Server certificate for 127\.0\.0\.1:4433 has CHANGED/,
      );
      assert.ok(
        err.message.endsWith(`remove line 2 of "${file}"`),
        err.message,
      );
      return true;
    });
  });
});

test("known_hosts keeps IPv6 hosts bracketed and finds them by line", () => {
  using t = tempDir("moat-tls-unit-");
  const file = path.join(t.dir, "known_hosts");
  addKnownHost(file, "[::1]:4320", FP);
  addKnownHost(file, "127.0.0.1:4320", `sha256:${"2".repeat(64)}`);
  assert.deepEqual(findKnownHost(file, "[::1]:4320"), {
    fingerprint: FP,
    line: 1,
  });
  assert.equal(findKnownHost(file, "127.0.0.1:4320")?.line, 2);
  assert.equal(findKnownHost(file, "127.0.0.1:1"), undefined);
  assert.equal(findKnownHost(path.join(t.dir, "none"), "x:1"), undefined);
});

test("configDir prefers MOAT_CONFIG_DIR, then XDG_CONFIG_HOME, then ~/.config", () => {
  assert.equal(
    configDir({ MOAT_CONFIG_DIR: "/a", XDG_CONFIG_HOME: "/b", HOME: "/c" }),
    "/a",
  );
  assert.equal(configDir({ XDG_CONFIG_HOME: "/b", HOME: "/c" }), "/b/moat");
  assert.equal(configDir({ HOME: "/c" }), "/c/.config/moat");
});

test("checkClientCertificate accepts allowed fingerprints and CA-verified chains only", () => {
  const allowed = { allowed: new Set([FP]) };
  assert.deepEqual(checkClientCertificate(info(der), allowed), {
    identity: `cert:${FP}`,
  });
  assert.deepEqual(checkClientCertificate(info(undefined), allowed), {
    code: "CERT_REQUIRED",
    reason: "client certificate required",
  });
  assert.deepEqual(
    checkClientCertificate(info(der, true), { allowed: new Set() }),
    {
      code: "CERT_REJECTED",
      reason: "client certificate not trusted",
    },
  );
  // `authorized` counts only when a client CA was configured.
  assert.deepEqual(
    checkClientCertificate(info(der, true), {
      allowed: new Set(),
      clientCa: made.cert,
    }),
    {
      identity: `cert:${FP}`,
    },
  );
});

describe("tokens", () => {
  test("parseTokens reads named and unnamed tokens and rejects bad lines", () => {
    const hex = "0123456789abcdef0123456789abcdef";
    assert.deepEqual(parseTokens(`# c\n\nalice ${hex}\n`, "f"), [{
      name: "alice",
      secret: hex,
    }]);
    assert.deepEqual(parseTokens("0123456789abcdefXYZ+/_", "f"), [{
      name: "token",
      secret: "0123456789abcdefXYZ+/_",
    }]);
    assert.throws(() => parseTokens("a short", "f"), /too short/);
    // 128 bits: 31 hex digits (124 bits) and 21 base64 characters are short.
    assert.throws(() => parseTokens(`a ${hex.slice(1)}`, "f"), /128 bits/);
    assert.throws(
      () => parseTokens("a 0123456789abcdefXYZ+/", "f"),
      /128 bits/,
    );
    assert.throws(() => parseTokens("a b c", "f"), /expected "NAME SECRET"/);
    assert.throws(
      () => parseTokens(`a ${hex}\na ${hex}`, "f"),
      /repeated/,
    );
  });
  const token = { name: "alice", secret: "0123456789abcdef" };
  test("verifyAnswer accepts the right proof only for its nonce, mode and binding", () => {
    const challenge = newChallenge();
    const context = { nonce: challenge.nonce, mode: "get", binding: FP };
    const answer = decodeAuth(
      answerChallenge(new TextEncoder().encode(JSON.stringify(challenge)), {
        token,
        mode: "get",
        binding: FP,
      }),
    );
    assert.equal(answer.proof, tokenProof(token, context));
    assert.deepEqual(verifyAnswer([token], answer, context), token);
    assert.equal(
      verifyAnswer([token], answer, {
        ...context,
        nonce: newChallenge().nonce,
      }),
      undefined,
    );
    assert.equal(
      verifyAnswer([token], answer, { ...context, mode: "chat" }),
      undefined,
    );
    assert.equal(
      verifyAnswer([token], answer, { ...context, binding: "" }),
      undefined,
    );
    assert.equal(
      verifyAnswer(
        [{ ...token, secret: "another-secret-16" }],
        answer,
        context,
      ),
      undefined,
    );
    assert.equal(
      verifyAnswer([token], { name: "bob", proof: answer.proof }, context),
      undefined,
    );
    assert.equal(
      verifyAnswer([token], { name: "alice", proof: "zz" }, context),
      undefined,
    );
  });
  test("answerChallenge without a token says how to give one", () => {
    const payload = new TextEncoder().encode(JSON.stringify(newChallenge()));
    assert.throws(
      () =>
        answerChallenge(payload, {
          token: undefined,
          mode: "get",
          binding: "",
        }),
      /--token-file/,
    );
  });
});

test("Net.listen with tls speaks TLS 1.3 and reports the peers' certificates", async () => {
  const client = await createSelfSignedCert({ names: ["client"], days: 2 });
  const net = getNet();
  const listener = await net.listen({
    hostname: "127.0.0.1",
    port: 0,
    tls: { cert: made.cert, key: made.key, requestCert: true },
  });
  try {
    // The server starts TLS on the connection it accepted; the client's
    // connect resolves once that handshake is done.
    const accepted = listener[Symbol.asyncIterator]().next().then(
      async ({ value }) => {
        await value!.handshake!();
        return value!;
      },
    );
    const conn = await net.connect({
      hostname: "127.0.0.1",
      port: listener.addr.port,
      tls: { cert: client.cert, key: client.key },
    });
    const server = await accepted;
    assert.equal(conn.tls?.protocol, "TLSv1.3");
    assert.equal(fingerprint(conn.tls!.peerCertificate!), FP);
    assert.equal(fingerprint(server.tls!.peerCertificate!), client.fingerprint);
    await conn.write(new TextEncoder().encode("ping"));
    await conn.closeWrite();
    const buf = new Uint8Array(16);
    assert.equal(await server.read(buf), 4);
    assert.equal(await server.read(buf), null);
    // Half-closed: the server can still answer.
    await server.write(new TextEncoder().encode("pong"));
    server.close();
    assert.equal(await conn.read(buf), 4);
    assert.equal(new TextDecoder().decode(buf.subarray(0, 4)), "pong");
    conn.close();
  } finally {
    listener.close();
  }
});

test("a TLS client that does not read holds the server's writes back, then gets every byte", async () => {
  const net = getNet();
  const listener = await net.listen({
    hostname: "127.0.0.1",
    port: 0,
    tls: { cert: made.cert, key: made.key },
  });
  const chunk = new Uint8Array(1 << 20);
  const chunks = 64;
  let written = 0;
  try {
    const accepted = listener[Symbol.asyncIterator]().next().then(
      async ({ value }) => {
        await value!.handshake!();
        return value!;
      },
    );
    const conn = await net.connect({
      hostname: "127.0.0.1",
      port: listener.addr.port,
      tls: {},
    });
    const server = await accepted;
    try {
      const writing = (async () => {
        for (let i = 0; i < chunks; i++) {
          chunk[0] = i;
          await server.write(chunk);
          written += chunk.length;
        }
        await server.closeWrite();
      })();
      writing.catch(() => {});
      await new Promise((resolve) => setTimeout(resolve, 400));
      // Kernel buffers, TLS's own and the adapter's bounded read queue; the
      // whole 64 MiB when the client's TLS reads on regardless (Deno's
      // node:tls over its own socket, 2.9.6).
      assert.ok(
        written <= 24 << 20,
        `${written} bytes were accepted while the client did not read`,
      );
      const buf = new Uint8Array(1 << 20);
      let total = 0;
      for (let n; (n = await conn.read(buf)) !== null;) total += n;
      await writing;
      assert.equal(total, chunks * chunk.length);
    } finally {
      conn.close();
      server.close();
    }
  } finally {
    listener.close();
  }
});

/** Bounds every wait below: a hang fails the test instead of stalling it. */
const TIMEOUT_MS = 20_000;

/** The first TLS record a `node:tls` client sends: a real ClientHello. */
async function captureClientHello(): Promise<Uint8Array> {
  const server = nodeNet.createServer();
  const hello = new Promise<Uint8Array>((resolve) => {
    server.on("connection", (socket) => {
      let got = new Uint8Array(0);
      socket.on("data", (data: Uint8Array) => {
        got = new Uint8Array([...got, ...data]);
        // 5-byte record header, then the length it announces.
        if (got.length >= 5 && got.length >= 5 + (got[3]! << 8 | got[4]!)) {
          socket.destroy();
          resolve(got);
        }
      });
    });
  });
  await new Promise<void>((resolve) => server.listen(0, "127.0.0.1", resolve));
  const { port } = server.address() as nodeNet.AddressInfo;
  const client = nodeTls.connect({ host: "127.0.0.1", port });
  client.on("error", () => {});
  try {
    return await within(hello, "a ClientHello", TIMEOUT_MS);
  } finally {
    client.destroy();
    server.close();
  }
}

/** Connects over plain TCP, sends `bytes`, and collects all it receives until closed. */
function exchange(port: number, bytes: Uint8Array): {
  socket: nodeNet.Socket;
  connected: Promise<void>;
  received: Promise<Uint8Array>;
} {
  let connected!: () => void;
  const connecting = new Promise<void>((resolve) => connected = resolve);
  const socket = nodeNet.connect(port, "127.0.0.1", () => {
    if (bytes.length > 0) socket.write(bytes);
    connected();
  });
  const chunks: Uint8Array[] = [];
  socket.on("data", (data: Uint8Array) => chunks.push(new Uint8Array(data)));
  const received = new Promise<Uint8Array>((resolve) => {
    socket.on("error", () => {});
    socket.on(
      "close",
      () => resolve(new Uint8Array(chunks.flatMap((chunk) => [...chunk]))),
    );
  });
  return {
    socket,
    connected: within(connecting, "the connection", TIMEOUT_MS),
    received: within(received, "the server to close", TIMEOUT_MS),
  };
}

/** A TLS listener on 127.0.0.1 with `made`'s certificate (and client certificates asked). */
async function tlsListener(
  cert = made.cert,
  key = made.key,
): Promise<Listener> {
  return await getNet().listen({
    hostname: "127.0.0.1",
    port: 0,
    tls: { cert, key, requestCert: true },
  });
}

function nextConn(listener: Listener): Promise<Conn> {
  return within(
    listener[Symbol.asyncIterator]().next().then(({ value }) => value!),
    "a connection from the listener",
    TIMEOUT_MS,
  );
}

const REFUSAL = "ERR ACCESS_DENIED access refused by server\n";

describe("Listener with tls", () => {
  test("Listener with tls yields a silent connection at once, plain, with handshake()", async () => {
    const listener = await tlsListener();
    const { socket, connected } = exchange(
      listener.addr.port,
      new Uint8Array(0),
    );
    try {
      const conn = await nextConn(listener);
      await connected;
      assert.equal(typeof conn.handshake, "function");
      assert.equal(conn.tls, undefined);
      assert.equal(conn.remoteAddr.hostname, "127.0.0.1");
      assert.equal(conn.remoteAddr.port, socket.localPort);
      conn.close();
    } finally {
      socket.destroy();
      listener.close();
    }
  });

  test("Conn from a TLS listener sends a peer it refuses no TLS record: the plain line, or nothing", async () => {
    const hello = await captureClientHello();
    assert.equal(hello[0], 0x16);
    const listener = await tlsListener();
    try {
      // Refused with a line, as the server does: write, half-close, drain, close.
      const lined = exchange(listener.addr.port, hello);
      const conn = await nextConn(listener);
      await conn.write(new TextEncoder().encode(REFUSAL));
      await conn.closeWrite();
      const buf = new Uint8Array(4096);
      let drained = 0;
      for (let n = await conn.read(buf); n !== null; n = await conn.read(buf)) {
        drained += n;
        if (drained >= hello.length) break;
      }
      conn.close();
      const got = await lined.received;
      assert.equal(new TextDecoder().decode(got), REFUSAL);
      assert.equal(
        drained,
        hello.length,
        "the ClientHello was read as plain bytes",
      );
      assert.equal(conn.tls, undefined);

      // Refused with a close: the peer receives nothing at all.
      const closed = exchange(listener.addr.port, hello);
      (await nextConn(listener)).close();
      assert.equal((await closed.received).length, 0);
      await assert.rejects(
        conn.handshake!(),
        /Cannot start TLS: plain bytes were already read or written/,
      );
    } finally {
      listener.close();
    }
  });

  test("Conn.handshake started after the ClientHello arrived completes, and sets tls only then", async () => {
    const client = await createSelfSignedCert({ names: ["client"], days: 2 });
    const listener = await tlsListener();
    try {
      const accepted = nextConn(listener);
      const connecting = getNet().connect({
        hostname: "127.0.0.1",
        port: listener.addr.port,
        tls: { cert: client.cert, key: client.key },
      });
      const server = await accepted;
      assert.equal(server.tls === undefined, true, "no TLS before handshake()");
      const secured = server.handshake!();
      assert.equal(
        server.handshake!(),
        secured,
        "a second call, the same promise",
      );
      const [conn] = await within(
        Promise.all([connecting, secured]),
        "the handshake",
        TIMEOUT_MS,
      );
      assert.equal(server.tls?.protocol, "TLSv1.3");
      assert.equal(
        fingerprint(server.tls!.peerCertificate!),
        client.fingerprint,
      );
      assert.equal(fingerprint(conn.tls!.peerCertificate!), FP);
      await conn.write(new TextEncoder().encode("ping"));
      const buf = new Uint8Array(16);
      assert.equal(await server.read(buf), 4);
      await server.write(new TextEncoder().encode("pong"));
      assert.equal(await conn.read(buf), 4);
      assert.equal(new TextDecoder().decode(buf.subarray(0, 4)), "pong");
      conn.close();
      server.close();
    } finally {
      listener.close();
    }
  });

  test("Conn.handshake rejects with ERR_TLS_HANDSHAKE for a peer that does not speak TLS, which gets an alert", async () => {
    const listener = await tlsListener();
    try {
      const plain = exchange(
        listener.addr.port,
        new TextEncoder().encode("hello\n"),
      );
      const conn = await nextConn(listener);
      await assert.rejects(conn.handshake!(), {
        code: "ERR_TLS_HANDSHAKE",
        message: "TLS handshake failed: the peer does not speak TLS",
      });
      const got = await plain.received;
      // One fatal alert record (0x15), as a TLS server answers garbage.
      assert.equal(got[0], 0x15, `got ${got.length} bytes`);
      assert.equal(got.length, 7);
    } finally {
      listener.close();
    }
  });

  test("Net.listen with tls rejects a key that is not the certificate's with ERR_TLS_CONFIG", async () => {
    const other = await createSelfSignedCert({ names: ["other"], days: 2 });
    await assert.rejects(
      getNet().listen({
        hostname: "127.0.0.1",
        port: 0,
        tls: { cert: made.cert, key: other.key },
      }),
      {
        code: "ERR_TLS_CONFIG",
        message: /^Cannot use the TLS certificate or key: /,
      },
    );
  });

  test("Conn.handshake rejects once the connection is closed meanwhile (a handshake timeout)", async () => {
    const listener = await tlsListener();
    const { socket, received } = exchange(
      listener.addr.port,
      new Uint8Array(0),
    );
    try {
      const conn = await nextConn(listener);
      const secured = conn.handshake!();
      conn.close();
      await within(
        assert.rejects(secured, { code: "ERR_TLS_HANDSHAKE" }),
        "the handshake to fail",
        TIMEOUT_MS,
      );
      await received;
    } finally {
      socket.destroy();
      listener.close();
    }
  });
});

/** Makes a private CA in `dir` and a leaf it issues for `names` (openssl CLI). */
function issueFromPrivateCa(
  dir: string,
  leaf: string,
  names: string[],
): { ca: string; cert: string; key: string } {
  const run = (args: string[]) => {
    const r = spawnSync("openssl", args, { cwd: dir, encoding: "utf8" });
    assert.equal(r.status, 0, r.stderr);
  };
  if (!fs.existsSync(path.join(dir, "ca.pem"))) {
    run([
      "req",
      "-x509",
      "-newkey",
      "ec",
      "-pkeyopt",
      "ec_paramgen_curve:P-256",
      "-nodes",
      "-keyout",
      "ca.key",
      "-out",
      "ca.pem",
      "-days",
      "2",
      "-subj",
      "/CN=private-ca",
      "-addext",
      "basicConstraints=critical,CA:TRUE",
    ]);
  }
  const sans = names.map((n) => (/^[\d.]+$/.test(n) ? `IP:${n}` : `DNS:${n}`));
  fs.writeFileSync(
    path.join(dir, `${leaf}.ext`),
    `subjectAltName=${sans.join(",")}\nbasicConstraints=CA:FALSE\n`,
  );
  run([
    "req",
    "-newkey",
    "ec",
    "-pkeyopt",
    "ec_paramgen_curve:P-256",
    "-nodes",
    "-keyout",
    `${leaf}.key`,
    "-out",
    `${leaf}.csr`,
    "-subj",
    `/CN=${leaf}`,
  ]);
  run([
    "x509",
    "-req",
    "-in",
    `${leaf}.csr`,
    "-CA",
    "ca.pem",
    "-CAkey",
    "ca.key",
    "-CAcreateserial",
    "-out",
    `${leaf}.pem`,
    "-days",
    "2",
    "-extfile",
    `${leaf}.ext`,
  ]);
  const read = (name: string) => fs.readFileSync(path.join(dir, name), "utf8");
  return {
    ca: read("ca.pem"),
    cert: read(`${leaf}.pem`),
    key: read(`${leaf}.key`),
  };
}

/** A TLS listener that greets every client with "hi\n" after the handshake. */
async function greeter(cert: string, key: string): Promise<Listener> {
  const listener = await getNet().listen({
    hostname: "127.0.0.1",
    port: 0,
    tls: { cert, key },
  });
  void (async () => {
    for await (const conn of listener) {
      conn.handshake!().then(
        () => conn.write(new TextEncoder().encode("hi\n")),
        () => {},
      ).catch(() => {}).finally(() => conn.closeWrite().catch(() => {}));
    }
  })();
  return listener;
}

async function greeting(conn: Conn): Promise<string> {
  const buf = new Uint8Array(16);
  const n = await within(conn.read(buf), "the greeting", TIMEOUT_MS);
  conn.close();
  return new TextDecoder().decode(buf.subarray(0, n ?? 0));
}

describe("connectSecure", () => {
  test("connectSecure with a pin trusts a private-CA certificate sent without its chain, whatever host it names", async () => {
    using t = tempDir("moat-tls-ca-");
    const other = issueFromPrivateCa(t.dir, "other", ["other.example"]);
    const fp = fingerprint(new Uint8Array(new X509Certificate(other.cert).raw));
    const listener = await greeter(other.cert, other.key);
    try {
      const server = { hostname: "127.0.0.1", port: listener.addr.port };
      const conn = await connectSecure(getNet(), server, {
        trust: { kind: "pin", pins: [fp] },
      });
      assert.equal(await greeting(conn), "hi\n");
      // Sent with SNI (a DNS name): the chain and the name fail, and the
      // adapter still reports the certificate instead of failing.
      const named = await getNet().connect({
        ...server,
        tls: { serverName: "moat.example" },
      });
      assert.equal(fingerprint(named.tls!.peerCertificate!), fp);
      assert.equal(named.tls!.authorized, false);
      assert.equal(await greeting(named), "hi\n");
    } finally {
      listener.close();
    }
  });

  test("connectSecure with a CA refuses a certificate for another host with ERR_TLS_VERIFY (exit 3)", async () => {
    using t = tempDir("moat-tls-ca-");
    const other = issueFromPrivateCa(t.dir, "other", ["other.example"]);
    const right = issueFromPrivateCa(t.dir, "right", ["127.0.0.1"]);
    const wrongHost = await greeter(other.cert, other.key);
    const rightHost = await greeter(right.cert, right.key);
    try {
      const trust = { trust: { kind: "ca", ca: other.ca } } as const;
      await assert.rejects(
        connectSecure(getNet(), {
          hostname: "127.0.0.1",
          port: wrongHost.addr.port,
        }, trust),
        {
          code: "ERR_TLS_VERIFY",
          exitCode: 3,
          message:
            `Server 127.0.0.1:${wrongHost.addr.port} refused: its certificate is not valid for "127.0.0.1"`,
        },
      );
      // The chain itself verifies: only the name is wrong.
      const named = await getNet().connect({
        hostname: "127.0.0.1",
        port: wrongHost.addr.port,
        tls: { ca: other.ca, serverName: "moat.example" },
      });
      assert.equal(named.tls!.authorized, true);
      named.close();
      const conn = await connectSecure(getNet(), {
        hostname: "127.0.0.1",
        port: rightHost.addr.port,
      }, trust);
      assert.equal(await greeting(conn), "hi\n");
    } finally {
      wrongHost.close();
      rightHost.close();
    }
  });

  test("toTlsConnectError maps a refused certificate to ERR_TLS_VERIFY (exit 3), anything else to ERR_CONNECT (exit 6)", () => {
    const where = { hostname: "127.0.0.1", port: 4320 };
    for (
      const code of [
        "ERR_TLS_CERT_ALTNAME_INVALID",
        "UNABLE_TO_VERIFY_LEAF_SIGNATURE",
        "DEPTH_ZERO_SELF_SIGNED_CERT",
        "CERT_HAS_EXPIRED",
      ]
    ) {
      const error = toTlsConnectError(
        Object.assign(new Error("refused"), { code }),
        where,
      );
      assert.equal(error.code, "ERR_TLS_VERIFY", code);
      assert.equal(error.exitCode, 3, code);
      assert.equal(
        error.message,
        `Server 127.0.0.1:4320 refused: its certificate did not verify (${code})`,
      );
    }
    const plain = toTlsConnectError(
      Object.assign(new Error("wrong version number"), {
        code: "ERR_SSL_WRONG_VERSION_NUMBER",
      }),
      where,
    );
    assert.equal(plain.code, "ERR_CONNECT");
    assert.equal(plain.exitCode, 6);
    assert.equal(
      plain.message,
      "Cannot connect to 127.0.0.1:4320: TLS handshake failed: the peer does not speak TLS",
    );
  });
});
