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
import * as path from "node:path";
import { X509Certificate } from "node:crypto";
import {
  colonFingerprint,
  createSelfSignedCert,
  endEntityProblem,
  fingerprint,
  parseFingerprint,
} from "../lib/cert.ts";
import { addKnownHost, configDir, findKnownHost } from "../lib/known_hosts.ts";
import { checkClientCertificate, verifyServer } from "../lib/tls.ts";
import {
  answerChallenge,
  decodeAuth,
  newChallenge,
  parseTokens,
  tokenProof,
  verifyAnswer,
} from "../lib/auth.ts";
import { getNet } from "../lib/net/mod.ts";
import type { TlsInfo } from "../lib/net/types.ts";
import { tempDir } from "./_e2e.ts";

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
    assert.deepEqual(parseTokens("# c\n\nalice 0123456789abcdef\n", "f"), [{
      name: "alice",
      secret: "0123456789abcdef",
    }]);
    assert.deepEqual(parseTokens("0123456789abcdefXYZ", "f"), [{
      name: "token",
      secret: "0123456789abcdefXYZ",
    }]);
    assert.throws(() => parseTokens("a short", "f"), /too short/);
    assert.throws(() => parseTokens("a b c", "f"), /expected "NAME SECRET"/);
    assert.throws(
      () => parseTokens("a 0123456789abcdef\na 0123456789abcdef", "f"),
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
