/**
 * Fake moat servers on loopback for client tests: each answers with bytes
 * the test chose, so a client can be shown what no real server sends.
 *
 * @module
 */

import * as net from "node:net";
import * as zlib from "node:zlib";
import { encodeFrame } from "../lib/framer.ts";
import { encodeJson, encodePreamble, Kind } from "../lib/protocol.ts";

/** The preamble and a Welcome, as a server opens a session. */
export const WELCOME: Uint8Array = concat(
  encodePreamble(),
  encodeFrame({
    type: Kind.Welcome,
    payload: encodeJson({
      server: "moat/fake",
      name: "c1",
      peer: "127.0.0.1:1",
      maxFrameSize: 1 << 20,
    }),
  }),
);

/** Joins byte arrays. */
export function concat(...parts: Uint8Array[]): Uint8Array {
  const out = new Uint8Array(parts.reduce((n, p) => n + p.length, 0));
  let at = 0;
  for (const p of parts) {
    out.set(p, at);
    at += p.length;
  }
  return out;
}

/**
 * The frames that answer a Get for `content` with a CRC-32 check:
 * FileMeta, one FileData, FileEnd. With `crc`, FileEnd carries that instead
 * of the content's CRC-32.
 */
export function fileFrames(
  content: Uint8Array,
  options: { crc?: number } = {},
): Uint8Array {
  const end = new Uint8Array(4);
  new DataView(end.buffer).setUint32(0, options.crc ?? zlib.crc32(content));
  return concat(
    encodeFrame({
      type: Kind.FileMeta,
      payload: encodeJson({
        path: "f",
        size: content.length,
        offset: 0,
        mtimeMs: 0,
        digest: "crc32",
      }),
    }),
    encodeFrame({ type: Kind.FileData, payload: content }),
    encodeFrame({ type: Kind.FileEnd, payload: end }),
  );
}

/** A fake server: its port, and closing it ends every connection. */
export interface FakeServer extends AsyncDisposable {
  readonly port: number;
}

/**
 * A server that answers each connection's first bytes with `reply`, then
 * ends it, or with `hold`, leaves it open (until disposed).
 */
export async function fakeServer(
  reply: Uint8Array,
  options: { hold?: boolean } = {},
): Promise<FakeServer> {
  const socks = new Set<net.Socket>();
  const srv = net.createServer((sock) => {
    socks.add(sock);
    sock.on("error", () => {});
    sock.once("data", () => {
      if (options.hold) sock.write(reply);
      else sock.end(reply);
    });
  });
  await new Promise<void>((r) => srv.listen(0, "127.0.0.1", () => r()));
  return {
    port: (srv.address() as net.AddressInfo).port,
    [Symbol.asyncDispose]: () => {
      for (const sock of socks) sock.destroy();
      return new Promise<void>((r) => srv.close(() => r()));
    },
  };
}
