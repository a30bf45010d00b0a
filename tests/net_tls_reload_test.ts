/**
 * Tests for `Listener.setTls` (lib/net/deno.ts, lib/net/bun.ts): a TLS
 * listener takes a new certificate for the connections it accepts next, on
 * real loopback sockets of the runtime running the tests.
 */

import { test } from "node:test";
import assert from "node:assert/strict";
import { X509Certificate } from "node:crypto";
import { createSelfSignedCert, fingerprint } from "../lib/cert.ts";
import { getNet } from "../lib/net/mod.ts";
import type { Conn, Listener } from "../lib/net/types.ts";
import { within } from "./_server.ts";

const A = await createSelfSignedCert({ names: ["127.0.0.1"], days: 2 });
const B = await createSelfSignedCert({ names: ["127.0.0.1"], days: 2 });

/** The next connection the listener accepts. */
async function nextConn(listener: Listener): Promise<Conn> {
  const it = listener[Symbol.asyncIterator]();
  const next = await within(it.next(), "a connection");
  assert.equal(next.done, false);
  return next.value as Conn;
}

/**
 * Connects a TLS client, lets the server's side of it handshake (after
 * `between`, if given), and returns the fingerprint the client was shown.
 */
async function servedCertificate(
  listener: Listener,
  between?: () => void,
): Promise<string> {
  const accepted = nextConn(listener);
  const connecting = getNet().connect({
    hostname: "127.0.0.1",
    port: listener.addr.port,
    tls: {},
  });
  const server = await accepted;
  between?.();
  await within(server.handshake!(), "the server's handshake");
  const client = await within(connecting, "the client's handshake");
  const fp = fingerprint(client.tls!.peerCertificate!);
  client.close();
  server.close();
  return fp;
}

function fp(pem: string): string {
  return fingerprint(new Uint8Array(new X509Certificate(pem).raw));
}

test("Listener.setTls serves the new certificate to connections accepted after it", async () => {
  const listener = await getNet().listen({
    hostname: "127.0.0.1",
    port: 0,
    tls: { cert: A.cert, key: A.key },
  });
  try {
    assert.equal(await servedCertificate(listener), fp(A.cert));
    listener.setTls!({ cert: B.cert, key: B.key });
    assert.equal(await servedCertificate(listener), fp(B.cert));
  } finally {
    listener.close();
  }
});

test("Listener.setTls leaves a connection accepted before it with the certificate it had", async () => {
  const listener = await getNet().listen({
    hostname: "127.0.0.1",
    port: 0,
    tls: { cert: A.cert, key: A.key },
  });
  try {
    const shown = await servedCertificate(
      listener,
      () => listener.setTls!({ cert: B.cert, key: B.key }),
    );
    assert.equal(shown, fp(A.cert));
    assert.equal(await servedCertificate(listener), fp(B.cert));
  } finally {
    listener.close();
  }
});

test("Listener.setTls refuses a key that is not the certificate's and keeps the old pair", async () => {
  const listener = await getNet().listen({
    hostname: "127.0.0.1",
    port: 0,
    tls: { cert: A.cert, key: A.key },
  });
  try {
    assert.throws(
      () => listener.setTls!({ cert: B.cert, key: A.key }),
      (err: unknown) =>
        (err as { code?: string }).code === "ERR_TLS_CONFIG" &&
        /the key is not the certificate's/.test((err as Error).message),
    );
    assert.throws(
      () => listener.setTls!({ cert: "not a certificate", key: A.key }),
      (err: unknown) => (err as { code?: string }).code === "ERR_TLS_CONFIG",
    );
    assert.equal(await servedCertificate(listener), fp(A.cert));
  } finally {
    listener.close();
  }
});

test("Listener.setTls on a plain TCP listener throws a TypeError", async () => {
  const listener = await getNet().listen({ hostname: "127.0.0.1", port: 0 });
  try {
    assert.throws(
      () => listener.setTls!({ cert: A.cert, key: A.key }),
      { name: "TypeError", message: "Cannot set TLS on a plain TCP listener" },
    );
  } finally {
    listener.close();
  }
});
